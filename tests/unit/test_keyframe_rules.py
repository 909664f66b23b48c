"""Keyframes' and extensions' rules (issue 17): output frames to latent indices, and each bad value named."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from contract.models import demo_spec
from contract.request import Constraints, Keyframe, Request, keyframe_frames, keyframe_latent_index

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
