"""A client for the AV Portal's API: the `AVPortal` / `AsyncAVPortal` library and the `avportal` command line.

Needs only httpx, httpx-sse and (for the command line's progress bar) rich: never the portal's own packages.
"""

from avportal.client import DEFAULT_URL, AsyncAVPortal, AVPortal, Job
from avportal.errors import (
    APIError,
    FieldError,
    InvalidInput,
    JobCancelled,
    JobEnded,
    JobFailed,
    PortalError,
    StreamLost,
    Unreachable,
)
from avportal.stream import Event

__all__ = [
    "DEFAULT_URL",
    "APIError",
    "AVPortal",
    "AsyncAVPortal",
    "Event",
    "FieldError",
    "InvalidInput",
    "Job",
    "JobCancelled",
    "JobEnded",
    "JobFailed",
    "PortalError",
    "StreamLost",
    "Unreachable",
]
