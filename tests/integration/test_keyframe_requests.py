"""Keyframes (issue 17, point 1) through the portal and in fast mode: uploads become keyframe images normalised to
the job's size, each bad keyframe is a 400 naming the field and what to do, and fast mode keeps them in both stages
(the tolerance of tests/integration/test_keyframes.py)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from tests import upload_corpus as corpus
from tests.keyframe_world import CENTRE_TOLERANCE_PX, FRAMES, centre, keyframe_images
from tests.portal import Portal
from tests.runner_fixtures import read_mp4, run_job, write_job


def test_keyframes_from_uploads_run_through_the_portal(shared_portal: Portal):
    portal = shared_portal
    with portal.client() as client:
        ids = [corpus.upload_photo(client, 96, 80) for _ in range(2)]
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
        upload_id = corpus.upload_photo(client)
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
        upload_id = corpus.upload_photo(client)
        body = {
            "prompt": "a red ball",
            "image_upload_id": upload_id,
            "keyframes": [{"upload_id": upload_id, "frame": 0}],
        }
        response = client.post("/api/jobs", json=body)
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "keyframes"


def test_a_fast_job_keeps_its_keyframes_through_both_stages(demo_model_dir, tmp_path):
    """Fast mode conditions both stages on the keyframes: stage 1 at half size, the refine at full size."""
    first, last = keyframe_images(320, 192)
    keyframes = [{"upload_id": "a" * 32, "frame": 0}, {"upload_id": "b" * 32, "frame": FRAMES - 1}]
    job = {"mode": "fast", "width": 320, "height": 192, "num_frames": FRAMES, "keyframes": keyframes, "seed": 0}
    write_job(tmp_path / "job", demo_model_dir, prompt="a red ball", keyframe_files=["k0.png", "k1.png"], **job)
    Image.fromarray(first).save(tmp_path / "job" / "k0.png")
    Image.fromarray(last).save(tmp_path / "job" / "k1.png")
    exit_code, _, stderr = run_job(tmp_path / "job")
    assert exit_code == 0, stderr
    clip = read_mp4(tmp_path / "job" / "video.mp4")
    assert (clip.width, clip.height, len(clip.frames)) == (320, 192, FRAMES)
    for frame, keyframe in ((clip.frames[0], first), (clip.frames[-1], last)):
        distance = np.hypot(*np.subtract(centre(frame), centre(keyframe)))
        assert distance <= CENTRE_TOLERANCE_PX, (centre(frame), centre(keyframe))


def test_the_form_timeline_adds_keyframes_and_carries_them_into_the_job(shared_portal: Portal):
    portal = shared_portal
    hx = {"HX-Request": "true"}
    with portal.form_client() as client:
        image = corpus.encode(corpus.photo(), "PNG")
        first = client.post("/fragments/keyframe?slot=0", files={"file": ("a.png", image)}, headers=hx).text
        second = client.post("/fragments/keyframe?slot=1", files={"file": ("b.png", image)}, headers=hx).text
        ids = [
            re.search(rf'name="keyframe_upload_{i}" value="([0-9a-f]{{32}})"', row).group(1)
            for i, row in enumerate((first, second))
        ]
        assert 'name="keyframe_frame_0" min="-1" step="1"\n           value="0"' in first
        assert 'value="-1"' in second, "a later image goes to the last frame until moved"
        assert 'hx-swap-oob="true"' in second and "slot=2" in second, "the add control moves to the next slot"
        refused = client.post("/fragments/keyframe?slot=2", files={"file": ("x.png", corpus.SVG)}, headers=hx).text
        assert "not a JPEG, PNG or WebP" in refused and "slot=2" in refused

        fields = {
            "model": "demo",
            "mode": "quality",
            "prompt": "a red ball",
            "resolution": "64x64",
            "num_frames": "9",
            "fps": "24",
            "steps": "2",
            "guidance_scale": "3",
            "seed": "",
            "keyframe_upload_0": ids[0],
            "keyframe_frame_0": "0",
            "keyframe_strength_0": "1",
            "keyframe_upload_1": ids[1],
            "keyframe_frame_1": "5",
            "keyframe_strength_1": "0.9",
        }
        wrong = client.post("/jobs", data=fields, headers=hx).text
        assert 'id="error-keyframes"' in wrong and "nearest valid: 8" in wrong
        assert f'name="keyframe_upload_1" value="{ids[1]}"' in wrong, "the timeline keeps its rows"
        response = client.post("/jobs", data={**fields, "keyframe_frame_1": "-1"}, headers=hx)
        job_id = response.headers["HX-Redirect"].rsplit("/", 1)[1]
        request = client.get(f"/api/jobs/{job_id}").json()["request"]
    assert request["keyframes"] == [
        {"upload_id": ids[0], "frame": 0, "strength": 1.0},
        {"upload_id": ids[1], "frame": -1, "strength": 0.9},
    ]
    assert portal.wait(job_id, timeout=180)["status"] == "succeeded"
