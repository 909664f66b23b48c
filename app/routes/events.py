"""Server-sent events: a job's stored events with replay, and a page-level stream of job changes.

A job stream subscribes to live events first, then replays what is stored after
Last-Event-ID, then goes on live, skipping ids it already sent: no gap, no duplicate.
It ends after the job's terminal event with a synthetic `end` event (htmx: sse-close="end").
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from litestar import get
from litestar.di import NamedDependency
from litestar.params import FromPath, HeaderParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

from app.broker import ALL_JOBS, HEARTBEAT
from app.jobs import Services
from app.routes.api import load_job
from app.store import STATUSES, TERMINAL

END_EVENT = "end"


def _message(event: dict[str, Any]) -> ServerSentEventMessage:
    return ServerSentEventMessage(data=json.dumps(event), event=event["type"], id=str(event["id"]))


def _heartbeat() -> ServerSentEventMessage:
    return ServerSentEventMessage(comment="heartbeat", data=None)


def _end(status: str) -> ServerSentEventMessage:
    return ServerSentEventMessage(data=json.dumps({"type": END_EVENT, "status": status}), event=END_EVENT)


async def _job_stream(services: Services, job_id: str, last_id: int) -> AsyncIterator[ServerSentEventMessage]:
    with services.broker.subscribe(job_id) as live:
        for stored in await services.store.call(services.store.events_after, job_id, last_id):
            yield _message(stored.data)
            last_id = stored.id
            if stored.type in TERMINAL:
                yield _end(stored.type)
                return
        while True:
            try:
                event = await live.receive()
            except anyio.EndOfStream:  # shutdown, or this client fell behind: it reconnects with Last-Event-ID
                return
            if event is HEARTBEAT:
                yield _heartbeat()
                continue
            if event["id"] <= last_id:
                continue
            yield _message(event)
            last_id = event["id"]
            if event["type"] in TERMINAL:
                yield _end(event["type"])
                return


@get("/api/jobs/{job_id:str}/events", summary="A job's events as SSE", tags=["jobs"])
async def job_events(
    job_id: FromPath[str],
    services: NamedDependency[Services],
    last_event_id: Annotated[str | None, HeaderParameter(name="Last-Event-ID")] = None,
) -> ServerSentEvent:
    await load_job(services, job_id)
    after = int(last_event_id) if last_event_id and last_event_id.strip().isdigit() else 0
    return ServerSentEvent(_job_stream(services, job_id, after))


async def _all_jobs_stream(services: Services) -> AsyncIterator[ServerSentEventMessage]:
    with services.broker.subscribe(ALL_JOBS) as live:
        yield _heartbeat()  # flushes the response headers at once
        while True:
            try:
                event = await live.receive()
            except anyio.EndOfStream:
                return
            if event is HEARTBEAT:
                yield _heartbeat()
            else:
                kind = "job-status" if event["type"] in STATUSES else "job-progress"
                yield ServerSentEventMessage(data=json.dumps(event), event=kind)


@get("/events/jobs", summary="Every job's events, live only (one stream per page)", tags=["jobs"])
async def all_job_events(services: NamedDependency[Services]) -> ServerSentEvent:
    return ServerSentEvent(_all_jobs_stream(services))
