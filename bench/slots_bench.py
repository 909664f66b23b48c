"""Runner slots on this machine's CPU: jobs a minute through a real portal with 1, 2 and 4 CPU slots (AVP_GPUS=cpu:N).

CPU figures: each slot's runners get cores // N torch threads (OMP_NUM_THREADS, app/slots.py) so slots do not
fight over the cores; with more slots than cores they share them anyway. For each N it starts `python -m app
serve` on a fresh data dir with spares on, as shipped, waits until every slot's spare has imported torch and
diffusers, submits J demo jobs at once (the demo model's defaults, a new prompt each) and reports jobs per minute
from the first submit to the last job's end, the speed-up over one slot and its share of N x one slot's
throughput (the issue's goal: >= 0.9 N where the cores allow it), each job's own run (started -> finished), and
how many jobs ran at once at most (from the jobs' own start and end times).

    .venv/bin/python bench/slots_bench.py [--slots 1,2,4] [--jobs 8]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.demo_job import wait_for_spare  # noqa: E402
from bench.queue_bench import build_demo_model, run_jobs, spread, stamp  # noqa: E402
from tests.portal import Portal  # noqa: E402  (the same real-portal harness the tests use)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", default="1,2,4", help="the slot counts to measure, comma-separated")
    parser.add_argument("--jobs", type=int, default=8, help="jobs queued at once for each slot count")
    args = parser.parse_args()
    counts = [int(n) for n in args.slots.split(",")]
    cores = os.cpu_count() or 1

    print(f"# CPU figures: {args.jobs} demo jobs queued at once per slot count; {cores} cores")
    print(f"# load average {os.getloadavg()[0]:.2f} at the start\n")
    print(
        "| slots | torch threads a slot | jobs per minute | speed-up over 1 slot | of N x 1 slot | one job's run "
        "(median, min, max) | most at once |"
    )
    print("|---|---|---|---|---|---|---|")
    one_slot = None
    for count in counts:
        queued, span = run_queue(count, args.jobs)
        per_minute = 60 * len(queued) / span
        one_slot = one_slot or (per_minute if count == 1 else None)
        speed_up = f"{per_minute / one_slot:.2f}x" if one_slot else "-"
        share = f"{per_minute / (count * one_slot):.0%}" if one_slot else "-"
        runs = [stamp(job["finished_at"]) - stamp(job["started_at"]) for job in queued]
        threads = "torch's default" if count == 1 else str(max(1, cores // count))
        print(
            f"| {count} | {threads} | {per_minute:.2f} | {speed_up} | {share} | {spread(runs)} | "
            f"{most_at_once(queued)} |",
            flush=True,
        )
    print(f"\n# load average {os.getloadavg()[0]:.2f} at the end")


def run_queue(count: int, jobs: int) -> tuple[list[dict], float]:
    """J jobs through a portal with `count` CPU slots: the finished jobs and seconds from first submit to last end."""
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        build_demo_model(data_dir)
        env = {
            "AVP_GPUS": f"cpu:{count}",
            "AVP_SPARE_RUNNER": "on",
            "AVP_MAX_QUEUE": str(jobs),
            "AVP_SUBMIT_PER_MINUTE": "1000",
        }
        portal = Portal(data_dir=data_dir, env=env).start()
        try:
            logs = ["spare-runner.log"] if count == 1 else [f"spare-runner-cpu{n}.log" for n in range(count)]
            for log in logs:
                wait_for_spare(data_dir / "jobs" / log, ready=1, timeout=600)
            began = time.time()
            queued = run_jobs(portal, jobs)
        finally:
            portal.stop()
    return queued, max(stamp(job["finished_at"]) for job in queued) - began


def most_at_once(jobs: list[dict]) -> int:
    """The most jobs running at one moment, from their recorded start and end times."""
    edges = sorted(
        [(stamp(job["started_at"]), 1) for job in jobs] + [(stamp(job["finished_at"]), -1) for job in jobs],
        key=lambda edge: (edge[0], edge[1]),  # an end before a start at the same instant
    )
    running = most = 0
    for _, change in edges:
        running += change
        most = max(most, running)
    return most


if __name__ == "__main__":
    main()
