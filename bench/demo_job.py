"""Wall time of the default demo job through the real portal, on this machine's CPU.

Starts `python -m app serve` on a loopback port with a fresh data dir, submits the demo
model's defaults N times one after another, and prints submit-to-finished wall time with
the runner's own stage timings. CPU figures only; GPU figures live in their own scripts.

`--spare ready` (the default) runs the portal as shipped, with a spare runner, and before each
submit waits until the spare has imported torch and diffusers (its line in the spare log), as it
has when a person watches one clip before asking for the next; `--spare off` spawns a runner per
job (AVP_SPARE_RUNNER=off), so each job pays the imports.

    .venv/bin/python bench/demo_job.py [--runs 5] [--spare ready|off]
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
from gpu_runner import stdout  # noqa: E402
from tests.portal import Portal  # noqa: E402  (the same real-portal harness the tests use)

PROMPTS = (
    "a red ball bouncing with clicks",
    "a blue square moving left with a low hum",
    "a yellow ball moving up with a high beep",
    "a green square moving right in silence",
    "a white ball moving down with a high beep",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--spare", choices=("ready", "off"), default="ready")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        began = time.monotonic()
        subprocess.run(
            [sys.executable, "-m", "gpu_runner", "demo-model", str(data_dir / "models" / "demo")],
            check=True,
            capture_output=True,
        )
        build_s = time.monotonic() - began
        portal = Portal(data_dir=data_dir, env={"AVP_SPARE_RUNNER": "on" if args.spare == "ready" else "off"}).start()
        try:
            rows = []
            for run in range(args.runs):
                if args.spare == "ready":
                    wait_for_spare(data_dir / "jobs" / SPARE_LOG, ready=run + 1)
                began = time.monotonic()
                # a new prompt each run, so every run pays the text stages (a repeat hits the cache)
                job = portal.submit(prompt=PROMPTS[run % len(PROMPTS)])
                done = portal.wait(job["id"], timeout=120)
                wall = time.monotonic() - began
                assert done["status"] == "succeeded", done["error"]
                rows.append((wall, done["result"]["timings"]))
        finally:
            portal.stop()

    walls = [w for w, _ in rows]
    stages = rows[0][1].keys()
    print(f"# Default demo job, CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    spare = "a spare runner ready for each" if args.spare == "ready" else "a runner spawned for each (spares off)"
    print(
        f"# request: the demo model's defaults, a new prompt each run; {args.runs} runs, one after another, {spare}\n"
    )

    def row(name: str, values: list[float], digits: int = 2) -> None:
        cells = " | ".join(f"{v:.{digits}f} s" for v in (statistics.median(values), min(values), max(values)))
        print(f"| {name} | {cells} |")

    print("| figure | median | min | max |")
    print("|---|---|---|---|")
    row("submit -> succeeded (wall)", walls)
    for stage in stages:
        row(f"runner stage {stage}", [t[stage] for _, t in rows], digits=3)
    row("all runner stages", [sum(t.values()) for _, t in rows])
    print(f"| demo-model build (once) | {build_s:.2f} s | | |")


def wait_for_spare(spare_log: Path, ready: int, timeout: float = 120) -> None:
    """Until the spare log holds `ready` lines of spares that finished importing."""
    deadline = time.monotonic() + timeout
    said = stdout.SPARE_READY.split("{pid}")[-1]  # the ready line's words after any spare's pid
    while not spare_log.exists() or spare_log.read_text().count(said) < ready:
        if time.monotonic() > deadline:
            sys.exit(f"no spare runner ready within {timeout} s; see {spare_log}")
        time.sleep(0.05)


if __name__ == "__main__":
    main()
