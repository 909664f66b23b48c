"""What runs a job's directory: the one interface the worker drives, whichever machine does the work.

The worker (app/queue.py) decides which job runs and records what happens; an executor only runs
a job directory, streams the runner's protocol events back and says how it ended. The local
supervisor (app/runner.py, runner processes on this machine with a spare waiting) is the one
implementation today; another (a remote pool) implements the same methods and the worker does not change.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import msgspec

from contract import protocol

EventSink = Callable[[protocol.Event], Awaitable[None]]  # gets each protocol event of one job, in order


class Outcome(msgspec.Struct, frozen=True):
    status: str  # succeeded, failed or cancelled
    code: str | None = None
    message: str | None = None

    def details(self) -> dict[str, Any]:
        return {k: v for k, v in (("code", self.code), ("message", self.message)) if v is not None}


class Executor(Protocol):
    @property
    def capacity(self) -> int:
        """How many jobs it runs at once: the worker never has more than this in flight."""
        ...

    async def start(self) -> None:
        """Get ready for the first job (before the worker takes any)."""
        ...

    async def run(self, job_id: str, job_dir: Path, on_event: EventSink) -> Outcome:
        """Run the job written in `job_dir` to its end, handing each protocol event to `on_event`.

        A cancel of the calling task (a shutdown) stops the job's runner before it propagates.
        """
        ...

    def cancel(self, job_id: str) -> bool:
        """Ask the job's runner to stop (`run` then returns `cancelled`); False when it runs no such job."""
        ...

    async def close(self) -> None:
        """Nothing of the executor's outlives this (the worker calls it once it stops)."""
        ...
