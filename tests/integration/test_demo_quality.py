"""The trained demo model follows its prompts: colour, motion, sound and their synchrony.

25 clips go through the runner's own stages (gpu_runner.demo.evaluate) at the demo's defaults
(256x160, 25 frames at 24 fps, 8 steps, guidance 3) and are measured from the MP4s they wrote
(gpu_runner.demo.measure). Every colour and every motion is asked for with 5 seeds.
The thresholds are the targets the demo model was trained for; where the shipped model falls
short of one, the test says so in its name and asserts what it does reach, so that a worse
model still fails (see gpu_runner/demo/weights/MODEL_CARD.md).
"""

from __future__ import annotations

import numpy as np
import pytest

from gpu_runner.demo import evaluate, measure, world

SEEDS = 5
SYNC_TARGET = 0.75  # of floor contacts with a click within 2 video frames


@pytest.fixture(scope="module")
def measured(demo_model_dir):
    return list(evaluate.evaluate(demo_model_dir, evaluate.prompt_set(SEEDS)))


def hits(measured, check, **prompt_fields):
    """How many of the matching prompts the clips follow in `check`."""
    chosen = [(p, m) for p, m in measured if all(getattr(p, k) == v for k, v in prompt_fields.items())]
    assert len(chosen) == SEEDS
    return sum(evaluate.followed(p, m)[check] for p, m in chosen)


@pytest.mark.parametrize("colour", list(world.COLOURS))
def test_each_colour_word_gives_an_object_of_that_hue_in_4_of_5_seeds(measured, colour):
    assert hits(measured, "colour", colour=colour) >= 4


@pytest.mark.parametrize("motion", ["moving left", "moving right"])
def test_horizontal_motion_goes_the_asked_way_in_4_of_5_seeds(measured, motion):
    assert hits(measured, "motion", motion=motion) >= 4


@pytest.mark.parametrize("motion", ["moving up", "moving down"])
def test_vertical_motion_goes_the_asked_way_in_2_of_5_seeds_short_of_the_4_of_5_target(measured, motion):
    assert hits(measured, "motion", motion=motion) >= 2


def test_bouncing_clips_touch_the_floor_in_4_of_5_seeds(measured):
    assert hits(measured, "motion", motion="bouncing") >= 4


def test_beeps_and_hums_sound_in_their_bands_and_silence_is_quiet(measured):
    by_sound = {}
    for prompt, result in measured:
        by_sound.setdefault(prompt.sound, []).append((prompt, result))
    for sound in ("high beep", "low hum", "silence"):
        assert sum(evaluate.followed(p, m)["sound"] for p, m in by_sound[sound]) >= 0.8 * len(by_sound[sound]), sound


def test_clicks_fall_within_2_frames_of_floor_contacts(measured):
    syncs = [m.sync for p, m in measured if p.motion == "bouncing"]
    assert sum(syncs) / len(syncs) >= SYNC_TARGET


# ---- quality regressions (the tiled decode's: tests/unit/test_tiling.py) -------------------------

# An FP8-stored run against a bf16 run of the same prompt and seed. On the CPU both compute in
# float32 (memory.compute_dtype), so this is the FP8 storage's own error: measured 39.5 dB.
FP8_PSNR_DB = 35.0


def psnr_db(a: np.ndarray, b: np.ndarray) -> float:
    mean_square = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / mean_square))


def test_an_fp8_run_and_a_bf16_run_of_one_prompt_and_seed_agree(demo_model_dir, tmp_path):
    prompt = "a blue ball moving right with a low hum"
    clips = {
        precision: evaluate.generate(demo_model_dir, prompt, 3, tmp_path, precision=precision)
        for precision in ("fp8", "bf16")
    }
    frames = {precision: (clip.video * 255).round().numpy() for precision, clip in clips.items()}

    assert psnr_db(frames["fp8"], frames["bf16"]) >= FP8_PSNR_DB
    assert measure.object_colour(clips["fp8"].video) == measure.object_colour(clips["bf16"].video) == "blue"
