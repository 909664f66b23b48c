"""Posters for finished clips that have none (made before the runner wrote them): made once, at start-up.

The web process decodes no video (PyAV stays out of it, as torch does), so a runner process makes them:
`python -m gpu_runner posters <jobs dir>`, CPU only. It runs in a session of its own whose autogroup gets the
lowest CPU weight, as a waiting spare's does (app/runner.py), and at nice 19 itself, so a job running meanwhile
loses next to nothing to it. Nothing waits for it; what it says goes to the portal's log, and a failure is
logged, never fatal: the jobs it missed stay without a poster (GET /api/jobs/{id}/poster answers 404) until the
next start tries again.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from pathlib import Path

import anyio
import anyio.to_thread

from app.runner import SPARE_NICE, open_runner, set_autogroup_nice, signal_group
from contract import jobdir

log = logging.getLogger(__name__)


async def make_missing_posters(runner_python: str, jobs_dir: Path) -> None:
    """Run the poster maker when some job directory's clip has no poster; returns when it is done (or at once)."""
    try:
        await _make_missing_posters(runner_python, jobs_dir)
    except Exception:  # the lifespan must outlive this: nothing but the posters depends on it
        log.exception("making the missing posters failed; jobs without a poster keep none until the next start")


async def _make_missing_posters(runner_python: str, jobs_dir: Path) -> None:
    wanting = await anyio.to_thread.run_sync(jobdir.jobs_wanting_posters, jobs_dir)
    if not wanting:
        return
    log.info("making posters for %d finished jobs that have none, in the background", len(wanting))
    started = time.monotonic()
    try:
        process = await open_runner(
            runner_python, ("posters", str(jobs_dir)), stdin=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=jobs_dir
        )
    except OSError:
        log.exception("could not start the poster maker; jobs without a poster keep none until the next start")
        return
    try:
        await set_autogroup_nice(process.pid, SPARE_NICE)
        assert process.stdout is not None
        said = b"".join([chunk async for chunk in process.stdout])
        code = await process.wait()
    finally:
        with anyio.CancelScope(shield=True):  # the portal stops: so does the poster maker
            if process.returncode is None:
                signal_group(process, signal.SIGKILL)
            await process.aclose()
    for line in said.decode(errors="replace").splitlines():
        log.info("poster maker: %s", line)
    if code != 0:
        log.warning(
            "the poster maker ended with exit status %s after %.1f s; jobs still without a poster get one at the "
            "next start",
            code,
            time.monotonic() - started,
        )
