"""Per-client submit rate limit: a token bucket per client address (behind a trusted proxy: the real client).

The bounded queue (AVP_MAX_QUEUE) protects the GPU box; this keeps one client from filling it for everyone.
"""

from __future__ import annotations

import math
import time


class RateLimited(Exception):
    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"Too many submits from this client; try again in {retry_after_s} s.")
        self.retry_after_s = retry_after_s


class SubmitRateLimit:
    """Up to `per_minute` submits at once, refilled at `per_minute` a minute."""

    def __init__(self, per_minute: int) -> None:
        self._capacity = float(per_minute)
        self._refill_per_s = per_minute / 60.0
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, at)

    def take(self, client: str) -> None:
        """Spend one submit for `client`, or raise RateLimited saying when the next one is allowed."""
        now = time.monotonic()
        tokens, at = self._buckets.get(client, (self._capacity, now))
        tokens = min(self._capacity, tokens + (now - at) * self._refill_per_s)
        if tokens < 1:
            raise RateLimited(math.ceil((1 - tokens) / self._refill_per_s))
        self._buckets[client] = (tokens - 1, now)
        if len(self._buckets) > 4096:  # forget clients whose bucket is full again
            full_after = self._capacity / self._refill_per_s
            self._buckets = {c: b for c, b in self._buckets.items() if now - b[1] < full_after}
