"""The avportal client without a portal: event resumption, the progress line, the command's entry point."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tomllib

import httpx
import pytest
from httpx_sse import ServerSentEvent

from avportal import AsyncAVPortal, AVPortal, Event, InvalidInput, Job, StreamLost, Unreachable
from avportal.cli import main
from avportal.stream import EventCursor
from avportal.view import JobView
from tests.portal import REPO_ROOT


def sse(event_id: int | None, kind: str, **data) -> ServerSentEvent:
    body = {"type": kind, **data, **({"id": event_id} if event_id is not None else {})}
    return ServerSentEvent(event=kind, data=json.dumps(body), id=None if event_id is None else str(event_id))


def test_the_cursor_delivers_each_event_once_and_resumes_after_the_last_one() -> None:
    cursor = EventCursor("job1")
    assert cursor.path == "/api/jobs/job1/events" and cursor.headers() == {}
    first = [cursor.accept(sse(1, "queued")), cursor.accept(sse(2, "running", attempt=1))]
    assert [e.id for e in first] == [1, 2] and first[1] == Event(
        2, "running", {"type": "running", "attempt": 1, "id": 2}
    )
    # The connection drops; the reconnect asks for what came after event 2.
    cursor.connected = True
    assert cursor.dropped(httpx.ReadError("cut")) > 0
    assert cursor.headers() == {"Last-Event-ID": "2"}
    # A portal (or proxy) that replays from further back: what was delivered is not delivered again.
    again = [cursor.accept(sse(i, "step", step=i)) for i in (1, 2, 3)]
    assert again[:2] == [None, None] and again[2].id == 3
    # A heartbeat comment reads as an empty message with the last id: nothing to deliver.
    assert cursor.accept(ServerSentEvent(event="message", data="", id="3")) is None
    assert cursor.accept(sse(4, "succeeded")).type == "succeeded"
    assert cursor.ended is None
    end = ServerSentEvent(event="end", data=json.dumps({"type": "end", "status": "succeeded"}), id="4")
    assert cursor.accept(end) is None and cursor.ended == "succeeded" and cursor.last_id == 4


def test_a_cursor_started_from_an_id_asks_for_what_came_after_it() -> None:
    cursor = EventCursor("a/b", last_event_id=7)
    assert cursor.path == "/api/jobs/a%2Fb/events", "a job id never becomes more than one path segment"
    assert cursor.headers() == {"Last-Event-ID": "7"}
    assert cursor.accept(sse(7, "step")) is None and cursor.accept(sse(8, "step")).id == 8


def test_reconnecting_backs_off_and_gives_up_only_after_a_quiet_spell() -> None:
    now = [0.0]
    cursor = EventCursor("j", reconnect_for=30, clock=lambda: now[0])
    with pytest.raises(Unreachable, match="could not open the event stream"):
        cursor.dropped(httpx.ConnectError("refused"))  # never connected: a wrong address fails at once
    cursor.connected = True
    delays = [cursor.dropped(httpx.ReadError("cut")) for _ in range(8)]
    assert delays[:3] == [0.25, 0.5, 1.0] and max(delays) == 5.0
    now[0] = 29.0
    cursor.accept(ServerSentEvent(event="message", data="", id=None))  # something arrived: the spell starts again
    assert cursor.dropped(None) == 0.25
    now[0] = 58.0
    assert cursor.dropped(None) == 0.5
    now[0] = 59.5
    with pytest.raises(StreamLost, match="30 s"):
        cursor.dropped(httpx.ReadError("cut"))
    retrying = EventCursor("j")
    retrying.connected = True
    retrying.accept(ServerSentEvent(event="message", data="", retry=2000))
    assert retrying.dropped(None) == 2.0, "the server's retry: advice is the first wait"


class _Stream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body that breaks off with a ReadError after its chunks when `cut`."""

    def __init__(self, chunks: list[bytes], cut: bool) -> None:
        self.chunks, self.cut = chunks, cut

    def __iter__(self):
        yield from self.chunks
        if self.cut:
            raise httpx.ReadError("connection reset")

    async def __aiter__(self):
        for chunk in self.chunks:
            yield chunk
        if self.cut:
            raise httpx.ReadError("connection reset")


def _frame(event_id: int, kind: str) -> bytes:
    return f'id: {event_id}\nevent: {kind}\ndata: {{"type": "{kind}", "id": {event_id}}}\n\n'.encode()


class FlakyPortal:
    """A job's event stream of 8 events that breaks off in the middle of event 4 the first time; a reconnect
    replays from one event before the Last-Event-ID it is sent (a resend the client must drop)."""

    KINDS = ["queued", "running", "stage", "step", "step", "preview", "result", "succeeded"]

    def __init__(self) -> None:
        self.asked: list[str | None] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        last = request.headers.get("last-event-id")
        self.asked.append(last)
        start = max(int(last) - 1, 0) if last else 0
        frames = [_frame(i + 1, kind) for i, kind in enumerate(self.KINDS)][start:]
        first = len(self.asked) == 1
        if first:  # cut inside event 4: its half must not be delivered
            frames = [*frames[:3], frames[3][:20]]
        else:
            frames.append(b'event: end\ndata: {"type": "end", "status": "succeeded"}\n\n')
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, stream=_Stream([b"".join(frames)], cut=first)
        )


def _events_of(client_class) -> tuple[list[tuple[int, str]], list[str | None]]:
    flaky = FlakyPortal()
    client = client_class("http://portal.test", transport=httpx.MockTransport(flaky))
    if client_class is AVPortal:
        got = [(e.id, e.type) for e in client.events("j1")]
    else:

        async def collect():
            return [(e.id, e.type) async for e in client.events("j1")]

        got = asyncio.run(collect())
    return got, flaky.asked


@pytest.mark.parametrize("client_class", [AVPortal, AsyncAVPortal])
def test_a_dropped_stream_is_resumed_without_losing_or_repeating_an_event(client_class) -> None:
    got, asked = _events_of(client_class)
    assert got == [(i + 1, kind) for i, kind in enumerate(FlakyPortal.KINDS)]
    assert asked == [None, "3"]


def test_a_refused_submit_names_each_field() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        errors = [{"field": "num_frames", "message": "2 is below the minimum 9"}]
        return httpx.Response(400, json={"detail": "Invalid request", "errors": errors})

    with (
        AVPortal("http://portal.test", transport=httpx.MockTransport(refuse)) as portal,
        pytest.raises(InvalidInput) as refused,
    ):
        portal.submit("a red ball", num_frames=2)
    assert refused.value.status_code == 400 and refused.value.errors[0].field == "num_frames"
    assert str(refused.value) == "400: Invalid request\n  num_frames: 2 is below the minimum 9"


def test_the_progress_line_shows_stage_step_eta_and_previews() -> None:
    view = JobView.of(Job({"id": "j", "status": "queued"}))
    assert view.describe() == "queued", "a portal without queue positions"
    listed = JobView.of(Job({"id": "j", "status": "queued", "queue_position": 1, "eta_start_s": None}))
    assert listed.describe() == "queued, next in line"
    queued = view.apply(Event(1, "queued", {"queue_position": 2, "eta_start_s": 12.4, "eta_finish_s": 75}))
    assert queued.describe() == "queued, position 2, starts in ~12 s, done in ~1 min 15 s"
    view = queued.apply(Event(2, "running", {})).apply(Event(3, "stage", {"name": "refine"}))
    step = {"step": 2, "total": 3, "elapsed_s": 0.5, "eta_s": 0.06, "stage": "refine", "stage_number": 2, "stages": 2}
    no_colours = {"file": None, "step": 1, "note": "No colour preview yet"}
    view = view.apply(Event(4, "step", step)).apply(Event(5, "preview", no_colours))
    view = view.apply(Event(6, "preview", {"file": "preview.jpg", "step": 2}))
    assert view.describe() == "refine: stage 2 of 2, step 2/3 · ETA 0 s · 1 preview"
    assert view.fraction == pytest.approx((1 + 2 / 3) / 2)
    quality = JobView(id="j", status="running").apply(Event(1, "stage", {"name": "denoise"}))
    quality = quality.apply(Event(2, "step", {"step": 1, "total": 30, "elapsed_s": 9.0, "eta_s": None}))
    assert quality.describe() == "denoise: step 1/30 · ETA …", "an ETA unknown while the first step compiled"
    assert quality.apply(Event(3, "succeeded", {})).fraction == 1.0


def test_the_avportal_script_is_the_client_and_hands_the_portals_commands_over(capsys) -> None:
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["avportal"] == "avportal.cli:main"
    with pytest.raises(SystemExit) as shown:
        main(["serve", "--help"])  # the web process's own command
    assert shown.value.code == 0 and "--port" in capsys.readouterr().out
    with pytest.raises(SystemExit) as refused:
        main(["generate", "a ball", "--size", "320"])
    assert refused.value.code == 2 and "--size: '320' is not WIDTHxHEIGHT" in capsys.readouterr().err


def test_the_client_imports_neither_the_portal_nor_torch() -> None:
    code = "import sys, avportal.cli; print(sorted({m.split('.')[0] for m in sys.modules}))"
    loaded = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    modules = set(json.loads(loaded.stdout.replace("'", '"')))
    assert "avportal" in modules and not modules & {"app", "contract", "gpu_runner", "torch", "litestar", "msgspec"}


def test_the_token_and_address_come_from_the_arguments_or_the_environment(monkeypatch) -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"jobs": [], "next_before": None})

    monkeypatch.setenv("AVP_URL", "http://from-env.test:9000/portal/")
    monkeypatch.setenv("AVP_API_TOKEN", "env-token")
    with AVPortal(transport=httpx.MockTransport(answer)) as portal:
        assert portal.jobs(limit=5) == []
    with AVPortal("http://given.test", "given-token", transport=httpx.MockTransport(answer)) as portal:
        portal.jobs()
    assert str(seen[0].url) == "http://from-env.test:9000/portal/api/jobs?limit=5"
    assert seen[0].headers["authorization"] == "Bearer env-token"
    assert seen[1].url.host == "given.test" and seen[1].headers["authorization"] == "Bearer given-token"
    monkeypatch.delenv("AVP_API_TOKEN")
    with AVPortal("http://given.test", transport=httpx.MockTransport(answer)) as portal:
        portal.jobs()
    assert "authorization" not in seen[2].headers
