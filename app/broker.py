"""Fan-out of live items to subscribers (SSE streams), by topic.

Publishing never blocks the publisher: each subscriber has a bounded buffer, and one that
falls that far behind is closed; its client reconnects with Last-Event-ID and catches up from
the store. A job's stored events go to the topic named by its id; what pages show of jobs
goes to the topics of app/page_feed.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict, deque
from collections.abc import Iterator
from typing import Any

import anyio

SUBSCRIBER_BUFFER = 1024
HEARTBEAT: dict[str, Any] = {"type": "heartbeat"}  # from beat(), to every subscriber; never stored


class Subscription:
    """One subscriber's bounded buffer. After close() it yields what is buffered, then EndOfStream.

    Plain asyncio rather than an anyio memory stream: with hundreds of subscribers every event
    wakes each of them, and a bare future per wait costs a fraction of anyio's event and task info.
    """

    def __init__(self, capacity: int) -> None:
        self._items: deque[Any] = deque()
        self._capacity = capacity
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False

    def offer(self, item: Any) -> bool:
        """Buffer `item`; False when the buffer is full (the subscriber fell behind)."""
        if self.closed or len(self._items) >= self._capacity:
            return False
        self._items.append(item)
        self._wake()
        return True

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def receive(self) -> Any:
        while not self._items:
            if self.closed:
                raise anyio.EndOfStream
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()


class Broker:
    def __init__(self) -> None:
        self._subscribers: defaultdict[str, set[Subscription]] = defaultdict(set)
        self._closed = False

    @contextlib.contextmanager
    def subscribe(self, topic: str) -> Iterator[Subscription]:
        """Events published to `topic` from now on; the subscription ends when the broker closes."""
        subscription = Subscription(SUBSCRIBER_BUFFER)
        if self._closed:
            subscription.close()
        else:
            self._subscribers[topic].add(subscription)
        try:
            yield subscription
        finally:
            self._subscribers[topic].discard(subscription)
            if not self._subscribers[topic]:
                self._subscribers.pop(topic, None)
            subscription.close()

    def publish(self, topic: str, item: Any) -> None:
        for subscription in list(self._subscribers.get(topic, ())):
            if not subscription.offer(item):
                subscription.close()  # too slow: its client catches up from the store on reconnect
                self._subscribers[topic].discard(subscription)

    def listening(self, topic: str) -> bool:
        """Whether anyone subscribes to `topic`: what nobody will receive need not be made."""
        return bool(self._subscribers.get(topic))

    def beat(self) -> None:
        """Wake every stream for a heartbeat comment.

        One timer for all streams: a timeout around each stream's every receive cost more than the
        rest of delivering an event, with hundreds of subscribers.
        """
        for subscriptions in self._subscribers.values():
            for subscription in subscriptions:
                subscription.offer(HEARTBEAT)  # a full buffer needs no heartbeat

    async def beat_every(self, interval_s: float) -> None:
        while True:
            await anyio.sleep(interval_s)
            self.beat()

    def close(self) -> None:
        """End every stream (shutdown), so open SSE connections do not hold the server up."""
        self._closed = True
        for subscriptions in self._subscribers.values():
            for subscription in subscriptions:
                subscription.close()
        self._subscribers.clear()

    @property
    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subscribers.values())
