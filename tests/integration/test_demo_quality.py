"""The trained demo model follows its prompts: colour, motion, sound and their synchrony.

25 clips go through the runner's own stages (gpu_runner.demo.evaluate) at the demo's quality-mode defaults
(320x192, 25 frames at 24 fps, 8 steps, guidance 3) and are measured from the MP4s they wrote
(gpu_runner.demo.measure). Every colour and every motion is asked for with 5 seeds
(AVP_TEST_QUALITY_SEEDS: fewer for a quicker local run; each check keeps its threshold as the same
share of the clips, rounded up, so a smaller run is never more lenient, but it is stricter per clip:
with 1 seed every clip must follow its prompt, which the shipped model does not always do, so a
failure below 5 seeds means "run the default", and only the default decides).
The thresholds are the targets the demo model was trained for (see
gpu_runner/demo/weights/MODEL_CARD.md for what the shipped model measures).
"""

from __future__ import annotations

import math
import os
from fractions import Fraction

import numpy as np
import pytest
import torch

from gpu_runner.demo import evaluate, measure, world

SEEDS = int(os.environ.get("AVP_TEST_QUALITY_SEEDS", "5"))
FOLLOWED = Fraction(4, 5)  # the share of seeds a colour or motion must follow: 4 of 5
SYNC_TARGET = 0.75  # of floor contacts with a click within 2 video frames
AUDIBLE_DB = -30.0  # dBFS; the world's tones are at -13.5 to -15, the shipped model's at -16 to -18
TONE_OVER_SILENCE_DB = 20.0  # measured: 30 dB (silence at -48 dBFS)


@pytest.fixture(scope="module")
def measured(demo_model_dir):
    return list(evaluate.evaluate(demo_model_dir, evaluate.prompt_set(SEEDS), mode="quality"))


def enough() -> int:
    """The hits FOLLOWED asks for, rounded up: 4 of 5, 3 of 3."""
    return math.ceil(FOLLOWED * SEEDS)


def hits(measured, check, **prompt_fields):
    """How many of the matching prompts the clips follow in `check`."""
    chosen = [(p, m) for p, m in measured if all(getattr(p, k) == v for k, v in prompt_fields.items())]
    assert len(chosen) == SEEDS
    return sum(evaluate.followed(p, m)[check] for p, m in chosen)


@pytest.mark.parametrize("colour", list(world.COLOURS))
def test_each_colour_word_gives_an_object_of_that_hue_in_4_of_5_seeds(measured, colour):
    assert hits(measured, "colour", colour=colour) >= enough()


@pytest.mark.parametrize("motion", ["moving left", "moving right", "moving up", "moving down"])
def test_motion_goes_the_asked_way_in_4_of_5_seeds(measured, motion):
    assert hits(measured, "motion", motion=motion) >= enough()


def test_bouncing_clips_touch_the_floor_in_4_of_5_seeds(measured):
    assert hits(measured, "motion", motion="bouncing") >= enough()


def test_beeps_and_hums_sound_in_their_bands_and_silence_is_quiet(measured):
    by_sound = {}
    for prompt, result in measured:
        by_sound.setdefault(prompt.sound, []).append((prompt, result))
    for sound in ("high beep", "low hum", "silence"):
        clips = by_sound[sound]
        assert sum(evaluate.followed(p, m)["sound"] for p, m in clips) >= FOLLOWED * len(clips), sound


def test_tones_are_audible_and_far_louder_than_silence(measured):
    """Band and level checks alone would pass a model whose every sound is faint."""
    tones = [m.level_db for p, m in measured if p.sound in ("high beep", "low hum")]
    silences = [m.level_db for p, m in measured if p.sound == "silence"]
    assert min(tones) >= AUDIBLE_DB
    assert min(tones) - max(silences) >= TONE_OVER_SILENCE_DB


def test_clicks_fall_within_2_frames_of_floor_contacts(measured):
    syncs = [m.sync for p, m in measured if p.motion == "bouncing"]
    assert sum(syncs) / len(syncs) >= SYNC_TARGET


def test_fast_modes_8_plus_3_follows_prompts_better_with_the_distilled_transformer_and_colour_and_sound_as_quality(
    demo_model_dir, measured
):
    """Fast mode's two stages (8 + 3 fixed sigmas, no guidance) with the transformer distilled for them and with the
    guided one they were distilled from, on the same prompts and seeds: the distilled follows more of them, and
    follows colour and sound at least as well as the quality path (`measured`). Its motion does not yet: 22 of 25
    against quality's 24 (MODEL_CARD.md), so motion is not asserted here."""
    runs = ("fast distilled", "fast undistilled")
    table = evaluate.fast_table(demo_model_dir, evaluate.prompt_set(SEEDS), torch.device("cpu"), runs)

    followed = {run: sum(sum(oks) for oks in checks.values()) for run, checks in table.items()}
    assert followed["fast distilled"] > followed["fast undistilled"], table
    for check in ("colour", "sound"):
        quality = sum(evaluate.followed(prompt, result).get(check, False) for prompt, result in measured)
        assert sum(table["fast distilled"][check]) >= quality, (check, table)


# ---- quality regressions (the tiled decode's: tests/unit/test_tiling.py) -------------------------

# FP8-stored runs against bf16 runs of the same prompts and seeds. On the CPU both compute in
# float32 (memory.compute_dtype), so this is the FP8 storage's own error. How far it carries
# depends on the prompt: 8 sampling steps amplify a small difference into a slightly different
# trajectory for some seeds. Measured on these four: 21.9, 44.8, 42.9 and 32.0 dB (median 37.4);
# every pair shows the same colour and motion.
FP8_PROMPTS = (
    ("a blue ball moving right with a low hum", 3),
    ("a red square moving up with a high beep", 1),
    ("a green ball bouncing with clicks", 2),
    ("a white square moving left in silence", 0),
)
FP8_MEDIAN_PSNR_DB = 33.0
FP8_WORST_PSNR_DB = 18.0


def psnr_db(a: np.ndarray, b: np.ndarray) -> float:
    mean_square = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / mean_square))


def test_fp8_runs_and_bf16_runs_of_the_same_prompts_and_seeds_agree(demo_model_dir, tmp_path):
    psnrs = []
    for prompt, seed in FP8_PROMPTS:
        clips = {
            precision: evaluate.generate(demo_model_dir, prompt, seed, tmp_path, precision=precision)
            for precision in ("fp8", "bf16")
        }
        frames = {precision: (clip.video * 255).round().numpy() for precision, clip in clips.items()}
        psnrs.append(psnr_db(frames["fp8"], frames["bf16"]))
        fp8, bf16 = clips["fp8"].video, clips["bf16"].video
        assert measure.object_colour(fp8) == measure.object_colour(bf16), prompt
        assert measure.direction(fp8) == measure.direction(bf16), prompt

    assert float(np.median(psnrs)) >= FP8_MEDIAN_PSNR_DB, psnrs
    assert min(psnrs) >= FP8_WORST_PSNR_DB, psnrs
