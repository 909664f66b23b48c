"""The local executor (app/executor.py): `LocalSlots`, one `Supervisor` per runner slot of this host (app/slots.py);
a supervisor starts its slot's job's runner, follows its protocol, ends it.

Each slot is a supervisor of its own with its own spare and its slot's environment (its card, or no
card, and its threads), so what follows holds per slot. A job's runner is a fresh process: either a
spare (`python -m gpu_runner standby <jobs dir>`, spawned ahead so that torch and diffusers are
already imported when the job comes, and handed the job directory on its stdin) or, where no live
spare is there (or spares are off, AVP_SPARE_RUNNER), `python -m gpu_runner run <job dir>` spawned
for the job. At most one spare waits per slot, spawned when the executor starts and again as each
of the slot's jobs starts, so that the next queued job finds one ready; a slot runs one job at a
time. A spare waiting beside a running job yields the CPU to it:
its session's autogroup (Linux's CPU share of a session) gets the lowest weight, nice 19, until that
job's runner ends, and always before the spare is handed its job (0), so a job never runs at low
priority. A spare that dies before it reads its job (killed while idle, its end not yet noticed
when the job is handed over) ran nothing of it, so a runner spawned for the job runs it. Either way the
child runs in its own session (its own process group) so a cancel reaches everything it started,
and it asks the kernel for SIGTERM when this process dies. Its stdout carries only protocol lines,
handed one by one to the run's event sink; its stderr goes to runner.log (a spare's, until its job
comes, to `<jobs dir>/spare-runner.log`, or with several slots `spare-runner-<slot>.log`). The
user-facing outcome is decided by the exit code and the last `error` event, never by a stack trace.

Warm mode (AVP_KEEP_WARM_S, off by default): a runner whose job succeeded says `resident` instead of exiting and
stays, its model loaded (gpu_runner/resident.py), as the slot's warm runner; the slot's next job of the same model
directory is handed to it on its stdin, as to a spare, and skips loading. A job of another model ends it first (so
its memory is the new job's), as do a cancel of the job it runs, a failed job, the portal's shutdown, and the
timeout: the runner's own (it exits when no job came for AVP_KEEP_WARM_S) and ours (past its time, a little early
so that it never takes a job as it leaves, it is let go at the next job).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import msgspec
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from app.executor import EventSink, Outcome, PlaceSink, SlotClaims, SlotState
from app.slots import Slot, SlotMemory
from contract import jobdir, protocol

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 1 << 20
SPARE_LOG = "spare-runner.log"  # in the jobs directory: what spares say before their job comes
SPARE_LOG_MAX_BYTES = 1 << 20  # beyond this the log is moved to spare-runner.log.1 when a spare is spawned
SPARE_NICE = 19  # a waiting spare's autogroup: the lowest CPU weight, so its imports take what the job leaves
WARM_MARGIN_S = 2.0  # a warm runner is let go this long before its own AVP_KEEP_WARM_S clock ends it
# gpu_runner's parent: the runner's interpreter may be another venv's, without this project installed
_PROJECT_ROOT = str(Path(__file__).resolve().parent.parent)


def runner_command(python: str, *args: str) -> list[str]:
    return [python, "-m", "gpu_runner", *args]


async def open_runner(
    python: str, args: tuple[str, ...], *, stdin: int, stderr: Any, cwd: Path, env: Mapping[str, str] | None = None
) -> Process:
    """`python -m gpu_runner <args>` in a session of its own (so `signal_group` reaches whatever it starts), its
    stdout a pipe; `env`: what its environment adds (a slot's card and threads)."""
    return await anyio.open_process(
        runner_command(python, *args),
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=stderr,
        cwd=cwd,
        env=runner_env(env),
        start_new_session=True,
    )


def signal_group(process: Process, sig: signal.Signals) -> None:
    """Signal the runner's whole process group (its session), gone or not."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def runner_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The runner's environment: ours, plus the project on its path (its interpreter may be another venv's), plus
    `extra` (a slot's card and threads)."""
    return {
        **os.environ,
        **(extra or {}),
        "PYTHONPATH": os.pathsep.join(p for p in (_PROJECT_ROOT, os.environ.get("PYTHONPATH")) if p),
        "AVP_PARENT_PID": str(os.getpid()),
        "PYTHONUNBUFFERED": "1",
    }


class _Child:
    def __init__(self, process: Process, spare_spawned: float | None = None) -> None:
        self.process = process
        self.cancel_requested = anyio.Event()
        self.spare_spawned = spare_spawned  # a spare's spawn time (monotonic); None for a runner spawned for the job
        self.handed_over = spare_spawned is not None  # its job came on its stdin (a spare's, a warm runner's)
        self.log_size_at_hand_over = 0  # a handed job's runner.log (a job run again appends to it)
        self.niced = False  # a spare whose autogroup waits at SPARE_NICE

    def signal_group(self, sig: signal.Signals) -> None:
        signal_group(self.process, sig)


class Warm:
    """A slot's warm runner: kept after its job with `model` loaded, until `until` (monotonic)."""

    def __init__(self, child: _Child, model_path: str, resident: protocol.Resident, keep_s: float) -> None:
        self.child = child
        self.model_path = model_path  # job.json's model directory: a job of this directory is handed to it
        self.model = resident.model  # the model's id, as the runner said
        self.device_gib = resident.device_gib  # the GPU memory it holds idle (None on a CPU): the slot's next job's
        self.until = time.monotonic() + keep_s  # it is let go from then on
        self.until_wall = time.time() + keep_s  # the same moment, as Unix time, for /healthz

    def usable_for(self, model_path: str, now: float) -> bool:
        return self.child.process.returncode is None and now < self.until and model_path == self.model_path


class Transcript:
    """What the supervisor learned from the child's stdout."""

    def __init__(self) -> None:
        self.result: protocol.Result | None = None
        self.last_error: protocol.Error | None = None
        self.resident: protocol.Resident | None = None  # warm mode: the job ended, the runner stays
        self.violation: str | None = None
        self.lines = 0  # stdout lines read, protocol events or not

    def is_empty(self) -> bool:
        return self.lines == 0

    def read(self, line: bytes) -> protocol.Event | None:
        """One stdout line: its protocol event, noted; None (and `violation` set) when it is not one."""
        self.lines += 1
        try:
            event = protocol.decode(line)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            shown = line[:120].decode("utf-8", "replace")
            self.violation = f"line {self.lines} is not a protocol event ({exc}): {shown!r}"
            return None
        if isinstance(event, protocol.Result):
            self.result = event
        elif isinstance(event, protocol.Error):
            self.last_error = event
        elif isinstance(event, protocol.Resident):
            self.resident = event
        return event


class Supervisor:
    """One slot's runners: its job's, one at a time, and its spare."""

    def __init__(
        self,
        runner_python: str,
        cancel_grace_s: float,
        spare_jobs_dir: Path | None = None,
        *,
        env: Mapping[str, str] | None = None,
        spare_log_name: str = SPARE_LOG,
        keep_warm_s: float = 0.0,
    ) -> None:
        """`spare_jobs_dir`: the directory of the job directories, for a spare runner to wait in; None: no spares.
        `env`: what its runners' environment adds (its slot's card); `spare_log_name`: its spares' log, in
        `spare_jobs_dir`; `keep_warm_s`: AVP_KEEP_WARM_S, 0 for off."""
        self._python = runner_python
        self._grace = cancel_grace_s
        self._keep_warm_s = keep_warm_s
        self._env = dict(env or {}) | {"AVP_KEEP_WARM_S": f"{keep_warm_s:g}"}  # the runner's own clock
        self._warm: Warm | None = None
        self._spare_log_name = spare_log_name
        self._children: dict[str, _Child] = {}
        self._spare_jobs_dir = spare_jobs_dir
        self._spare: _Child | None = None
        self._closed = False

    @property
    def spare_log(self) -> Path | None:
        return None if self._spare_jobs_dir is None else self._spare_jobs_dir / self._spare_log_name

    @property
    def spare_pid(self) -> int | None:
        """The live spare's pid, if one is waiting."""
        spare = self._spare
        return spare.process.pid if spare is not None and spare.process.returncode is None else None

    async def ensure_spare(self, beside_a_job: bool = False) -> None:
        """Spawn a spare runner unless spares are off, one is alive, or the supervisor is closed.

        `beside_a_job`: a job's runner is running, so the spare waits at SPARE_NICE until that runner ends.
        Best effort: a spare that cannot be spawned is logged, and the next job spawns its own runner.
        """
        if self._spare_jobs_dir is None or self._closed:
            return
        if self._spare is not None:
            if self._spare.process.returncode is None:
                return
            dead = self._take_spare()
            await self._discard_spare(dead, f"it had exited with {dead.process.returncode}")
        log_path = self._spare_jobs_dir / self._spare_log_name
        spawned = time.monotonic()
        try:
            with anyio.CancelScope(shield=True):  # a spawned spare is always recorded, so close() finds it
                with contextlib.suppress(OSError):
                    if log_path.stat().st_size > SPARE_LOG_MAX_BYTES:
                        log_path.replace(log_path.with_name(self._spare_log_name + ".1"))
                args = ("standby", str(self._spare_jobs_dir))
                process = await self._open_runner(args, subprocess.PIPE, log_path, self._spare_jobs_dir)
                spare = self._spare = _Child(process, spare_spawned=spawned)
        except Exception:
            log.exception("could not spawn a spare runner; the next job spawns its own")
            return
        log.info("spawned spare runner %d (its log: %s)", process.pid, log_path)
        if beside_a_job:
            spare.niced = await set_autogroup_nice(process.pid, SPARE_NICE)

    @property
    def warm(self) -> Warm | None:
        """The warm runner, while it lives and its time lasts."""
        warm = self._warm
        return warm if warm is not None and warm.usable_for(warm.model_path, time.monotonic()) else None

    async def start(self) -> None:
        """The first job's runner, importing while nobody waits."""
        await self.ensure_spare()

    async def close(self) -> None:
        """No spare from now on; the waiting one, if any, is killed with its group and reaped; a warm runner too."""
        self._closed = True
        with anyio.CancelScope(shield=True):
            await self._discard_spare(self._take_spare(), None)
            await self._let_warm_go("the portal is stopping")

    def cancel(self, job_id: str) -> bool:
        """Ask the job's runner to stop; False when no runner is running it."""
        child = self._children.get(job_id)
        if child is None:
            return False
        child.cancel_requested.set()
        return True

    async def run(self, job_id: str, job_dir: Path, on_event: EventSink) -> Outcome:
        # Shielded: a cancel (a shutdown) cannot land between the hand-over and the registration, where
        # the runner would go on unsupervised; it lands inside _supervise, which stops the runner.
        with anyio.CancelScope(shield=True):
            child = (
                await self._hand_to_warm(job_id, job_dir)
                or await self._hand_to_spare(job_id, job_dir)
                or await self._spawn(job_dir)
            )
            self._children[job_id] = child
        transcript = await self._supervise(job_id, child, on_event)
        if child.handed_over and _never_took_its_job(job_dir, child):
            # The spare (or warm runner) ended before it read its job (killed while idle, its end not yet noticed
            # when the job was handed over): nothing of the job ran, so a runner spawned for it runs it now.
            _note_a_runner_that_never_took_its_job(job_dir, child, self.spare_log)
            if not child.cancel_requested.is_set() and transcript.is_empty():
                log.warning(
                    "runner %d not used: it had exited with %s before it took job %s; spawning a runner for it",
                    child.process.pid,
                    child.process.returncode,
                    job_id,
                )
                with anyio.CancelScope(shield=True):
                    child = await self._spawn(job_dir)
                    self._children[job_id] = child
                transcript = await self._supervise(job_id, child, on_event)
        outcome = classify(child.process.returncode, child.cancel_requested.is_set(), transcript)
        with anyio.CancelScope(shield=True):
            if transcript.resident is not None and child.process.returncode is None:
                await self._keep_warm(child, job_dir, transcript.resident, outcome)
            elif self._keep_warm_s:
                await child.process.aclose()  # its stdin, kept open for later jobs, closed with the rest
        return outcome

    async def _keep_warm(self, child: _Child, job_dir: Path, resident: protocol.Resident, outcome: Outcome) -> None:
        """The resident runner of a job that succeeded becomes the slot's warm runner; any other is stopped."""
        model_path = _model_path(job_dir)
        if outcome.status != "succeeded" or self._closed or model_path is None:
            await self._stop(child)
            await child.process.aclose()
            return
        self._warm = Warm(child, model_path, resident, max(self._keep_warm_s - WARM_MARGIN_S, 0.0))
        pid, keep = child.process.pid, self._keep_warm_s
        log.info("runner %d stays warm with %s (AVP_KEEP_WARM_S=%g)", pid, resident.model, keep)

    async def _hand_to_warm(self, job_id: str, job_dir: Path) -> _Child | None:
        """The warm runner, told the job's directory on its stdin, where it holds the job's model; else None, the
        warm runner (if any) let go first, so that its memory is the job's."""
        warm = self._warm
        if warm is None:
            return None
        model_path = _model_path(job_dir)
        if model_path is None or not warm.usable_for(model_path, time.monotonic()):
            await self._let_warm_go(f"job {job_id} is of another model" if model_path != warm.model_path else None)
            return None
        self._warm = None
        process = warm.child.process
        child = _Child(process)
        child.handed_over = True
        child.log_size_at_hand_over = _size(job_dir / jobdir.LOG_FILE)
        assert process.stdin is not None
        try:
            await process.stdin.send(os.fsencode(job_dir) + b"\n")
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as error:
            self._warm = warm
            await self._let_warm_go(f"it could not be handed job {job_id} ({error!r})")
            return None
        log.info("job %s: handed to warm runner %d, which holds %s", job_id, process.pid, warm.model)
        return child

    async def _let_warm_go(self, why: str | None) -> None:
        """End the warm runner (if any), which frees what it holds: SIGTERM to its group (idle, it dies at once),
        SIGKILL after the grace period, then reaped; `why`: None when its time is up or it is gone."""
        warm, self._warm = self._warm, None
        if warm is None:
            return
        if why is not None:
            log.info("warm runner %d let go: %s", warm.child.process.pid, why)
        await self._stop(warm.child)
        await warm.child.process.aclose()  # reaped, its pipes closed

    async def _supervise(self, job_id: str, child: _Child, on_event: EventSink) -> Transcript:
        """Follow a registered runner to its end (stopped on cancel), with a spare importing beside it."""
        transcript = Transcript()
        stays = False  # warm mode: its job ended at `resident`, uncancelled, so `run` may keep it as the warm runner
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._stop_when_cancelled, child)
                tg.start_soon(self.ensure_spare, True)  # the next job's runner, importing while this one runs
                await self._follow(job_id, child, transcript, on_event)
                if transcript.resident is None:  # a warm runner's job ends at `resident`; the runner stays
                    await child.process.wait()
                tg.cancel_scope.cancel()
            # Set only on a normal exit: a shutdown landing after `resident` (as the task group ends) raises here, and
            # the runner, which `run` will never register as warm, is stopped.
            stays = transcript.resident is not None and not child.cancel_requested.is_set()
        finally:
            with anyio.CancelScope(shield=True):
                if not stays:
                    await self._stop(child)
                if self._spare is not None:  # nothing of this job's competes with the spare's imports any more
                    await _give_back_full_weight(self._spare)
            self._children.pop(job_id, None)
        return transcript

    async def _follow(self, job_id: str, child: _Child, transcript: Transcript, on_event: EventSink) -> None:
        assert child.process.stdout is not None
        lines = BufferedByteReceiveStream(child.process.stdout)
        while True:
            try:
                line = await lines.receive_until(b"\n", MAX_LINE_BYTES)
            except (anyio.EndOfStream, anyio.IncompleteRead):
                return
            except anyio.DelimiterNotFound:
                transcript.violation = f"a line longer than {MAX_LINE_BYTES} bytes"
                break
            event = transcript.read(line)
            if event is None:
                break
            if isinstance(event, protocol.Resident):
                return  # the job is over; the runner waits for its next one (the slot's state, no job's event)
            await on_event(event)
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

    async def _spawn(self, job_dir: Path) -> _Child:
        """A runner of its own for this job: `python -m gpu_runner run <job dir>` (its stdin a pipe in warm mode,
        where its later jobs come)."""
        stdin = subprocess.PIPE if self._keep_warm_s else subprocess.DEVNULL
        process = await self._open_runner(("run", str(job_dir)), stdin, job_dir / jobdir.LOG_FILE, job_dir)
        return _Child(process)

    async def _open_runner(self, args: tuple[str, ...], stdin: int, log_path: Path, cwd: Path) -> Process:
        """A runner process, its stdout the protocol, its stderr appended to `log_path`."""
        with open(log_path, "ab") as stderr_log:
            return await open_runner(self._python, args, stdin=stdin, stderr=stderr_log, cwd=cwd, env=self._env)

    async def _hand_to_spare(self, job_id: str, job_dir: Path) -> _Child | None:
        """The waiting spare, told the job's directory on its stdin; None where there is no live spare."""
        spare = self._take_spare()
        if spare is None:
            return None
        if spare.process.returncode is not None:
            await self._discard_spare(spare, f"it had exited with {spare.process.returncode}")
            return None
        if not await _give_back_full_weight(spare):  # so that no job runs at low priority
            await self._discard_spare(spare, f"its CPU priority could not be given back for job {job_id}")
            return None
        assert spare.process.stdin is not None
        spare.log_size_at_hand_over = _size(job_dir / jobdir.LOG_FILE)
        try:
            await spare.process.stdin.send(os.fsencode(job_dir) + b"\n")
            if not self._keep_warm_s:  # in warm mode its later jobs come the same way
                await spare.process.stdin.aclose()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as error:
            await self._discard_spare(spare, f"it could not be handed job {job_id} ({error!r})")
            return None
        assert spare.spare_spawned is not None  # every spare has its spawn time
        waited = time.monotonic() - spare.spare_spawned
        log.info("job %s: handed to spare runner %d, spawned %.1f s before", job_id, spare.process.pid, waited)
        return spare

    def _take_spare(self) -> _Child | None:
        spare, self._spare = self._spare, None
        return spare

    async def _discard_spare(self, spare: _Child | None, why: str | None) -> None:
        """Kill a spare that will not get a job (`why` is None at shutdown) and reap it."""
        if spare is None:
            return
        if why is not None:
            log.warning("spare runner %d not used: %s; its log: %s", spare.process.pid, why, self.spare_log)
        spare.signal_group(signal.SIGKILL)  # waiting for a job, it has nothing of its own to finish
        await spare.process.aclose()  # reaped, its pipes closed
        if why is None:
            log.info("stopped spare runner %d", spare.process.pid)


class LocalSlots:
    """The local executor: this host's slots, a supervisor each; a job runs on the slot the worker claimed for it."""

    def __init__(
        self,
        slots: Sequence[Slot],
        memory: SlotMemory,
        runner_python: str,
        cancel_grace_s: float,
        spare_jobs_dir: Path | None = None,
        keep_warm_s: float = 0.0,
    ) -> None:
        self._slots = tuple(slots)
        self._memory = memory
        alone = len(self._slots) == 1  # one slot keeps the spare's log where it always was
        self._supervisors = {
            slot.name: Supervisor(
                runner_python,
                cancel_grace_s,
                spare_jobs_dir,
                env=slot.runner_env(),
                spare_log_name=SPARE_LOG if alone else f"spare-runner-{slot.name}.log",
                keep_warm_s=keep_warm_s,
            )
            for slot in self._slots
        }
        self._claims = SlotClaims(slot.name for slot in self._slots)

    @property
    def capacity(self) -> int:
        return self._claims.capacity

    @property
    def slot_names(self) -> tuple[str, ...]:
        return self._claims.names

    @property
    def free_slots(self) -> int:
        return self._claims.free

    @property
    def cpu_only(self) -> bool:
        return all(slot.hidden_cards for slot in self._slots)

    def supervisor(self, slot: str) -> Supervisor:
        return self._supervisors[slot]

    def unholdable(self, need_gib: float | None) -> str | None:
        """Why no slot could ever hold a job whose predicted peak is `need_gib`; None when some slot could."""
        return self.look().unholdable(need_gib)

    def look(self) -> _Look:
        return _Look(self._slots, self._memory, self._claims, self._warm_gib)

    def _warm_gib(self, slot: Slot) -> float:
        """The GPU memory the slot's warm runner holds: its next job reuses or frees it, so it is that job's room."""
        warm = self._supervisors[slot.name].warm
        return 0.0 if warm is None or warm.device_gib is None else warm.device_gib

    def release(self, slot: str) -> None:
        """The slot's job has ended (or never started): the slot takes another."""
        self._claims.release(slot)

    def states(self) -> list[SlotState]:
        states = []
        for slot in self._slots:
            room, total = _read(self._memory.room_gib, slot), _read(self._memory.total_gib, slot)
            warm = self._supervisors[slot.name].warm
            states.append(
                SlotState(
                    name=slot.name,
                    device=slot.device,
                    card=slot.card,
                    job=self._claims.job(slot.name),
                    free_gib=None if room is None else round(room, 2),
                    total_gib=None if total is None else round(total, 2),
                    spare_pid=self._supervisors[slot.name].spare_pid,
                    resident_model=None if warm is None else warm.model,
                    resident_until=None if warm is None else round(warm.until_wall, 3),
                    resident_pid=None if warm is None else warm.child.process.pid,
                )
            )
        return states

    async def start(self) -> None:
        for supervisor in self._supervisors.values():
            await supervisor.start()

    async def run(
        self, job_id: str, job_dir: Path, on_event: EventSink, slot: str, on_placed: PlaceSink | None = None
    ) -> Outcome:
        self._claims.running(slot, job_id)  # the slot is its place already: `on_placed` has nothing to add
        return await self._supervisors[slot].run(job_id, job_dir, on_event)

    def cancel(self, job_id: str) -> bool:
        return any(supervisor.cancel(job_id) for supervisor in self._supervisors.values())

    async def close(self) -> None:
        for supervisor in self._supervisors.values():
            await supervisor.close()


def _with_warm(room: float | None, warm_gib: float) -> float | None:
    """A slot's room for its next job: what is free, and what its warm runner holds (that job reuses or frees it)."""
    return None if room is None else room + warm_gib


def _read(figure: Callable[[Slot], float | None], slot: Slot) -> float | None:
    """A slot's memory figure; None (unchecked: the runner's own admission still guards the card) where NVML cannot
    read its card now."""
    try:
        return figure(slot)
    except Exception as exc:  # the driver's trouble (pynvml.NVMLError and kin), not the job's
        log.warning("slot %s: its card's memory cannot be read (%s); its runner admits its jobs", slot.name, exc)
        return None


class _Look:
    """LocalSlots at one look: each slot's room and total read (NVML, for a card) at most once, however many
    queued jobs the worker weighs in one pass."""

    def __init__(
        self, slots: tuple[Slot, ...], memory: SlotMemory, claims: SlotClaims, warm_gib: Callable[[Slot], float]
    ) -> None:
        self._slots = slots
        self._claims = claims
        self._room = functools.cache(lambda slot: _with_warm(_read(memory.room_gib, slot), warm_gib(slot)))
        self._total = functools.cache(lambda slot: _read(memory.total_gib, slot))

    def unholdable(self, need_gib: float | None) -> str | None:
        if need_gib is None:
            return None
        totals = [(slot, self._total(slot)) for slot in self._slots]
        if any(total is None or need_gib <= total for _, total in totals):
            return None
        has = ", ".join(f"{slot.name} {total:.1f} GiB" for slot, total in totals)
        more = " (or give the CPU slots more: AVP_SLOT_MEMORY_GB)" if self._slots[0].device == "cpu" else ""
        return (
            f"This job needs about {need_gib:.1f} GiB at its peak, more than any runner slot has ({has}); "
            f"use fewer frames or a smaller size{more}."
        )

    def claim(self, need_gib: float | None) -> str | None:
        """The free slot with the least room that holds the job (a big card stays free for a big job), the first
        where rooms tie or are unchecked; None while no free slot can."""
        fitting = []
        for order, slot in enumerate(self._slots):
            if self._claims.is_claimed(slot.name):
                continue
            room = self._room(slot)
            if need_gib is None or room is None or need_gib <= room:
                fitting.append((room is None, room or 0.0, order, slot.name))
        if not fitting:
            return None
        name = min(fitting)[-1]
        self._claims.take(name)
        return name


async def set_autogroup_nice(pid: int, nice: int) -> bool:
    """Set the nice value of the autogroup of `pid`, a session leader (its session's CPU weight against others').

    Anyone may set 0 to 19 on their own processes' autogroups, and so give a spare its weight back; the
    kernel refuses changes less than 0.1 s apart (EAGAIN), so this tries for a second. False where it could
    not: no autogroups here (a kernel without them, or not Linux) or the process is gone.
    """
    for _ in range(10):
        try:
            Path(f"/proc/{pid}/autogroup").write_text(f"{nice}\n")
            return True
        except BlockingIOError:
            await anyio.sleep(0.1)
        except OSError:
            return False
    return False


async def _give_back_full_weight(spare: _Child) -> bool:
    """Set a niced spare's autogroup back to nice 0; False where the kernel would not (it stays niced)."""
    if spare.niced:
        spare.niced = not await set_autogroup_nice(spare.process.pid, 0)
    return not spare.niced


def _never_took_its_job(job_dir: Path, spare: _Child) -> bool:
    """A spare that takes its job writes runner.log from then on; one that wrote nothing never took it."""
    return _size(job_dir / jobdir.LOG_FILE) <= spare.log_size_at_hand_over


def _note_a_runner_that_never_took_its_job(job_dir: Path, runner: _Child, spare_log: Path | None) -> None:
    """Say in the job's runner.log that the spare (or warm runner) it was handed to ended before it took the job,
    and where a spare's words are."""
    log_path = job_dir / jobdir.LOG_FILE
    spare = runner.spare_spawned is not None
    said = f"; what it said is in {spare_log}" if spare else ""
    with contextlib.suppress(OSError), open(log_path, "a") as runner_log:
        runner_log.write(
            f"{'spare' if spare else 'warm'} runner {runner.process.pid} ended (exit status "
            f"{runner.process.returncode}) before it took this job{said}\n"
        )


def _model_path(job_dir: Path) -> str | None:
    """The job's model directory, from its job.json; None where it cannot be read (its runner will say why)."""
    try:
        return msgspec.json.decode((job_dir / jobdir.JOB_FILE).read_bytes(), type=jobdir.JobFile).model_path
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


_EXIT_MEANING = {
    protocol.EXIT_INVALID_INPUT: ("invalid_input", "The runner refused the job's settings."),
    protocol.EXIT_OUT_OF_MEMORY: ("out_of_memory", "The GPU ran out of memory."),
    protocol.EXIT_MODEL_MISSING: ("model_missing", "The model's files are missing or incomplete."),
    protocol.EXIT_DISK_FULL: ("disk_full", "The disk ran out of space while the job wrote its files."),
}


def classify(code: int | None, cancel_requested: bool, transcript: Transcript) -> Outcome:
    # A result and no error: the MP4 is complete (the runner says `result` after the mux) and stored, however the
    # runner ended after it: with 0, living on warm (no exit code), or killed by a cancel that came while the
    # portal recorded the result (a warm runner idle after its job dies at SIGTERM).
    if transcript.result is not None and transcript.last_error is None and transcript.violation is None:
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
