"""The model's rules: every violation named with the nearest valid values."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from contract import library
from contract.models import demo_spec, with_parts
from contract.request import Request, denoise_stages, max_frames_for_fps, valid_frame_counts

SPEC = demo_spec(Path("/models/demo"))  # as it ships in the code: quality alone until its directory says more
VALID = SPEC.resolve(Request(prompt="a red ball", seed=1))
DEV = library.Recognised(family="ltx-2", version="2.0", variant="dev", upsampler=False)
# The demo's directory with its distilled transformer and upsampler: fast mode, the default
FAST_SPEC = with_parts(SPEC, msgspec.structs.replace(DEV, upsampler=True, distilled_transformer=True))


def check(**changes) -> dict[str, str]:
    return dict(SPEC.violations(msgspec.structs.replace(VALID, **changes)))


def test_the_defaults_are_valid() -> None:
    assert check() == {}


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"width": 500}, "width", "500 is not a multiple of 32; nearest valid: 480 or 512"),
        ({"width": 2050}, "width", "above the maximum 2048"),
        ({"height": 33}, "height", "below the minimum 64"),
        ({"num_frames": 100}, "num_frames", "100 is not 8k+1; nearest valid: 97 or 105"),
        ({"num_frames": 480}, "num_frames", "nearest valid: 473 or 481"),
        ({"num_frames": 8}, "num_frames", "below the minimum 9"),
        ({"num_frames": 482}, "num_frames", "above the maximum 481"),
        ({"num_frames": 481, "fps": 12}, "num_frames", "over the 20 s limit; at 12 fps use at most 241"),
        ({"fps": 0}, "fps", "outside 1..60"),
        ({"fps": float("nan")}, "fps", "outside 1..60"),
        ({"steps": 101}, "steps", "outside 1..100"),
        ({"guidance_scale": 0.5}, "guidance_scale", "outside 1..20"),
        ({"seed": 2**32}, "seed", "outside 0..4294967295"),
        ({"image_strength": 1.5}, "image_strength", "outside 0..1"),
        ({"prompt": " \n "}, "prompt", "is empty"),
        ({"negative_prompt": "n" * 4001}, "negative_prompt", "limit is 4000"),
    ],
)
def test_each_rule_names_its_field_and_the_fix(changes, field, message) -> None:
    errors = check(**changes)
    assert list(errors) == [field]
    assert message in errors[field]


def test_several_broken_rules_are_all_reported() -> None:
    assert set(check(width=31, height=2049, num_frames=10, steps=0)) == {"width", "height", "num_frames", "steps"}


def test_valid_frame_counts_are_8k_plus_1_within_range_and_duration() -> None:
    counts = valid_frame_counts(SPEC.constraints, 24.0)
    assert counts[0] == 9 and counts[-1] == 481
    assert all((n - 1) % 8 == 0 for n in counts)
    assert valid_frame_counts(SPEC.constraints, 12.0)[-1] == max_frames_for_fps(SPEC.constraints, 12.0) == 241
    assert all(not check(num_frames=n, fps=12.0) for n in valid_frame_counts(SPEC.constraints, 12.0))


def test_a_model_with_a_distilled_transformer_and_an_upsampler_defaults_to_fast_mode() -> None:
    assert FAST_SPEC.modes == ("fast", "quality")
    fast = FAST_SPEC.resolve(Request(prompt="a red ball", seed=1))
    assert fast.mode == "fast" and fast.steps is None and fast.guidance_scale is None  # fixed by the mode
    assert FAST_SPEC.violations(fast) == []
    assert [(s.name, s.width, s.height, s.steps, s.guidance_scale) for s in denoise_stages(fast)] == [
        ("denoise", fast.width // 2, fast.height // 2, 8, 1.0),
        ("refine", fast.width, fast.height, 3, 1.0),
    ]
    quality = FAST_SPEC.resolve(Request(prompt="a red ball", seed=1, mode="quality"))
    assert (quality.steps, quality.guidance_scale) == (SPEC.defaults.steps, SPEC.defaults.guidance_scale)
    assert [(s.name, s.steps) for s in denoise_stages(quality)] == [("denoise", SPEC.defaults.steps)]


def test_fast_mode_refuses_steps_and_guidance_and_sizes_off_the_64_pixel_grid() -> None:
    asked = Request(prompt="a red ball", seed=1, steps=12, guidance_scale=4.0, width=352, height=224)
    errors = dict(FAST_SPEC.violations(FAST_SPEC.resolve(asked)))
    assert set(errors) == {"steps", "guidance_scale", "width", "height"}
    assert "fixed in fast mode" in errors["steps"] and "choose mode quality" in errors["guidance_scale"]
    assert "352 is not a multiple of 64" in errors["width"] and "nearest valid: 320 or 384" in errors["width"]
    assert "nearest valid: 192 or 256" in errors["height"]
    # the same request in quality mode is fine: 32-pixel grid, its own steps and guidance
    assert FAST_SPEC.violations(FAST_SPEC.resolve(msgspec.structs.replace(asked, mode="quality"))) == []


@pytest.mark.parametrize(
    ("parts", "missing"),
    [
        ({}, ["a distilled transformer", "a latent_upsampler/"]),
        ({"upsampler": True}, ["a distilled transformer"]),
        ({"distilled_transformer": True}, ["a latent_upsampler/"]),
    ],
)
def test_fast_mode_on_a_model_that_lacks_its_parts_names_what_is_missing(parts, missing) -> None:
    spec = with_parts(SPEC, msgspec.structs.replace(DEV, **parts))
    assert spec.modes == ("quality",)
    errors = dict(spec.violations(spec.resolve(Request(prompt="a red ball", seed=1, mode="fast"))))
    assert list(errors) == ["mode"]
    assert all(part in errors["mode"] for part in missing) and "choose quality" in errors["mode"]


def test_a_distilled_model_runs_fast_mode_on_its_own_transformer() -> None:
    distilled = msgspec.structs.replace(DEV, variant="distilled", upsampler=True)
    assert distilled.fast_transformer == "transformer" and distilled.fast_missing() is None
    assert msgspec.structs.replace(DEV, distilled_transformer=True).fast_transformer == "transformer_distilled"


def test_an_unknown_mode_is_named_with_the_choices() -> None:
    assert "'turbo' is not a mode; choose 'fast' or 'quality'" in check(mode="turbo")["mode"]
