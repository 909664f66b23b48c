"""Jobs written straight into a portal's SQLite file, as if it had run them: quicker than running them, for tests
and benches of the job list. Use it before the portal starts, or beside it (WAL: the portal sees the rows)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from app.progress import JobProgress
from app.store import JobRow, JobUpdate, Store
from contract.request import Request

# A finished demo job's request, as the portal stores it (resolved: every field set).
REQUEST: dict[str, Any] = {
    "prompt": "an old clip",
    "model": "demo",
    "mode": "quality",
    "width": 256,
    "height": 160,
    "num_frames": 25,
    "fps": 24.0,
    "steps": 2,
}


def seed_jobs(db_path: Path, jobs: list[dict[str, Any]]) -> list[str]:
    """One job per item, oldest first: its `status` (default succeeded) and request fields over REQUEST; their ids."""
    store = Store(db_path)
    made = []
    try:
        for i, fields in enumerate(jobs):
            job_id = uuid.uuid4().hex
            status = fields.get("status", "succeeded")
            request = {**REQUEST, "seed": i, **{k: v for k, v in fields.items() if k != "status"}}
            store.create_job(job_id, request, {"type": "queued"}, max_queued=len(jobs) + 1)
            if status != "queued":
                store.record(job_id, {"type": status}, JobUpdate(status=status))
            made.append(job_id)
    finally:
        store.close()
    return made


def job_row(job_id: str = "a" * 32, status: str = "queued", **fields: Any) -> JobRow:
    """A job as the store returns it, for tests of what shows one: nothing run, `fields` over the defaults."""
    row: dict[str, Any] = {
        "seq": 1,
        "id": job_id,
        "status": status,
        "request": Request(prompt="a red ball"),
        "progress": JobProgress(),
        "error": None,
        "result": None,
        "attempts": 1,
        "created_at": 0.0,
        "started_at": None,
        "finished_at": None,
        "estimate": None,
        "keep": False,
        "files_removed_at": None,
    }
    return JobRow(**(row | fields))
