"""A job's event stream as a client follows it: each event once, in order, across dropped connections.

`EventCursor` is the whole resumption logic, without I/O: the sync and async clients open the
connection, feed it every server-sent event they read, and ask it how long to wait after a drop.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
from httpx_sse import ServerSentEvent

from avportal.errors import StreamLost, Unreachable, api_error

END = "end"  # the stream's last event, after the job's terminal status; not stored, so it has no id of its own
FIRST_RETRY_S = 0.25
MAX_RETRY_S = 5.0


class _Unavailable(Exception):
    """The portal (or the proxy in front of it) answered the stream with a 5xx: worth reconnecting."""


# What makes a stream worth opening again: the network, or a portal that is restarting behind its proxy.
RECONNECTABLE = (httpx.TransportError, _Unavailable)


@dataclass(frozen=True)
class Event:
    """One stored event of a job: `id` counts up from 1, `type` is the SSE event name, `data` its JSON."""

    id: int | None
    type: str
    data: dict[str, Any] = field(default_factory=dict)


def job_path(job_id: str, *tail: str) -> str:
    return "/".join(("/api/jobs", quote(job_id, safe=""), *tail))


class EventCursor:
    """Where a job's stream stands: the last event delivered, whether it ended, when to reconnect.

    A reconnect sends `Last-Event-ID` with the last delivered id, so the portal replays only what
    came after; an event at or below that id (a replay from further back) is dropped, so nothing
    is delivered twice. An event cut off mid-way is never dispatched by the SSE decoder, so it
    comes again whole after the reconnect.
    """

    def __init__(
        self,
        job_id: str,
        last_event_id: int | None = None,
        reconnect_for: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = job_path(job_id, "events")
        self.last_id = last_event_id
        self.ended: str | None = None  # the job's final status, once the stream's `end` came
        self.connected = False  # a stream was opened once: before that, an error is not a drop but a failure
        self._reconnect_for = reconnect_for
        self._clock = clock
        self._drops = 0  # in a row, with nothing received between them
        self._lost_since: float | None = None
        self._retry_s: float | None = None  # the server's `retry:` advice, if it gave one

    def headers(self) -> dict[str, str]:
        return {} if self.last_id is None else {"Last-Event-ID": str(self.last_id)}

    def opened(self, response: httpx.Response) -> None:
        """Check the stream's response (its body already read when it is an error)."""
        if response.status_code >= 500:
            raise _Unavailable(f"{response.status_code} {response.reason_phrase}")
        if not response.is_success:
            raise api_error(response)
        self.connected = True

    def accept(self, sse: ServerSentEvent) -> Event | None:
        """What to deliver for one server-sent event read from the stream: the event, or None."""
        self._drops, self._lost_since = 0, None  # anything read, a heartbeat too, proves the connection works
        if sse.retry is not None:
            self._retry_s = sse.retry / 1000
        if not sse.data:  # httpx-sse reports a heartbeat comment as an empty message
            return None
        data = json.loads(sse.data)
        if sse.event == END:
            self.ended = data.get("status", "")
            return None
        event_id = int(sse.id) if sse.id else None
        if event_id is not None:
            if self.last_id is not None and event_id <= self.last_id:
                return None  # delivered before the connection dropped
            self.last_id = event_id
        return Event(id=event_id, type=sse.event or "message", data=data)

    def dropped(self, error: BaseException | None) -> float:
        """The stream broke (`error`) or closed before its end: the seconds to wait before reconnecting.

        Raises Unreachable when no stream was ever opened (a wrong URL should fail at once), and
        StreamLost once nothing has been received for `reconnect_for` seconds.
        """
        if not self.connected and error is not None:
            why = str(error) or type(error).__name__
            raise Unreachable(f"could not open the event stream {self.path}: {why}") from error
        now = self._clock()
        if self._lost_since is None:
            self._lost_since = now
        elif now - self._lost_since > self._reconnect_for:
            why = f": {error}" if error is not None else ""
            raise StreamLost(f"the event stream {self.path} could not be reopened for {self._reconnect_for:g} s{why}")
        self._drops += 1
        return min(MAX_RETRY_S, (self._retry_s or FIRST_RETRY_S) * 2 ** (self._drops - 1))
