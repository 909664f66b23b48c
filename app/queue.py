"""The worker: one consumer takes the queued jobs from SQLite in order, each to a free slot that can hold it.

A slot runs one job at a time (app/slots.py: one per card, so two jobs never share a card's memory). Which
machine runs a job is the executor's business (app/executor.py); the worker decides what runs next, on which
free slot (the executor's `claim`, from the job's predicted peak against what each slot has free now), and
records what happens.

A queued job that no free slot can hold now (another program holds memory on the free card, or only a
busy card is big enough) keeps its place: the jobs behind it that a free slot can hold start before it,
but only MAX_PASSES times; after that, while any job of ours runs, nothing behind it starts until it has
started (our jobs' ends free the memory it waits for). A job that no slot could ever hold (its peak beyond
every slot's total) fails at once, saying so; the submit refuses such a job already, so this is one queued
before the slots changed. While a job waits for room, the consumer looks again every ROOM_POLL_S (another
program's memory comes and goes without telling us), besides each wake.

SQLite is the queue: its order (a job moved to the front first, then submission order) and whether it
is paused live there, so both survive a restart and a queued job can be moved. The consumer reads the
next job whenever a slot is free and something changed (`wake`: a submit, a resume, a move). At
start-up a job that was running when the process died is marked interrupted and queued again once.
"""

from __future__ import annotations

import logging
import math
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio

from app.executor import EventSink, Executor, Outcome, PlaceSink, SlotState
from app.journal import Journal
from app.progress import JobProgress
from app.runner import runner_command, runner_env
from app.store import JobRow, Store
from contract import protocol
from contract.disk import is_disk_full
from contract.models import DEMO_MANIFEST

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 2  # a job interrupted by a restart runs once more, not forever
DISK_RETRY_S = 2.0  # how often the worker tries again to record a job while the data disk is full
WAITING_FOR_DISK = "waiting for disk space"  # the worker's state meanwhile (/healthz)
MAX_PASSES = 3  # how often jobs behind a queued job no free slot can hold may start before it
ROOM_POLL_S = 2.0  # how often a queued job waiting for a slot with room looks again
T = TypeVar("T")


class Worker:
    def __init__(self, store: Store, journal: Journal, executor: Executor, jobs_dir: Path, runner_python: str) -> None:
        self._store = store
        self._journal = journal
        self._executor = executor
        self._jobs_dir = jobs_dir
        self._runner_python = runner_python
        self._woken = anyio.Event()
        self.paused = False  # read from the store at recovery; no job starts while it is set
        self.alive = False
        self.state = "starting"
        self.running_jobs: list[str] = []  # in the order they started
        self.jobs_ended = 0  # since start-up: jobs this worker ran whose outcome is recorded
        self._job_ended = anyio.Event()
        self.waiting_for_room: list[str] = []  # queued jobs a free slot could not hold at the last look, in order
        self._passed: dict[str, int] = {}  # queued job: how many jobs behind it started before it

    @property
    def current_job(self) -> str | None:
        """The job that has run longest, if any runs."""
        return self.running_jobs[0] if self.running_jobs else None

    @property
    def slots(self) -> int:
        return self._executor.capacity

    @property
    def slot_names(self) -> tuple[str, ...]:
        return self._executor.slot_names

    @property
    def cpu_only(self) -> bool:
        return self._executor.cpu_only

    def slot_states(self) -> list[SlotState]:
        return self._executor.states()

    def unholdable(self, need_gib: float | None) -> str | None:
        """Why no slot could ever hold a job whose predicted peak is `need_gib` GiB; None when one could."""
        return self._executor.unholdable(need_gib)

    def wake(self) -> None:
        """The queue changed (a job queued or moved, the queue resumed): look again for the next job."""
        self._woken.set()
        self._woken = anyio.Event()

    async def set_paused(self, paused: bool) -> None:
        """Pause (running jobs finish, no queued job starts) or resume the queue; kept in the store."""
        await self._store.call(self._store.set_paused, paused)
        self.paused = paused
        self.wake()

    async def wait_for_job_end(self, seen: int) -> int:
        """Return once more than `seen` jobs have ended (`jobs_ended` counts them); how many have."""
        while self.jobs_ended <= seen:
            await self._job_ended.wait()
        return self.jobs_ended

    def cancel(self, job_id: str) -> bool:
        """Ask the executor to stop a running job; False when it runs no such job (it may still be queued)."""
        return self._executor.cancel(job_id)

    async def recover(self) -> None:
        """Queue again what a previous process left running or interrupted, and pause if it was paused."""
        self.paused = await self._store.call(self._store.paused)
        leftovers = await self._store.call(self._store.jobs_with_status, ("queued", "running", "interrupted"))
        for job in leftovers:
            status = job.status
            if status == "running":
                await self._journal.set_status(job.id, "interrupted", message="The portal stopped while this job ran.")
                status = "interrupted"
            if status == "interrupted":
                if job.attempts >= MAX_ATTEMPTS:
                    await self._journal.set_status(
                        job.id,
                        "failed",
                        code="internal",
                        message=f"The portal was interrupted {job.attempts} times while running this job; "
                        "it was not retried again. Submit it again to retry.",
                    )
                    continue
                await self._journal.set_status(job.id, "queued", message="Queued again after an interruption.")
        await self._journal.queue_moved()  # the pages' places, before the first page asks
        self.wake()

    async def run(self, demo_model_dir: Path | None) -> None:
        self.alive = True
        try:
            if demo_model_dir is not None:
                await self._ensure_demo_model(demo_model_dir)
            await self._executor.start()
            self.state = "idle"
            await self._consume()
        finally:
            self.alive = False
            self.state = "stopped"
            await self._executor.close()  # nothing of the executor's (a spare runner) outlives the worker

    async def _consume(self) -> None:
        """Start the next queued job a free slot can hold, once the job before it is marked running."""
        async with anyio.create_task_group() as jobs:
            while True:
                job_id, slot = await self._next_job()
                began = anyio.Event()
                jobs.start_soon(self._process, job_id, slot, began)
                await began.wait()  # so the next read sees this one running, and `running` keeps the queue's order

    async def _next_job(self) -> tuple[str, str]:
        """The queued job that starts next and the slot claimed for it, once there are and the queue is not
        paused."""
        while True:
            woken = self._woken  # taken before reading, so a change during the read is not missed
            if not self.paused and self._executor.free_slots:
                snapshot = await self._store.call(self._store.queue_snapshot)
                placed = await self._place(snapshot.queued)
                if placed is not None:
                    return placed
            with anyio.move_on_after(ROOM_POLL_S if self.waiting_for_room else math.inf):
                await woken.wait()

    async def _place(self, queued: list[JobRow]) -> tuple[str, str] | None:
        """The first queued job, in order, that a free slot can hold now, and its claimed slot; jobs behind one
        that waits for room pass it at most MAX_PASSES times (while a job of ours runs). Fails the jobs no slot
        could ever hold."""
        waiting: list[str] = []
        self._passed = {job.id: self._passed[job.id] for job in queued if job.id in self._passed}
        placed = None
        slots = self._executor.look()  # each slot's memory read once for the whole queue
        for job in queued:
            need = None if job.estimate is None else job.estimate.peak_gib
            never = slots.unholdable(need)
            if never is not None:
                await self._until_recorded(
                    job.id, self._journal.set_status, job.id, "failed", code="out_of_memory", message=never
                )
                continue
            slot = slots.claim(need)
            if slot is not None:
                for passed in waiting:
                    self._passed[passed] = self._passed.get(passed, 0) + 1
                self._passed.pop(job.id, None)
                placed = job.id, slot
                break
            waiting.append(job.id)
            if self._passed.get(job.id, 0) >= MAX_PASSES and self.running_jobs:
                break  # passed often enough: the jobs behind it wait until our running jobs free its room
        if waiting != self.waiting_for_room:
            log.info("queued jobs waiting for a slot with room: %s", ", ".join(waiting) or "none")
        self.waiting_for_room = waiting
        return placed

    async def _process(self, job_id: str, slot: str, began: anyio.Event) -> None:
        try:
            if await self._run(job_id, slot, began):
                self.jobs_ended += 1
                self._job_ended.set()
                self._job_ended = anyio.Event()
        finally:
            began.set()  # however it ended, the consumer goes on
            self._executor.release(slot)
            if not self.running_jobs:
                self.state = "idle"
            self.wake()  # a slot is free: the consumer looks again

    async def _run(self, job_id: str, slot: str, began: anyio.Event) -> bool:
        """Run one queued job and record how it ended; False when it was no longer queued."""
        job = await self._store.call(self._store.get_job, job_id)
        if job is None or job.status != "queued":
            return False  # cancelled or deleted while it waited
        self.running_jobs.append(job_id)
        self.state = "running"
        try:
            await self._until_recorded(
                job_id,
                self._journal.set_status,
                job_id,
                "running",
                start_attempt=True,
                slot=slot,
                attempt=job.attempts + 1,
            )
            began.set()
            outcome = await self._executor.run(
                job_id, self._jobs_dir / job_id, self._recorder(job_id), slot, self._placer(job_id)
            )
            if outcome.status == "interrupted":  # its machine went away (a Ray node): once more, elsewhere
                await self._requeue_once(job_id, job.attempts + 1, outcome)
            else:
                await self._until_recorded(
                    job_id, self._journal.set_status, job_id, outcome.status, **outcome.details()
                )
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self._journal.set_status(
                    job_id, "interrupted", message="The portal stopped while this job ran; it runs again at start-up."
                )
            raise
        except Exception as exc:  # one job's failure must never stop the worker
            log.exception("job %s failed inside the portal", job_id)
            await self._until_recorded(
                job_id,
                self._journal.set_status,
                job_id,
                "failed",
                code="disk_full" if is_disk_full(exc) else "internal",  # e.g. its runner.log could not be created
                message=f"The portal could not run this job: {exc}",
            )
        finally:
            self.running_jobs.remove(job_id)
        return True

    async def _requeue_once(self, job_id: str, attempts: int, outcome: Outcome) -> None:
        """A job whose run was interrupted by its machine going away: queued again once, failed after that."""
        record = self._journal.set_status
        await self._until_recorded(job_id, record, job_id, "interrupted", code=outcome.code, message=outcome.message)
        if attempts < MAX_ATTEMPTS:
            await self._until_recorded(job_id, record, job_id, "queued", message="Queued again after an interruption.")
            return
        message = f"{outcome.message} It was interrupted {attempts} times and not retried again; submit it again."
        await self._until_recorded(job_id, record, job_id, "failed", code="internal", message=message)

    def _placer(self, job_id: str) -> PlaceSink:
        """Records where the job runs, once its executor learns it (a Ray node), as the job's slot."""

        async def place(where: str) -> None:
            await self._until_recorded(job_id, self._journal.set_slot, job_id, where)

        return place

    def _recorder(self, job_id: str) -> EventSink:
        """Journals each of the job's protocol events, carrying its progress from one to the next."""
        progress = JobProgress()

        async def record(event: protocol.Event) -> None:
            nonlocal progress
            progress = await self._until_recorded(job_id, self._journal.runner_event, job_id, event, progress)

        return record

    async def _until_recorded(self, job_id: str, write: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """`write(*args, **kwargs)`, a journal write, tried again every DISK_RETRY_S while the data disk is full.

        What happened to a job is stored before the queue moves on, so the worker waits for space instead of
        losing it (or dying). A runner meanwhile goes on until its own writes fail (`disk_full`) or it ends.
        """
        waited = False
        while True:
            try:
                written = await write(*args, **kwargs)
            except Exception as error:
                if not is_disk_full(error):
                    raise
                if not waited:
                    log.warning("job %s: the data disk is full (%s); waiting for space to record it", job_id, error)
                    waited, self.state = True, WAITING_FOR_DISK
                await anyio.sleep(DISK_RETRY_S)
                continue
            if waited:
                log.info("job %s: recorded again, the data disk has room", job_id)
                self.state = "running"
            return written

    async def _ensure_demo_model(self, directory: Path) -> None:
        """Build the demo model on first start (a few seconds, no network)."""
        if (directory / DEMO_MANIFEST).is_file():
            return
        self.state = "building the demo model"
        directory.parent.mkdir(parents=True, exist_ok=True)
        log_path = directory.parent / "demo-model-build.log"
        log.info("building the demo model into %s", directory)
        with open(log_path, "wb") as build_log:
            result = await anyio.run_process(
                runner_command(self._runner_python, "demo-model", str(directory)),
                stdout=build_log,
                stderr=subprocess.STDOUT,
                env=runner_env(),
                check=False,
            )
        if result.returncode != 0:
            log.error("building the demo model failed (exit %s); see %s", result.returncode, log_path)
