"""Retention: finished jobs' files are removed, the longest finished first, to keep them within
AVP_KEEP_DAYS and AVP_KEEP_GB (both off unless set).

What goes is a job's files (video, preview, image, log, job.json) but its poster, a few tens of KB that keep the
gallery showing the clip (and count in AVP_KEEP_GB with the rest); its row stays with the time its files went, so
the job still lists, shows its settings and fills the form again. Never the files of a
queued, running or interrupted job, nor of one a person marked keep. A sweep runs at start-up, after
each job ends, and hourly (jobs age while the portal idles).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

import anyio
import anyio.to_thread

from app.config import Settings
from app.jobs import Jobs
from app.queue import Worker
from app.store import JobRow

log = logging.getLogger(__name__)

GIB = 1024**3
DAY_S = 86400.0
SWEEP_EVERY_S = 3600.0


class Retention:
    def __init__(self, jobs: Jobs, worker: Worker, settings: Settings) -> None:
        self._jobs = jobs
        self._worker = worker
        self._jobs_dir = settings.jobs_dir
        self.keep_days = settings.keep_days
        self.keep_gb = settings.keep_gb

    @property
    def enabled(self) -> bool:
        return self.keep_days is not None or self.keep_gb is not None

    async def run(self) -> None:
        """Sweep now, after each job ends and hourly, for the portal's life; returns at once when off."""
        if not self.enabled:
            return
        ended = self._worker.jobs_ended
        while True:
            try:
                await self.sweep()
            except Exception:  # the disk or the database failed us this time; the portal goes on
                log.exception("retention: a sweep failed; the next one tries again")
            with anyio.move_on_after(SWEEP_EVERY_S):
                ended = await self._worker.wait_for_job_end(ended)

    async def sweep(self) -> list[str]:
        """Remove the files of every finished job the limits say must go; the ids of those removed."""
        candidates = await self._jobs.with_removable_files()  # the longest finished first
        if not candidates:
            return []
        sizes = await anyio.to_thread.run_sync(_directory_sizes, self._jobs_dir)
        total = sum(sizes.values())
        now = time.time()
        removed: list[str] = []
        for job in candidates:
            reason = self.reason_to_remove(job, total, now)
            if reason is None:
                break  # the rest finished later, and the total is within the limit
            if await self._jobs.remove_files(job):
                size = sizes.get(job.id, 0)
                total -= size
                removed.append(job.id)
                log.info(
                    "retention: removed the files of job %s (%.1f MB, %s): %s", job.id, size / 1e6, job.status, reason
                )
        return removed

    def reason_to_remove(self, job: JobRow, total_bytes: int, now: float) -> str | None:
        """Why this finished job's files go while the jobs' files take `total_bytes`; None: they stay."""
        finished_at = job.finished_at if job.finished_at is not None else job.created_at
        if self.keep_days is not None and finished_at < now - self.keep_days * DAY_S:
            return f"it finished more than AVP_KEEP_DAYS={self.keep_days:g} days ago"
        if self.keep_gb is not None and total_bytes > self.keep_gb * GIB:
            return f"the jobs' files took {total_bytes / GIB:.3g} GiB, more than AVP_KEEP_GB={self.keep_gb:g}"
        return None


def _directory_sizes(jobs_dir: Path) -> dict[str, int]:
    """Bytes in each job directory (every job's, whatever its state), by job id."""
    sizes: dict[str, int] = {}
    with contextlib.suppress(FileNotFoundError), os.scandir(jobs_dir) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                sizes[entry.name] = _bytes_in(entry.path)
    return sizes


def _bytes_in(directory: str) -> int:
    total = 0
    for parent, _dirs, files in os.walk(directory):
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # a runner replaces its preview as we look
                total += os.lstat(os.path.join(parent, name)).st_size
    return total
