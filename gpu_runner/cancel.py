"""Cancellation: SIGTERM or SIGINT sets a flag that the runner checks at every step and stage."""

from __future__ import annotations

import signal

from contract import protocol


class Cancelled(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(f"cancelled by {signal.Signals(signum).name}")
        self.exit_code = protocol.EXIT_CANCELLED_INT if signum == signal.SIGINT else protocol.EXIT_CANCELLED_TERM


class Cancellation:
    """Records the first cancelling signal instead of dying at once, so the runner stops cleanly."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._record)

    def check(self) -> None:
        """Raise Cancelled if a signal came; called where stopping leaves nothing half-done."""
        if self.signum is not None:
            raise Cancelled(self.signum)

    def _record(self, signum: int, _frame: object) -> None:
        if self.signum is None:
            self.signum = signum
