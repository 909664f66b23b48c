"""Back-to-back fast demo jobs through the real portal, without and with warm mode (AVP_KEEP_WARM_S), on this CPU.

Two portals on loopback, each with a fresh data dir and the demo model: one as shipped (each job's runner exits
after it; a spare runner with torch and diffusers imported waits for the next, and the bench waits until it is
ready before each submit, as `bench/demo_job.py --spare ready` does), one with AVP_KEEP_WARM_S=300 (the first job's
runner stays with the model loaded and runs the rest). Both get the demo model's default request (fast mode) N
times, one job at a time, taking turns (so a change in the machine's load falls on both alike), a new prompt each
run so that every run encodes its prompt. Prints submit-to-finished wall time and every runner stage, for the first
job and the later ones. CPU figures only.

    .venv/bin/python bench/warm_bench.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.runner import SPARE_LOG  # noqa: E402
from bench.demo_job import PROMPTS, wait_for_spare  # noqa: E402
from tests.portal import Portal, prepare_data_dir  # noqa: E402  (the same real-portal harness the tests use)

MODES = {"off": {}, "300 s": {"AVP_KEEP_WARM_S": "300"}}  # AVP_KEEP_WARM_S: unset (as shipped), and 300


def one_job(portal: Portal, warm: bool, run: int) -> tuple[float, dict[str, float], int | None]:
    """One job's wall time, runner stage timings and the slot's warm runner pid after it (None: none)."""
    if not warm or run == 0:  # warm mode's later jobs go to the warm runner, ready at once
        wait_for_spare(portal.data_dir / "jobs" / SPARE_LOG, ready=run + 1)
    began = time.monotonic()
    job = portal.submit(prompt=PROMPTS[run % len(PROMPTS)])
    done = portal.wait(job["id"], timeout=300)
    wall = time.monotonic() - began
    assert done["status"] == "succeeded", done["error"]
    with portal.client() as client:
        (slot,) = client.get("/healthz").json()["worker"]["slot_states"]
    return wall, done["result"]["timings"], slot["resident_pid"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    rows: dict[str, list[tuple[float, dict[str, float], int | None]]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        model_dir = Path(tmp) / "demo"
        build = [sys.executable, "-m", "gpu_runner", "demo-model", str(model_dir)]
        subprocess.run(build, check=True, capture_output=True)
        portals = {}
        for mode, env in MODES.items():
            data_dir = prepare_data_dir(Path(tmp) / f"data-{len(portals)}", model_dir)
            portals[mode] = Portal(data_dir=data_dir, env={"AVP_SPARE_RUNNER": "on", **env}).start()
            stack.callback(portals[mode].stop)
        for run in range(args.runs):
            for mode, env in MODES.items():
                rows[mode].append(one_job(portals[mode], bool(env), run))

    print(f"# Back-to-back fast demo jobs, CPU: {cpu_name()}, {os.cpu_count()} cores")
    request = "the demo model's default request (fast, 320x192, 25 frames), a new prompt each"
    print(f"# {request}; {args.runs} runs a mode, the modes taking turns\n")
    stages = list(rows["off"][0][1])
    header = ["AVP_KEEP_WARM_S", "job", "submit -> succeeded (wall)", "all runner stages", *stages]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for mode, taken in rows.items():
        for label, picked in (("first", taken[:1]), ("later (median)", taken[1:])):
            if not picked:
                continue
            cells = [statistics.median([wall for wall, _, _ in picked])]
            cells.append(statistics.median([sum(t.values()) for _, t, _ in picked]))
            cells += [statistics.median([t.get(stage, 0.0) for _, t, _ in picked]) for stage in stages]
            print(f"| {mode} | {label} | " + " | ".join(f"{c:.2f} s" for c in cells) + " |")
    print()
    for mode, taken in rows.items():
        pids = [pid for _, _, pid in taken]
        print(f"- AVP_KEEP_WARM_S {mode}: the slot's warm runner after each job: {pids}")


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
