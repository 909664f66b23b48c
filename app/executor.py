"""What runs a job's directory: the one interface the worker drives, whichever machine does the work.

The worker (app/queue.py) decides which job runs next and records what happens; an executor has slots
(app/slots.py), says which free slot can hold a job now (`claim`, from the job's predicted peak), runs a job
directory on it, streams the runner's protocol events back and says how it ended. The local slots
(app/runner.py: runner processes on this machine, a spare waiting per slot) and a Ray cluster's GPUs
(app/ray_executor.py) implement the same methods, so the worker does not change; both keep their claims in
`SlotClaims`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import msgspec

from contract import protocol

EventSink = Callable[[protocol.Event], Awaitable[None]]  # gets each protocol event of one job, in order
# gets where a job runs, once an executor whose slots are no place (Ray's) learns it: the name the job keeps
PlaceSink = Callable[[str], Awaitable[None]]


class Outcome(msgspec.Struct, frozen=True):
    # succeeded, failed or cancelled; interrupted: the machine running it went away (a Ray node), so the worker
    # queues it again once
    status: str
    code: str | None = None
    message: str | None = None

    def details(self) -> dict[str, Any]:
        return {k: v for k, v in (("code", self.code), ("message", self.message)) if v is not None}


class SlotState(msgspec.Struct, frozen=True):
    """One slot as /healthz shows it."""

    name: str  # "gpu0", "cpu1": job JSON's `slot`
    device: str  # "cuda" or "cpu"
    card: int | None  # the card's number (nvidia-smi's); None for a CPU slot
    job: str | None  # the job it runs; None when free (or claimed for a job about to start)
    free_gib: float | None  # what a job may take there now (a card's free memory, a CPU slot's setting)
    total_gib: float | None  # the most a job could ever take there; None: unchecked
    spare_pid: int | None  # its waiting spare runner
    # warm mode (AVP_KEEP_WARM_S): the model whose weights its warm runner holds, until when (Unix time), its pid
    resident_model: str | None = None
    resident_until: float | None = None
    resident_pid: int | None = None


class SlotClaims:
    """Which of an executor's slots are claimed, and for which job (None: claimed, its job not yet started)."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = tuple(names)
        self._jobs: dict[str, str | None] = {}

    @property
    def capacity(self) -> int:
        return len(self.names)

    @property
    def free(self) -> int:
        return len(self.names) - len(self._jobs)

    def is_claimed(self, name: str) -> bool:
        return name in self._jobs

    def take(self, name: str) -> None:
        self._jobs[name] = None

    def running(self, name: str, job_id: str) -> None:
        self._jobs[name] = job_id

    def release(self, name: str) -> None:
        self._jobs.pop(name, None)

    def job(self, name: str) -> str | None:
        return self._jobs.get(name)


class SlotLook(Protocol):
    """An executor's slots at one look (`Executor.look`)."""

    def unholdable(self, need_gib: float | None) -> str | None:
        """Why no slot could ever hold a job whose predicted peak is `need_gib` GiB; None when one could."""
        ...

    def claim(self, need_gib: float | None) -> str | None:
        """Claim a free slot that can hold a job whose predicted peak is `need_gib` GiB (None: unknown) now; its
        name, or None while none can. The worker hands it to `run` or gives it back with `release`."""
        ...


class Executor(Protocol):
    @property
    def capacity(self) -> int:
        """How many slots it has: the worker never has more jobs than this in flight."""
        ...

    @property
    def slot_names(self) -> tuple[str, ...]:
        """Its slots' names, in order ("gpu0", "cpu1", "ray0"): what a job's `slot` says, and the queue's forecast
        lays jobs on."""
        ...

    @property
    def free_slots(self) -> int:
        """How many slots are neither running nor claimed."""
        ...

    @property
    def cpu_only(self) -> bool:
        """Every slot was asked to compute on the CPU (AVP_GPUS=cpu:N), so jobs are estimated for the CPU."""
        ...

    def unholdable(self, need_gib: float | None) -> str | None:
        """Why no slot could ever hold a job whose predicted peak is `need_gib` GiB; None when one could."""
        ...

    def look(self) -> SlotLook:
        """The slots as they stand now, for one pass of the worker through the queue: each slot's memory is read
        at most once however many queued jobs the pass weighs."""
        ...

    def release(self, slot: str) -> None:
        """The claimed slot's job ended or never started: it is free again."""
        ...

    def states(self) -> list[SlotState]:
        """Every slot, in order, for /healthz."""
        ...

    async def start(self) -> None:
        """Get ready for the first job (before the worker takes any)."""
        ...

    async def run(
        self, job_id: str, job_dir: Path, on_event: EventSink, slot: str, on_placed: PlaceSink | None = None
    ) -> Outcome:
        """Run the job written in `job_dir` on the claimed `slot` to its end, handing each protocol event to
        `on_event`. Where the slot names no machine (a Ray slot), `on_placed` gets the job's place once known
        (its node and card), which the job then shows as its slot.

        A cancel of the calling task (a shutdown) stops the job's runner before it propagates.
        """
        ...

    def cancel(self, job_id: str) -> bool:
        """Ask the job's runner to stop (`run` then returns `cancelled`); False when it runs no such job."""
        ...

    async def close(self) -> None:
        """Nothing of the executor's outlives this (the worker calls it once it stops)."""
        ...
