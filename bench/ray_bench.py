"""What Ray adds to a job: submit to first runner event, and last runner event to the MP4 on the portal, per job,
through a Ray cluster on this machine against a local slot (CPU figures).

For each way it starts `python -m app serve` on a fresh data dir, runs J small demo jobs one after another and
times, from the job's event stream as a client sees it: submit (the POST's answer) to the first runner event
(the first `stage`), and the runner's last event (`result`) to `succeeded` (by then the MP4 is in the portal's
job directory; through Ray it travels back after the runner exits). The ways:

- local, spare off: a runner spawned for each job (as a Ray node does: it keeps no spare);
- local, spare on: as shipped for one host (a spare has torch imported when the job comes);
- ray: AVP_RAY_ADDRESS, a head with no GPU and one node with one (fake) GPU and the demo model, on this machine.

Ray's overhead is `ray` minus `local, spare off`. Ray binds the machine's outward interface unless only the
loopback exists, so the bench re-runs itself in a loopback-only network namespace (`unshare -n`, as root).

    .venv/bin/python bench/ray_bench.py [--jobs 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.portal import REPO_ROOT, Portal  # noqa: E402  (the same real-portal harness the tests use)
from tests.ray_cluster import local_cluster  # noqa: E402

IN_NAMESPACE = "AVP_RAY_BENCH_NETNS"
QUICK = {"steps": 2}
TIMEOUT_S = 600


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5, help="jobs run one after another for each way")
    args = parser.parse_args()
    if not os.environ.get(IN_NAMESPACE):
        command = f"ip link set lo up && exec {sys.executable} {Path(__file__).resolve()} --jobs {args.jobs}"
        env = {**os.environ, IN_NAMESPACE: "1", "RAY_USAGE_STATS_ENABLED": "0"}
        sys.exit(subprocess.run(["unshare", "-n", "sh", "-c", command], env=env).returncode)

    print(f"# CPU figures, {os.cpu_count()} cores; {args.jobs} demo jobs ({QUICK}) one after another per way")
    print(f"# load average {os.getloadavg()[0]:.2f} at the start\n")
    print("| way | submit to first runner event (median, min-max) | last runner event to MP4 (median, min-max) |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        demo = Path(tmp) / "demo"
        subprocess.run(
            [sys.executable, "-m", "gpu_runner", "demo-model", str(demo)],
            cwd=REPO_ROOT,
            check=True,
            capture_output=True,
        )
        ways = [
            ("local, spare off", {"AVP_GPUS": "cpu:1", "AVP_SPARE_RUNNER": "off"}),
            ("local, spare on", {"AVP_GPUS": "cpu:1", "AVP_SPARE_RUNNER": "on"}),
        ]
        for name, env in ways:
            report(name, measure(Path(tmp) / name.replace(" ", "").replace(",", "-"), demo, env, args.jobs))
        with local_cluster(Path(tmp) / "cluster", demo, ("node",)) as (cluster, _):
            report("ray", measure(Path(tmp) / "ray", demo, {"AVP_RAY_ADDRESS": cluster.address}, args.jobs))
    print(f"\n# load average {os.getloadavg()[0]:.2f} at the end")


def measure(tmp: Path, demo: Path, env: dict[str, str], jobs: int) -> list[tuple[float, float]]:
    """(submit to first runner event, result to succeeded) of each job, in seconds."""
    data_dir = tmp / "data"
    shutil.copytree(demo, data_dir / "models" / "demo")
    portal = Portal(data_dir=data_dir, env={"AVP_SUBMIT_PER_MINUTE": "1000", **env}).start(timeout=120)
    times = []
    try:
        for n in range(jobs + 1):  # the first job warms the caches (the prompt's, the page cache): not counted
            submitted = time.monotonic()
            job = portal.submit(**QUICK, seed=n)
            first = result = None
            for sse in portal.events(job["id"], timeout=TIMEOUT_S):
                if sse.event == "stage" and first is None:
                    first = time.monotonic()
                elif sse.event == "result":
                    result = time.monotonic()
                elif sse.event == "succeeded":
                    assert (portal.job_dir(job["id"]) / "video.mp4").is_file()
                    if n:
                        times.append((first - submitted, time.monotonic() - result))
                    break
                elif sse.event in ("failed", "cancelled"):
                    raise RuntimeError(f"job {job['id']}: {sse.data}\n{portal.log()}")
    finally:
        portal.stop()
    return times


def report(name: str, times: list[tuple[float, float]]) -> None:
    columns = [spread([pair[i] for pair in times]) for i in (0, 1)]
    print(f"| {name} | {columns[0]} | {columns[1]} |", flush=True)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s ({min(values):.2f}-{max(values):.2f})"


if __name__ == "__main__":
    main()
