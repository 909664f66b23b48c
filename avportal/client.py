"""The portal's JSON API as a Python library: `AVPortal` (sync) and `AsyncAVPortal` (async).

Every method is written once, in `_Portal`, as a plan: a generator that yields the HTTP calls it needs
(`_Call`, `_Follow`) and returns what it makes of the answers. The two classes differ only in how they
make a call (httpx.Client or httpx.AsyncClient), so a method of `AsyncAVPortal` is awaited where the same
method of `AVPortal` returns at once. The event stream's resumption is `EventCursor`'s, shared likewise.
"""

from __future__ import annotations

import asyncio
import contextlib
import mimetypes
import os
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

import httpx
from httpx_sse import aconnect_sse, connect_sse

from avportal.errors import JobCancelled, JobFailed, Unreachable, api_error
from avportal.stream import RECONNECTABLE, Event, EventCursor, job_path

DEFAULT_URL = "http://127.0.0.1:8000"  # the portal's own default (AVP_HOST, AVP_PORT)
TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class Job:
    """A job as the portal reported it: `data` is its JSON, whole; the properties read the common parts."""

    data: dict[str, Any]

    id = property(lambda self: self.data["id"])
    status = property(lambda self: self.data["status"])
    request = property(lambda self: self.data.get("request") or {})
    progress = property(lambda self: self.data.get("progress") or {})
    error = property(lambda self: self.data.get("error"))  # {"code", "message"} once failed or cancelled
    result = property(lambda self: self.data.get("result"))
    links = property(lambda self: self.data.get("links") or {})
    # Where a queued job stands (1 = next) and when it should start and finish, in seconds from the answer;
    # None when not queued, unknown, or from a portal that does not say.
    queue_position = property(lambda self: self.data.get("queue_position"))
    eta_start_s = property(lambda self: self.data.get("eta_start_s"))
    eta_finish_s = property(lambda self: self.data.get("eta_finish_s"))

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


@dataclass(frozen=True)
class _Call:
    """One HTTP request of a plan; its answer is the decoded JSON (None for an empty body)."""

    method: str
    path: str
    json: Any = None
    files: dict[str, tuple[str, bytes, str]] | None = None
    params: dict[str, Any] | None = None
    into: Path | None = None  # stream the body into this file instead (answer: the path)


@dataclass(frozen=True)
class _Follow:
    """Follow a job's events to its end, handing each to `on_event`."""

    job_id: str
    on_event: Callable[[Event], None] | None


_Plan = Generator[_Call | _Follow, Any, Any]


@contextlib.contextmanager
def _reaching(url: str) -> Iterator[None]:
    try:
        yield
    except httpx.TransportError as error:
        raise Unreachable(f"no answer from the portal at {url}: {str(error) or type(error).__name__}") from error


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[BinaryIO]:
    """A file written under a temporary name and renamed when complete: no half-downloaded clip is left."""
    partial = path.with_name(path.name + ".part")
    try:
        with open(partial, "wb") as file:
            yield file
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def _answer(response: httpx.Response) -> Any:
    if not response.is_success:
        raise api_error(response)
    return response.json() if response.content else None


def _with_jobs(batch: dict[str, Any]) -> dict[str, Any]:
    return {**batch, "jobs": [Job(data) for data in batch["jobs"]]}


class _Portal:
    """What both clients share: settings, and every API method as a plan."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 60.0,
        reconnect_for: float = 120.0,
        transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`url` and `token` default to AVP_URL and AVP_API_TOKEN, then to the portal's default address and none.
        `timeout` bounds each read (the portal sends a heartbeat every 15 s); a dropped event stream is reopened
        for up to `reconnect_for` seconds; `transport` is httpx's (e.g. a mock in tests)."""
        self.url = (url or os.environ.get("AVP_URL") or DEFAULT_URL).rstrip("/")
        token = token or os.environ.get("AVP_API_TOKEN")
        self.reconnect_for = reconnect_for
        self._http_options: dict[str, Any] = {
            "base_url": self.url,
            "headers": {"Authorization": f"Bearer {token}"} if token else {},
            "timeout": httpx.Timeout(timeout, connect=10.0),
            **({"transport": transport} if transport is not None else {}),
        }

    # ---- the API: each method returns its result (AVPortal) or an awaitable of it (AsyncAVPortal) ----

    def upload(self, image: str | Path) -> Any:
        """Upload an image file (JPEG, PNG or WebP): its `{"upload_id", "filename", "width", "height", ...}`."""
        return self._run(self._upload(Path(image)))

    def submit(self, prompt: str, *, image: str | Path | None = None, **fields: Any) -> Any:
        """Submit a job (uploading `image` first, to start the clip from): the queued Job. `fields` are the
        request's (`model`, `mode`, `width`, `height`, `num_frames`, `fps`, `steps`, `seed`, `extend_from`, ...);
        `keyframes` entries may name a local image as `{"file": path, "frame": ...}`, uploaded first."""
        return self._run(self._submit(prompt, image, fields))

    def submit_batch(
        self,
        prompts: list[str] | None = None,
        *,
        seeds: int | list[int] | None = None,
        image: str | Path | None = None,
        **fields: Any,
    ) -> Any:
        """Submit a batch (POST /api/batches): a job for every prompt with every seed (`seeds`: a count, or a list),
        the other `fields` shared (a single `prompt` among them when `prompts` is not given). The batch as the portal
        answers it: `{"id", "jobs", "counts", "finished", "page"}`, its jobs as Job."""
        return self._run(self._submit_batch(prompts, seeds, image, fields))

    def batch(self, batch_id: str) -> Any:
        """A batch as `submit_batch` returns it, as it is now."""
        return self._run(self._batch(batch_id))

    def cancel_batch(self, batch_id: str) -> Any:
        """Cancel every job of a batch that has not ended: the batch as it is then."""
        return self._run(self._batch(batch_id, "cancel"))

    def job(self, job_id: str) -> Any:
        return self._run(self._job(job_id))

    def jobs(self, limit: int = 50, before: str | None = None) -> Any:
        """Jobs, newest first: a list of Job (`before`: a job id, to page on to older ones)."""
        return self._run(self._jobs(limit, before))

    def cancel(self, job_id: str) -> Any:
        """Cancel a queued or running job: the Job as it is then (APIError 409 once it has ended)."""
        return self._run(self._cancel(job_id))

    def download(self, job_id: str, path: str | Path) -> Any:
        """Write a finished job's MP4 to `path`: the path."""
        return self._run(self._download(job_id, Path(path)))

    def generate(
        self,
        prompt: str,
        *,
        output: str | Path | None = None,
        image: str | Path | None = None,
        on_event: Callable[[Event], None] | None = None,
        **fields: Any,
    ) -> Any:
        """Submit, follow the job's events (each handed to `on_event`) to its end, write the MP4 to `output`:
        the finished Job. Raises JobFailed or JobCancelled when it ends without a video, InvalidInput when
        the portal refuses the request."""
        return self._run(self._generate(prompt, image, fields, on_event, None if output is None else Path(output)))

    # ---- the plans ----

    def _upload(self, image: Path) -> _Plan:
        kind = mimetypes.guess_type(image.name)[0] or "application/octet-stream"
        return (yield _Call("POST", "/api/uploads", files={"file": (image.name, image.read_bytes(), kind)}))

    def _submit(self, prompt: str, image: str | Path | None, fields: dict[str, Any]) -> _Plan:
        if image is not None:
            fields = {**fields, "image_upload_id": (yield from self._upload(Path(image)))["upload_id"]}
        if fields.get("keyframes"):  # a keyframe given as {"file": path} is uploaded first
            keyframes = []
            for keyframe in fields["keyframes"]:
                if "file" in keyframe:
                    rest = {k: v for k, v in keyframe.items() if k != "file"}
                    keyframe = {"upload_id": (yield from self._upload(Path(keyframe["file"])))["upload_id"], **rest}
                keyframes.append(keyframe)
            fields = {**fields, "keyframes": keyframes}
        return Job((yield _Call("POST", "/api/jobs", json={"prompt": prompt, **fields})))

    def _submit_batch(
        self, prompts: list[str] | None, seeds: int | list[int] | None, image: str | Path | None, fields: dict
    ) -> _Plan:
        body = {**fields, **({"prompts": prompts} if prompts is not None else {})}
        body |= {"seeds": seeds} if seeds is not None else {}
        if image is not None:
            body["image_upload_id"] = (yield from self._upload(Path(image)))["upload_id"]
        return _with_jobs((yield _Call("POST", "/api/batches", json=body)))

    def _batch(self, batch_id: str, action: str | None = None) -> _Plan:
        path = "/".join(("/api/batches", quote(batch_id, safe=""), *((action,) if action else ())))
        return _with_jobs((yield _Call("POST" if action else "GET", path, **({"json": {}} if action else {}))))

    def _job(self, job_id: str) -> _Plan:
        return Job((yield _Call("GET", job_path(job_id))))

    def _jobs(self, limit: int, before: str | None) -> _Plan:
        params = {"limit": limit, **({"before": before} if before else {})}
        return [Job(data) for data in (yield _Call("GET", "/api/jobs", params=params))["jobs"]]

    def _cancel(self, job_id: str) -> _Plan:
        # A JSON body: the CSRF check lets it through without a token, as a cross-site page cannot send one.
        return Job((yield _Call("POST", job_path(job_id, "cancel"), json={})))

    def _download(self, job_id: str, path: Path) -> _Plan:
        return (yield _Call("GET", job_path(job_id, "video"), into=path))

    def _generate(
        self,
        prompt: str,
        image: str | Path | None,
        fields: dict[str, Any],
        on_event: Callable[[Event], None] | None,
        output: Path | None,
    ) -> _Plan:
        job = yield from self._submit(prompt, image, fields)
        yield _Follow(job.id, on_event)
        job = yield from self._job(job.id)
        if job.status == "cancelled":
            raise JobCancelled(job)
        if job.status != "succeeded":
            raise JobFailed(job)
        if output is not None:
            yield from self._download(job.id, output)
        return job

    def _run(self, plan: _Plan) -> Any:
        raise NotImplementedError


class AVPortal(_Portal):
    """The portal's API, synchronous. `with AVPortal(url, token) as portal: portal.generate("a red ball")`."""

    def __init__(self, url: str | None = None, token: str | None = None, **options: Any) -> None:
        super().__init__(url, token, **options)
        self._http = httpx.Client(**self._http_options)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AVPortal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def events(self, job_id: str, last_event_id: int | None = None) -> Iterator[Event]:
        """The job's events from after `last_event_id` (None: from its first) to its end, each once, reconnecting
        with Last-Event-ID when the connection drops. Ends after the job's terminal event."""
        cursor = EventCursor(job_id, last_event_id, self.reconnect_for)
        while cursor.ended is None:
            try:
                with connect_sse(self._http, "GET", cursor.path, headers=cursor.headers()) as source:
                    if not source.response.is_success:
                        source.response.read()
                    cursor.opened(source.response)
                    for sse in source.iter_sse():
                        if (event := cursor.accept(sse)) is not None:
                            yield event
            except RECONNECTABLE as error:
                time.sleep(cursor.dropped(error))
            else:
                if cursor.ended is None:
                    time.sleep(cursor.dropped(None))

    def _run(self, plan: _Plan) -> Any:
        answer = None
        try:
            while True:
                answer = self._perform(plan.send(answer))
        except StopIteration as done:
            return done.value

    def _perform(self, step: _Call | _Follow) -> Any:
        if isinstance(step, _Follow):
            for event in self.events(step.job_id):
                if step.on_event is not None:
                    step.on_event(event)
            return None
        with _reaching(self.url):
            if step.into is None:
                return _answer(self._http.request(step.method, step.path, json=step.json, files=step.files,
                                                  params=step.params))  # fmt: skip
            with self._http.stream(step.method, step.path) as response:
                if not response.is_success:
                    response.read()
                    raise api_error(response)
                with _writing(step.into) as file:
                    for chunk in response.iter_bytes():
                        file.write(chunk)
            return step.into


class AsyncAVPortal(_Portal):
    """The portal's API for asyncio: the same methods as AVPortal, awaited; `events` is an async iterator."""

    def __init__(self, url: str | None = None, token: str | None = None, **options: Any) -> None:
        super().__init__(url, token, **options)
        self._http = httpx.AsyncClient(**self._http_options)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncAVPortal:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def events(self, job_id: str, last_event_id: int | None = None) -> AsyncIterator[Event]:
        """As AVPortal.events, asynchronously."""
        cursor = EventCursor(job_id, last_event_id, self.reconnect_for)
        while cursor.ended is None:
            try:
                async with aconnect_sse(self._http, "GET", cursor.path, headers=cursor.headers()) as source:
                    if not source.response.is_success:
                        await source.response.aread()
                    cursor.opened(source.response)
                    async for sse in source.aiter_sse():
                        if (event := cursor.accept(sse)) is not None:
                            yield event
            except RECONNECTABLE as error:
                await asyncio.sleep(cursor.dropped(error))
            else:
                if cursor.ended is None:
                    await asyncio.sleep(cursor.dropped(None))

    async def _run(self, plan: _Plan) -> Any:
        answer = None
        try:
            while True:
                answer = await self._perform(plan.send(answer))
        except StopIteration as done:
            return done.value

    async def _perform(self, step: _Call | _Follow) -> Any:
        if isinstance(step, _Follow):
            async for event in self.events(step.job_id):
                if step.on_event is not None:
                    step.on_event(event)
            return None
        with _reaching(self.url):
            if step.into is None:
                return _answer(await self._http.request(step.method, step.path, json=step.json, files=step.files,
                                                        params=step.params))  # fmt: skip
            async with self._http.stream(step.method, step.path) as response:
                if not response.is_success:
                    await response.aread()
                    raise api_error(response)
                with _writing(step.into) as file:
                    async for chunk in response.aiter_bytes():
                        file.write(chunk)
            return step.into
