"""The one way a job's state changes: the event is stored (with its column changes), then published.

Everything that moves a job along (a submit, a cancel, the worker, the runner's protocol
lines) goes through `Journal.record`, so the store, the job row and every SSE stream agree.
"""

from __future__ import annotations

from typing import Any

import msgspec

from app.broker import Broker
from app.progress import JobProgress
from app.store import JobUpdate, Store, StoredEvent
from contract import protocol


class Journal:
    def __init__(self, store: Store, broker: Broker) -> None:
        self.store = store
        self.broker = broker

    async def record(self, job_id: str, event: dict[str, Any], update: JobUpdate | None = None) -> StoredEvent:
        stored = await self.store.call(self.store.record, job_id, event, update)
        self.broker.publish(job_id, stored.data)
        return stored

    async def set_status(self, job_id: str, status: str, *, start_attempt: bool = False, **details: Any) -> None:
        error = {"code": details["code"], "message": details["message"]} if status == "failed" else None
        if status == "cancelled":
            error = {"code": "cancelled", "message": details.get("message", "Cancelled.")}
        await self.record(
            job_id,
            {"type": status, **details},
            JobUpdate(
                status=status,
                error=error,
                start_attempt=start_attempt,
                progress=JobProgress() if start_attempt else None,
            ),
        )

    async def runner_event(self, job_id: str, event: protocol.Event, progress: JobProgress) -> JobProgress:
        """Store one protocol event; returns the job's progress after it."""
        new_progress = progress.apply(event)
        result = msgspec.to_builtins(event) if isinstance(event, protocol.Result) else None
        update = JobUpdate(progress=new_progress, result=result) if (new_progress or result) else None
        await self.record(job_id, msgspec.to_builtins(event), update)
        return new_progress or progress
