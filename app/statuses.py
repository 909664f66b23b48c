"""A job's statuses, defined once: the store keeps them, the API's schema names them (an enum in OpenAPI)."""

from __future__ import annotations

from typing import Literal, get_args

Ended = Literal["succeeded", "failed", "cancelled"]
JobStatus = Literal[Ended, "queued", "running", "interrupted"]
TERMINAL = frozenset(get_args(Ended))
STATUSES = frozenset(get_args(JobStatus))
