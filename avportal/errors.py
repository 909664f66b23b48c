"""What the client raises, and how a portal's error answer becomes one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from avportal.client import Job

# Answers that mean "what you sent is wrong": the portal's field errors, an image too large or of the wrong type.
INVALID_INPUT_STATUSES = (400, 413, 415, 422)


class PortalError(Exception):
    """Anything the client raises about the portal or a job."""


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str


class APIError(PortalError):
    """The portal answered with an error: its status, its `detail` and, where it names them, the fields at fault."""

    def __init__(self, status_code: int, detail: str, errors: list[FieldError] | None = None) -> None:
        self.status_code = status_code
        self.detail = detail
        self.errors = errors or []
        lines = [f"{status_code}: {detail}", *(f"  {e.field}: {e.message}" for e in self.errors)]
        super().__init__("\n".join(lines))


class InvalidInput(APIError):
    """The request, or the image uploaded for it, was refused as it is (400, 413, 415, 422)."""


class Unreachable(PortalError):
    """No answer from the portal at all (refused connection, unknown host, timeout)."""


class StreamLost(PortalError):
    """A job's event stream could not be reopened for the client's `reconnect_for` seconds."""


class JobEnded(PortalError):
    """`generate`'s job ended without a video; `job` is how it ended."""

    def __init__(self, job: Job) -> None:
        self.job = job
        error = job.error or {}
        super().__init__(f"job {job.id} {job.status}: {error.get('code', '')} {error.get('message', '')}".rstrip(": "))


class JobFailed(JobEnded):
    pass


class JobCancelled(JobEnded):
    pass


def api_error(response: httpx.Response) -> APIError:
    """The error a (fully read) error response stands for: InvalidInput for bad input, APIError otherwise."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {}
    detail = str(body.get("detail") or response.text.strip() or response.reason_phrase)
    errors = [
        FieldError(str(e.get("field", "")), str(e.get("message", "")))
        for e in body.get("errors") or []
        if isinstance(e, dict)
    ]
    kind = InvalidInput if response.status_code in INVALID_INPUT_STATUSES else APIError
    return kind(response.status_code, detail, errors)
