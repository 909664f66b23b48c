"""The web process under load, on this machine: submit latency, event fan-out latency, list page render time.

Starts `python -m app serve` (bearer-token auth on, as on a LAN) with a fresh data dir holding
--history finished jobs, and a fake runner (AVP_RUNNER_PYTHON) that prints protocol lines
stamped with the wall clock, so the GPU is out of the picture and only the portal is measured:

- submit: POST /api/jobs at a steady --rate for --submits requests (the worker runs the fake
  jobs meanwhile, as it would), latency p50/p95;
- events: --subscribers SSE clients on one job's API stream; the runner prints --events `step` lines;
  latency from the runner writing a line to each subscriber reading it, p50/p99;
- page events: --page-subscribers clients on the same job's page stream (`/events/jobs/{id}`, the
  panel rendered once per event for all of them); latency from the runner line to each panel read;
- list pages: with --history jobs, p50/p95 of GET / (the create page with the job list's first 24 cards), a page
  filtered by status (one job in ten failed), by model, searched for a prompt word in one job of ten and for one in
  none (every prompt read), the second page as Load more fetches it, and GET /api/jobs.

    .venv/bin/python bench/portal_bench.py [--subscribers 500 --history 10000 --submits 200]

The subscribers and the portal share the machine's cores, as a browser on the same box would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.job_history import seed_jobs  # noqa: E402
from tests.portal import Portal  # noqa: E402  (the same real-portal harness the tests use)

TOKEN = "bench-token-0123456789abcdef"
EVENTS_PROMPT = "bench events"
GO_FILE = "go"  # the events job waits for this file in its job dir: every subscriber is connected

FAKE_RUNNER = textwrap.dedent(
    """\
    #!{python}
    # A runner that only speaks the protocol: `step` lines stamped with time.time() in elapsed_s.
    import json, os, sys, time
    args = sys.argv[1:]
    if args[:3] != ["-m", "gpu_runner", "run"]:
        sys.exit(0)  # demo-model: nothing to build
    job_dir = args[3]
    request = json.load(open(os.path.join(job_dir, "job.json")))["request"]
    if request["prompt"] == {events_prompt!r}:
        while not os.path.exists(os.path.join(job_dir, {go!r})):
            time.sleep(0.05)
        total = {events}
        for step in range(1, total + 1):
            time.sleep({interval})
            line = {{"type": "step", "step": step, "total": total, "elapsed_s": time.time(), "eta_s": 0.0}}
            print(json.dumps(line), flush=True)
    """
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


COLOURS = ("red", "green", "blue", "yellow", "white")
SHAPES = ("ball", "square")


def seed_history(db_path: Path, count: int) -> None:
    """`count` finished jobs, as if the portal had run them: one in ten failed, the prompts' colour and shape vary."""
    prompts = [f"a {COLOURS[i % 5]} {SHAPES[i // 5 % 2]} clip {i}" for i in range(count)]
    statuses = ["failed" if i % 10 == 0 else "succeeded" for i in range(count)]
    seed_jobs(db_path, [{"prompt": p, "status": s} for p, s in zip(prompts, statuses, strict=True)])


def measure_pages(portal: Portal, requests: int) -> dict[str, list[float]]:
    with portal.client() as client:
        second_page = re.search(r'id="load-more-link" href="/\?before=(\d+)"', client.get("/").text)[1]
    paths = [
        "/",
        "/?status=failed",
        "/?model=demo",
        "/?q=blue+square",
        "/?q=zebra",
        f"/fragments/jobs?before={second_page}",
        "/api/jobs",
    ]
    timings: dict[str, list[float]] = {path: [] for path in paths}
    with portal.client() as client:
        for path in timings:
            assert client.get(path).status_code == 200  # warm, and proves the token is accepted
            for _ in range(requests):
                began = time.perf_counter()
                client.get(path)
                timings[path].append(time.perf_counter() - began)
    return timings


def measure_submits(portal: Portal, count: int, rate: float) -> list[float]:
    latencies = []
    with portal.client() as client:
        start = time.perf_counter()
        for i in range(count):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            began = time.perf_counter()
            response = client.post("/api/jobs", json={"prompt": f"submit {i}", "steps": 1})
            latencies.append(time.perf_counter() - began)
            assert response.status_code == 201, response.text
    return latencies


async def _subscriber(port: int, path: str, connected: list[int], seen: Callable[[bytes], None]) -> None:
    # HTTP/1.0 and a plain socket: no chunked framing to undo, and little client CPU per event.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    headers = f"Host: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\nAccept: text/event-stream\r\n"
    writer.write(f"GET {path} HTTP/1.0\r\n{headers}\r\n".encode())
    await writer.drain()
    first = await reader.readline()
    assert b" 200 " in first, first
    connected.append(1)
    while line := await reader.readline():
        seen(line)
    writer.close()


async def measure_events(
    portal: Portal, job_id: str, subscribers: int, page_subscribers: int
) -> tuple[list[float], list[float]]:
    """Latencies of the API stream's step events, and of the page stream's panels (matched to the
    runner's time stamp by event id, which the API stream carries)."""
    latencies: list[float] = []
    stamped: dict[int, float] = {}  # event id -> when the runner wrote it
    page_arrivals: list[tuple[int, float]] = []
    connected: list[int] = []

    def api_line(line: bytes) -> None:
        if line.startswith(b"data: "):
            event = json.loads(line[6:])
            if event.get("type") == "step":
                latencies.append(time.time() - event["elapsed_s"])
                stamped[event["id"]] = event["elapsed_s"]

    def page_line(line: bytes) -> None:
        if line.startswith(b"id: "):
            page_arrivals.append((int(line[4:]), time.time()))

    streams = [(f"/api/jobs/{job_id}/events", api_line)] * subscribers
    streams += [(f"/events/jobs/{job_id}", page_line)] * page_subscribers
    tasks = [asyncio.create_task(_subscriber(portal.port, path, connected, seen)) for path, seen in streams]
    while len(connected) < len(tasks):
        await asyncio.sleep(0.05)
        for task in tasks:
            if task.done() and task.exception():
                raise task.exception()
    (portal.job_dir(job_id) / GO_FILE).touch()
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=300)
    page_latencies = [arrived - stamped[event_id] for event_id, arrived in page_arrivals if event_id in stamped]
    return latencies, page_latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=500, help="clients on the job's API stream (at least 1)")
    parser.add_argument("--page-subscribers", type=int, default=0, help="clients on the job's page stream")
    parser.add_argument("--events", type=int, default=100, help="step lines the runner prints")
    # 5 steps a second: faster than the real model steps (~0.8 s and up per step on an H100).
    parser.add_argument("--event-interval", type=float, default=0.2, help="seconds between step lines")
    parser.add_argument("--history", type=int, default=10_000, help="finished jobs in the database")
    parser.add_argument("--submits", type=int, default=200)
    parser.add_argument("--rate", type=float, default=10.0, help="submits per second")
    parser.add_argument("--page-requests", type=int, default=200)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        runner = Path(tmp) / "fake-runner"
        runner.write_text(
            FAKE_RUNNER.format(
                python=sys.executable,
                events_prompt=EVENTS_PROMPT,
                go=GO_FILE,
                events=args.events,
                interval=args.event_interval,
            )
        )
        runner.chmod(0o755)
        data_dir = Path(tmp) / "data"
        began = time.monotonic()
        seed_history(data_dir / "portal.sqlite3", args.history)
        seed_s = time.monotonic() - began
        env = {
            "AVP_API_TOKEN": TOKEN,
            "AVP_RUNNER_PYTHON": str(runner),
            "AVP_MAX_QUEUE": str(args.submits + 10),
            "AVP_SUBMIT_PER_MINUTE": str(args.submits * 60),
            "AVP_LOG_LEVEL": "warning",
            "AVP_SPARE_RUNNER": "off",  # the fake runner speaks only `run`
        }
        portal = Portal(data_dir=data_dir, env=env).start()
        try:
            pages = measure_pages(portal, args.page_requests)
            submits = measure_submits(portal, args.submits, args.rate)
            events_job = portal.submit(prompt=EVENTS_PROMPT, steps=1)
            events, page_events = asyncio.run(
                measure_events(portal, events_job["id"], args.subscribers, args.page_subscribers)
            )
        finally:
            portal.stop()

    expected = args.subscribers * args.events
    print(f"# Portal under load, CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"# {args.history} jobs in history (seeded in {seed_s:.1f} s); bearer-token auth on; fake runner\n")
    print("| figure | p50 | p95 | p99 | target |")
    print("|---|---|---|---|---|")

    def row(name: str, values: list[float], target: str) -> None:
        cells = " | ".join(f"{percentile(values, q) * 1000:.1f} ms" for q in (50, 95, 99))
        print(f"| {name} | {cells} | {target} |")

    row(f"submit, POST /api/jobs at {args.rate:g}/s ({args.submits})", submits, "p95 < 20 ms")
    row(
        f"event, runner line -> {args.subscribers} SSE subscribers ({len(events)} of {expected})",
        events,
        "p99 < 100 ms",
    )
    if args.page_subscribers:
        page_expected = args.page_subscribers * args.events
        name = f"panel, runner line -> {args.page_subscribers} page subscribers ({len(page_events)} of {page_expected})"
        row(name, page_events, "p99 < 100 ms")
    for path, timings in pages.items():
        row(f"GET {path} ({args.history} jobs)", timings, "p95 < 50 ms" if path != "/api/jobs" else "")
    print(f"\nmean event latency {statistics.mean(events) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
