"""Jobs survive what happens to them: cancels, restarts, broken runners, reconnects, shutdown."""

from __future__ import annotations

import json
import signal
import stat
import sys
import threading
import time
from pathlib import Path

import anyio
import httpx
from httpx_sse import aconnect_sse

from tests.portal import LONG_JOB, TINY_JOB, Portal, runner_processes

# Long enough on a 2-core CPU (several seconds of denoising) to act on it while it runs.


def wait_until_gone(job_dir: Path, timeout: float) -> float:
    began = time.monotonic()
    while runner_processes(job_dir):
        assert time.monotonic() - began < timeout, f"runner of {job_dir.name} still alive after {timeout} s"
        time.sleep(0.05)
    return time.monotonic() - began


def test_cancelling_a_queued_job_means_it_never_runs(portal: Portal) -> None:
    running = portal.submit(**LONG_JOB)
    queued = portal.submit(steps=2)
    with portal.client() as c:
        response = c.post(f"/api/jobs/{queued['id']}/cancel", json={})
        assert response.status_code == 202 and response.json()["status"] == "cancelled"
        c.post(f"/api/jobs/{running['id']}/cancel", json={})
    assert portal.wait(running["id"])["status"] == "cancelled"
    job = portal.job(queued["id"])
    assert job["status"] == "cancelled" and job["attempts"] == 0 and job["error"]["code"] == "cancelled"
    assert not (portal.job_dir(queued["id"]) / "runner.log").exists(), "no runner was started for it"


def test_cancelling_a_running_job_stops_its_runner_and_the_next_job_runs(portal: Portal) -> None:
    running = portal.submit(**LONG_JOB)
    following = portal.submit(**TINY_JOB)
    portal.wait_for_event(running["id"], "step")
    job_dir = portal.job_dir(running["id"])
    assert runner_processes(job_dir), "the runner is running"
    with portal.client() as c:
        assert c.post(f"/api/jobs/{running['id']}/cancel", json={}).status_code == 202
    wait_until_gone(job_dir, timeout=5)
    job = portal.wait(running["id"])
    assert job["status"] == "cancelled"
    assert not (job_dir / "video.mp4").exists()
    assert portal.wait(following["id"])["status"] == "succeeded"
    with portal.client() as c:
        again = c.post(f"/api/jobs/{running['id']}/cancel", json={})
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]


def test_a_sigkilled_portal_loses_no_job_and_reruns_the_interrupted_one(make_portal) -> None:
    first = make_portal()
    # Killed at its first step, so 6 steps of this size leave seconds of the first attempt (and its decode) when the
    # kill lands within milliseconds; the rerun does all 6.
    interrupted = first.submit(**{**LONG_JOB, "steps": 6}, seed=7)
    waiting = [first.submit(**TINY_JOB, seed=s) for s in (1, 2)]
    first.wait_for_event(interrupted["id"], "step")
    job_dir = first.job_dir(interrupted["id"])
    first.stop(signal.SIGKILL)
    wait_until_gone(job_dir, timeout=5)  # the runner dies with its parent

    second = make_portal(data_dir=first.data_dir)
    # A liveness bound, not a speed check: the 6-step rerun takes a few seconds alone on 2 cores, more when
    # other work shares them.
    rerun = second.wait(interrupted["id"], timeout=300)
    assert rerun["status"] == "succeeded" and rerun["attempts"] == 2
    types = [e.event for e in second.events(interrupted["id"])]
    assert types.count("running") == 2
    assert "interrupted" in types and types.index("interrupted") < len(types) - types[::-1].index("queued")
    for job in waiting:
        assert second.wait(job["id"])["status"] == "succeeded"
    with second.client() as c:
        assert len(c.get("/api/jobs").json()["jobs"]) == 3


def test_a_second_portal_on_a_held_data_dir_or_port_exits_and_changes_no_job(make_portal, tmp_path) -> None:
    first = make_portal()
    job = first.submit(**LONG_JOB)
    first.wait_for_event(job["id"], "step")

    same_data_dir = Portal(data_dir=first.data_dir, env={}).refused()
    assert same_data_dir.returncode == 3, same_data_dir.stderr
    assert f"pid {first.process.pid}" in same_data_dir.stderr and "stop that portal" in same_data_dir.stderr
    same_port = Portal(data_dir=tmp_path / "another", env={}, port=first.port).refused()
    assert same_port.returncode == 3, same_port.stderr
    assert f"127.0.0.1:{first.port} is in use" in same_port.stderr
    for refused in (same_data_dir, same_port):
        assert "Traceback" not in refused.stderr

    # The first portal's job runs on undisturbed: its first attempt still, one runner, each step once.
    now = first.job(job["id"])
    assert now["status"] == "running" and now["attempts"] == 1
    events: list[dict] = []
    for sse in first.events(job["id"]):
        events.append(json.loads(sse.data))
        if events[-1]["type"] == "step" and events[-1]["step"] > now["progress"]["step"]:
            break  # a step taken after the refused starts
    types = [event["type"] for event in events]
    assert types.count("queued") == 1 and types.count("running") == 1 and "interrupted" not in types
    steps = [event["step"] for event in events if event["type"] == "step"]
    assert steps == list(range(1, len(steps) + 1))


def test_reconnecting_with_last_event_id_replays_without_gap_or_duplicate(portal: Portal) -> None:
    # 6 steps of this size: the job runs on for seconds after the first step, while the client is away.
    job = portal.submit(**{**LONG_JOB, "steps": 6})
    seen: list[int] = []
    for sse in portal.events(job["id"]):
        seen.append(int(sse.id))
        if sse.event == "step":
            break  # the client goes away mid-job
    rest = [sse for sse in portal.events(job["id"], last_event_id=seen[-1])]
    assert rest[-1].event == "end"
    seen += [int(sse.id) for sse in rest[:-1]]
    assert seen == list(range(1, len(seen) + 1))
    assert rest[-2].event == "succeeded"


def test_reconnecting_to_a_finished_job_ends_promptly_whatever_last_event_id_says(shared_portal: Portal) -> None:
    job = shared_portal.submit(**TINY_JOB)
    stored = [sse for sse in shared_portal.events(job["id"])][:-1]  # the last is `end`, which has no id
    newest = int(stored[-1].id)
    replayed = [*(sse.event for sse in stored), "end"]

    async def reconnect(path: str, last_event_id: str) -> list[str]:
        """The stream's events, up to its close; a stream that goes on (heartbeats, nothing else) fails."""
        async with httpx.AsyncClient(
            base_url=shared_portal.base_url, headers=shared_portal.auth_headers, timeout=None
        ) as client:
            with anyio.fail_after(10):
                async with aconnect_sse(client, "GET", path, headers={"Last-Event-ID": last_event_id}) as source:
                    assert source.response.status_code == 200
                    return [sse.event async for sse in source.aiter_sse() if sse.data]

    api, page = f"/api/jobs/{job['id']}/events", f"/events/jobs/{job['id']}"
    # The client saw everything but `end` (it dropped just before it): only `end` is left.
    assert anyio.run(reconnect, api, str(newest)) == ["end"]
    assert anyio.run(reconnect, page, str(newest)) == ["end"]
    # An id this job never sent, or no id at all, replays the job from its start.
    for last_event_id in (str(newest + 1), str(10**30), "garbage", "-1", "7x", "1e3"):
        assert anyio.run(reconnect, api, last_event_id) == replayed, last_event_id
        assert anyio.run(reconnect, page, last_event_id) == ["job-panel", "end"], last_event_id
    assert "Traceback" not in shared_portal.log()


FAKE_RUNNER = """#!{python}
# Wraps the real runner; misbehaves when the job's prompt asks it to.
import json, os, sys
args = sys.argv[1:]
if args[:3] == ["-m", "gpu_runner", "run"]:
    prompt = json.load(open(os.path.join(args[3], "job.json")))["request"]["prompt"]
    if "garbage" in prompt:
        print("hello, this is not the protocol", flush=True)
        sys.exit(0)
    if "crash" in prompt:
        sys.stderr.write("Traceback (most recent call last):\\nZeroDivisionError: division by zero\\n")
        sys.exit(1)
    if "vanish" in prompt:
        os.kill(os.getpid(), 9)
os.execv({python!r}, [{python!r}, *args])
"""


def test_a_crashing_or_babbling_runner_fails_its_job_readably_and_the_worker_goes_on(make_portal, tmp_path) -> None:
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE_RUNNER.format(python=sys.executable))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    portal = make_portal(AVP_RUNNER_PYTHON=str(fake), AVP_SPARE_RUNNER="off")  # the fake speaks only `run`
    garbage, crash, vanish = (portal.submit(prompt=p, steps=2) for p in ("garbage", "crash", "vanish"))
    healthy = portal.submit(**TINY_JOB)

    assert portal.wait(healthy["id"])["status"] == "succeeded"
    failures = {
        name: portal.wait(job["id"]) for name, job in (("garbage", garbage), ("crash", crash), ("vanish", vanish))
    }
    for job in failures.values():
        assert job["status"] == "failed" and job["error"]["code"] == "internal"
        assert "Traceback" not in job["error"]["message"]
    assert "broke the progress protocol" in failures["garbage"]["error"]["message"]
    assert "hello, this is not the protocol" in failures["garbage"]["error"]["message"]
    assert "crashed (exit code 1)" in failures["crash"]["error"]["message"]
    assert "killed by SIGKILL" in failures["vanish"]["error"]["message"]
    assert "ZeroDivisionError" in (portal.job_dir(crash["id"]) / "runner.log").read_text()
    with portal.client() as c:
        assert c.get("/healthz").json()["worker"]["alive"] is True


def test_shutdown_with_open_streams_is_quick_and_leaves_no_runner(portal: Portal) -> None:
    job = portal.submit(**LONG_JOB)
    portal.wait_for_event(job["id"], "step")
    streams_ended: list[float] = []

    def listen() -> None:
        for _ in portal.events(job["id"]):
            pass
        streams_ended.append(time.monotonic())

    listeners = [threading.Thread(target=listen, daemon=True) for _ in range(3)]
    for t in listeners:
        t.start()
    time.sleep(0.5)
    took = portal.stop(signal.SIGTERM)
    assert portal.process.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
    assert took < 10, f"shutdown took {took:.1f} s"
    assert not runner_processes(portal.job_dir(job["id"]))
    for t in listeners:
        t.join(5)
    assert len(streams_ended) == 3


def test_shutdown_behind_nginx_with_many_subscribers_ends_within_the_grace(make_portal, make_proxy) -> None:
    grace_s = 2
    portal = make_portal(
        AVP_API_TOKEN="lifecycle-token-0123456789", AVP_ROOT_PATH="/portal", AVP_SHUTDOWN_GRACE_S=str(grace_s)
    )
    make_proxy("nginx", portal)
    job = portal.submit(**LONG_JOB)
    portal.wait_for_event(job["id"], "step")
    connected = threading.Semaphore(0)

    def subscribe(path: str) -> None:
        with portal.client(timeout=60) as client, client.stream("GET", path) as response:
            assert response.status_code == 200
            connected.release()
            for _ in response.iter_raw():
                pass

    paths = [f"/api/jobs/{job['id']}/events", "/events/jobs"] * 20
    subscribers = [threading.Thread(target=subscribe, args=(p,), daemon=True) for p in paths]
    for t in subscribers:
        t.start()
    for _ in paths:
        assert connected.acquire(timeout=30), "every subscriber connected through nginx"
    took = portal.stop(signal.SIGTERM, timeout=30)
    assert took < grace_s + 5, f"shutdown took {took:.1f} s with a grace of {grace_s} s"
    assert not runner_processes(portal.job_dir(job["id"])), "no runner outlives the portal"
    for t in subscribers:
        t.join(10)
    assert not any(t.is_alive() for t in subscribers), "every stream ended"
