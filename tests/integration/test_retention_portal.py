"""Retention through a real portal: demo jobs' files go at start-up and after a job ends, the rows stay.

A first portal with no limits makes four small clips, and a person marks the oldest keep on its page. A
second portal on the same data directory, with AVP_KEEP_DAYS and AVP_KEEP_GB, removes at start-up the files of
the job that finished too long ago (made so in its database) but not the kept one, and after the next job
ends, the longest finished job's files until the rest fit, never those of the job running or queued.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.portal import LONG_JOB, Portal, wait_for

TINY = {"width": 64, "height": 64, "num_frames": 9, "steps": 2}
DAY_S = 86400
GIB = 1024**3


def directory_bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.iterdir() if f.is_file())


def files_removed(portal: Portal, job_id: str):
    return portal.job(job_id)["files_removed_at"]


def log_with(portal: Portal, line: str) -> str:
    """The portal's whole log (the access log follows what we look for) once it holds `line`; else empty."""
    whole = portal.log_path.read_text()
    return whole if line in whole else ""


def test_the_longest_finished_jobs_files_go_first_and_kept_running_and_queued_jobs_keep_theirs(make_portal) -> None:
    first: Portal = make_portal()
    made = [first.submit(prompt=f"a {colour} ball bouncing", **TINY)["id"] for colour in ("white", "red", "green")]
    made.append(first.submit(prompt="a blue square moving left", **TINY)["id"])
    for job_id in made:
        assert first.wait(job_id)["status"] == "succeeded"
    kept, aged, middle, newest = made

    with first.form_client() as c:  # the job page's keep switch, as a browser posts it
        assert 'id="keep-button" aria-pressed="false"' in c.get(f"/jobs/{kept}").text
        panel = c.post(f"/jobs/{kept}/keep", data={"keep": "on"}, headers={"HX-Request": "true"})
        assert panel.status_code == 200 and 'id="keep-button" aria-pressed="true"' in panel.text
        # only the switch comes back: the panel is the page stream's, and a late answer could undo a newer push
        assert panel.text.lstrip().startswith('<form id="keep-form"') and 'id="job-panel"' not in panel.text
    with first.client() as c:  # and the API's
        assert c.put(f"/api/jobs/{middle}/keep").json()["keep"] is True
        assert c.delete(f"/api/jobs/{middle}/keep").json()["keep"] is False
        assert c.put(f"/api/jobs/{'0' * 32}/keep").status_code == 404
    assert first.job(kept)["keep"] is True and first.job(middle)["keep"] is False
    first.stop()

    # The kept job and the next finished three days ago; the limit keeps two days and what the three
    # youngest clips take, with room for less than a quarter of another.
    with sqlite3.connect(first.data_dir / "portal.sqlite3") as db:
        db.executemany(
            "UPDATE jobs SET finished_at = finished_at - ? WHERE id = ?", [(3 * DAY_S, kept), (3 * DAY_S, aged)]
        )
    sizes = {job_id: directory_bytes(first.job_dir(job_id)) for job_id in made}
    budget = sizes[kept] + sizes[middle] + sizes[newest] + min(sizes.values()) // 4
    second: Portal = make_portal(data_dir=first.data_dir, AVP_KEEP_DAYS="2", AVP_KEEP_GB=repr(budget / GIB))

    # at start-up: the job older than two days goes, unless kept; the rest fit
    wait_for(lambda: files_removed(second, aged), 30, "removal of the aged job's files")
    assert [p.name for p in second.job_dir(aged).iterdir()] == ["poster.jpg"], "all but the poster go"
    assert files_removed(second, kept) is None and second.job_dir(kept).is_dir()
    assert files_removed(second, middle) is None and second.job_dir(middle).is_dir()

    with second.client() as c:
        job = c.get(f"/api/jobs/{aged}").json()
        assert job["status"] == "succeeded" and job["result"]["frames"] == 9, "the row stays"
        assert job["files_removed_at"] and job["links"]["video"] is None and job["keep"] is False
        video = c.get(f"/api/jobs/{aged}/video")
        assert video.status_code == 404 and "files were removed" in video.json()["detail"]
        poster = c.get(f"/api/jobs/{aged}/poster")
        assert poster.status_code == 200 and poster.content == (second.job_dir(aged) / "poster.jpg").read_bytes()
        assert c.put(f"/api/jobs/{aged}/keep").status_code == 409
        assert c.get(f"/api/jobs/{kept}/video").status_code == 200
        page = c.get(f"/jobs/{aged}")
        assert page.status_code == 200 and 'id="files-removed"' in page.text and "<video" not in page.text
        listed = c.get("/").text
        card = listed[listed.index(f'id="job-{aged}"') :]
        card = card[: card.index("</article>")]
        assert "files removed" in card and f'src="/api/jobs/{aged}/poster"' in card, "its poster frame stays"
        assert "data-video" not in card, "no video to play on hover"
        remix = c.get(f"/?from_job={aged}")
        assert remix.status_code == 200 and "a red ball bouncing" in remix.text

    # after a job ends: over the limit again, the longest finished go first; the running and queued stay
    after = second.submit(prompt="a yellow ball moving up", **TINY)["id"]
    running = second.submit(prompt="a green square bouncing", **LONG_JOB)["id"]
    queued = second.submit(prompt="a red square moving down", **TINY)["id"]
    assert second.wait(after)["status"] == "succeeded"
    wait_for(lambda: files_removed(second, middle), 30, "removal of the longest finished job's files")
    older_first = [newest, after]
    gone = [files_removed(second, job_id) is not None for job_id in older_first]
    assert gone == sorted(gone, reverse=True), f"a younger job's files went before an older one's: {gone}"
    for job_id in (running, queued):
        job = second.job(job_id)
        assert job["status"] in ("queued", "running") and job["files_removed_at"] is None
        assert (second.job_dir(job_id) / "job.json").is_file()
    assert second.job(kept)["files_removed_at"] is None and second.job_dir(kept).is_dir()
    # logged, once the removal is done (the row notes it first)
    log = wait_for(lambda: log_with(second, f"removed the files of job {middle}"), 30, "the removal's log line")
    assert f"removed the files of job {aged}" in log and "AVP_KEEP_DAYS=2 days" in log
    assert f"removed the files of job {middle}" in log and "more than AVP_KEEP_GB" in log
