"""A real portal for integration tests: `python -m app serve` on a loopback port, in its own data dir.

Tests talk to it over HTTP (httpx, httpx-sse) exactly as a client would. The process is
always killed in `stop()`, also when a test fails half-way.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import ServerSentEvent, connect_sse

from contract.request import FAST_FIXED

REPO_ROOT = Path(__file__).resolve().parent.parent
TERMINAL = {"succeeded", "failed", "cancelled"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _live_processes() -> Iterator[tuple[int, list[str], list[str]]]:
    """(pid, argv, the fields of /proc/<pid>/stat after the command name) of every live, non-zombie process."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = [part.decode(errors="replace") for part in (entry / "cmdline").read_bytes().split(b"\0")[:-1]]
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if stat[0] != "Z":  # zombies are gone already
                yield int(entry.name), argv, stat


def _cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def runner_processes(job_dir: Path) -> list[int]:
    """PIDs of live processes running this job: their command line names its directory (a runner spawned for
    it), or they work in it (a spare runner that took it chdirs there)."""
    names = {str(job_dir), str(job_dir.resolve())}
    return [
        pid
        for pid, argv, _stat in _live_processes()
        if any(name in arg for name in names for arg in argv) or _cwd(pid) == job_dir.resolve()
    ]


def spare_runners(jobs_dir: Path) -> list[int]:
    """PIDs of live spare runners of the portal whose jobs directory this is, still waiting for a job."""
    jobs_dir = jobs_dir.resolve()
    return [
        pid
        for pid, argv, _stat in _live_processes()
        if argv[-4:] == ["-m", "gpu_runner", "standby", str(jobs_dir)] and _cwd(pid) == jobs_dir
    ]


def process_group(pgid: int) -> list[int]:
    """PIDs of live processes in this process group."""
    return [pid for pid, _argv, stat in _live_processes() if int(stat[2]) == pgid]


def wait_for(find, timeout: float, what: str):
    """Poll `find()` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    while not (found := find()):
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.05)
    return found


# Settings for a portal whose tests run no job: no spare runner, which would import torch and diffusers (seconds of
# CPU, taken from the tests running beside it) for a job that never comes.
NO_JOBS = {"AVP_SPARE_RUNNER": "off"}

# A demo job of about a second on a CPU (64x64, 9 frames, 2 steps; the demo's default size takes several times
# that): for tests that need jobs to run and end, and look at nothing their size would change.
TINY_JOB = {"width": 64, "height": 64, "num_frames": 9, "steps": 2}

# A demo job that runs for minutes on a CPU: it holds the worker (running, or with jobs queued behind it) until
# a test cancels or kills it.
LONG_JOB = {"width": 512, "height": 288, "num_frames": 97, "steps": 100}


def quality_if_steps(fields: dict[str, Any]) -> dict[str, Any]:
    """Request fields with mode quality where they set steps or guidance, which fast mode fixes."""
    if "mode" not in fields and any(name in fields for name in FAST_FIXED):
        return {**fields, "mode": "quality"}
    return fields


@dataclass
class Portal:
    data_dir: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    front_url: str | None = None  # set when a test reaches the portal through a proxy
    repo_root: Path = REPO_ROOT  # the checkout it runs (a bench may measure another)

    @property
    def direct_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """Where clients reach the portal: through the proxy in front of it, if any."""
        return self.front_url or self.direct_url

    @property
    def auth_headers(self) -> dict[str, str]:
        token = self.env.get("AVP_API_TOKEN")
        return {"Authorization": f"Bearer {token}"} if token else {}

    @property
    def _serve(self) -> dict[str, Any]:
        """`python -m app serve` for this portal, as subprocess arguments."""
        return {
            "args": [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            "cwd": self.repo_root,
            # No job-length limit unless a test sets one (AVP_MAX_JOB_MINUTES="" is the product's default): the
            # tests' LONG_JOB holds the worker on purpose, and estimates learned from tiny jobs on a busy machine
            # can put it past the default.
            "env": {**os.environ, "AVP_DATA_DIR": str(self.data_dir), "AVP_MAX_JOB_MINUTES": "0", **self.env},
        }

    def start(self, timeout: float = 30) -> Portal:
        self.log_path = self.data_dir.parent / f"portal-{self.port}.log"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(**self._serve, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"portal exited with {self.process.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.direct_url + "/healthz", timeout=1).status_code in (200, 503):
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"portal did not answer within {timeout} s:\n{self.log()}")

    def refused(self, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Start this portal when it is expected not to start: how it exited, and what it said."""
        return subprocess.run(**self._serve, capture_output=True, text=True, timeout=timeout)

    def memory_mb(self) -> tuple[float, float]:
        """The web process's resident memory now and at its peak so far (VmRSS, VmHWM), in MB."""
        status = dict(line.split(":", 1) for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines())
        return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> float:
        """Signal the portal and wait for it; returns the seconds it took to exit."""
        if self.process is None or self.process.poll() is not None:
            return 0.0
        began = time.monotonic()
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return time.monotonic() - began

    # ---- the API, as a client uses it ----------------------------------------------

    def client(self, timeout: float = 30) -> httpx.Client:
        """An API client (with the bearer token when the portal has one)."""
        return httpx.Client(base_url=self.base_url, timeout=timeout, headers=self.auth_headers)

    @contextlib.contextmanager
    def form_client(self, timeout: float = 30) -> Iterator[httpx.Client]:
        """A client that posts forms as the portal's own page does in a browser: Sec-Fetch-Site and Origin say so."""
        with self.client(timeout) as client:
            client.headers.update({"Sec-Fetch-Site": "same-origin", "Origin": self.base_url})
            yield client

    def submit(self, **fields: Any) -> dict[str, Any]:
        """Submit a job; one that sets its steps or guidance (tests size jobs by steps) runs in quality mode."""
        with self.client() as c:
            response = c.post(
                "/api/jobs", json={"prompt": "a red ball bouncing with clicks", **quality_if_steps(fields)}
            )
        assert response.status_code == 201, response.text
        return response.json()

    def cancel(self, *job_ids: str) -> None:
        """Cancel jobs a test has seen all it needs of, so that they take no CPU from the tests after it on a shared
        portal (a queued one never runs)."""
        with self.client() as c:
            for job_id in job_ids:
                assert c.post(f"/api/jobs/{job_id}/cancel", json={}).status_code in (202, 409), job_id  # 409: ended

    def job(self, job_id: str) -> dict[str, Any]:
        with self.client() as c:
            return c.get(f"/api/jobs/{job_id}").raise_for_status().json()

    def wait(self, job_id: str, statuses: set[str] = TERMINAL, timeout: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job["status"] in statuses:
                return job
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s")

    def events(self, job_id: str, last_event_id: int | None = None, timeout: float = 90) -> Iterator[ServerSentEvent]:
        """The job's SSE stream; ends after its terminal event."""
        yield from self.stream(f"/api/jobs/{job_id}/events", last_event_id, timeout)

    def stream(self, path: str, last_event_id: int | None = None, timeout: float = 90) -> Iterator[ServerSentEvent]:
        """One of the portal's SSE streams, as it comes, heartbeats left out."""
        headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
        with (
            self.client(timeout) as c,
            connect_sse(c, "GET", path, headers=headers) as source,
        ):
            for sse in source.iter_sse():
                # A heartbeat comment ends in a blank line, which httpx-sse (unlike browsers) reports as an
                # empty "message" carrying the last id again.
                if sse.data or sse.event != "message":
                    yield sse

    def wait_for_event(self, job_id: str, event_type: str, timeout: float = 90) -> dict[str, Any]:
        for sse in self.events(job_id, timeout=timeout):
            if sse.event == event_type:
                return json.loads(sse.data)
        raise AssertionError(f"job {job_id} ended without a {event_type!r} event")

    def job_dir(self, job_id: str) -> Path:
        return self.data_dir / "jobs" / job_id


def prepare_data_dir(data_dir: Path, demo_model_dir: Path) -> Path:
    """A data dir with the session's demo model already in place (so each portal starts at once)."""
    shutil.copytree(demo_model_dir, data_dir / "models" / "demo")
    return data_dir
