"""Upgrades keep history: the current portal started on a data directory made by the previous release.

tests/data/release-8da605c (see its README) holds that release's SQLite file (no schema version) and
job directories: two finished jobs and one it was running when it was killed. Its job.json files name
the old machine's directories, which do not exist here.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from html.parser import HTMLParser
from io import BytesIO
from pathlib import Path

import pytest
from PIL import Image

from app import migrations
from tests.portal import Portal, prepare_data_dir, wait_for

OLD_DATA = Path(__file__).resolve().parent.parent / "data" / "release-8da605c"
RED_BALL = "816d66228adf4e6486336e2d3bbc835f"  # succeeded: seed 1234, 17 frames, negative prompt "blurry"
BLUE_SQUARE = "875a60fc7bb64ccbbec1d4935d88d4de"  # succeeded: seed 77, 224x224
GREEN_BALL = "f919c512a0204f758b3c90897c2db510"  # running when that portal was killed
OLD_DATA_DIR = "/srv/avp-release-8da605c/data"  # what the old job.json files name


@pytest.fixture
def old_data_dir(tmp_path: Path, demo_model_dir: Path) -> Path:
    """A copy of the old data directory, with this session's demo model in place (models/ was not kept)."""
    data_dir = tmp_path / "old-data"
    shutil.copytree(OLD_DATA, data_dir, ignore=shutil.ignore_patterns("README.md"))
    return prepare_data_dir(data_dir, demo_model_dir)


class _FormFields(HTMLParser):
    """The name/value pairs a browser submits for the page's form: inputs, textareas, selected options."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, str] = {}
        self._textarea: str | None = None
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "input" and a.get("type") in ("checkbox", "radio") and "checked" not in a:
            return  # an unchecked box sends nothing (the form's "One clip per line")
        if tag == "input" and a.get("name") and a.get("type") != "file":
            self.fields[a["name"]] = a.get("value") or ""
        elif tag == "textarea":
            self._textarea = a["name"]
            self.fields[a["name"]] = ""
        elif tag == "select":
            self._select = a["name"]
        elif tag == "option" and self._select and "selected" in a:
            self.fields[self._select] = a["value"] or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "textarea":
            self._textarea = None
        elif tag == "select":
            self._select = None

    def handle_data(self, data: str) -> None:
        if self._textarea:
            self.fields[self._textarea] += data


def form_fields(html: str) -> dict[str, str]:
    parser = _FormFields()
    parser.feed(html)
    return parser.fields


def test_the_previous_releases_jobs_show_play_remix_resume_and_delete(make_portal, old_data_dir: Path) -> None:
    portal: Portal = make_portal(data_dir=old_data_dir)
    with sqlite3.connect(old_data_dir / "portal.sqlite3") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == migrations.LATEST

    with portal.client() as c:
        listed = {job["id"]: job for job in c.get("/api/jobs").raise_for_status().json()["jobs"]}
        assert set(listed) == {RED_BALL, BLUE_SQUARE, GREEN_BALL}
        red = listed[RED_BALL]
        assert red["status"] == "succeeded" and red["attempts"] == 1
        assert red["request"] == {
            "prompt": "a red ball bouncing with clicks",
            "negative_prompt": "blurry",
            "model": "demo",
            "mode": "quality",  # the one path there was then, said now that there are two (migration 4)
            "width": 256,
            "height": 160,
            "num_frames": 17,
            "fps": 24.0,
            "steps": 8,
            "guidance_scale": 3.0,
            "seed": 1234,
            "image_upload_id": None,
            "image_strength": 1.0,
            "keyframes": None,  # issue 17's fields, absent from an older job: their defaults
            "extend_from": None,
            "loras": None,  # none: the field came later (LoRAs)
            "enhance_prompt": None,  # not asked: the prompt enhancer came later
        }
        assert red["provenance"] is None  # recorded since migration 8
        assert red["result"]["frames"] == 17 and red["links"]["video"] == f"/api/jobs/{RED_BALL}/video"
        assert listed[BLUE_SQUARE]["request"]["width"] == 224 and listed[BLUE_SQUARE]["request"]["seed"] == 77

        # show and play
        page = c.get(f"/jobs/{RED_BALL}")
        assert page.status_code == 200 and "a red ball bouncing with clicks" in page.text
        assert f'src="/api/jobs/{RED_BALL}/video"' in page.text
        for job_id in (RED_BALL, BLUE_SQUARE):
            video = c.get(f"/api/jobs/{job_id}/video")
            assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
            assert video.content == (OLD_DATA / "jobs" / job_id / "video.mp4").read_bytes()
        assert "a red ball bouncing with clicks" in c.get("/").text  # the recent jobs list

        # that release wrote no posters: the finished clips get theirs (the middle frame) soon after start-up
        for job_id, size in ((RED_BALL, (256, 160)), (BLUE_SQUARE, (224, 224))):
            poster = wait_for(lambda job_id=job_id: _poster(c, job_id), 60, f"the poster of {job_id}")
            assert Image.open(BytesIO(poster), formats=["JPEG"]).size == size

        # the job the old portal was running is run again, with this installation's model and caches
        green = portal.wait(GREEN_BALL, timeout=180)
        assert green["status"] == "succeeded", green["error"]
        assert green["attempts"] == 2 and green["request"]["seed"] == 5
        job_file = json.loads((portal.job_dir(GREEN_BALL) / "job.json").read_text())
        assert job_file["model_path"] == str((old_data_dir / "models" / "demo").resolve())
        assert OLD_DATA_DIR not in json.dumps(job_file)
        assert c.get(f"/api/jobs/{GREEN_BALL}/video").headers["content-type"] == "video/mp4"

        # delete
        assert c.delete(f"/api/jobs/{BLUE_SQUARE}").status_code == 204
        assert c.get(f"/api/jobs/{BLUE_SQUARE}").status_code == 404
        assert not portal.job_dir(BLUE_SQUARE).exists()

    # remix: "use these settings again" fills the form with the old job's settings, and the form submits them
    with portal.form_client() as c:
        fields = form_fields(c.get(f"/?from_job={RED_BALL}").text)
        assert fields["prompt"] == "a red ball bouncing with clicks" and fields["negative_prompt"] == "blurry"
        assert fields["seed"] == "1234" and fields["num_frames"] == "17" and fields["resolution"] == "256x160"
        made = c.post("/jobs", data=fields, headers={"HX-Request": "true"})
        assert made.status_code == 200, made.text
        remix_id = made.headers["HX-Redirect"].rsplit("/", 1)[1]
    remix = portal.wait(remix_id, timeout=180)
    assert remix["status"] == "succeeded", remix["error"]
    assert remix["request"] == red["request"]


def _poster(client, job_id: str) -> bytes | None:
    answer = client.get(f"/api/jobs/{job_id}/poster")
    return answer.content if answer.status_code == 200 else None


def test_an_unfinished_old_job_whose_model_is_gone_fails_as_model_missing(make_portal, old_data_dir: Path) -> None:
    """The model id is looked up again; one no longer offered keeps its old path, which the runner reports."""
    job_json = old_data_dir / "jobs" / GREEN_BALL / "job.json"
    job_json.write_text(job_json.read_text().replace('"model":"demo"', '"model":"retired"'))
    with sqlite3.connect(old_data_dir / "portal.sqlite3") as db:
        db.execute("UPDATE jobs SET request = replace(request, '\"demo\"', '\"retired\"') WHERE id = ?", (GREEN_BALL,))
    portal: Portal = make_portal(data_dir=old_data_dir)
    job = portal.wait(GREEN_BALL, timeout=180)
    assert job["status"] == "failed" and job["request"]["model"] == "retired"
    assert job["error"]["code"] == "model_missing"
    assert f"{OLD_DATA_DIR}/models/demo does not exist" in job["error"]["message"]
    assert portal.job(RED_BALL)["status"] == "succeeded"  # the rest of the history is untouched
