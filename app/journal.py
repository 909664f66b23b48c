"""The one way a job's state changes: the event is stored (with its column changes), then published.

Everything that moves a job along (a submit, a cancel, the worker, the runner's protocol
lines) goes through `Journal.record`, so the store, the job row, every SSE stream and the pages'
pushed fragments agree.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from app.broker import Broker
from app.page_feed import PageFeed
from app.places import places
from app.progress import JobProgress
from app.store import JobRow, JobUpdate, Store, StoredEvent, WebhookEvent
from contract import protocol
from contract.cost import Estimate

if TYPE_CHECKING:
    from app.webhooks import Webhooks


class Journal:
    def __init__(
        self,
        store: Store,
        broker: Broker,
        pages: PageFeed,
        *,
        slots: Sequence[str],
        webhooks: Webhooks | None = None,
    ) -> None:
        self.store = store
        self.broker = broker
        self.pages = pages
        self.slots = slots  # the executor's slots' names: where queued jobs start (app/places.py)
        self.webhooks = webhooks  # queues the deliveries a job's events make, with the events
        # a running job's estimate at the length its model chose (num_frames "auto"): `Jobs.estimate_at_length`,
        # set once the jobs exist (they are made with this journal); None: the estimate stays the longest clip's
        self.estimate_at_length: Callable[[str, int], Awaitable[Estimate | None]] | None = None

    async def queue_moved(self, *, besides: str | None = None) -> None:
        """The queue changed (a job queued, started, ended or moved; the queue paused or resumed): work out every
        unfinished job's place again, for the pages, and show it on those open (the job `besides` excepted: its
        own event is about to show it)."""
        snapshot = await self.store.call(self.store.queue_snapshot)
        self.pages.queue_moved(snapshot, places(snapshot, self.slots), besides)

    async def record(self, job_id: str, event: dict[str, Any], update: JobUpdate | None = None) -> StoredEvent:
        webhook_event = None if self.webhooks is None else self.webhooks.event_for(event)
        stored = await self._record(job_id, event, update, webhook_event)
        if webhook_event is not None and self.webhooks is not None:
            self.webhooks.wake()
        return stored

    async def _record(
        self, job_id: str, event: dict[str, Any], update: JobUpdate | None, webhook_event: WebhookEvent | None
    ) -> StoredEvent:
        if update is not None and update.status is not None:
            stored = await self.store.call(self.store.record, job_id, event, update, webhook_event)
            await self.queue_moved(besides=job_id)
            job = await self.store.call(self.store.get_job, job_id)
            if job is None:  # deleted meanwhile
                self.broker.publish(job_id, stored.data)
            else:
                self.announce(job, stored)
            return stored
        if update is None or not self.pages.watching(job_id):
            # Nothing a page shows changes (a memory line, a runner's error before its status), or no
            # page is open to show it: skip reading the job back and rendering.
            stored = await self.store.call(self.store.record, job_id, event, update, webhook_event)
            self.broker.publish(job_id, stored.data)
            return stored

        def record_and_read() -> tuple[StoredEvent, JobRow | None]:  # one trip: the job as this event left it
            return self.store.record(job_id, event, update, webhook_event), self.store.get_job(job_id)

        stored, job = await self.store.call(record_and_read)
        if job is None:  # deleted meanwhile
            self.broker.publish(job_id, stored.data)
        else:
            self.announce(job, stored)
        return stored

    def announce(self, job: JobRow, stored: StoredEvent) -> None:
        """Publish a stored event to the job's streams, and what it changed to the pages."""
        self.broker.publish(job.id, stored.data)
        self.pages.changed(job, stored)

    async def set_status(
        self, job_id: str, status: str, *, start_attempt: bool = False, slot: str | None = None, **details: Any
    ) -> None:
        """Record a status change; `details` go into its event, `slot` (where a starting job runs) into the job."""
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
                slot=slot,
            ),
        )

    async def set_slot(self, job_id: str, slot: str) -> None:
        """Name where the running job runs once its executor knows (a Ray node and card): its row, its card and
        panel; no event (the job's stream says nothing new)."""

        def store_and_read() -> JobRow | None:
            return self.store.get_job(job_id) if self.store.set_slot(job_id, slot) else None

        job = await self.store.call(store_and_read)
        if job is not None:
            self.pages.shown_changed(job)

    async def runner_event(self, job_id: str, event: protocol.Event, progress: JobProgress) -> JobProgress:
        """Store one protocol event; returns the job's progress after it."""
        new_progress = progress.apply(event)
        result = msgspec.to_builtins(event) if isinstance(event, protocol.Result) else None
        # the text phase's choices (LTX-2.5): stored with the job, as the job JSON and page show them
        chosen = event.num_frames if isinstance(event, protocol.NumFrames) else None
        enhanced = event.prompt if isinstance(event, protocol.EnhancedPrompt) else None
        # its estimate was the longest clip's until now: the page's time left and the API follow the chosen length
        estimate = (
            None if chosen is None or self.estimate_at_length is None else await self.estimate_at_length(job_id, chosen)
        )
        changes = {
            "progress": new_progress,
            "result": result,
            "num_frames_chosen": chosen,
            "enhanced_prompt": enhanced,
            "estimate": estimate,
        }
        update = JobUpdate(**changes) if any(value is not None for value in changes.values()) else None
        await self.record(job_id, msgspec.to_builtins(event), update)
        return new_progress or progress
