"""Back-to-back fast demo jobs through the real portal, without and with warm mode (AVP_KEEP_WARM_S), on this CPU.

Two portals on loopback, each with a fresh data dir and the demo model: one as shipped (each job's runner exits
after it; a spare runner with torch and diffusers imported waits for the next, and the bench waits until it is
ready before each submit, as `bench/demo_job.py --spare ready` does), one with AVP_KEEP_WARM_S=300 (the first job's
runner stays with the model loaded and runs the rest). Each submits the demo model's default request (fast mode)
N times one after another, a new prompt each run so that every run encodes its prompt, and prints submit-to-
finished wall time and the runner's loading stages. CPU figures only.

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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.runner import SPARE_LOG  # noqa: E402
from bench.demo_job import PROMPTS, wait_for_spare  # noqa: E402
from tests.portal import Portal, prepare_data_dir  # noqa: E402  (the same real-portal harness the tests use)

LOADING = ("load_text_encoder", "load_transformer")
MODES = {"off (as shipped, spare ready)": {}, "AVP_KEEP_WARM_S=300": {"AVP_KEEP_WARM_S": "300"}}


def run_mode(env: dict[str, str], runs: int, model_dir: Path) -> list[tuple[float, dict[str, float], int | None]]:
    """Each run's wall time, runner stage timings and the warm runner's pid after it (None: none)."""
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = prepare_data_dir(Path(tmp) / "data", model_dir)
        portal = Portal(data_dir=data_dir, env={"AVP_SPARE_RUNNER": "on", **env}).start()
        rows = []
        try:
            for run in range(runs):
                if not env or run == 0:  # warm mode's later jobs go to the warm runner, ready at once
                    wait_for_spare(data_dir / "jobs" / SPARE_LOG, ready=run + 1)
                began = time.monotonic()
                job = portal.submit(prompt=PROMPTS[run % len(PROMPTS)])
                done = portal.wait(job["id"], timeout=300)
                wall = time.monotonic() - began
                assert done["status"] == "succeeded", done["error"]
                with portal.client() as client:
                    (slot,) = client.get("/healthz").json()["worker"]["slot_states"]
                rows.append((wall, done["result"]["timings"], slot["resident_pid"]))
        finally:
            portal.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "demo"
        subprocess.run(
            [sys.executable, "-m", "gpu_runner", "demo-model", str(model_dir)], check=True, capture_output=True
        )
        results = {name: run_mode(env, args.runs, model_dir) for name, env in MODES.items()}

    print(f"# Back-to-back fast demo jobs, CPU: {cpu_name()}, {os.cpu_count()} cores")
    print(
        f"# the demo model's default request (fast, 320x192, 25 frames), a new prompt each; {args.runs} runs a mode\n"
    )
    print("| warm mode | job | submit -> succeeded (wall) | load_text_encoder | load_transformer | all runner stages |")
    print("|---|---|---|---|---|---|")
    for name, rows in results.items():
        for label, picked in (("first", rows[:1]), ("later (median)", rows[1:])):
            if not picked:
                continue
            cells = [statistics.median([wall for wall, _, _ in picked])]
            cells += [statistics.median([t.get(stage, 0.0) for _, t, _ in picked]) for stage in LOADING]
            cells.append(statistics.median([sum(t.values()) for _, t, _ in picked]))
            print(f"| {name} | {label} | " + " | ".join(f"{c:.2f} s" for c in cells) + " |")
    print()
    for name, rows in results.items():
        pids = {pid for _, _, pid in rows}
        print(f"- {name}: warm runner pid after each job: {[pid for _, _, pid in rows]} ({len(pids)} distinct)")


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
