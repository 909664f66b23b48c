"""Command line: `python -m gpu_runner run <job dir>`, `... standby <jobs dir>`, `... posters <jobs dir>` and
`... demo-model <dir> [...]`.

`run` owns the process's life: stdout is the progress protocol and nothing else, the
process dies with its parent, and every ending is one protocol event plus an exit code.
The diffusion stack is imported only once the job has passed its checks.

`standby` is a spare runner: the same start-up, then the diffusion stack imported before
there is a job (never touching CUDA: an idle spare holds no GPU memory), then ONE line on
stdin names the job directory, and the job runs exactly as under `run`, in the same process,
which exits after it. The portal spawns it ahead of the job, so a job does not wait for the
imports (docs/architecture.md, "Two processes, one contract").

`posters` makes the poster of every finished clip in the jobs directory that has none (clips made before the
runner wrote posters); the portal runs it once at start-up. CPU only, at the lowest priority: it imports PyAV,
never torch, so it cannot touch CUDA.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import signal
import sys
import time
import traceback
from pathlib import Path

from contract import jobdir, protocol
from gpu_runner import stdout

USAGE = (
    "usage: python -m gpu_runner run <job dir> | standby <jobs dir> | posters <jobs dir> | demo-model <dir> [--random]"
    " | demo-model <dir> --random --version 2.0|2.3 [--distilled] | demo-model <dir> --random --version 2.5"
    " | import-model FILE... --models-dir DIR [...]"
)
PR_SET_PDEATHSIG = 1
LOWEST_PRIORITY = 19  # nice: making posters takes only the CPU a running job leaves
LOG_FORMAT = "%(asctime)s %(name)s %(message)s"
MAX_JOB_LINE_BYTES = 4096

log = logging.getLogger("gpu_runner")


def main(argv: list[str]) -> int:
    match argv:
        case ["run", job_dir]:
            return run(Path(job_dir))
        case ["standby", jobs_dir]:
            return standby(Path(jobs_dir))
        case ["posters", jobs_dir]:
            return posters(Path(jobs_dir))
        case ["import-model", *arguments]:
            from gpu_runner.import_model import main as import_model

            return import_model(arguments)
        case ["demo-model", target]:
            return demo_model(Path(target), "trained")
        case ["demo-model", target, "--random"]:
            return demo_model(Path(target), "random")
        case ["demo-model", target, "--random", "--version", ("2.0" | "2.3") as version, *variant] if variant in (
            [],
            ["--distilled"],
        ):
            return version_model(Path(target), version, "distilled" if variant else "dev")
        case ["demo-model", target, "--random", "--version", "2.5"]:
            # As published: a distilled transformer/ and scheduler, the dev one in transformer_full/.
            return version_model(Path(target), "2.5", "distilled")
        case _:
            print(USAGE, file=sys.stderr)
            return 2


def run(job_dir: Path) -> int:
    """Run the job in `job_dir`; stderr is already its runner.log (the supervisor opened it)."""
    emit = _claim_process()
    started = time.monotonic()
    if not _die_with_parent():
        return protocol.EXIT_CANCELLED_TERM
    log.info("runner started")  # its time stamp against the spawn's: the interpreter's own start
    code, model = _run_job(job_dir, emit, started, imported=False)
    return _stay_warm(code, model, job_dir.parent, emit)


def standby(jobs_dir: Path) -> int:
    """A spare runner: import the diffusion stack, then run the one job whose directory comes on stdin.

    Until the job comes, SIGTERM keeps its default action (the spare dies at once: a cancel, a
    shutdown or its parent's death needs nothing from it) and stderr is the log the supervisor
    chose for spares; once the job is read, stderr (descriptor 2, so C libraries' output too)
    goes to the job's runner.log and everything is as under `run`. EOF before a job: exit 0.
    """
    emit = _claim_process()
    spawned = time.monotonic()
    if not _die_with_parent():
        return protocol.EXIT_CANCELLED_TERM
    pid = os.getpid()
    log.info("spare runner %d started; importing torch and diffusers", pid)
    import gpu_runner.pipeline  # noqa: F401  torch + diffusers: seconds, paid before the job comes
    from gpu_runner.compiling import import_compiler

    import_compiler()  # a CUDA job compiles its blocks (AVP_COMPILE); a CPU-only torch imports nothing here
    from gpu_runner import memory

    memory.freeze_heap()  # the libraries' objects, out of every collection its job makes
    imported_s = time.monotonic() - spawned
    log.info("%s %.2f s; waiting for a job", stdout.SPARE_READY.format(pid=pid), imported_s)
    _warn_if_cuda_started(pid)
    came_while_importing = bool(select.select([sys.stdin], [], [], 0)[0])
    line = sys.stdin.buffer.readline(MAX_JOB_LINE_BYTES)
    handed = time.monotonic()
    if not line:
        log.info("spare runner %d: no job came (stdin closed); exiting", pid)
        return protocol.EXIT_OK

    from gpu_runner.job import JobError

    try:
        job_dir = _handed_job_dir(line, jobs_dir)
        log.info("spare runner %d: took the job in %s; its log goes on in its %s", pid, job_dir, jobdir.LOG_FILE)
        os.chdir(job_dir)
        _point_stderr_at(job_dir)
    except JobError as error:
        log.error("spare runner %d: %s: %s", pid, error.code, error.message)
        emit(protocol.Error(code=error.code, message=error.message))
        return protocol.EXIT_FOR_ERROR[error.code]
    except OSError as error:
        log.error("spare runner %d: could not enter the job directory: %s", pid, error)
        emit(protocol.Error(code="internal", message=f"The spare runner could not enter the job directory: {error}"))
        return protocol.EXIT_FOR_ERROR["internal"]
    if came_while_importing:
        how = f"the job came while it imported torch and diffusers ({imported_s:.2f} s)"
    else:
        how = f"torch and diffusers were imported already (in {imported_s:.2f} s), then it waited for a job"
    log.info("runner started: spare runner %d took this job %.2f s after it started; %s", pid, handed - spawned, how)
    code, model = _run_job(job_dir, emit, handed, imported=True)
    return _stay_warm(code, model, jobs_dir, emit)


def keep_warm_s() -> float:
    """AVP_KEEP_WARM_S as the portal hands it to its runners (it checked the value at start-up); 0: off."""
    try:
        seconds = float(os.environ.get("AVP_KEEP_WARM_S", "").strip() or 0)
    except ValueError:
        return 0.0
    return seconds if 0 < seconds < float("inf") else 0.0


def _stay_warm(code: int, model: str | None, jobs_dir: Path, emit: stdout.Emitter) -> int:
    """Warm mode (AVP_KEEP_WARM_S): after each job that succeeded, say `resident` and run the next job whose directory
    comes on stdin, in this process with its model still loaded (gpu_runner/resident.py). It exits on a failed job,
    on EOF (the portal let it go), on SIGTERM (at once while idle), or when no job came for AVP_KEEP_WARM_S."""
    keep = keep_warm_s()
    if code != protocol.EXIT_OK or keep <= 0 or model is None:
        return code  # before the imports below (torch): a job that failed before it imported torch exits at once
    from gpu_runner.job import JobError
    from gpu_runner.memory import rss_gib
    from gpu_runner.resident import held_device_gib

    while code == protocol.EXIT_OK and model is not None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)  # idle: nothing of a job to finish, so a signal ends it at once
        emit(protocol.Resident(model=model, device_gib=held_device_gib(), rss_gib=round(rss_gib(), 3)))
        log.info("warm: keeping %s loaded for up to %g s (AVP_KEEP_WARM_S) for its next job", model, keep)
        if not select.select([sys.stdin], [], [], keep)[0]:
            log.info("warm: no job came in %g s; exiting, which frees the model", keep)
            return protocol.EXIT_OK
        line = sys.stdin.buffer.readline(MAX_JOB_LINE_BYTES)
        if not line:
            log.info("warm: let go (stdin closed); exiting, which frees the model")
            return protocol.EXIT_OK
        handed = time.monotonic()
        try:
            job_dir = _handed_job_dir(line, jobs_dir)
            os.chdir(job_dir)
            _point_stderr_at(job_dir)
        except (JobError, OSError) as error:
            message = error.message if isinstance(error, JobError) else f"could not enter the job directory: {error}"
            log.error("warm runner: %s", message)
            emit(protocol.Error(code="invalid_input" if isinstance(error, JobError) else "internal", message=message))
            return protocol.EXIT_FOR_ERROR["invalid_input" if isinstance(error, JobError) else "internal"]
        log.info("runner started: warm runner %d took this job with %s loaded", os.getpid(), model)
        code, model = _run_job(job_dir, emit, handed, imported=True)
    return code


def _run_job(job_dir: Path, emit: stdout.Emitter, started: float, *, imported: bool) -> tuple[int, str | None]:
    """The job, from its checks to its one ending (both verbs); `started` is where its stage times count from.
    Its exit code, and its model's id once its job.json was read."""
    from gpu_runner.cancel import Cancellation, Cancelled
    from gpu_runner.job import JobError, load_job

    cancellation = Cancellation()
    cancellation.install()
    model = None
    try:
        job = load_job(job_dir)
        model = job.spec.id
        from gpu_runner import memory
        from gpu_runner.pipeline import generate  # torch + diffusers: seconds to import, unless a spare's
        from gpu_runner.resident import RESIDENT

        memory.freeze_heap()  # a spare froze it before its job came

        RESIDENT.enabled = keep_warm_s() > 0  # warm mode: what this job loads stays for the next job of its model
        if not imported:
            log.info("torch and diffusers imported in %.2f s", time.monotonic() - started)
        result = generate(job, emit, cancellation, started)
    except JobError as error:
        log.error("%s: %s", error.code, error.message)
        emit(protocol.Error(code=error.code, message=error.message))
        return protocol.EXIT_FOR_ERROR[error.code], model
    except Cancelled as cancelled:
        log.info("%s", cancelled)
        emit(protocol.Error(code="cancelled", message="The job was cancelled."))
        return cancelled.exit_code, model
    except Exception as error:
        traceback.print_exc()
        emit(protocol.Error(code="internal", message=_one_line(error)))
        return protocol.EXIT_FOR_ERROR["internal"], model
    emit(result)
    log.info("done in %.1f s: %s", time.monotonic() - started, result.timings)
    return protocol.EXIT_OK, model


def posters(jobs_dir: Path) -> int:
    """Make the missing posters in `jobs_dir`; exit 1 when one could not be made (each is logged), else 0.

    Stdout is unused; the log goes to stderr. Dies with its parent, as a job's runner does.
    """
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=LOG_FORMAT)
    os.nice(LOWEST_PRIORITY)
    if not _die_with_parent():
        return protocol.EXIT_CANCELLED_TERM
    from gpu_runner.poster import make_missing

    started = time.monotonic()
    made, failed = make_missing(jobs_dir)
    failures = f"; {failed} could not be made (logged above)" if failed else ""
    log.info("posters made: %d, in %.1f s%s", made, time.monotonic() - started, failures)
    return 1 if failed else 0


def demo_model(target: Path, weights: str) -> int:
    """Install the shipped trained demo model, or build the same architecture with random weights."""
    from gpu_runner.demo.model import build_demo_model

    started = time.monotonic()
    path = build_demo_model(target, weights)
    print(f"demo model ({weights} weights) ready in {path} ({time.monotonic() - started:.1f} s)")
    return 0


def version_model(target: Path, version: str, variant: str) -> int:
    """Build a tiny random-weight model directory of one LTX-2 version's layout (with a latent upsampler)."""
    from gpu_runner.demo.model import build_version_model

    started = time.monotonic()
    path = build_version_model(target, version, variant)
    print(f"LTX-{version} {variant} layout (tiny, random weights) ready in {path} ({time.monotonic() - started:.1f} s)")
    return 0


def _claim_process() -> stdout.Emitter:
    """Stdout for the protocol only, logging to stderr."""
    emit = stdout.claim_stdout()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=LOG_FORMAT)
    return emit


def _handed_job_dir(line: bytes, jobs_dir: Path) -> Path:
    """The job directory a supervisor wrote to a spare's stdin: an existing directory inside `jobs_dir`."""
    from gpu_runner.job import JobError, confined

    if not line.endswith(b"\n"):
        raise JobError("invalid_input", "the job directory handed to the spare runner is not one whole line")
    raw = line[:-1]
    if not raw or b"\0" in raw:
        raise JobError("invalid_input", "the job directory handed to the spare runner is empty or holds a NUL")
    path = Path(os.fsdecode(raw))
    if not path.is_absolute():
        raise JobError("invalid_input", "the job directory handed to the spare runner is not an absolute path")
    job_dir = confined(path, jobs_dir, what="the job directory handed to the spare runner")
    if job_dir == jobs_dir.resolve() or not job_dir.is_dir():
        raise JobError("invalid_input", "the job directory handed to the spare runner is not a job's directory")
    return job_dir


def _point_stderr_at(job_dir: Path) -> None:
    """Descriptors 2 and 1 (stdout's descriptor carries stderr since claim_stdout) to the job's runner.log."""
    from gpu_runner.job import confined

    log_path = confined(job_dir / jobdir.LOG_FILE, job_dir, what=jobdir.LOG_FILE)
    sys.stderr.flush()
    descriptor = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.dup2(descriptor, 2)
        os.dup2(descriptor, 1)
    finally:
        os.close(descriptor)


def _warn_if_cuda_started(pid: int) -> None:
    """An idle spare must hold no GPU memory: say so loudly if an import started CUDA after all."""
    import torch

    if torch.cuda.is_initialized():
        log.warning("spare runner %d: importing started CUDA, so this idle spare holds GPU memory", pid)


def _die_with_parent() -> bool:
    """Ask Linux to SIGTERM us when the parent dies; False if it is already gone.

    AVP_PARENT_PID closes the race where the parent died before prctl took effect: then
    we have been re-parented and getppid() no longer matches.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    expected_parent = os.environ.get("AVP_PARENT_PID")
    if expected_parent and expected_parent != str(os.getppid()):
        log.error("parent %s is gone (parent is now %d); exiting", expected_parent, os.getppid())
        return False
    return True


def _one_line(error: BaseException) -> str:
    first_line = next(iter(str(error).strip().splitlines()), "")
    summary = f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__
    return summary[:300]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
