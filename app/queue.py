"""The single GPU worker: one consumer drains a stream of job ids, so two jobs never share VRAM.

SQLite is the source of truth; the stream only carries ids. At start-up every job still
queued is put back on the stream, and a job that was running when the process died is
marked interrupted and queued again once.
"""

from __future__ import annotations

import logging
import math
import subprocess
from pathlib import Path

import anyio

from app.journal import Journal
from app.runner import Supervisor, runner_command, runner_env
from app.store import Store
from contract.models import DEMO_MANIFEST

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 2  # a job interrupted by a restart runs once more, not forever


class Worker:
    def __init__(
        self, store: Store, journal: Journal, supervisor: Supervisor, jobs_dir: Path, runner_python: str
    ) -> None:
        self._store = store
        self._journal = journal
        self._supervisor = supervisor
        self._jobs_dir = jobs_dir
        self._runner_python = runner_python
        self._send, self._receive = anyio.create_memory_object_stream[str](math.inf)
        self.alive = False
        self.state = "starting"
        self.current_job: str | None = None

    def enqueue(self, job_id: str) -> None:
        self._send.send_nowait(job_id)

    async def recover(self) -> None:
        """Queue again what a previous process left queued, running or interrupted."""
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
            self.enqueue(job.id)

    async def run(self, demo_model_dir: Path | None) -> None:
        self.alive = True
        try:
            if demo_model_dir is not None:
                await self._ensure_demo_model(demo_model_dir)
            await self._supervisor.ensure_spare()  # the first job's runner, importing while nobody waits
            self.state = "idle"
            async for job_id in self._receive:
                await self._process(job_id)
                # The job has ended and its status is written: the next runner's imports compete with nothing.
                await self._supervisor.ensure_spare()
                self.state = "idle"
        finally:
            self.alive = False
            self.state = "stopped"
            await self._supervisor.close()  # no spare runner outlives the worker

    async def _process(self, job_id: str) -> None:
        job = await self._store.call(self._store.get_job, job_id)
        if job is None or job.status != "queued":
            return  # cancelled or deleted while it waited
        self.current_job = job_id
        self.state = "running"
        try:
            await self._journal.set_status(job_id, "running", start_attempt=True, attempt=job.attempts + 1)
            outcome = await self._supervisor.run(job_id, self._jobs_dir / job_id)
            await self._journal.set_status(job_id, outcome.status, **outcome.details())
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self._journal.set_status(
                    job_id, "interrupted", message="The portal stopped while this job ran; it runs again at start-up."
                )
            raise
        except Exception as exc:  # one job's failure must never stop the worker
            log.exception("job %s failed inside the portal", job_id)
            await self._journal.set_status(
                job_id, "failed", code="internal", message=f"The portal could not run this job: {exc}"
            )
        finally:
            self.current_job = None

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
