"""The data disk: how much is free, whether a job or an upload fits, and the 507 a full disk gets.

Before a job is accepted its predicted writes (contract/cost.py's `disk_bytes`, with those of the jobs queued
and running before it) must fit with AVP_MIN_FREE_MB to spare, which also leaves SQLite room to record things;
a write that fails for lack of space anyway (contract/disk.py recognises it) gets the same answer, saying how
much is free and what to do. /healthz and the pages show the free space and warn below the floor.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import msgspec

from contract.disk import say_bytes

ADVICE = (
    "Free space on the disk that holds the data directory: delete finished jobs you no longer need, or set "
    "AVP_KEEP_DAYS or AVP_KEEP_GB so that the portal removes old jobs' files; then try again."
)


class DiskFull(Exception):
    """A write refused, or about to fail, for lack of space: HTTP 507, with the message the person acts on."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class DiskStatus(msgspec.Struct, frozen=True):
    free_bytes: int
    min_free_bytes: int  # AVP_MIN_FREE_MB
    low: bool  # below the floor: jobs and uploads are refused until space is freed

    @property
    def free(self) -> str:
        return say_bytes(self.free_bytes)

    @property
    def floor(self) -> str:
        return say_bytes(self.min_free_bytes)


class DataDisk(msgspec.Struct, frozen=True):
    """The file system of the data directory (jobs, uploads, caches, the database), kept AVP_MIN_FREE_MB free."""

    directory: Path
    min_free_bytes: int

    def status(self) -> DiskStatus:
        """One statvfs: cheap, but asked for per page render and health check, not per event."""
        free = shutil.disk_usage(self.directory).free  # what an unprivileged writer may still use
        return DiskStatus(free_bytes=free, min_free_bytes=self.min_free_bytes, low=free < self.min_free_bytes)

    def check_room(self, need_bytes: int, what: str) -> None:
        """Raise DiskFull unless `need_bytes` (for `what`, as the message says it) fit with the floor to spare."""
        status = self.status()
        if status.free_bytes - need_bytes >= self.min_free_bytes:
            return
        needs = f"but {what} will write about {say_bytes(need_bytes)}, and " if need_bytes else "and "
        raise DiskFull(
            f"Not enough free space on the data disk: {status.free} free, {needs}{status.floor} must stay free "
            f"(AVP_MIN_FREE_MB). {ADVICE}"
        )

    def full(self, what: str) -> DiskFull:
        """The answer to a write that failed for lack of space while saving `what`."""
        return DiskFull(f"The data disk is full ({self.status().free} free): {what} could not be saved. {ADVICE}")
