"""The demo's shipped LoRA teaches it something its world never had: huge objects.

Five seeds of "a huge <colour> <shape> moving <way> in silence" at the smallest clips the demo's quality path makes
well (gpu_runner.demo.train_lora.CHECK_SIZE), in one batch per setting, through the pipeline with the LoRA applied by
the runner's own low-rank path (gpu_runner/lora.py); how much of the frame the object covers, measured from the
decoded frames (an ordinary object covers 2-12% of it, a huge one 20-35%).
"""

from __future__ import annotations

import pytest
import torch

from gpu_runner.demo import measure
from gpu_runner.demo.train_lora import check_prompts, clips_with, is_huge

SEEDS = 5
ENOUGH = 4  # of 5


@pytest.fixture(scope="module")
def clips(demo_model_dir):
    lora = demo_model_dir / "loras" / "demo-huge.safetensors"
    huge, ordinary = check_prompts(SEEDS), check_prompts(2, word="")
    without = clips_with(demo_model_dir, huge, [])
    with_lora = clips_with(demo_model_dir, huge + ordinary, [(lora, 1.0)])
    at_zero = clips_with(demo_model_dir, huge, [(lora, 0.0)])  # the same batch: batches' sums differ in the last bit
    return {"without": without, "with": with_lora[:SEEDS], "ordinary with": with_lora[SEEDS:], "at zero": at_zero}


def test_without_the_lora_the_object_is_not_huge_in_4_of_5_seeds(clips):
    assert sum(not is_huge(video) for video in clips["without"]) >= ENOUGH


def test_with_the_lora_the_object_is_huge_in_4_of_5_seeds(clips):
    assert sum(is_huge(video) for video in clips["with"]) >= ENOUGH


def test_with_the_lora_the_colour_stays_and_an_ordinary_prompt_stays_ordinary(clips):
    asked = [prompt.colour.split()[-1] for prompt in check_prompts(SEEDS)]  # "huge red" -> "red"
    colours = [measure.object_colour(video) for video in clips["with"]]
    assert sum(got == want for got, want in zip(colours, asked, strict=True)) >= ENOUGH
    assert [is_huge(video) for video in clips["ordinary with"]] == [False, False]


def test_at_scale_0_the_lora_changes_nothing(clips):
    assert all(torch.equal(zero, none) for zero, none in zip(clips["at zero"], clips["without"], strict=True))
