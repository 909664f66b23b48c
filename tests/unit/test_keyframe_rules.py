"""Keyframes' and extensions' rules (issue 17): output frames to latent indices, and each bad value named."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from contract.models import demo_spec
from contract.request import (
    AUTO,
    Constraints,
    Keyframe,
    Request,
    keyframe_frames,
    keyframe_latent_index,
    keyframes_least_frames,
    violations,
)

SPEC = demo_spec(Path("/models/demo"))
C = Constraints()


def check(keyframes=(), **changes) -> dict[str, str]:
    frames = tuple(Keyframe(upload_id="a" * 32, **k) for k in keyframes)
    fields = {"num_frames": 25, **changes}
    request = SPEC.resolve(Request(prompt="a red ball", seed=1, keyframes=frames or None, **fields))
    return dict(SPEC.violations(request))


def test_keyframes_stand_at_0_and_at_the_last_frame_of_each_later_latent_frame() -> None:
    assert keyframe_frames(C, 25) == [0, 8, 16, 24]
    # Latent frame k >= 1 holds output frames 8k-7..8k (the causal VAE's first frame alone): diffusers' index
    assert [keyframe_latent_index(C, 25, f) for f in (0, 1, 8, 9, 16, 24, -1)] == [0, 1, 1, 2, 2, 3, 3]


def test_first_and_last_frame_are_valid() -> None:
    assert check([{"frame": 0}, {"frame": -1, "strength": 0.7}]) == {}
    assert check([{"frame": 8}, {"frame": 16}]) == {}


@pytest.mark.parametrize(
    ("keyframes", "changes", "message"),
    [
        ([{"frame": 25}], {}, "keyframes[0].frame 25 is past the clip's 25 frames; use 0..24, or -1"),
        ([{"frame": -26}], {}, "past the clip's 25 frames"),
        ([{"frame": 3}], {}, "nearest valid: 0"),
        ([{"frame": 0}, {"frame": 20}], {}, "keyframes[1].frame 20 is not on a latent frame"),
        ([{"frame": 23}], {}, "nearest valid: 24"),
        ([{"frame": 24}, {"frame": -1}], {}, "keyframes[1] and keyframes[0] both stand at frame 24"),
        ([{"frame": 0, "strength": -0.1}], {}, "keyframes[0].strength -0.1 is outside 0..1"),
        ([{"frame": k} for k in range(0, 73, 8)], {"num_frames": 81}, "the limit is 8"),
        ([{"frame": 0}], {"image_upload_id": "b" * 32}, "image_upload_id already sets"),
        ([{"frame": -1}], {"extend_from": "c" * 32}, "cannot be combined with extend_from"),
    ],
)
def test_each_bad_keyframe_names_the_field_and_the_fix(keyframes, changes, message) -> None:
    errors = check(keyframes, **changes)
    assert list(errors) == ["keyframes"]
    assert message in errors["keyframes"]


def test_an_extension_needs_room_after_its_overlap_and_no_first_image() -> None:
    assert check(extend_from="c" * 32) == {}
    assert "at least 17" in check(extend_from="c" * 32, num_frames=9)["extend_from"]
    assert "image_upload_id" in check(extend_from="c" * 32, image_upload_id="b" * 32)["extend_from"]


def test_a_keyframe_decodes_from_json_with_its_default_strength_and_nothing_else() -> None:
    decoded = msgspec.json.decode(b'{"upload_id": "x", "frame": -1}', type=Keyframe)
    assert decoded == Keyframe(upload_id="x", frame=-1, strength=1.0)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"upload_id": "x", "frame": 0, "index": 2}', type=Keyframe)


def check_auto(keyframes, fps: float = 24.0, **changes) -> dict[str, str]:
    """The rules for a length the model picks (num_frames "auto": the longest clip at 24 fps is 481 frames)."""
    frames = tuple(Keyframe(upload_id="a" * 32, **k) for k in keyframes)
    request = Request(prompt="a red ball", num_frames=AUTO, fps=fps, keyframes=frames, **changes)
    return dict(violations(C, request))


def test_with_the_length_left_to_the_model_minus_one_is_its_last_frame_and_others_count_from_the_start() -> None:
    assert check_auto([{"frame": 0}, {"frame": 8}, {"frame": -1}]) == {}
    assert check_auto([{"frame": 472}, {"frame": -1}]) == {}, "a latent frame before the longest clip's last"
    assert check_auto([{"frame": 480}]) == {}, "the longest clip's last frame, counted from the start"


@pytest.mark.parametrize(
    ("keyframes", "fps", "message"),
    [
        ([{"frame": 488}], 24.0, "keyframes[0].frame 488 is past the longest clip the model makes at this frame rate"),
        ([{"frame": 248}], 12.0, '(241 frames: num_frames "auto" picks no longer); use 0..240, or -1'),
        ([{"frame": -9}], 24.0, "keyframes[0].frame -9 counts from the end of a clip whose length the model picks"),
        ([{"frame": 12}], 24.0, "keyframes[0].frame 12 is not on a latent frame"),
        ([{"frame": 13}], 24.0, "nearest valid: 16"),
        ([{"frame": -1}, {"frame": -1}], 24.0, "keyframes[1] and keyframes[0] both stand at frame -1"),
        ([{"frame": 16}, {"frame": 16}], 24.0, "keyframes[1] and keyframes[0] both stand at frame 16"),
        ([{"frame": -1}, {"frame": 480}], 24.0, "keyframes[1].frame 480 leaves no latent frame after it"),
    ],
)
def test_a_keyframe_a_length_the_model_picks_cannot_hold_names_the_field_and_the_fix(keyframes, fps, message) -> None:
    errors = check_auto(keyframes, fps)
    assert list(errors) == ["keyframes"]
    assert message in errors["keyframes"]
    if "leaves no latent frame" in message:
        assert "use 472 or less, or choose num_frames" in errors["keyframes"]


def test_the_shortest_clip_that_holds_the_keyframes_apart_bounds_the_models_choice() -> None:
    def least(*frames: int) -> int:
        keyframes = tuple(Keyframe(upload_id="a" * 32, frame=f) for f in frames)
        return keyframes_least_frames(C, Request(prompt="a", keyframes=keyframes or None))

    assert least() == least(0) == 1, "no bound beyond the model's own shortest clip"
    assert least(16) == 17
    assert least(0, -1) == least(-1) == 9, "the last frame a latent frame after the first"
    assert least(0, 16, -1) == 25
