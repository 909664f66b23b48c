"""Queue times against what happened: demo jobs through a real portal queue, predicted vs actual start and finish.

Starts `python -m app serve` with a fresh data dir (spares on, as shipped). First it runs a few demo jobs of
other shapes one after another, so the estimate has this machine's runs to learn from (the portal learns
from nothing else). Then it pauses the queue, queues the measured jobs (varied sizes, frames and steps),
resumes it and reads GET /api/queue's answer: each job's eta_start_s and eta_finish_s from that moment. Once
they have all run it prints, per job, the predicted and actual start and finish (seconds after the resume,
from the jobs' started_at and finished_at) and the finish's error. The goal: within 30 %.

With `--record FILE` it also writes the portal's finished runs (requests, stage timings, times held) and the
demo model's size as JSON: tests/data/demo_cpu_runs.json, which tests/unit/test_eta.py predicts from.

    .venv/bin/python bench/eta_bench.py [--record tests/data/demo_cpu_runs.json]
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
from typing import Any

import httpx
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.config import Settings  # noqa: E402
from app.store import Store  # noqa: E402
from contract.cost import ModelSize  # noqa: E402
from tests.portal import Portal  # noqa: E402  (the same real-portal harness the tests use)

TIMEOUT_S = 1800  # per job: a busy machine slows the demo job tenfold
# (width, height, frames, steps), quality mode; the learning runs' shapes are none of the measured ones.
LEARN = ((320, 192, 25, 8), (256, 256, 49, 4), (384, 256, 25, 12))
MEASURE = ((320, 192, 25, 4), (256, 256, 25, 8), (384, 256, 49, 8), (512, 320, 25, 12), (320, 192, 49, 16))


def request(shape: tuple[int, int, int, int], n: int) -> dict[str, Any]:
    width, height, frames, steps = shape
    prompt = f"a red ball bouncing with clicks, take {n}"  # a new prompt each: every job pays its text stages
    return {"prompt": prompt, "mode": "quality", "width": width, "height": height, "num_frames": frames, "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", type=Path, help="write the portal's finished runs here (JSON)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        model_dir = data_dir / "models" / "demo"
        subprocess.run([sys.executable, "-m", "gpu_runner", "demo-model", str(model_dir)], check=True)
        portal = Portal(data_dir=data_dir, env={"AVP_SPARE_RUNNER": "on", "AVP_SUBMIT_PER_MINUTE": "1000"}).start()
        print(f"# {len(LEARN)} demo jobs to learn from, then {len(MEASURE)} queued at once; {os.cpu_count()} cores")
        print(f"# load average {os.getloadavg()[0]:.2f} at the start\n")
        try:
            with portal.client() as client:
                for n, shape in enumerate(LEARN):
                    job = client.post("/api/jobs", json=request(shape, n)).raise_for_status().json()
                    assert portal.wait(job["id"], timeout=TIMEOUT_S)["status"] == "succeeded"
                client.post("/api/queue/pause", json={}).raise_for_status()
                ids = [
                    client.post("/api/jobs", json=request(shape, len(LEARN) + n)).raise_for_status().json()["id"]
                    for n, shape in enumerate(MEASURE)
                ]
                state = client.post("/api/queue/resume", json={}).raise_for_status().json()
                resumed = time.time()
            report(state, [portal.wait(job_id, timeout=TIMEOUT_S) for job_id in ids], resumed)
        finally:
            portal.stop()
        if args.record:
            record(data_dir, model_dir, args.record)
        print(f"\n# load average {os.getloadavg()[0]:.2f} at the end")


def report(state: dict[str, Any], ended: list[dict[str, Any]], resumed: float) -> None:
    predicted = {job["id"]: job for job in state["running"] + state["queued"]}
    columns = ("job", "size, frames, steps", "predicted start", "actual start", "predicted finish", "actual finish")
    print("| " + " | ".join(columns) + " | finish error |")
    print("|---" * (len(columns) + 1) + "|")
    errors = []
    for n, job in enumerate(ended, start=1):
        assert job["status"] == "succeeded", job["error"]
        guess = predicted[job["id"]]
        start, finish = at(job["started_at"]) - resumed, at(job["finished_at"]) - resumed
        # The first job may have started before the resume's answer was read: its start is 0 then.
        guess_start = guess["eta_start_s"] or 0.0
        error = (guess["eta_finish_s"] - finish) / finish
        errors.append(abs(error))
        r = job["request"]
        shape = f"{r['width']}x{r['height']}, {r['num_frames']}, {r['steps']}"
        print(
            f"| {n} | {shape} | {guess_start:.1f} s | {max(start, 0):.1f} s | {guess['eta_finish_s']:.1f} s "
            f"| {finish:.1f} s | {error:+.0%} |"
        )
    print(f"\nfinish error: median {statistics.median(errors):.0%}, largest {max(errors):.0%} (goal: within 30 %)")


def at(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


class Recorded(msgspec.Struct):
    model: ModelSize
    runs: list[Any]


def record(data_dir: Path, model_dir: Path, path: Path) -> None:
    """The portal's finished runs as the estimate reads them (Store.past_runs), oldest first, with the model's size."""
    store = Store(Settings(data_dir=data_dir).db_path)
    try:
        runs = list(reversed(store.past_runs("demo", 100)))
    finally:
        store.close()
    size = ModelSize.read(model_dir)
    path.write_bytes(msgspec.json.format(msgspec.json.encode(Recorded(model=size, runs=runs))) + b"\n")
    print(f"\n# {len(runs)} runs written to {path}")


if __name__ == "__main__":
    try:
        main()
    except httpx.HTTPError as error:
        sys.exit(f"the portal stopped answering: {error}")
