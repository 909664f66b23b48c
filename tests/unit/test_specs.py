"""The model's rules: every violation named with the nearest valid values."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from contract.models import demo_spec
from contract.request import Request, max_frames_for_fps, merge, valid_frame_counts

SPEC = demo_spec(Path("/models/demo"))
VALID = merge(Request(prompt="a red ball", seed=1), SPEC.defaults)


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
