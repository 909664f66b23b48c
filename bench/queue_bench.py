"""Queue throughput on this machine's CPU: N demo jobs queued at once through a real portal, then one job alone.

Starts `python -m app serve` from a checkout (this one, or `--repo DIR`: another, e.g. an export of an
earlier commit, to measure "before" on the same machine back to back) with a fresh data dir and spares
on, as shipped. Once the first spare has imported torch and diffusers it submits N jobs at once (the demo
model's defaults, a new prompt each, so every job pays its text stages) and reports jobs per minute from
the first submit to the last job's end, with each job's own run (started -> finished, from the API) and
the gaps between one job's end and the next's start. Then, M times, it waits for the spare to be ready and
submits one job alone: submit -> finished, what a person watching one clip at a time sees.

    .venv/bin/python bench/queue_bench.py [--jobs 20] [--alone 3] [--repo DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.demo_job import PROMPTS, wait_for_spare  # noqa: E402
from tests.portal import REPO_ROOT, Portal  # noqa: E402  (the same real-portal harness the tests use)

TIMEOUT_S = 3600  # per job: a busy machine slows the demo job tenfold
SPARE_LOG = "spare-runner.log"  # in the jobs directory; named here, as --repo's checkout may predate app.runner's name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--alone", type=int, default=3)
    parser.add_argument("--repo", type=Path, default=REPO_ROOT, help="the checkout whose portal and runner run")
    args = parser.parse_args()
    repo = args.repo.resolve()

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        build_demo_model(data_dir, repo)
        env = {"AVP_SPARE_RUNNER": "on", "AVP_MAX_QUEUE": str(args.jobs), "AVP_SUBMIT_PER_MINUTE": "1000"}
        portal = Portal(data_dir=data_dir, env=env, repo_root=repo).start()
        spare_log = data_dir / "jobs" / SPARE_LOG
        print(f"# {args.jobs} demo jobs queued at once, then {args.alone} alone; {os.cpu_count()} cores")
        print(f"# checkout: {repo.name}; load average {os.getloadavg()[0]:.2f} at the start\n")
        try:
            wait_for_spare(spare_log, ready=1)
            began = time.time()
            report_queue(run_jobs(portal, args.jobs), began)
            alone = []
            for n in range(args.alone):
                wait_for_spare(spare_log, ready=args.jobs + n + 1)  # as a person who watched the last clip finds it
                submitted = time.monotonic()
                job_id = portal.submit(prompt=f"{PROMPTS[n % len(PROMPTS)]}, alone {n}")["id"]
                job = portal.wait(job_id, timeout=TIMEOUT_S)
                assert job["status"] == "succeeded", job["error"]
                alone.append(time.monotonic() - submitted)
            print(f"| one job alone, submit -> finished (median, min, max) | {spread(alone)} |")
        finally:
            portal.stop()
        print(f"\n# load average {os.getloadavg()[0]:.2f} at the end")


def build_demo_model(data_dir: Path, repo: Path = REPO_ROOT) -> None:
    """The demo model, built by `repo`'s runner where a portal on `data_dir` finds it."""
    subprocess.run(
        [sys.executable, "-m", "gpu_runner", "demo-model", str(data_dir / "models" / "demo")],
        cwd=repo,
        check=True,
        capture_output=True,
    )


def run_jobs(portal: Portal, jobs: int) -> list[dict]:
    """`jobs` demo jobs submitted at once, a new prompt each (so every job pays its text stages), waited for: their
    final state, in submission order; every one succeeded."""
    ids = [portal.submit(prompt=f"{PROMPTS[n % len(PROMPTS)]}, take {n}")["id"] for n in range(jobs)]
    done = [portal.wait(job_id, timeout=TIMEOUT_S) for job_id in ids]
    failed = [job for job in done if job["status"] != "succeeded"]
    assert not failed, failed[0]["error"]
    return done


def report_queue(queued: list[dict], began: float) -> None:
    """Jobs per minute over the queue, each job's run and the gaps between jobs (the queue's figures come first)."""
    started = [stamp(job["started_at"]) for job in queued]
    finished = [stamp(job["finished_at"]) for job in queued]
    runs = [end - start for start, end in zip(started, finished, strict=True)]
    gaps = [start - end for start, end in zip(sorted(started)[1:], sorted(finished)[:-1], strict=True)]
    span = max(finished) - began
    print("| figure | value |")
    print("|---|---|")
    print(f"| jobs per minute (first submit -> last job finished) | {60 * len(queued) / span:.2f} |")
    print(f"| first submit -> last job finished | {span:.1f} s |")
    print(f"| one job's run, started -> finished (median, min, max) | {spread(runs)} |")
    print(f"| a job's end -> the next job's start (median, min, max) | {spread(gaps)} |", flush=True)


def stamp(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s ({min(values):.2f}-{max(values):.2f})"


if __name__ == "__main__":
    main()
