"""Keyframes through the portal (issue 17, point 1): uploads become keyframe images normalised to the job's size,
and each bad keyframe is a 400 naming the field and what to do."""

from __future__ import annotations

import pytest
from PIL import Image

from tests import upload_corpus as corpus
from tests.portal import Portal


def upload(client, width: int = 64, height: int = 64) -> str:
    image = corpus.encode(corpus.photo(width, height), "PNG")
    response = client.post("/api/uploads", files={"file": ("k.png", image, "image/png")})
    assert response.status_code == 201, response.text
    return response.json()["upload_id"]


def test_keyframes_from_uploads_run_through_the_portal(shared_portal: Portal):
    portal = shared_portal
    with portal.client() as client:
        ids = [upload(client, 96, 80) for _ in range(2)]
    keyframes = [{"upload_id": ids[0], "frame": 0}, {"upload_id": ids[1], "frame": -1, "strength": 0.8}]
    job = portal.submit(keyframes=keyframes, width=64, height=64, num_frames=9, steps=2, seed=1)
    finished = portal.wait(job["id"], timeout=180)
    assert finished["status"] == "succeeded", finished["error"]
    assert finished["request"]["keyframes"] == [
        {"upload_id": ids[0], "frame": 0, "strength": 1.0},
        {"upload_id": ids[1], "frame": -1, "strength": 0.8},
    ]
    for name in ("keyframe-0.png", "keyframe-1.png"):  # each normalised to the job's size, as the first image is
        with Image.open(portal.job_dir(job["id"]) / name) as image:
            assert image.size == (64, 64)


@pytest.mark.parametrize(
    ("keyframes", "says"),
    [
        ([{"frame": 25}], "past the clip's 25 frames"),
        ([{"frame": -26}], "past the clip's 25 frames"),
        ([{"frame": 5}], "nearest valid: 8"),
        ([{"frame": 13}], "nearest valid: 16"),
        ([{"frame": 24}, {"frame": -1}], "both stand at frame 24"),
        ([{"frame": 0, "strength": 1.5}], "strength 1.5 is outside 0..1"),
        ([{"frame": 0, "upload_id": "f" * 32}], "is not a current upload"),
    ],
)
def test_a_bad_keyframe_is_a_400_naming_the_field(shared_portal: Portal, keyframes, says):
    portal = shared_portal
    with portal.client() as client:
        upload_id = upload(client)
        body = {
            "prompt": "a red ball",
            "mode": "quality",
            "num_frames": 25,
            "keyframes": [{"upload_id": upload_id, **k} for k in keyframes],
        }
        response = client.post("/api/jobs", json=body)
    assert response.status_code == 400, response.text
    errors = response.json()["errors"]
    assert [e["field"] for e in errors] == ["keyframes"] and says in errors[0]["message"], errors


def test_a_keyframe_at_frame_0_beside_a_first_frame_image_is_a_400(shared_portal: Portal):
    portal = shared_portal
    with portal.client() as client:
        upload_id = upload(client)
        body = {
            "prompt": "a red ball",
            "image_upload_id": upload_id,
            "keyframes": [{"upload_id": upload_id, "frame": 0}],
        }
        response = client.post("/api/jobs", json=body)
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "keyframes"
