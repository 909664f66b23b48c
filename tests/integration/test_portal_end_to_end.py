"""A prompt becomes an MP4 with sound, through the real portal, queue, runner subprocess and SSE."""

from __future__ import annotations

import json

import httpx
import pytest

from contract import protocol
from tests.portal import TINY_JOB, Portal
from tests.runner_fixtures import read_mp4


@pytest.fixture
def portal(shared_portal: Portal) -> Portal:
    """One portal for this module (see conftest.py): no test here needs an empty one, or a setting of its own."""
    return shared_portal


def test_a_submitted_prompt_streams_progress_and_ends_as_an_mp4_with_audio(make_portal, tmp_path) -> None:
    portal = make_portal(AVP_SPARE_RUNNER="on")  # as shipped: the job goes to the spare runner spawned at start
    job = portal.submit(num_frames=33, width=224, height=224, fps=25, steps=6)
    assert job["status"] == "queued"
    assert isinstance(job["request"]["seed"], int)  # a random seed is chosen and stored

    events = list(portal.events(job["id"]))
    types = [e.event for e in events]
    ids = [int(e.id) for e in events if e.event != "end"]  # "end" is not stored: it keeps the last id
    assert ids == list(range(1, len(ids) + 1)), "event ids count up without a gap"
    assert types[0] == "queued" and "running" in types
    assert types[-2:] == ["succeeded", "end"]
    steps = [json.loads(e.data) for e in events if e.event == "step"]
    assert [s["step"] for s in steps] == list(range(1, 7)) and all(s["total"] == 6 for s in steps)
    stages = [json.loads(e.data)["name"] for e in events if e.event == "stage"]
    assert stages == list(protocol.stages_of("quality"))  # every stage of its mode, in order, once

    finished = portal.job(job["id"])
    assert finished["status"] == "succeeded" and finished["progress"]["percent"] == 100.0
    assert "gpu_runner runner started: spare runner " in (portal.job_dir(job["id"]) / "runner.log").read_text()
    with portal.client() as c:
        response = c.get(finished["links"]["video"])
    assert response.status_code == 200 and response.headers["content-type"] == "video/mp4"
    path = tmp_path / "out.mp4"
    path.write_bytes(response.content)
    mp4 = read_mp4(path)
    assert mp4.video_codec == "h264" and mp4.audio_codec == "aac" and mp4.stream_count == 2
    assert (mp4.width, mp4.height, len(mp4.frames)) == (224, 224, 33)
    assert mp4.frame_rate == 25
    assert mp4.sample_rate == finished["result"]["audio_sample_rate"]
    one_aac_frame = 1024 / mp4.sample_rate
    assert abs(mp4.audio_duration_s - 33 / 25) <= one_aac_frame
    assert abs(mp4.video_duration_s - 33 / 25) <= 1 / 25


def test_the_video_supports_range_requests_and_head(portal: Portal) -> None:
    job = portal.wait(portal.submit(**TINY_JOB)["id"])
    url = job["links"]["video"]
    with portal.client() as c:
        whole = c.get(url).content
        part = c.get(url, headers={"Range": "bytes=100-199"})
        tail = c.get(url, headers={"Range": "bytes=-50"})
        beyond = c.get(url, headers={"Range": f"bytes={len(whole) + 10}-"})
        for ask in ({}, {"Range": "bytes=100-199"}, {"Range": "bytes=-50"}, {"Range": f"bytes={len(whole) + 10}-"}):
            got, head = c.get(url, headers=ask), c.head(url, headers=ask)
            assert head.status_code == got.status_code and head.content == b"", ask
            assert without_date(head.headers) == without_date(got.headers), ask
    assert part.status_code == 206 and part.content == whole[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(whole)}"
    assert tail.status_code == 206 and tail.content == whole[-50:]
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{len(whole)}"


def without_date(headers: httpx.Headers) -> dict[str, str]:
    return {name: value for name, value in headers.items() if name != "date"}


def test_a_finished_job_can_be_deleted_with_its_files(portal: Portal) -> None:
    job = portal.wait(portal.submit(**TINY_JOB)["id"])
    job_dir = portal.job_dir(job["id"])
    assert (job_dir / "video.mp4").is_file()
    with portal.client() as c:
        assert c.delete(f"/api/jobs/{job['id']}").status_code == 204
        assert c.get(f"/api/jobs/{job['id']}").status_code == 404
    assert not job_dir.exists()


def test_models_list_constraints_and_defaults_a_client_can_submit_as_they_are(portal: Portal) -> None:
    with portal.client() as c:
        (model,) = c.get("/api/models").json()["models"]
    assert model["id"] == "demo" and "synthetic world" in model["note"]
    assert model["constraints"]["size_multiple"] == 32 and model["constraints"]["max_frames"] == 481
    job = portal.submit(**model["defaults"], model=model["id"])
    finished = portal.wait(job["id"])
    assert finished["status"] == "succeeded", finished["error"]


@pytest.mark.parametrize("path", ["/schema", "/schema/openapi.json", "/healthz"])
def test_openapi_and_health_are_served(portal: Portal, path: str) -> None:
    with portal.client() as c:
        assert c.get(path).status_code == 200


def test_a_running_job_shows_previews_of_the_clip(portal: Portal) -> None:
    job = portal.submit(steps=12)
    previews = [json.loads(e.data) for e in portal.events(job["id"]) if e.event == "preview"]
    assert previews and previews[-1]["step"] == 12 and previews[-1]["file"] == "preview.jpg"
    with portal.client() as c:
        response = c.get(f"/api/jobs/{job['id']}/preview")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert response.content[:3] == b"\xff\xd8\xff"  # a JPEG
    assert portal.job(job["id"])["progress"]["preview_step"] == 12


def test_the_precision_setting_reaches_every_job(make_portal) -> None:
    portal = make_portal(AVP_PRECISION="fp8")
    job = portal.submit(**TINY_JOB)
    written = json.loads((portal.job_dir(job["id"]) / "job.json").read_text())
    assert written["precision"] == "fp8"
    weight_cache = portal.data_dir.resolve() / "cache" / "weights"
    assert written["weight_cache_dir"] == str(weight_cache)
    assert written["compile_cache_dir"] == str(portal.data_dir.resolve() / "cache" / "compiled")
    finished = portal.wait(job["id"])
    assert finished["status"] == "succeeded", finished["error"]
    assert len(list(weight_cache.glob("*.safetensors"))) == 1, "the FP8 transformer is cached for the next job"
