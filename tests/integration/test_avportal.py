"""The avportal client and command line against a real portal: in a terminal as a person sees it, through a
connection that drops, and with bad input."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pty
import re
import select
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from avportal import AsyncAVPortal, AVPortal
from avportal.cli import EXIT_CANCELLED, EXIT_INVALID, EXIT_LEFT_RUNNING, EXIT_OK
from tests.portal import REPO_ROOT, Portal
from tests.runner_fixtures import read_mp4

# The smallest jobs that still show what they must: fast mode's two denoising stages ("stage 2 of 2, step 3/3")
SMALL_FAST = ["--mode", "fast", "--size", "64x64", "--frames", "9"]
# a quality job of two steps,
TINY = {"mode": "quality", "width": 64, "height": 64, "num_frames": 9, "steps": 2}
# and a job that is still denoising when the test presses Ctrl-C (100 steps, each a second or more on a CPU).
SLOW = ["--mode", "quality", "--size", "256x160", "--frames", "97", "--steps", "100"]


@pytest.fixture
def portal(shared_portal: Portal) -> Portal:
    return shared_portal


class Terminal:
    """`python -m avportal ...` on a pseudo-terminal of 120 columns, as a person runs it: keys go in, the screen
    comes out (ANSI escapes stripped; each redraw of the progress line on a line of its own)."""

    def __init__(self, *args: str, cwd: Path = REPO_ROOT) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the terminal is its controlling tty, so Ctrl-C there is its SIGINT
            os.chdir(cwd)
            os.environ["TERM"] = "xterm-256color"
            os.execv(sys.executable, [sys.executable, "-m", "avportal", *args])
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self.raw = b""

    @property
    def screen(self) -> str:
        text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", self.raw.decode(errors="replace"))
        return re.sub(r"\r\n?", "\n", text)

    def expect(self, pattern: str, timeout: float = 120) -> re.Match:
        deadline = time.monotonic() + timeout
        while not (found := re.search(pattern, self.screen)):
            assert time.monotonic() < deadline, f"no {pattern!r} on the screen after {timeout} s:\n{self.screen}"
            if select.select([self.fd], [], [], 0.2)[0]:
                with contextlib.suppress(OSError):  # the child exited and closed the terminal
                    self.raw += os.read(self.fd, 65536)
        return found

    def type(self, keys: bytes) -> None:
        os.write(self.fd, keys)

    def exit_code(self, timeout: float = 120) -> int:
        deadline = time.monotonic() + timeout
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                with contextlib.suppress(OSError):
                    while select.select([self.fd], [], [], 0.1)[0] and (chunk := os.read(self.fd, 65536)):
                        self.raw += chunk
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
            assert time.monotonic() < deadline, f"still running after {timeout} s:\n{self.screen}"
            with contextlib.suppress(OSError):
                if select.select([self.fd], [], [], 0.2)[0]:
                    self.raw += os.read(self.fd, 65536)


def a_png(path: Path) -> Path:
    Image.new("RGB", (128, 64), (200, 30, 30)).save(path)
    return path


def test_generate_in_a_terminal_shows_the_progress_and_writes_an_mp4_with_sound(portal: Portal, tmp_path) -> None:
    clip = tmp_path / "clip.mp4"
    image = a_png(tmp_path / "start.png")
    terminal = Terminal(
        "generate", "a red ball bouncing with clicks", *SMALL_FAST, "--image", str(image), "-o", str(clip),
        "--url", portal.base_url,
    )  # fmt: skip
    job_id = terminal.expect(r"job ([0-9a-f]+) submitted")[1]
    assert terminal.exit_code() == EXIT_OK, terminal.screen
    screen = terminal.screen
    for shown in ("denoise: stage 1 of 2, step 8/8", "refine: stage 2 of 2, step 3/3", "preview", "ETA", "100%"):
        assert shown in screen, f"{shown!r} not shown:\n{screen}"
    assert screen.rstrip().endswith(str(clip)), "the clip's path is the last thing printed"

    mp4 = read_mp4(clip)
    assert (mp4.video_codec, mp4.audio_codec, mp4.stream_count) == ("h264", "aac", 2)
    assert (mp4.width, mp4.height, len(mp4.frames)) == (64, 64, 9)
    job = portal.job(job_id)
    assert job["status"] == "succeeded" and job["request"]["image_upload_id"], "the image was uploaded for it"
    assert clip.read_bytes() == (portal.job_dir(job_id) / "video.mp4").read_bytes()


def test_ctrl_c_asks_whether_to_cancel_leaves_it_running_on_no_and_cancels_on_yes(portal: Portal) -> None:
    generate = Terminal("generate", "a blue square moving left", *SLOW, "--url", portal.base_url)
    job_id = generate.expect(r"job ([0-9a-f]+) submitted")[1]
    generate.expect(r"denoise: step [1-9]\d*/100 · ETA")
    generate.type(b"\x03")
    generate.expect(rf"Cancel job {job_id}\? \[y/n\] \(n\): ")
    generate.type(b"n\r")
    assert generate.exit_code() == EXIT_LEFT_RUNNING, generate.screen
    again = re.search(r"Job \w+ goes on\. Watch it again with: (.+)", generate.screen)
    assert again and again[1].split()[:3] == ["avportal", "watch", job_id]
    assert portal.job(job_id)["status"] == "running"

    watch = Terminal("watch", job_id, "--url", portal.base_url)
    watch.expect(r"denoise: step [1-9]\d*/100")
    watch.type(b"\x03")
    watch.expect(rf"Cancel job {job_id}\? ")
    watch.type(b"y\r")
    assert watch.exit_code() == EXIT_CANCELLED, watch.screen
    assert f"job {job_id} cancelled" in watch.screen
    assert portal.job(job_id)["status"] == "cancelled"


def test_bad_input_exits_with_the_invalid_input_code_naming_the_field(portal: Portal) -> None:
    with portal.client() as c:
        before = c.get("/api/jobs").json()["jobs"]
    refused = subprocess.run(
        [sys.executable, "-m", "avportal", "generate", "a red ball", "--frames", "2", "--url", portal.base_url],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == EXIT_INVALID, refused.stderr
    assert "invalid input (400)" in refused.stderr
    assert re.search(r"^  --frames \(num_frames\): 2 is below the minimum 9", refused.stderr, re.M), refused.stderr
    with portal.client() as c:
        assert c.get("/api/jobs").json()["jobs"] == before, "no job was made"


class CuttingProxy:
    """A TCP proxy in front of the portal that cuts the first event stream it carries in the middle of its first
    `step` event, as a flaky network or a restarting proxy would; the rest it passes through."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.stream_requests: list[bytes] = []  # each request for an event stream, as sent
        self.cut = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                threading.Thread(target=self._carry, args=(client,), daemon=True).start()

    def _carry(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        streaming = threading.Event()
        threading.Thread(target=self._up, args=(client, upstream, streaming), daemon=True).start()
        seen = b""
        with contextlib.suppress(OSError), client, upstream:
            while data := upstream.recv(65536):
                if streaming.is_set() and not self.cut.is_set():
                    seen += data
                    at = seen.find(b"event: step")
                    if at >= 0:
                        self.cut.set()
                        client.sendall(data[: len(data) - (len(seen) - at - 8)])  # up to "event: s"
                        for end in (client, upstream):  # shut down, not just closed: _up's recv holds them open
                            end.shutdown(socket.SHUT_RDWR)
                        return
                client.sendall(data)

    def _up(self, client: socket.socket, upstream: socket.socket, streaming: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                if re.match(rb"GET /api/jobs/\w+/events ", data):
                    self.stream_requests.append(data)
                    streaming.set()
                upstream.sendall(data)
        with contextlib.suppress(OSError):
            upstream.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()


def test_the_library_resumes_a_cut_event_stream_without_losing_or_repeating_events(portal: Portal, tmp_path) -> None:
    proxy = CuttingProxy(portal.port)
    seen = []
    clip = tmp_path / "clip.mp4"
    with AVPortal(proxy.url) as client:
        job = client.generate("a green ball moving right", output=clip, on_event=seen.append, **TINY)
    assert job.status == "succeeded" and proxy.cut.is_set()
    stored = [(int(e.id), e.event) for e in portal.events(job.id) if e.event != "end"]
    assert [(e.id, e.type) for e in seen] == stored, "every stored event, once, in order"
    assert len(proxy.stream_requests) == 2 and b"last-event-id: " in proxy.stream_requests[1].lower()
    assert clip.read_bytes() == (portal.job_dir(job.id) / "video.mp4").read_bytes()

    # The async client, through a fresh proxy, on the finished job: the replay is cut and resumed the same way.
    again = CuttingProxy(portal.port)

    async def replay() -> list[tuple[int, str]]:
        async with AsyncAVPortal(again.url) as client:
            return [(e.id, e.type) async for e in client.events(job.id)]

    assert asyncio.run(replay()) == stored and again.cut.is_set() and len(again.stream_requests) == 2
    proxy.close()
    again.close()
