"""Posters through a real portal: a demo job leaves poster.jpg (its clip's middle frame) and GET /api/jobs/{id}/poster
serves it; a job with no clip has none (404); a portal started on a data directory whose clip lost its poster
(as one made before posters existed) makes it soon after start-up, from that clip, and no other."""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.portal import Portal, prepare_data_dir, wait_for
from tests.runner_fixtures import read_mp4

TINY = {"width": 96, "height": 64, "num_frames": 9, "steps": 2}
# A clip whose frames differ (a bright ball crossing the frame): its middle frame is told apart from the others.
MOVING = {"prompt": "a white ball moving right", "width": 256, "height": 160, "num_frames": 25, "steps": 8}
MIDDLE = MOVING["num_frames"] // 2


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, demo_model_dir: Path) -> Iterator[tuple[Portal, str, str]]:
    """A portal with one succeeded demo job and, the queue paused, one queued: (portal, succeeded id, queued id)."""
    data_dir = prepare_data_dir(tmp_path_factory.mktemp("posters") / "data", demo_model_dir)
    portal = Portal(data_dir=data_dir, env={}).start()
    try:
        done = portal.submit(**MOVING)["id"]
        assert portal.wait(done)["status"] == "succeeded"
        with portal.client() as api:
            api.post("/api/queue/pause").raise_for_status()
        queued = portal.submit(**TINY)["id"]
        yield portal, done, queued
    finally:
        portal.stop()


def middle_frame_error(poster: bytes, video: Path) -> list[float]:
    """The poster's mean difference from each decoded frame of the clip."""
    pixels = np.asarray(Image.open(BytesIO(poster), formats=["JPEG"]).convert("RGB")).astype(int)
    return [float(np.abs(pixels - frame).mean()) for frame in read_mp4(video).frames]


def test_a_finished_job_has_its_clips_middle_frame_as_its_poster(finished) -> None:
    portal, done, _queued = finished
    job_dir = portal.job_dir(done)
    written = (job_dir / "poster.jpg").read_bytes()
    with portal.client() as api:
        served = api.get(f"/api/jobs/{done}/poster")
    assert served.status_code == 200 and served.headers["content-type"] == "image/jpeg"
    assert served.content == written and served.headers["cache-control"] == "private, max-age=3600"
    assert Image.open(BytesIO(served.content)).size == (256, 160)
    errors = middle_frame_error(served.content, job_dir / "video.mp4")
    assert min(errors) == errors[MIDDLE], f"the middle of {MOVING['num_frames']} frames: {errors}"


def test_a_job_without_a_clip_has_no_poster(finished) -> None:
    portal, _done, queued = finished
    with portal.client() as api:
        answer = api.get(f"/api/jobs/{queued}/poster")
        unknown = api.get(f"/api/jobs/{'0' * 32}/poster")
    assert answer.status_code == 404 and answer.json()["detail"] == f"Job {queued} has no poster: it is queued."
    assert unknown.status_code == 404


def test_a_clip_without_a_poster_gets_one_soon_after_start_up(finished, make_portal) -> None:
    first, done, queued = finished
    first.stop()
    (first.job_dir(done) / "poster.jpg").unlink()  # as a clip made before posters existed

    second: Portal = make_portal(data_dir=first.data_dir)
    with second.client() as api:
        missing = api.get(f"/api/jobs/{done}/poster")  # made in the background: start-up waited for nothing
        assert missing.status_code in (200, 404)
        if missing.status_code == 404:
            assert "none was made yet" in missing.json()["detail"]
    poster = wait_for(lambda: _poster(second, done), 60, "the poster made at start-up")
    errors = middle_frame_error(poster, second.job_dir(done) / "video.mp4")
    assert min(errors) == errors[MIDDLE], f"made from that clip's middle frame: {errors}"
    assert not (second.job_dir(queued) / "poster.jpg").exists() and second.job(queued)["status"] == "queued"
    said = wait_for(lambda: "posters made:" in (log := second.log_path.read_text()) and log, 30, "the maker's log")
    assert "poster maker: " in said and "posters made: 1, in" in said


def _poster(portal: Portal, job_id: str) -> bytes | None:
    with portal.client() as api:
        answer = api.get(f"/api/jobs/{job_id}/poster")
    return answer.content if answer.status_code == 200 else None
