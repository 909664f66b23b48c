"""The runner supervisor: spawns `python -m gpu_runner run <job dir>`, follows its protocol, ends it.

The child runs in its own session (its own process group) so a cancel reaches everything it
started, and it asks the kernel for SIGTERM when this process dies. Its stdout carries only
protocol lines; its stderr goes to runner.log. The user-facing outcome is decided by the exit
code and the last `error` event, never by a stack trace.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import anyio
import msgspec
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

import gpu_runner
from app.journal import Journal
from app.store import empty_progress
from gpu_runner import protocol

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 1 << 20
_PROJECT_ROOT = str(Path(gpu_runner.__file__).resolve().parent.parent)


def runner_command(python: str, *args: str) -> list[str]:
    return [python, "-m", "gpu_runner", *args]


def runner_env() -> dict[str, str]:
    """The runner's environment: ours, plus the project on its path (its interpreter may be another venv's)."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (_PROJECT_ROOT, os.environ.get("PYTHONPATH")) if p),
        "AVP_PARENT_PID": str(os.getpid()),
        "PYTHONUNBUFFERED": "1",
    }


class Outcome(msgspec.Struct, frozen=True):
    status: str  # succeeded, failed or cancelled
    code: str | None = None
    message: str | None = None

    def details(self) -> dict[str, Any]:
        return {k: v for k, v in (("code", self.code), ("message", self.message)) if v is not None}


class _Child:
    def __init__(self, process: Process) -> None:
        self.process = process
        self.cancel_requested = anyio.Event()

    def signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)


class _Transcript:
    """What the supervisor learned from the child's stdout."""

    def __init__(self) -> None:
        self.result: protocol.Result | None = None
        self.last_error: protocol.Error | None = None
        self.violation: str | None = None


class Supervisor:
    def __init__(self, runner_python: str, journal: Journal, cancel_grace_s: float) -> None:
        self._python = runner_python
        self._journal = journal
        self._grace = cancel_grace_s
        self._children: dict[str, _Child] = {}

    def cancel(self, job_id: str) -> bool:
        """Ask the job's runner to stop; False when no runner is running it."""
        child = self._children.get(job_id)
        if child is None:
            return False
        child.cancel_requested.set()
        return True

    async def run(self, job_id: str, job_dir: Path) -> Outcome:
        with open(job_dir / protocol.LOG_FILE, "ab") as stderr_log:
            process = await anyio.open_process(
                runner_command(self._python, "run", str(job_dir)),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr_log,
                cwd=job_dir,
                env=runner_env(),
                start_new_session=True,
            )
        child = _Child(process)
        self._children[job_id] = child
        transcript = _Transcript()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._stop_when_cancelled, child)
                await self._follow(job_id, child, transcript)
                await process.wait()
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._stop(child)
            self._children.pop(job_id, None)
        return _classify(process.returncode, child.cancel_requested.is_set(), transcript)

    async def _follow(self, job_id: str, child: _Child, transcript: _Transcript) -> None:
        assert child.process.stdout is not None
        lines = BufferedByteReceiveStream(child.process.stdout)
        progress = empty_progress()
        number = 0
        while True:
            try:
                line = await lines.receive_until(b"\n", MAX_LINE_BYTES)
            except (anyio.EndOfStream, anyio.IncompleteRead):
                return
            except anyio.DelimiterNotFound:
                transcript.violation = f"a line longer than {MAX_LINE_BYTES} bytes"
                break
            number += 1
            try:
                event = protocol.decode(line)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                shown = line[:120].decode("utf-8", "replace")
                transcript.violation = f"line {number} is not a protocol event ({exc}): {shown!r}"
                break
            if isinstance(event, protocol.Result):
                transcript.result = event
            elif isinstance(event, protocol.Error):
                transcript.last_error = event
            progress = await self._journal.runner_event(job_id, event, progress)
        log.warning("job %s: %s; stopping its runner", job_id, transcript.violation)
        await self._stop(child)

    async def _stop_when_cancelled(self, child: _Child) -> None:
        await child.cancel_requested.wait()
        await self._stop(child)

    async def _stop(self, child: _Child) -> None:
        """SIGTERM the child's group, SIGKILL it after the grace period, and reap it."""
        if child.process.returncode is None:
            child.signal_group(signal.SIGTERM)
            with anyio.move_on_after(self._grace):
                await child.process.wait()
        if child.process.returncode is None:
            child.signal_group(signal.SIGKILL)
            await child.process.wait()
        child.signal_group(signal.SIGKILL)  # anything the runner left behind in its group


_EXIT_MEANING = {
    protocol.EXIT_INVALID_INPUT: ("invalid_input", "The runner refused the job's settings."),
    protocol.EXIT_OUT_OF_MEMORY: ("out_of_memory", "The GPU ran out of memory."),
    protocol.EXIT_MODEL_MISSING: ("model_missing", "The model's files are missing or incomplete."),
}


def _classify(code: int | None, cancel_requested: bool, transcript: _Transcript) -> Outcome:
    if code == 0 and transcript.result is not None and transcript.violation is None:
        return Outcome("succeeded")
    if cancel_requested:
        return Outcome("cancelled", "cancelled", "Cancelled.")
    see_log = "Details are in the job's runner.log."
    if transcript.violation is not None:
        message = f"The runner broke the progress protocol: {transcript.violation}. {see_log}"
        return Outcome("failed", "internal", message)
    if code in _EXIT_MEANING:
        error_code, fallback = _EXIT_MEANING[code]
        message = transcript.last_error.message if transcript.last_error else fallback
        return Outcome("failed", error_code, message)
    if code == 0:
        return Outcome("failed", "internal", f"The runner exited without producing a video. {see_log}")
    if code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        hint = " This is usually the system running out of memory." if -code == signal.SIGKILL else ""
        return Outcome("failed", "internal", f"The runner was killed by {name}.{hint} {see_log}")
    if code in (protocol.EXIT_CANCELLED_INT, protocol.EXIT_CANCELLED_TERM):
        return Outcome("failed", "internal", f"The runner was stopped by a signal the portal did not send. {see_log}")
    if transcript.last_error is not None:
        return Outcome("failed", transcript.last_error.code, transcript.last_error.message)
    return Outcome("failed", "internal", f"The runner crashed (exit code {code}). {see_log}")
