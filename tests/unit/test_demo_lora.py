"""The demo's shipped LoRA teaches it a colour its world never had: purple.

Five seeds of "a purple <shape> moving <way> in silence" at the smallest clips the demo's quality path makes well
(gpu_runner.demo.train_lora.CHECK_SIZE), in one batch per setting, through the pipeline with the LoRA applied by the
runner's own low-rank path (gpu_runner/lora.py); the object's colour measured from the decoded frames.
"""

from __future__ import annotations

import pytest
import torch

from gpu_runner.demo import measure
from gpu_runner.demo.train_lora import check_prompts, clips_with, is_purple

SEEDS = 5
ENOUGH = 4  # of 5


@pytest.fixture(scope="module")
def clips(demo_model_dir):
    lora = demo_model_dir / "loras" / "demo-purple.safetensors"
    purple, red = check_prompts(SEEDS), check_prompts(2, colour="red")
    without = clips_with(demo_model_dir, purple, [])
    with_lora = clips_with(demo_model_dir, purple + red, [(lora, 1.0)])
    at_zero = clips_with(demo_model_dir, purple, [(lora, 0.0)])  # the same batch: batches' sums differ in the last bit
    return {"without": without, "with": with_lora[:SEEDS], "red with": with_lora[SEEDS:], "at zero": at_zero}


def test_without_the_lora_no_clip_is_purple_in_4_of_5_seeds(clips):
    assert sum(not is_purple(video) for video in clips["without"]) >= ENOUGH


def test_with_the_lora_the_object_is_purple_in_4_of_5_seeds(clips):
    assert sum(is_purple(video) for video in clips["with"]) >= ENOUGH


def test_with_the_lora_a_red_ball_is_still_red(clips):
    assert [measure.object_colour(video) for video in clips["red with"]] == ["red", "red"]


def test_at_scale_0_the_lora_changes_nothing(clips):
    assert all(torch.equal(zero, none) for zero, none in zip(clips["at zero"], clips["without"], strict=True))
