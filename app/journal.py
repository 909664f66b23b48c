"""The one way a job's state changes: the event is stored (with its column changes), then published.

Everything that moves a job along (a submit, a cancel, the worker, the runner's protocol
lines) goes through `Journal.record`, so the store, the job row and every SSE stream agree.
"""

from __future__ import annotations

from typing import Any

import msgspec

from app.broker import Broker
from app.store import JobUpdate, Store, StoredEvent, empty_progress
from contract import protocol

# Share of the overall percentage each phase covers; denoising dominates a job's time.
_DENOISE_START, _DENOISE_END = 5.0, 90.0
_STAGES_BEFORE = protocol.STAGES[: protocol.STAGES.index("denoise")]


def progress_after(progress: dict[str, Any], event: protocol.Event) -> dict[str, Any] | None:
    """The job's progress once `event` has happened, or None when the event does not change it."""
    match event:
        case protocol.Stage(name=name, note=note):
            percent = progress["percent"]
            if name in _STAGES_BEFORE:
                percent = _DENOISE_START * (_STAGES_BEFORE.index(name) + 1) / (len(_STAGES_BEFORE) + 1)
            elif name != "denoise":
                after = protocol.STAGES[protocol.STAGES.index("denoise") + 1 :]
                percent = _DENOISE_END + (100 - _DENOISE_END) * after.index(name) / len(after)
            return {**progress, "stage": name, "stage_note": note, "percent": round(percent, 1)}
        case protocol.Step(step=step, total=total, eta_s=eta):
            percent = _DENOISE_START + (_DENOISE_END - _DENOISE_START) * step / max(total, 1)
            eta = None if eta is None else round(eta, 1)  # None: not known yet (the first step compiled)
            return {**progress, "step": step, "total": total, "eta_s": eta, "percent": round(percent, 1)}
        case protocol.Preview(step=step):
            return {**progress, "preview_step": step}
        case protocol.Tile(done=done, total=total):
            return {**progress, "tiles_done": done, "tiles_total": total}
        case protocol.Result():
            return {**progress, "percent": 100.0, "eta_s": 0.0}
    return None


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
                progress=empty_progress() if start_attempt else None,
            ),
        )

    async def runner_event(self, job_id: str, event: protocol.Event, progress: dict[str, Any]) -> dict[str, Any]:
        """Store one protocol event; returns the job's progress after it."""
        new_progress = progress_after(progress, event)
        result = msgspec.to_builtins(event) if isinstance(event, protocol.Result) else None
        update = JobUpdate(progress=new_progress, result=result) if (new_progress or result) else None
        await self.record(job_id, msgspec.to_builtins(event), update)
        return new_progress or progress
