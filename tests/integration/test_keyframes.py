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
from PIL import Image

from gpu_runner import pipeline
from gpu_runner.cancel import Cancellation
from gpu_runner.job import load_job
from tests.keyframe_world import CENTRE_TOLERANCE_PX, FRAME_TOLERANCE, FRAMES, HEIGHT, WIDTH, centre, keyframe_images
from tests.runner_fixtures import read_mp4, write_job

SEEDS = range(5)
STEPS = 4


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
