"""The runner's side of the protocol: stdout carries events (contract.protocol) and nothing else."""

from __future__ import annotations

import os
import sys
import threading
from typing import IO

from contract.protocol import Event, encode

# A spare runner says this in its log, then the seconds, once its imports are done: benches and tests wait for it.
SPARE_READY = "spare runner {pid}: torch and diffusers imported in"


class Emitter:
    """Writes events to the protocol stream, one line each, flushed at once; from any thread (previews are
    finished on one of their own), a line never interleaved with another."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        line = encode(event) + b"\n"
        with self._lock:
            self._stream.write(line)
            self._stream.flush()


def claim_stdout() -> Emitter:
    """Reserve the process's stdout for the protocol.

    The original stdout descriptor is kept for events; descriptor 1 and sys.stdout are
    pointed at stderr, so prints from libraries (Python or C) cannot corrupt the stream.
    """
    protocol_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return Emitter(os.fdopen(protocol_fd, "wb", buffering=0))
