"""Command line: `python -m gpu_runner run <job dir>` and `python -m gpu_runner demo-model <dir> [--random]`.

`run` owns the process's life: stdout is the progress protocol and nothing else, the
process dies with its parent, and every ending is one protocol event plus an exit code.
The diffusion stack is imported only once the job has passed its checks.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from gpu_runner import protocol

USAGE = "usage: python -m gpu_runner run <job dir> | demo-model <dir> [--random]"
PR_SET_PDEATHSIG = 1

log = logging.getLogger("gpu_runner")


def main(argv: list[str]) -> int:
    match argv:
        case ["run", job_dir]:
            return run(Path(job_dir))
        case ["demo-model", target]:
            return demo_model(Path(target), "trained")
        case ["demo-model", target, "--random"]:
            return demo_model(Path(target), "random")
        case _:
            print(USAGE, file=sys.stderr)
            return 2


def run(job_dir: Path) -> int:
    emit = protocol.claim_stdout()
    started = time.monotonic()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    if not _die_with_parent():
        return protocol.EXIT_CANCELLED_TERM
    log.info("runner started")  # its time stamp against the spawn's: the interpreter's own start

    from gpu_runner.cancel import Cancellation, Cancelled
    from gpu_runner.job import JobError, load_job

    cancellation = Cancellation()
    cancellation.install()
    try:
        job = load_job(job_dir)
        from gpu_runner.pipeline import generate  # torch + diffusers: seconds to import

        log.info("torch and diffusers imported in %.2f s", time.monotonic() - started)
        result = generate(job, emit, cancellation, started)
    except JobError as error:
        log.error("%s: %s", error.code, error.message)
        emit(protocol.Error(code=error.code, message=error.message))
        return protocol.EXIT_FOR_ERROR[error.code]
    except Cancelled as cancelled:
        log.info("%s", cancelled)
        emit(protocol.Error(code="cancelled", message="The job was cancelled."))
        return cancelled.exit_code
    except Exception as error:
        traceback.print_exc()
        emit(protocol.Error(code="internal", message=_one_line(error)))
        return protocol.EXIT_FOR_ERROR["internal"]
    emit(result)
    log.info("done in %.1f s: %s", time.monotonic() - started, result.timings)
    return protocol.EXIT_OK


def demo_model(target: Path, weights: str) -> int:
    """Install the shipped trained demo model, or build the same architecture with random weights."""
    from gpu_runner.demo_model import build_demo_model

    started = time.monotonic()
    path = build_demo_model(target, weights)
    print(f"demo model ({weights} weights) ready in {path} ({time.monotonic() - started:.1f} s)")
    return 0


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
