"""Fan-out of stored job events to live subscribers (SSE streams).

Publishing never blocks the publisher: each subscriber has a bounded buffer, and one that
falls that far behind is closed; its client reconnects with Last-Event-ID and replays the
gap from the store. Two topics exist: one per job, and ALL_JOBS for page-level streams.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

ALL_JOBS = "*"
SUBSCRIBER_BUFFER = 1024
HEARTBEAT: dict[str, Any] = {"type": "heartbeat"}  # from beat(), to every subscriber; never stored


class Broker:
    def __init__(self) -> None:
        self._subscribers: defaultdict[str, set[MemoryObjectSendStream[dict[str, Any]]]] = defaultdict(set)
        self._closed = False

    @contextlib.contextmanager
    def subscribe(self, topic: str) -> Iterator[MemoryObjectReceiveStream[dict[str, Any]]]:
        """Events published to `topic` from now on; the stream ends when the broker closes."""
        send, receive = anyio.create_memory_object_stream[dict[str, Any]](SUBSCRIBER_BUFFER)
        if self._closed:
            send.close()
        else:
            self._subscribers[topic].add(send)
        try:
            yield receive
        finally:
            self._subscribers[topic].discard(send)
            if not self._subscribers[topic]:
                self._subscribers.pop(topic, None)
            send.close()
            receive.close()

    def publish(self, job_id: str, event: dict[str, Any]) -> None:
        for topic in (job_id, ALL_JOBS):
            for send in list(self._subscribers.get(topic, ())):
                try:
                    send.send_nowait({**event, "job_id": job_id} if topic == ALL_JOBS else event)
                except anyio.WouldBlock:
                    send.close()  # too slow: its client replays from the store on reconnect
                    self._subscribers[topic].discard(send)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    self._subscribers[topic].discard(send)

    def beat(self) -> None:
        """Wake every stream for a heartbeat comment.

        One timer for all streams: a timeout around each stream's every receive cost more than the
        rest of delivering an event, with hundreds of subscribers.
        """
        for sends in self._subscribers.values():
            for send in sends:
                with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    send.send_nowait(HEARTBEAT)

    async def beat_every(self, interval_s: float) -> None:
        while True:
            await anyio.sleep(interval_s)
            self.beat()

    def close(self) -> None:
        """End every stream (shutdown), so open SSE connections do not hold the server up."""
        self._closed = True
        for sends in self._subscribers.values():
            for send in sends:
                send.close()
        self._subscribers.clear()

    @property
    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subscribers.values())
