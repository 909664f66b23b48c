"""SQLite job store: jobs, their append-only events, the source of truth for the queue.

One connection in WAL mode, reached from worker threads through a one-slot limiter so
the event loop never waits on disk and the connection is never used concurrently.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import anyio
import anyio.to_thread
import msgspec

from app import migrations
from app.progress import JobProgress, decode_progress
from app.statuses import TERMINAL
from app.webhook_targets import Webhook
from contract import cost
from contract.cost import Estimate, PastRun
from contract.provenance import Provenance
from contract.request import Request

P = ParamSpec("P")
T = TypeVar("T")


# An upload stays while it is young or while any job's request names it.
_UPLOAD_ALIVE = (
    "(uploads.created_at >= ? OR EXISTS "
    "(SELECT 1 FROM jobs WHERE json_extract(jobs.request, '$.image_upload_id') = uploads.id) OR EXISTS "
    "(SELECT 1 FROM jobs, json_each(jobs.request, '$.keyframes') AS keyframe "
    "WHERE json_extract(keyframe.value, '$.upload_id') = uploads.id))"
)


class JobRow(msgspec.Struct, frozen=True):
    seq: int
    id: str
    status: str
    request: Request
    progress: JobProgress
    error: dict[str, Any] | None
    result: dict[str, Any] | None
    attempts: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    estimate: Estimate | None  # predicted when it was submitted; None for a job from before estimates
    keep: bool  # a person marked it: retention never removes its files
    files_removed_at: float | None  # when retention removed its files; the row stays
    webhook: Webhook | None = None  # where its deliveries go (app/webhooks.py); None: no webhook
    batch_id: str | None = None  # the batch it was submitted in (POST /api/batches); None: submitted alone
    provenance: Provenance | None = None  # what made it, recorded at submit; None for a job from before
    # What its text phase chose (LTX-2.5): the length the duration head picked for num_frames "auto", and the prompt
    # enhancer's rewrite of the prompt; None until the runner reports them (migration 10).
    num_frames_chosen: int | None = None
    enhanced_prompt: str | None = None
    slot: str | None = None  # the runner slot it runs or last ran on ("gpu0", "cpu1"); None: it never started

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    @property
    def num_frames(self) -> int | None:
        """The clip's length in frames: the request's, or the one the duration head chose; None while unknown."""
        frames = self.request.num_frames
        return frames if isinstance(frames, int) else self.num_frames_chosen


class StoredEvent(msgspec.Struct, frozen=True):
    id: int
    type: str
    data: dict[str, Any]  # the event as JSON, including "type" and "id"


class WebhookEvent(msgspec.Struct, frozen=True):
    """A webhook event an event of a job makes: queued for delivery, in the event's transaction, when the job's
    webhook asks for it and none of its name was queued in the last `min_interval_s`."""

    name: str  # one of app.webhook_targets.EVENTS
    render: Callable[[JobRow, str], bytes]  # the delivery's body, from the job as the event left it
    min_interval_s: float = 0.0


class Delivery(msgspec.Struct, frozen=True):
    """One webhook delivery: its id (the `webhook-id` header, the same on every attempt), the body it sends."""

    id: str
    job_id: str
    event: str
    url: str
    body: bytes
    state: str  # pending, delivered or failed (gave up)
    attempts: int
    created_at: float
    next_at: float | None  # when a pending delivery is tried next
    last_attempt_at: float | None
    last_status: int | None  # the HTTP status of the last attempt, if it got one
    last_error: str | None


_DELIVERY_COLUMNS = (
    "id, job_id, event, url, body, state, attempts, created_at, next_at, last_attempt_at, last_status, last_error"
)


class QueueSnapshot(msgspec.Struct, frozen=True):
    """The queue as one read saw it: whether it is paused, the running jobs (as they started), the queued in order."""

    paused: bool
    running: list[JobRow]
    queued: list[JobRow]
    slot_paces: dict[str, float] = msgspec.field(default_factory=dict)  # slots that have run jobs: `cost.pace`


# The model and prompt filters read the request's JSON; both expressions are indexed (migration 7), so they must be
# spelled the same here.
_MODEL_SQL = "json_extract(request, '$.model')"
_PROMPT_SQL = "json_extract(request, '$.prompt')"


def _ascii_lower(text: str) -> str:
    """SQLite's LIKE folds the case of ASCII letters only; the same folding in Python, so both agree."""
    return text.translate(_ASCII_FOLD)


_ASCII_FOLD = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class JobFilter(msgspec.Struct, frozen=True):
    """Which jobs a job list shows: of one status, of one model, whose prompt holds `search` (a substring, the case
    of ASCII letters ignored; `%`, `_` and `\\` are plain characters), of one batch. None: any."""

    status: str | None = None
    model: str | None = None
    search: str | None = None
    batch: str | None = None

    def sql(self) -> tuple[str, list[str], list[Any]]:
        """The table to read (with the index to read it by), the WHERE conditions and their arguments.

        A search reads the prompts from their index, newest first (jobs_prompt holds each job's seq and prompt): it
        stops once the page is full, as a scan of the table would, but where few or no prompts match, it never
        parses a request (10,000 jobs, no match: 2 ms instead of 15 here). SQLite's planner cannot tell how rare a
        match is, so the index is named."""
        source = "jobs INDEXED BY jobs_prompt" if self.search else "jobs"
        where: list[str] = []
        args: list[Any] = []
        if self.status is not None:
            where.append("status = ?")
            args.append(self.status)
        if self.batch is not None:
            where.append("batch_id = ?")
            args.append(self.batch)
        if self.model is not None:
            where.append(f"{_MODEL_SQL} = ?")
            args.append(self.model)
        if self.search:
            escaped = self.search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append(f"{_PROMPT_SQL} LIKE ? ESCAPE '\\'")
            args.append(f"%{escaped}%")
        return source, where, args

    def matches(self, job: JobRow) -> bool:
        """What `sql` selects, for one job in hand (a new job, before a filtered list shows it)."""
        return (
            (self.status is None or job.status == self.status)
            and (self.model is None or job.request.model == self.model)
            and (self.batch is None or job.batch_id == self.batch)
            and (not self.search or _ascii_lower(self.search) in _ascii_lower(job.request.prompt or ""))
        )


class JobUpdate(msgspec.Struct, frozen=True, kw_only=True):
    """Column changes that go into the same transaction as one event."""

    status: str | None = None
    progress: JobProgress | None = None
    error: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    start_attempt: bool = False
    num_frames_chosen: int | None = None  # the runner's text-phase choices (protocol.NumFrames, EnhancedPrompt)
    enhanced_prompt: str | None = None
    estimate: Estimate | None = None  # made again: at the length the runner chose
    slot: str | None = None  # the slot a starting job runs on


_JOB_COLUMNS = (
    "seq, id, status, request, progress, error, result, attempts, created_at, started_at, finished_at, estimate, "
    "keep, files_removed_at, batch_id, provenance, num_frames_chosen, enhanced_prompt, slot, "
    "(SELECT json_object('url', url, 'events', json(events)) FROM webhooks WHERE webhooks.job_id = jobs.id)"
)
_TERMINAL_SQL = ",".join(f"'{status}'" for status in sorted(TERMINAL))
# The order queued jobs start in: moved to the front (a higher priority) first, then as submitted.
_QUEUE_ORDER = "priority DESC, seq"
PACE_WINDOW = 200  # the newest succeeded jobs the slots' paces are read from (each slot's newest cost.PACE_RUNS)
IDEMPOTENCY_KEEP_S = 24 * 3600  # how long an Idempotency-Key answers with its first job


_decode_request = msgspec.json.Decoder(Request).decode
_decode_estimate = msgspec.json.Decoder(Estimate).decode
_decode_webhook = msgspec.json.Decoder(Webhook).decode
_decode_provenance = msgspec.json.Decoder(Provenance).decode


def _encode(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def _as_run(request: Request, num_frames_chosen: int | None) -> Request:
    """A finished job's request as it ran: num_frames "auto" as the length its duration head chose."""
    if isinstance(request.num_frames, int):
        return request
    return msgspec.structs.replace(request, num_frames=num_frames_chosen)


def _row_to_job(row: tuple) -> JobRow:
    (
        seq,
        job_id,
        status,
        request,
        progress,
        error,
        result,
        attempts,
        created,
        started,
        finished,
        estimate,
        keep,
        removed,
        batch_id,
        provenance,
        num_frames_chosen,
        enhanced_prompt,
        slot,
        webhook,
    ) = row
    return JobRow(
        seq=seq,
        id=job_id,
        status=status,
        request=_decode_request(request),
        progress=decode_progress(progress),
        error=json.loads(error) if error else None,
        result=json.loads(result) if result else None,
        attempts=attempts,
        created_at=created,
        started_at=started,
        finished_at=finished,
        estimate=_decode_estimate(estimate) if estimate else None,
        keep=bool(keep),
        files_removed_at=removed,
        webhook=_decode_webhook(webhook) if webhook else None,
        batch_id=batch_id,
        provenance=_decode_provenance(provenance) if provenance else None,
        num_frames_chosen=num_frames_chosen,
        enhanced_prompt=enhanced_prompt,
        slot=slot,
    )


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        migrations.migrate(self._db)  # creates a new database, or upgrades one an older release made
        self._limiter = anyio.CapacityLimiter(1)

    def close(self) -> None:
        self._db.close()

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run one of the synchronous methods below in a worker thread, one at a time."""
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), limiter=self._limiter)

    # ---- synchronous API (call through `call` from async code) --------------------

    def create_job(
        self,
        job_id: str,
        request: Request,
        first_event: dict[str, Any],
        max_queued: int,
        estimate: Estimate | None = None,
        webhook: Webhook | None = None,
        idempotency: tuple[str, str] | None = None,
        batch_id: str | None = None,
        provenance: Provenance | None = None,
    ) -> StoredEvent | None:
        """Insert a job with its first event; None (nothing written) when `max_queued` jobs already wait.

        `idempotency` (an Idempotency-Key and its body's hash) is kept with the job for IDEMPOTENCY_KEEP_S; keys
        older than that are forgotten here."""
        now = time.time()
        with self._transaction():
            if self.count_with_status("queued") >= max_queued:
                return None
            if idempotency is not None:
                self._db.execute("DELETE FROM idempotency_keys WHERE created_at < ?", (now - IDEMPOTENCY_KEEP_S,))
                self._db.execute(
                    "INSERT INTO idempotency_keys (key, body_hash, job_id, created_at) VALUES (?, ?, ?, ?)",
                    (*idempotency, job_id, now),
                )
            self._db.execute(
                "INSERT INTO jobs (id, status, request, progress, created_at, estimate, batch_id, provenance) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    first_event["type"],
                    _encode(request),
                    _encode(JobProgress()),
                    now,
                    None if estimate is None else _encode(estimate),
                    batch_id,
                    None if provenance is None else _encode(provenance),
                ),
            )
            if webhook is not None:
                self._db.execute(
                    "INSERT INTO webhooks (job_id, url, events) VALUES (?, ?, ?)",
                    (job_id, webhook.url, _encode(webhook.events)),
                )
            return self._append(job_id, first_event, now)

    def record(
        self,
        job_id: str,
        event: dict[str, Any],
        update: JobUpdate | None = None,
        webhook_event: WebhookEvent | None = None,
    ) -> StoredEvent:
        """Append one event and apply its column changes atomically; the event gets the next id. A webhook
        delivery the event makes is queued in the same transaction, so no restart loses it."""
        now = time.time()
        with self._transaction():
            stored = self._append(job_id, event, now)
            if update is not None:
                self._apply(job_id, update, now)
            if webhook_event is not None:
                self._queue_delivery(job_id, webhook_event, now)
        return stored

    def get_job(self, job_id: str) -> JobRow | None:
        row = self._db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _row_to_job(row) if row else None

    def extensions_of(self, job_id: str) -> list[str]:
        """The ids of the jobs that extend this one (their request's extend_from), oldest first."""
        rows = self._db.execute(
            "SELECT id FROM jobs WHERE json_extract(request, '$.extend_from') = ? ORDER BY seq", (job_id,)
        ).fetchall()
        return [row[0] for row in rows]

    def idempotent_job(self, key: str) -> tuple[str, str] | None:
        """(the job id, its body's hash) a fresh Idempotency-Key was first used for; None for a new or expired key."""
        return self._db.execute(
            "SELECT job_id, body_hash FROM idempotency_keys WHERE key = ? AND created_at >= ?",
            (key, time.time() - IDEMPOTENCY_KEEP_S),
        ).fetchone()

    def next_queued(self) -> str | None:
        """The id of the queued job that starts next."""
        query = f"SELECT id FROM jobs WHERE status = 'queued' ORDER BY {_QUEUE_ORDER} LIMIT 1"
        row = self._db.execute(query).fetchone()
        return row[0] if row else None

    def queue_snapshot(self) -> QueueSnapshot:
        running = self._db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE status = 'running' ORDER BY started_at")
        queued = self._db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE status = 'queued' ORDER BY {_QUEUE_ORDER}")
        return QueueSnapshot(
            paused=self.paused(),
            running=[_row_to_job(r) for r in running],
            queued=[_row_to_job(r) for r in queued],
            slot_paces=self.slot_paces(),
        )

    def slot_paces(self) -> dict[str, float]:
        """Each slot's pace (`cost.pace`), from its jobs among the newest PACE_WINDOW that succeeded: how long each
        held its slot over the duration it was estimated at when it started."""
        rows = self._db.execute(
            "SELECT slot, (finished_at - started_at) / json_extract(estimate, '$.duration_s') FROM jobs "
            "WHERE status = 'succeeded' ORDER BY seq DESC LIMIT ?",
            (PACE_WINDOW,),
        )
        ratios: dict[str, list[float]] = {}
        for slot, ratio in rows:
            if slot is not None and ratio is not None:
                ratios.setdefault(slot, []).append(ratio)
        return {slot: cost.pace(runs) for slot, runs in ratios.items()}

    def prioritize(self, job_id: str) -> bool:
        """Put a queued job before every other queued job; False when it is not queued."""
        cursor = self._db.execute(
            "UPDATE jobs SET priority = (SELECT COALESCE(MAX(priority), 0) + 1 FROM jobs WHERE status = 'queued') "
            "WHERE id = ? AND status = 'queued'",
            (job_id,),
        )
        return cursor.rowcount == 1

    def paused(self) -> bool:
        row = self._db.execute("SELECT value FROM queue_state WHERE name = 'paused'").fetchone()
        return row is not None and row[0] == "1"

    def set_paused(self, paused: bool) -> None:
        self._db.execute(
            "INSERT INTO queue_state (name, value) VALUES ('paused', ?) ON CONFLICT(name) DO UPDATE SET value = ?",
            ("1" if paused else "0",) * 2,
        )

    def set_estimate(self, job_id: str, estimate: Estimate) -> None:
        self._db.execute("UPDATE jobs SET estimate = ? WHERE id = ?", (_encode(estimate), job_id))

    def list_jobs(self, limit: int, before_seq: int | None = None, only: JobFilter | None = None) -> list[JobRow]:
        """Up to `limit` jobs, newest first: those submitted before `before_seq` (keyset paging), that match `only`."""
        source, where, args = (only or JobFilter()).sql()
        if before_seq is not None:
            where, args = [*where, "seq < ?"], [*args, before_seq]
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        query = f"SELECT {_JOB_COLUMNS} FROM {source} {clause}ORDER BY seq DESC LIMIT ?"
        rows = self._db.execute(query, (*args, limit))
        return [_row_to_job(r) for r in rows]

    def batch_jobs(self, batch_id: str) -> list[JobRow]:
        """A batch's jobs in the order they were submitted; none for an unknown batch."""
        rows = self._db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE batch_id = ? ORDER BY seq", (batch_id,))
        return [_row_to_job(r) for r in rows]

    def jobs_with_status(self, statuses: Iterable[str]) -> list[JobRow]:
        wanted = list(statuses)
        marks = ",".join("?" * len(wanted))
        rows = self._db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE status IN ({marks}) ORDER BY seq", wanted)
        return [_row_to_job(r) for r in rows]

    def count_with_status(self, status: str) -> int:
        return self._db.execute("SELECT COUNT(*) FROM jobs WHERE status = ?", (status,)).fetchone()[0]

    def last_event_id(self, job_id: str) -> int:
        """The id of the job's newest event; 0 when it has none."""
        return self._db.execute("SELECT COALESCE(MAX(id), 0) FROM job_events WHERE job_id = ?", (job_id,)).fetchone()[0]

    def events_after(self, job_id: str, after_id: int) -> list[StoredEvent]:
        rows = self._db.execute(
            "SELECT id, type, data FROM job_events WHERE job_id = ? AND id > ? ORDER BY id", (job_id, after_id)
        )
        return [StoredEvent(id=i, type=t, data=json.loads(d)) for i, t, d in rows]

    def past_runs(self, model_id: str, limit: int) -> list[PastRun]:
        """The newest `limit` finished jobs of `model_id`, newest first: what a job-cost estimate learns from."""
        rows = self._db.execute(
            "SELECT request, num_frames_chosen, json_extract(result, '$.timings'), finished_at - started_at, "
            "json_extract(result, '$.peak_vram_gib') IS NULL, "
            "(SELECT json_extract(data, '$.elapsed_s') FROM job_events WHERE job_id = jobs.id AND type = 'step' "
            " AND json_extract(data, '$.step') = 1 ORDER BY id DESC LIMIT 1) FROM jobs "  # the last attempt's
            "WHERE status = 'succeeded' AND json_extract(request, '$.model') = ? "
            # an "auto" length learns only once known (always, for a job that succeeded)
            "AND (json_type(request, '$.num_frames') = 'integer' OR num_frames_chosen IS NOT NULL) "
            "ORDER BY seq DESC LIMIT ?",
            (model_id, limit),
        )
        return [
            PastRun(
                request=_as_run(_decode_request(request), num_frames_chosen),
                device="cpu" if on_cpu else "cuda",  # a CPU run reports no VRAM peak
                held_s=held,
                timings=json.loads(timings),
                first_step_s=first_step,
            )
            for request, num_frames_chosen, timings, held, on_cpu, first_step in rows
            if timings and held is not None
        ]

    def unfinished_disk_bytes(self) -> tuple[int, int]:
        """(the bytes their estimates say they write, how many) of the jobs queued, running or interrupted."""
        return self._db.execute(
            "SELECT COALESCE(SUM(json_extract(estimate, '$.disk_bytes')), 0), COUNT(*) FROM jobs "
            "WHERE status IN ('queued', 'running', 'interrupted')"
        ).fetchone()

    def delete_job(self, job_id: str) -> None:
        with self._transaction():
            self._db.execute("DELETE FROM job_events WHERE job_id = ?", (job_id,))
            self._db.execute("DELETE FROM webhook_deliveries WHERE job_id = ?", (job_id,))
            self._db.execute("DELETE FROM webhooks WHERE job_id = ?", (job_id,))
            self._db.execute("DELETE FROM idempotency_keys WHERE job_id = ?", (job_id,))
            self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def set_slot(self, job_id: str, slot: str) -> bool:
        """Name where the running job runs (its Ray node and card, learnt after it started); False when it no
        longer runs."""
        cursor = self._db.execute("UPDATE jobs SET slot = ? WHERE id = ? AND status = 'running'", (slot, job_id))
        return cursor.rowcount == 1

    def set_keep(self, job_id: str, keep: bool) -> bool:
        """Mark or unmark the job keep; False when there is no such job or its files are gone already."""
        cursor = self._db.execute(
            "UPDATE jobs SET keep = ? WHERE id = ? AND files_removed_at IS NULL", (int(keep), job_id)
        )
        return cursor.rowcount == 1

    def jobs_with_removable_files(self) -> list[JobRow]:
        """Finished jobs not marked keep whose files are still there, the longest finished first."""
        rows = self._db.execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE status IN ({_TERMINAL_SQL}) AND keep = 0 "
            "AND files_removed_at IS NULL ORDER BY finished_at, seq"
        )
        return [_row_to_job(r) for r in rows]

    def claim_files_removal(self, job_id: str, now: float) -> bool:
        """Note that the job's files are being removed, if it may still lose them (finished, not marked keep
        meanwhile, not deleted); False otherwise. Claimed in one statement, so a keep mark never races it."""
        cursor = self._db.execute(
            f"UPDATE jobs SET files_removed_at = ? WHERE id = ? AND status IN ({_TERMINAL_SQL}) AND keep = 0 "
            "AND files_removed_at IS NULL",
            (now, job_id),
        )
        return cursor.rowcount == 1

    def create_upload(self, upload_id: str, filename: str, width: int, height: int, created_at: float) -> None:
        self._db.execute(
            "INSERT INTO uploads (id, filename, width, height, created_at) VALUES (?, ?, ?, ?, ?)",
            (upload_id, filename, width, height, created_at),
        )

    def get_upload(self, upload_id: str, young_since: float) -> tuple[str, str, int, int, float] | None:
        """(id, filename, width, height, created_at) unless it expired: older than `young_since` and unused."""
        return self._db.execute(
            f"SELECT id, filename, width, height, created_at FROM uploads WHERE id = ? AND {_UPLOAD_ALIVE}",
            (upload_id, young_since),
        ).fetchone()

    def expired_uploads(self, young_since: float) -> list[str]:
        rows = self._db.execute(f"SELECT id FROM uploads WHERE NOT {_UPLOAD_ALIVE}", (young_since,))
        return [upload_id for (upload_id,) in rows]

    def delete_upload(self, upload_id: str) -> None:
        self._db.execute("DELETE FROM uploads WHERE id = ?", (upload_id,))

    def deliveries(self, job_id: str) -> list[Delivery]:
        """The job's webhook deliveries, oldest first."""
        rows = self._db.execute(
            f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries WHERE job_id = ? ORDER BY rowid", (job_id,)
        )
        return [Delivery(*row) for row in rows]

    def due_deliveries(self, now: float) -> tuple[list[Delivery], float | None]:
        """The pending deliveries due by `now`, oldest first, and when the next one not yet due is."""
        rows = self._db.execute(
            f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries WHERE state = 'pending' AND next_at <= ? "
            "ORDER BY next_at, rowid",
            (now,),
        )
        due = [Delivery(*row) for row in rows]
        (upcoming,) = self._db.execute(
            "SELECT MIN(next_at) FROM webhook_deliveries WHERE state = 'pending' AND next_at > ?", (now,)
        ).fetchone()
        return due, upcoming

    def record_attempt(
        self, delivery_id: str, now: float, status: int | None, error: str | None, retry_at: float | None
    ) -> None:
        """One attempt's outcome: delivered (no error), pending again until `retry_at`, or failed for good."""
        state = "delivered" if error is None else "pending" if retry_at is not None else "failed"
        self._db.execute(
            "UPDATE webhook_deliveries SET state = ?, attempts = attempts + 1, next_at = ?, last_attempt_at = ?, "
            "last_status = ?, last_error = ? WHERE id = ?",
            (state, retry_at if state == "pending" else None, now, status, error, delivery_id),
        )

    # ---- internals ------------------------------------------------------------------

    def _queue_delivery(self, job_id: str, event: WebhookEvent, now: float) -> None:
        wanted = self._db.execute("SELECT url, events FROM webhooks WHERE job_id = ?", (job_id,)).fetchone()
        if wanted is None or event.name not in json.loads(wanted[1]):
            return
        if event.min_interval_s:
            (last,) = self._db.execute(
                "SELECT MAX(created_at) FROM webhook_deliveries WHERE job_id = ? AND event = ?", (job_id, event.name)
            ).fetchone()
            if last is not None and now - last < event.min_interval_s:
                return
        job = self.get_job(job_id)
        assert job is not None  # its event was just appended in this transaction
        self._db.execute(
            "INSERT INTO webhook_deliveries (id, job_id, event, url, body, state, created_at, next_at) "
            "VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)",
            (f"msg_{uuid.uuid4().hex}", job_id, event.name, wanted[0], event.render(job, event.name), now, now),
        )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _append(self, job_id: str, event: dict[str, Any], now: float) -> StoredEvent:
        last = self.last_event_id(job_id)
        data = {**event, "id": last + 1}
        self._db.execute(
            "INSERT INTO job_events (job_id, id, type, data, at) VALUES (?, ?, ?, ?, ?)",
            (job_id, last + 1, event["type"], json.dumps(data), now),
        )
        return StoredEvent(id=last + 1, type=event["type"], data=data)

    def _apply(self, job_id: str, update: JobUpdate, now: float) -> None:
        sets: list[str] = []
        values: list[Any] = []
        if update.status is not None:
            sets.append("status = ?")
            values.append(update.status)
            if update.status in TERMINAL:
                sets.append("finished_at = ?")
                values.append(now)
        if update.slot is not None:
            sets.append("slot = ?")
            values.append(update.slot)
        for column in ("progress", "error", "result", "estimate"):
            value = getattr(update, column)
            if value is not None:
                sets.append(f"{column} = ?")
                values.append(_encode(value))
        for column in ("num_frames_chosen", "enhanced_prompt"):
            value = getattr(update, column)
            if value is not None:
                sets.append(f"{column} = ?")
                values.append(value)
        if update.start_attempt:
            sets += ["attempts = attempts + 1", "started_at = ?", "finished_at = NULL", "error = NULL"]
            sets += ["num_frames_chosen = NULL", "enhanced_prompt = NULL"]  # this attempt's text phase chooses again
            values.append(now)
        if sets:
            self._db.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id = ?", (*values, job_id))
