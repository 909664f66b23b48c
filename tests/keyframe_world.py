"""The keyframe tests' world: a red ball crossing from the left to the right, its first and last frames as keyframes,
and where the object is in a frame (tests/integration/test_keyframes.py, test_keyframe_requests.py)."""

from __future__ import annotations

import numpy as np
import torch

from gpu_runner.demo import measure, world

WIDTH, HEIGHT, FRAMES = 256, 160, 25  # a shape the demo was trained on; 4 latent frames
CENTRE_TOLERANCE_PX = 10.0  # measured: at most 4 px
FRAME_TOLERANCE = 4.0  # levels of 255
SCENE = world.Scene(
    colour="red", shape="ball", motion="moving right", sound="silence", size=0.14, x=0.0, y=0.5, travel=0.6
)


def keyframe_images(width: int = WIDTH, height: int = HEIGHT) -> tuple[np.ndarray, np.ndarray]:
    """The world's own first and last frames of a red ball crossing from the left to the right, as uint8 RGB."""
    video = world.render_video([SCENE], width=width, height=height, frames=FRAMES, fps=24.0)[0]
    first, last = ((video[:, i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for i in (0, -1))
    return first, last


def centre(frame: np.ndarray) -> tuple[float, float]:
    x, y = measure.track(measure.video_from_frames(torch.from_numpy(frame[None])))[0].tolist()
    return x, y
