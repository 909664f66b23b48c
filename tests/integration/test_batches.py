"""Batches against a real portal (uvicorn, SQLite, runner processes): one submit of several prompts and seeds makes
a job each, seen as one batch in the API and as the gallery filtered to it, cancelled as a whole; a bad batch makes
no job, and a batch that cannot be made whole (the data disk fills half-way) leaves none of its jobs behind."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from avportal import AVPortal, InvalidInput
from tests.portal import Portal, prepare_data_dir
from tests.small_disk import MIB

QUICK = {"steps": 2, "mode": "quality", "width": 64, "height": 64, "num_frames": 9}
SHARED_PORTAL_ENV = {"AVP_MAX_QUEUE": "6"}
CARD = re.compile(r'<article id="job-([0-9a-f]{32})" class="job card')


def post(portal: Portal, path: str, body: Any) -> httpx.Response:
    with portal.client() as c:
        return c.post(path, json=body)


def job_ids(portal: Portal) -> set[str]:
    with portal.client() as c:
        return {job["id"] for job in c.get("/api/jobs", params={"limit": 200}).json()["jobs"]}


def cards(portal: Portal, query: str) -> list[str]:
    with portal.client() as c:
        page = c.get(f"/{query}")
        assert page.status_code == 200, page.text
        return CARD.findall(page.text)


def test_prompts_and_seeds_make_a_job_for_each_pair_shown_as_one_batch_and_cancelled_as_a_whole(
    shared_portal: Portal,
) -> None:
    portal = shared_portal
    assert post(portal, "/api/queue/pause", {}).json()["paused"]  # these jobs need not run
    try:
        body = {"prompts": ["a red ball moving left", "a blue square moving up"], "seeds": 2, "seed": 10, **QUICK}
        made = post(portal, "/api/batches", body)
        assert made.status_code == 201, made.text
        batch = made.json()
        assert made.headers["location"].endswith(f"/api/batches/{batch['id']}")
        pairs = [(job["request"]["prompt"], job["request"]["seed"]) for job in batch["jobs"]]
        assert pairs == [
            ("a red ball moving left", 10),
            ("a red ball moving left", 11),
            ("a blue square moving up", 10),
            ("a blue square moving up", 11),
        ]
        assert {job["batch_id"] for job in batch["jobs"]} == {batch["id"]}
        assert all(job["request"]["num_frames"] == 9 for job in batch["jobs"]), "the shared fields go to every job"
        assert batch["counts"] == {"queued": 4} and not batch["finished"]
        ids = [job["id"] for job in batch["jobs"]]
        alone = portal.submit(prompt="a green ball bouncing", **QUICK)
        assert alone["batch_id"] is None

        with portal.client() as c:
            again = c.get(f"/api/batches/{batch['id']}").json()
            assert [job["id"] for job in again["jobs"]] == ids
            assert [job["queue_position"] for job in again["jobs"]] == sorted(
                job["queue_position"] for job in again["jobs"]
            )
        # The gallery of the batch: its cards alone, newest first, under a line that counts them.
        assert cards(portal, f"?batch={batch['id']}") == ids[::-1]
        with portal.client() as c:
            page = c.get(f"/?batch={batch['id']}").text
        assert "A batch of 4 clips: 4 queued." in page and f"/batches/{batch['id']}/cancel" in page
        assert alone["id"] in cards(portal, ""), "the whole list still shows the job submitted alone"
        with portal.client() as c:
            job_page = c.get(f"/jobs/{ids[0]}").text
        assert f'href="/?batch={batch["id"]}"' in job_page

        cancelled = post(portal, f"/api/batches/{batch['id']}/cancel", {})
        assert cancelled.status_code == 202, cancelled.text
        assert cancelled.json()["counts"] == {"cancelled": 4} and cancelled.json()["finished"]
        assert portal.job(alone["id"])["status"] == "queued", "cancelling a batch leaves other jobs alone"
        post(portal, f"/api/jobs/{alone['id']}/cancel", {})
    finally:
        post(portal, "/api/queue/resume", {})


def test_a_batch_runs_and_its_gallery_fills_in(shared_portal: Portal) -> None:
    portal = shared_portal
    made = post(portal, "/api/batches", {"prompt": "a white ball bouncing with clicks", "seeds": [3, 4], **QUICK})
    assert made.status_code == 201, made.text
    batch = made.json()
    for job in batch["jobs"]:
        assert portal.wait(job["id"])["status"] == "succeeded"
    with portal.client() as c:
        done = c.get(f"/api/batches/{batch['id']}").json()
        assert done["counts"] == {"succeeded": 2} and done["finished"]
        assert all(job["links"]["video"] for job in done["jobs"])
        page = c.get(f"/?batch={batch['id']}").text
    assert "A batch of 2 clips: 2 succeeded." in page and "Cancel the rest" not in page
    assert page.count('class="poster"') == 2, "each finished card shows its poster"


def test_a_bad_batch_is_refused_naming_the_field_and_makes_no_job(shared_portal: Portal) -> None:
    portal = shared_portal
    before = job_ids(portal)
    for body, field in (
        ({"prompts": ["a red ball"] * 10_000, **QUICK}, "prompts"),
        ({"prompts": ["a", "b", "c"], "seeds": 3, **QUICK}, "seeds"),  # 9 jobs, the queue holds 6
        ({"prompt": "a red ball", **QUICK}, "prompts"),
        ({"prompt": "a red ball", "seeds": [1, 1], **QUICK}, "seeds"),
        ({"prompts": ["a red ball", "x" * 100_000], **QUICK}, "prompts[1]"),
        ({"prompt": "a red ball", "seeds": [1, 2**40], **QUICK}, "seeds[1]"),
    ):
        refused = post(portal, "/api/batches", body)
        assert refused.status_code == 400, refused.text
        assert [error["field"] for error in refused.json()["errors"]] == [field], refused.text
    wrong_size = post(portal, "/api/batches", {"prompts": ["a", "b"], **QUICK, "width": 70})
    assert [e["field"] for e in wrong_size.json()["errors"]] == ["width"], "a shared field's problem is named once"
    with_webhook = post(portal, "/api/batches", {"prompts": ["a", "x" * 100_000], **QUICK, "webhook": 5})
    fields = [e["field"] for e in with_webhook.json()["errors"]]
    assert fields == ["prompts[1]", "webhook"], "the batch's webhook is checked with its jobs, every problem at once"
    with portal.client() as c:
        assert c.get("/api/batches/" + "0" * 32).status_code == 404
        assert c.get("/api/batches/not-a-batch").status_code == 404
        assert c.get("/?batch=nope").status_code == 400
    assert job_ids(portal) == before

    assert post(portal, "/api/queue/pause", {}).json()["paused"]
    try:
        first = post(portal, "/api/batches", {"prompt": "a red ball", "seeds": 4, **QUICK})
        assert first.status_code == 201, first.text
        full = post(portal, "/api/batches", {"prompt": "a blue ball", "seeds": 3, **QUICK})
        assert full.status_code == 429 and "room for 2 more jobs" in full.json()["detail"], full.text
        assert full.headers["retry-after"]
        assert job_ids(portal) == before | {job["id"] for job in first.json()["jobs"]}
        post(portal, f"/api/batches/{first.json()['id']}/cancel", {})
    finally:
        post(portal, "/api/queue/resume", {})


def test_the_form_makes_a_batch_of_its_prompts_lines_and_count_and_shows_its_gallery(shared_portal: Portal) -> None:
    portal = shared_portal
    assert post(portal, "/api/queue/pause", {}).json()["paused"]
    try:
        form = {
            "prompt": "a red ball moving left\n\n a yellow square moving down ",
            "prompt_lines": "1",
            "count": "2",
            "resolution": "64x64",
            "num_frames": "9",
            "mode": "quality",
            "steps": "2",
        }
        with portal.client() as c:
            answer = c.post("/jobs", data=form, headers={"Sec-Fetch-Site": "same-origin"})
            assert answer.status_code == 303, answer.text
            batch_id = answer.headers["location"].rsplit("=", 1)[1]
            batch = c.get(f"/api/batches/{batch_id}").json()
            prompts = [job["request"]["prompt"] for job in batch["jobs"]]
            assert prompts == ["a red ball moving left"] * 2 + ["a yellow square moving down"] * 2
            assert len({job["request"]["seed"] for job in batch["jobs"][:2]}) == 2, "two clips, two seeds"

            bad = c.post("/jobs", data={**form, "count": "0"}, headers={"Sec-Fetch-Site": "same-origin"})
            assert bad.status_code == 200 and 'id="error-count"' in bad.text
        post(portal, f"/api/batches/{batch_id}/cancel", {})
    finally:
        post(portal, "/api/queue/resume", {})


def test_a_batch_the_data_disk_cannot_hold_whole_leaves_none_of_its_jobs(small_disk, make_portal, demo_model_dir):
    disk = small_disk(64)
    portal = make_portal(prepare_data_dir(disk.root, demo_model_dir), AVP_MIN_FREE_MB="4")
    assert post(portal, "/api/queue/pause", {}).json()["paused"]
    big = {"prompt": "a red ball", "mode": "quality", "width": 512, "height": 288, "num_frames": 49, "steps": 4}
    probe = portal.submit(**big)
    job_bytes = probe["estimate"]["disk_bytes"]
    post(portal, f"/api/jobs/{probe['id']}/cancel", {})
    disk.fill(leave=4 * MIB + int(1.5 * job_bytes))  # room for one such job, not two

    refused = post(portal, "/api/batches", {**big, "seeds": 3})
    assert refused.status_code == 507, refused.text
    assert job_ids(portal) == {probe["id"]}, "the batch's first job was withdrawn with it"
    assert sorted(p.name for p in (portal.data_dir / "jobs").iterdir() if p.is_dir()) == [probe["id"]]
    disk.unfill()


def test_the_client_library_submits_follows_and_cancels_a_batch(shared_portal: Portal) -> None:
    portal = shared_portal
    with AVPortal(portal.base_url) as client:
        assert post(portal, "/api/queue/pause", {}).json()["paused"]
        try:
            batch = client.submit_batch(["a green square moving right", "a red ball moving up"], seeds=[5], **QUICK)
            assert [(job.request["prompt"], job.request["seed"]) for job in batch["jobs"]] == [
                ("a green square moving right", 5),
                ("a red ball moving up", 5),
            ]
            assert client.batch(batch["id"])["counts"] == {"queued": 2}
            cancelled = client.cancel_batch(batch["id"])
            assert cancelled["finished"] and {job.status for job in cancelled["jobs"]} == {"cancelled"}
            with pytest.raises(InvalidInput, match="seeds"):
                client.submit_batch(["a red ball"], seeds=0, **QUICK)
        finally:
            post(portal, "/api/queue/resume", {})
