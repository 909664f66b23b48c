"""A full data disk through a real portal whose data directory is a real small file system (a tmpfs the test mounts).

Filled below AVP_MIN_FREE_MB, the portal refuses jobs and uploads with a 507 that says how much is free and what
to do, on the API and on the create form, and /healthz and the pages warn; filled to its last byte, a change the
database cannot store gets the same answer, and deleting a finished job still works (its files go first). A job
whose runner finds no space mid-run fails as disk_full and leaves no video behind, and once space returns the job
queued behind it runs and the portal serves as before.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests import upload_corpus as corpus
from tests.portal import Portal, prepare_data_dir, runner_processes, wait_for
from tests.small_disk import MIB, SmallDisk

TINY = {"width": 64, "height": 64, "num_frames": 9, "steps": 2}
BIGGER = {"width": 512, "height": 288, "num_frames": 49, "steps": 4}  # a clip of a few dozen pages
# Steps of a second or more on a CPU, and its first preview after the fifth: the disk fills before it writes one.
LONG_JOB = {"width": 512, "height": 288, "num_frames": 97, "steps": 30}
FLOOR_MIB = 4
HX = {"hx-request": "true"}
LOW_DISK_WARNING = r'id="disk-low" role="alert">Only [23]\.\d MB free on the data disk, under the 4\.0 MB\s+that must'


def portal_on_a_small_disk(small_disk, make_portal, demo_model_dir: Path) -> tuple[SmallDisk, Portal]:
    """A portal whose data directory is a 64 MiB tmpfs (its log stays outside), 4 MiB kept free."""
    disk = small_disk(64)
    return disk, make_portal(prepare_data_dir(disk.root, demo_model_dir), AVP_MIN_FREE_MB=str(FLOOR_MIB))


def a_png_upload() -> dict:
    return {"file": ("photo.png", corpus.encode(corpus.photo(), "PNG"), "image/png")}


def test_below_the_floor_jobs_and_uploads_get_a_507_saying_what_is_free_and_what_to_do(
    small_disk, make_portal, demo_model_dir
) -> None:
    disk, portal = portal_on_a_small_disk(small_disk, make_portal, demo_model_dir)
    done = portal.submit(prompt="a white ball bouncing", **TINY)
    unwanted = portal.submit(prompt="a yellow square bouncing with clicks", **BIGGER)
    for job in (done, unwanted):
        assert portal.wait(job["id"])["status"] == "succeeded"
    disk.fill(leave=3 * MIB)

    with portal.client() as c:
        health = c.get("/healthz")
        assert health.status_code == 200 and health.json()["status"] == "low_disk"
        assert health.json()["worker"]["alive"] is True
        disk_health = health.json()["disk"]
        assert disk_health["low"] is True and disk_health["min_free_bytes"] == FLOOR_MIB * MIB
        assert 2 * MIB < disk_health["free_bytes"] <= 3 * MIB

        before = c.get("/api/jobs").json()["jobs"]
        refused = c.post("/api/jobs", json={"prompt": "a red ball bouncing", "mode": "quality", **TINY})
        assert refused.status_code == 507, refused.text
        [error] = refused.json()["errors"]
        assert error["field"] == "request" and error["message"] == refused.json()["detail"]
        assert re.match(
            r"Not enough free space on the data disk: [23]\.\d MB free, but this job will write about 1\.0 MB, "
            r"and 4\.0 MB must stay free \(AVP_MIN_FREE_MB\)\. ",
            error["message"],
        ), error["message"]
        assert "delete finished jobs" in error["message"] and "AVP_KEEP_DAYS or AVP_KEEP_GB" in error["message"]
        assert c.get("/api/jobs").json()["jobs"] == before, "no job was created"

        upload = c.post("/api/uploads", files=a_png_upload())
        assert upload.status_code == 507, upload.text
        [error] = upload.json()["errors"]
        assert error["field"] == "file" and "but the upload will write about" in error["message"]
        assert "AVP_MIN_FREE_MB" in error["message"]

        for page in ("/", f"/jobs/{done['id']}"):
            shown = c.get(page).text
            assert re.search(LOW_DISK_WARNING, shown), shown
            assert 'id="disk-free"' not in shown

    with portal.form_client() as browser:  # the create form shows the refusal above its fields, as others
        form = browser.post("/jobs", data={"prompt": "a red ball bouncing"}, headers=HX)
        assert form.status_code == 200
        assert 'class="error" role="alert">Not enough free space on the data disk' in form.text
        field = browser.post("/fragments/upload", files=a_png_upload(), headers=HX)
        assert 'id="error-file"' in field.text and "Not enough free space on the data disk" in field.text
        assert browser.get("/api/jobs").json()["jobs"] == before

    disk.fill()  # to the last byte: the database cannot store a change either
    with portal.client() as c:
        kept = c.put(f"/api/jobs/{done['id']}/keep")
        assert kept.status_code == 507, kept.text
        assert kept.json()["detail"].startswith("The data disk is full (")
        assert "the change could not be saved" in kept.json()["detail"]
        assert c.get(f"/api/jobs/{done['id']}").json()["keep"] is False
        # What the advice says works even now: a deleted job's files go first, which makes room to forget it.
        assert c.delete(f"/api/jobs/{unwanted['id']}").status_code == 204
        assert c.get(f"/api/jobs/{unwanted['id']}").status_code == 404
        assert not portal.job_dir(unwanted["id"]).exists()

    disk.unfill()
    with portal.client() as c:
        health = c.get("/healthz").json()
        assert health["status"] == "ok" and health["disk"]["low"] is False
        assert c.put(f"/api/jobs/{done['id']}/keep").json()["keep"] is True
        assert c.post("/api/uploads", files=a_png_upload()).status_code == 201
        assert 'id="disk-free"' in c.get("/").text
    again = portal.submit(prompt="a red ball bouncing", **TINY)
    assert portal.wait(again["id"])["status"] == "succeeded"


def test_a_job_that_runs_out_of_space_fails_as_disk_full_and_the_next_runs_once_space_returns(
    small_disk, make_portal, demo_model_dir
) -> None:
    disk, portal = portal_on_a_small_disk(small_disk, make_portal, demo_model_dir)
    long = portal.submit(prompt="a green square moving left with a low hum", **LONG_JOB)
    queued = portal.submit(prompt="a blue ball moving up", **TINY)
    long_dir = portal.job_dir(long["id"])
    wait_for(lambda: portal.job(long["id"])["progress"]["step"] >= 1, 120, "the long job's first step")
    assert runner_processes(long_dir)

    disk.fill()  # mid-denoise, where it writes nothing until its next preview, which can no longer be written
    wait_for(lambda: not runner_processes(long_dir), 120, "the long job's runner to end")
    with portal.client() as c:
        health = c.get("/healthz").json()
        assert health["status"] == "low_disk" and health["worker"]["alive"] is True
    assert portal.job(queued["id"])["status"] == "queued"

    disk.unfill()
    failed = portal.wait(long["id"])
    assert failed["status"] == "failed" and failed["error"]["code"] == "disk_full", failed["error"]
    assert failed["error"]["message"].startswith("The disk ran out of space during ")
    assert "AVP_KEEP_DAYS or AVP_KEEP_GB" in failed["error"]["message"]
    left = sorted(path.name for path in long_dir.iterdir())
    assert "video.mp4" not in left and not [name for name in left if name.endswith(".partial")], left
    assert failed["links"]["video"] is None

    assert portal.wait(queued["id"])["status"] == "succeeded"
    with portal.client() as c:
        assert c.get(f"/api/jobs/{queued['id']}/video").status_code == 200
        health = c.get("/healthz").json()
        assert health["status"] == "ok" and health["worker"]["state"] in ("idle", "running")


def test_a_portal_started_on_a_full_disk_says_so_changes_nothing_and_starts_once_space_returns(
    small_disk, make_portal, demo_model_dir
) -> None:
    disk, first = portal_on_a_small_disk(small_disk, make_portal, demo_model_dir)
    done = first.submit(prompt="a white ball bouncing", **TINY)
    assert first.wait(done["id"])["status"] == "succeeded"
    first.stop()
    disk.fill()

    again = Portal(data_dir=first.data_dir, env=first.env)
    refused = again.refused()
    assert refused.returncode == 3, refused.stderr
    assert "the data disk is full (0.0 KB free" in refused.stderr and "free space on that disk" in refused.stderr
    assert "Traceback" not in refused.stderr

    disk.unfill()
    again.start()
    try:
        assert again.job(done["id"])["status"] == "succeeded", "the job from before is as it was"
    finally:
        again.stop()
