"""Retention over the real store and job directories: which jobs' files go, in what order, and what stays.

The jobs are made through Jobs (their directories with job.json) and moved along through the journal; their
files are written here with sizes the test chooses. tests/integration/test_retention_portal.py runs real demo jobs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import pytest

from app.config import Settings
from app.jobs import Conflict, present
from app.retention import DAY_S, GIB
from app.web import Parts, build_parts, build_templates
from contract import jobdir

FILE_BYTES = 100 * 1024  # each job's video (or, unfinished, its preview) here


def with_parts(tmp_path: Path, scenario: Callable[[Parts], Awaitable[None]], **limits: float) -> None:
    settings = Settings(data_dir=tmp_path, **limits)
    parts = build_parts(settings, b"s" * 32, build_templates(settings))
    try:
        anyio.run(scenario, parts)
    finally:
        parts.store.close()


async def make_job(parts: Parts, name: str, *, status: str) -> str:
    """A job in `status` whose directory holds job.json and a FILE_BYTES video (or preview, unfinished)."""
    job = await parts.jobs.submit({"prompt": f"a {name} ball"}, "test")
    if status != "queued":
        await parts.jobs.journal.set_status(job.id, "running", start_attempt=True)
    if status not in ("queued", "running"):
        await parts.jobs.journal.set_status(job.id, status, code="internal", message="made by the test")
    name = jobdir.VIDEO_FILE if status == "succeeded" else jobdir.PREVIEW_FILE
    (parts.jobs.job_dir(job.id) / name).write_bytes(b"\0" * FILE_BYTES)
    return job.id


def directory_bytes(parts: Parts) -> int:
    return sum(f.stat().st_size for f in parts.settings.jobs_dir.rglob("*") if f.is_file())


def test_the_longest_finished_go_first_until_within_keep_gb_and_kept_or_unfinished_jobs_stay(tmp_path: Path) -> None:
    async def scenario(parts: Parts) -> None:
        kept = await make_job(parts, "white", status="succeeded")
        oldest = await make_job(parts, "red", status="succeeded")
        failed = await make_job(parts, "green", status="failed")
        newest = await make_job(parts, "blue", status="succeeded")
        running = await make_job(parts, "yellow", status="running")
        queued = await make_job(parts, "square", status="queued")
        assert (await parts.jobs.set_keep(await parts.jobs.get_job(kept), True)).keep

        # six files and room for 2.5 (the half for the job.json files): every finished job not kept goes, the
        # oldest first, and the three left stay although they are over the limit
        assert await parts.retention.sweep() == [oldest, failed, newest]
        assert directory_bytes(parts) > budget
        for job_id in (kept, running, queued):
            job = await parts.jobs.get_job(job_id)
            assert job.files_removed_at is None and any(parts.jobs.job_dir(job_id).iterdir())
        for job_id in (oldest, failed, newest):
            job = await parts.jobs.get_job(job_id)
            assert job.files_removed_at is not None and not parts.jobs.job_dir(job_id).exists()
        shown = present(await parts.jobs.get_job(oldest), parts.settings, await parts.jobs.places())
        assert shown.status == "succeeded" and shown.files_removed_at and shown.links.video is None
        assert shown.request.prompt == "a red ball", "the row keeps its request"
        with pytest.raises(Conflict, match="files were removed"):
            await parts.jobs.set_keep(await parts.jobs.get_job(oldest), True)

        assert await parts.retention.sweep() == [], "a kept job is never chosen"
        await parts.jobs.set_keep(await parts.jobs.get_job(kept), False)
        assert await parts.retention.sweep() == [kept], "unmarked, it may go"
        assert directory_bytes(parts) <= budget

    budget = 2.5 * FILE_BYTES
    with_parts(tmp_path, scenario, keep_gb=budget / GIB)


def test_a_finished_jobs_poster_outlives_its_other_files_and_goes_with_the_job(tmp_path: Path) -> None:
    async def scenario(parts: Parts) -> None:
        job_id = await make_job(parts, "red", status="succeeded")
        job_dir = parts.jobs.job_dir(job_id)
        for name in (jobdir.POSTER_FILE, jobdir.LOG_FILE, jobdir.PREVIEW_FILE):
            (job_dir / name).write_bytes(b"\0" * 1000)
        (job_dir / "leftover").mkdir()  # anything else in it goes too
        (job_dir / "leftover" / "file").write_bytes(b"x")

        assert await parts.retention.sweep() == [job_id]
        assert [p.name for p in job_dir.iterdir()] == [jobdir.POSTER_FILE], "the gallery still shows the clip"
        assert (await parts.jobs.get_job(job_id)).files_removed_at is not None

        await parts.jobs.delete(await parts.jobs.get_job(job_id))
        assert not job_dir.exists(), "deleting the job takes its poster"

    with_parts(tmp_path, scenario, keep_days=0.0)


def test_keep_days_removes_every_finished_job_older_than_that_and_none_younger(tmp_path: Path) -> None:
    async def scenario(parts: Parts) -> None:
        job = await parts.jobs.get_job(await make_job(parts, "red", status="cancelled"))
        finished = job.finished_at
        days = parts.retention.keep_days
        assert parts.retention.reason_to_remove(job, 0, finished + days * DAY_S - 1) is None
        reason = parts.retention.reason_to_remove(job, 0, finished + days * DAY_S + 1)
        assert reason == "it finished more than AVP_KEEP_DAYS=2 days ago"
        assert await parts.retention.sweep() == [], "it finished just now"

    with_parts(tmp_path, scenario, keep_days=2.0)


def test_retention_is_off_unless_a_limit_is_set(tmp_path: Path) -> None:
    async def scenario(parts: Parts) -> None:
        await make_job(parts, "red", status="succeeded")
        assert not parts.retention.enabled
        with anyio.fail_after(5):
            await parts.retention.run()  # returns at once
        assert await parts.retention.sweep() == []

    assert (Settings.from_env({}).keep_days, Settings.from_env({}).keep_gb) == (None, None)
    with_parts(tmp_path, scenario)
