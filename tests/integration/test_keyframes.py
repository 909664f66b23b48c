"""Keyframes (issue 17, point 1) on the demo model: images the clip passes through at chosen output frames.

The demo's world has one object on a dark background. Keyframe 0 shows it at the left, keyframe -1 (the last
frame) at the right, and the prompt names no direction ("a red ball"): the object must end at the right in at
least 4 of 5 seeds, and the clip's first and last frames must match their keyframes: the object's centre within
CENTRE_TOLERANCE_PX of the keyframe's, the whole frame within FRAME_TOLERANCE of it (mean absolute difference in
8-bit levels; measured: 1.1-1.3 for the first frame, 1.2-2.9 for the last).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PIL import Image

from gpu_runner import pipeline
from gpu_runner.cancel import Cancellation
from gpu_runner.demo import measure, world
from gpu_runner.job import load_job
from tests.runner_fixtures import read_mp4, run_job, write_job

WIDTH, HEIGHT, FRAMES = 256, 160, 17  # the demo was trained on 256x160 clips; 3 latent frames
SEEDS = range(5)
STEPS = 4
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


@pytest.fixture(scope="module")
def clips(demo_model_dir, tmp_path_factory):
    """Five seeds of the keyframed clip, made by the runner's own stages; with the keyframe images."""
    first, last = keyframe_images()
    made = []
    for seed in SEEDS:
        job_dir = tmp_path_factory.mktemp(f"keyframes-{seed}")
        keyframes = [{"upload_id": "a" * 32, "frame": 0, "strength": 1.0}, {"upload_id": "b" * 32, "frame": -1}]
        write_job(
            job_dir,
            demo_model_dir,
            prompt="a red ball",
            width=WIDTH,
            height=HEIGHT,
            num_frames=FRAMES,
            steps=STEPS,
            seed=seed,
            keyframes=keyframes,
            keyframe_files=["keyframe-0.png", "keyframe-1.png"],
        )
        Image.fromarray(first).save(job_dir / "keyframe-0.png")
        Image.fromarray(last).save(job_dir / "keyframe-1.png")
        pipeline.generate(load_job(job_dir), lambda event: None, Cancellation(), time.monotonic())
        made.append(read_mp4(job_dir / "video.mp4").frames)
    return made, (first, last)


def test_the_object_ends_at_the_right_in_4_of_5_seeds(clips):
    made, _ = clips
    ends = [centre(frames[-1])[0] for frames in made]
    assert sum(x > WIDTH / 2 for x in ends) >= 4, ends
    assert all(centre(frames[0])[0] < WIDTH / 4 for frames in made), "and starts at the left"


def test_the_first_and_last_frames_match_their_keyframes(clips):
    made, (first, last) = clips
    for frames in made:
        assert len(frames) == FRAMES
        for frame, keyframe in ((frames[0], first), (frames[-1], last)):
            distance = np.hypot(*np.subtract(centre(frame), centre(keyframe)))
            assert distance <= CENTRE_TOLERANCE_PX, (centre(frame), centre(keyframe))
            assert np.abs(frame.astype(int) - keyframe.astype(int)).mean() <= FRAME_TOLERANCE


def test_a_fast_job_keeps_its_keyframes_through_both_stages(demo_model_dir, tmp_path):
    """Fast mode conditions both stages on the keyframes: stage 1 at half size, the refine at full size."""
    first, last = keyframe_images(320, 192)
    keyframes = [{"upload_id": "a" * 32, "frame": 0}, {"upload_id": "b" * 32, "frame": FRAMES - 1}]
    job = {"mode": "fast", "width": 320, "height": 192, "num_frames": FRAMES, "keyframes": keyframes, "seed": 0}
    write_job(tmp_path / "job", demo_model_dir, prompt="a red ball", keyframe_files=["k0.png", "k1.png"], **job)
    Image.fromarray(first).save(tmp_path / "job" / "k0.png")
    Image.fromarray(last).save(tmp_path / "job" / "k1.png")
    exit_code, _, stderr = run_job(tmp_path / "job")
    assert exit_code == 0, stderr
    clip = read_mp4(tmp_path / "job" / "video.mp4")
    assert (clip.width, clip.height, len(clip.frames)) == (320, 192, FRAMES)
    for frame, keyframe in ((clip.frames[0], first), (clip.frames[-1], last)):
        distance = np.hypot(*np.subtract(centre(frame), centre(keyframe)))
        assert distance <= CENTRE_TOLERANCE_PX, (centre(frame), centre(keyframe))
