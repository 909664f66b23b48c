"""Server-sent events: the API's stream of a job's stored events, and the pages' streams of rendered fragments.

The API's job stream subscribes to live events first, then replays what is stored after
Last-Event-ID, then goes on live, skipping ids it already sent: no gap, no duplicate.
It ends after the job's terminal event with a synthetic `end` event; a reconnect to a finished
job gets what it missed and `end` at once. A Last-Event-ID that is no id of the job's replays from the start.

A page's stream (one per page) carries what app/page_feed.py renders, for htmx's `sse-swap`.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import anyio
from litestar import get
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, HeaderParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

from app.broker import HEARTBEAT, Broker, Subscription
from app.config import Settings
from app.job_list import ListQuery
from app.jobs import Jobs
from app.page_feed import ROWS_TOPIC, PageFeed, panel_topic
from app.routes.api import load_job
from app.routes.pages import LIST_PARAMS, ListParams, read_listing
from app.schemas import JobEvent
from app.sse_names import END
from app.statuses import TERMINAL

# An id as this portal sends them: a job's event number. Longer numbers are nobody's id (and would not fit SQLite).
_EVENT_ID = re.compile(r"[0-9]{1,18}")


def _last_event_id(header: str | None) -> int:
    """The id a reconnecting client saw last; 0 (from the start) for a header that is no id of ours."""
    return int(header) if header is not None and _EVENT_ID.fullmatch(header.strip()) else 0


def _message(event: dict[str, Any]) -> ServerSentEventMessage:
    return ServerSentEventMessage(data=json.dumps(event), event=event["type"], id=str(event["id"]))


def _heartbeat() -> ServerSentEventMessage:
    return ServerSentEventMessage(comment="heartbeat", data=None)


def _end(status: str) -> ServerSentEventMessage:
    return ServerSentEventMessage(data=json.dumps({"type": END, "status": status}), event=END)


def _api_event(event: dict[str, Any]) -> tuple[int, ServerSentEventMessage, str | None]:
    return event["id"], _message(event), event["type"] if event["type"] in TERMINAL else None


async def _follow(
    live: Subscription, last_id: int, read: Callable[[Any], tuple[int | None, ServerSentEventMessage, str | None]]
) -> AsyncIterator[ServerSentEventMessage]:
    """A job's live messages after `last_id` (what `read` makes of each: its id, its message, the status it
    ended the job with), heartbeats between them, and `end` after the job's last. A message of no id (a page's
    panel after the queue moved) is no event of the job's: it always goes."""
    while True:
        try:
            item = await live.receive()
        except anyio.EndOfStream:  # shutdown, or this client fell behind: it reconnects with Last-Event-ID
            return
        if item is HEARTBEAT:
            yield _heartbeat()
            continue
        event_id, message, ended = read(item)
        if event_id is not None and event_id <= last_id:
            continue
        yield message
        last_id = last_id if event_id is None else event_id
        if ended:
            yield _end(ended)
            return


async def _job_stream(jobs: Jobs, broker: Broker, job_id: str, last_id: int) -> AsyncIterator[ServerSentEventMessage]:
    with broker.subscribe(job_id) as live:
        backlog = await jobs.backlog(job_id, last_id)
        if backlog.job is None:  # deleted meanwhile
            return
        last_id = backlog.after
        for stored in backlog.events:
            yield _message(stored.data)
            last_id = stored.id
        if backlog.job.finished:  # its terminal event is sent: now, or before the client reconnected
            yield _end(backlog.job.status)
            return
        async for message in _follow(live, last_id, _api_event):
            yield message


@get(
    "/api/jobs/{job_id:str}/events",
    summary="A job's events as SSE",
    description="Each message's `event` is the data's `type`, its `id` the data's `id` (send it back as "
    "Last-Event-ID to resume); `end` comes last. docs/protocol.md shows a whole job.",
    tags=["jobs"],
    responses={200: ResponseSpec(JobEvent, description="One SSE message's data", media_type="text/event-stream")},
)
async def job_events(
    job_id: FromPath[str],
    jobs: NamedDependency[Jobs],
    broker: NamedDependency[Broker],
    last_event_id: Annotated[str | None, HeaderParameter(name="Last-Event-ID")] = None,
) -> ServerSentEvent:
    await load_job(jobs, job_id)
    return ServerSentEvent(_job_stream(jobs, broker, job_id, _last_event_id(last_event_id)))


async def _job_page_stream(
    jobs: Jobs, broker: Broker, pages: PageFeed, job_id: str, last_id: int
) -> AsyncIterator[ServerSentEventMessage]:
    """The job page's panel whenever the job changes; after the job has ended, `end` (htmx: sse-close).

    On connecting, one panel as the job stands now unless the page has seen the newest event
    (Last-Event-ID): a reconnect catches up in one message instead of replaying the events.
    """
    with broker.subscribe(panel_topic(job_id)) as live:
        backlog = await jobs.backlog(job_id, last_id, events=False)
        job, newest = backlog.job, backlog.newest
        if job is None:  # deleted meanwhile
            return
        if newest > backlog.after:
            yield pages.panel(job, newest).message
        last_id = newest
        if job.finished:
            yield _end(job.status)
            return
        async for message in _follow(live, last_id, lambda push: (push.event_id, push.message, push.ended)):
            yield message


@get("/events/jobs/{job_id:str}", summary="A job page's stream: its panel, rendered (one stream per page)")
async def job_page_events(
    job_id: FromPath[str],
    jobs: NamedDependency[Jobs],
    broker: NamedDependency[Broker],
    pages: NamedDependency[PageFeed],
    last_event_id: Annotated[str | None, HeaderParameter(name="Last-Event-ID")] = None,
) -> ServerSentEvent:
    await load_job(jobs, job_id)
    return ServerSentEvent(_job_page_stream(jobs, broker, pages, job_id, _last_event_id(last_event_id)))


async def _job_list_stream(
    jobs: Jobs, broker: Broker, pages: PageFeed, query: ListQuery
) -> AsyncIterator[ServerSentEventMessage]:
    """A job list's cards: its page on connecting (what changed since the page was made, or while reconnecting,
    is in it), then a job's card when what it shows changed (htmx replaces it where the page shows it, and drops
    it where not), a new job's on top where the list takes it (newest first, matching the list's filters)."""
    with broker.subscribe(ROWS_TOPIC) as live:
        listing = await read_listing(jobs, query)
        listed = {job.id for job in listing.jobs}
        yield pages.rows(listing).message
        while True:
            try:
                push = await live.receive()
            except anyio.EndOfStream:
                return
            if push is HEARTBEAT:
                yield _heartbeat()
            # a change goes to every list; a new job only where it matches (one made while the list was read is in it)
            elif push.adds is None or (push.adds.id not in listed and query.takes_new(push.adds)):
                yield push.message


@get(
    "/events/jobs",
    summary="The job list page's stream: its cards, rendered (one stream per page)",
    dependencies=LIST_PARAMS,
)
async def job_list_page_events(
    jobs: NamedDependency[Jobs],
    broker: NamedDependency[Broker],
    pages: NamedDependency[PageFeed],
    settings: NamedDependency[Settings],
    listed: NamedDependency[ListParams],
) -> ServerSentEvent:
    """The list's page as `/` has it for the same parameters (a bad one is a 400 naming it), then its changes."""
    query = listed.query(settings)
    return ServerSentEvent(_job_list_stream(jobs, broker, pages, query))
