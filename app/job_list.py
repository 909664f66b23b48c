"""The home page's job list: which jobs it shows (the filters in its query string), a page of them at a time.

The filters are GET parameters of `/` (bookmarkable): `status`, `model` (one of the library's), `q` (a piece of the
prompt), `batch` (a batch's id: the gallery of one batch, app/batches.py) and `before` (keyset paging: the jobs
submitted before the one with that `seq`, as "Load more" asks). A bad value is refused with a 400 naming the
parameter and what it may be. The same parameters open the page's stream (`/events/jobs`) and fetch the next page
(`/fragments/jobs`).
"""

from __future__ import annotations

import re
from urllib.parse import urlencode

import msgspec

from app.batches import BATCH_ID
from app.schemas import FieldError, InvalidRequest
from app.statuses import STATUSES
from app.store import JobFilter, JobRow

PAGE_SIZE = 24  # cards a page shows: whole rows on 1, 2, 3, 4 or 6 columns
MAX_SEARCH_CHARS = 200
OFFERED_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")  # the filter's choices, in order
_SEQ = re.compile(r"[1-9][0-9]{0,17}")  # a job's seq as the list links it; longer would not fit SQLite


class ListQuery(msgspec.Struct, frozen=True):
    only: JobFilter = JobFilter()
    before: int | None = None  # the seq the page starts below; None: the newest

    @property
    def filtered(self) -> bool:
        return self.only != JobFilter()

    def takes_new(self, job: JobRow) -> bool:
        """Whether a job made while the list is open goes on top of it: the list shows the newest jobs (no
        `before`) and the job matches the filters."""
        return self.before is None and self.only.matches(job)

    def params(self, before: int | None = None) -> str:
        """The filters (and `before`) as a query string, empty when there are none; for the list's links."""
        only = self.only
        pairs = [("status", only.status), ("model", only.model), ("q", only.search), ("batch", only.batch)]
        pairs.append(("before", before))
        text = urlencode([(name, value) for name, value in pairs if value is not None])
        return f"?{text}" if text else ""


class Listing(msgspec.Struct, frozen=True):
    """One page of the list: its jobs, the query it answers, the seq "Load more" asks for (None: no more)."""

    jobs: list[JobRow]
    query: ListQuery
    next_before: int | None


def read_query(
    models: list[str],
    status: str | None,
    model: str | None,
    q: str | None,
    before: str | None,
    batch: str | None = None,
) -> ListQuery:
    """The list's query from its GET parameters (empty ones count as absent); InvalidRequest naming each bad one."""
    errors = []
    status, model, q, before, batch = (
        None if v is None or not v.strip() else v.strip() for v in (status, model, q, before, batch)
    )
    if status is not None and status not in STATUSES:
        errors.append(FieldError(field="status", message=f"must be one of {', '.join(sorted(STATUSES))}, or absent"))
    if model is not None and model not in models:
        offered = ", ".join(models) or "none"
        errors.append(FieldError(field="model", message=f"must be one of the library's models ({offered}), or absent"))
    if q is not None and len(q) > MAX_SEARCH_CHARS:
        errors.append(FieldError(field="q", message=f"is {len(q)} characters: search with {MAX_SEARCH_CHARS} or fewer"))
    if before is not None and not _SEQ.fullmatch(before):
        errors.append(FieldError(field="before", message="must be a job's number as the list's Load more link gives"))
    if batch is not None and not BATCH_ID.fullmatch(batch):
        errors.append(FieldError(field="batch", message="must be a batch's id (32 hex digits) as its link gives"))
    if errors:
        raise InvalidRequest(errors)
    only = JobFilter(status=status, model=model, search=q, batch=batch)
    return ListQuery(only, None if before is None else int(before))


def page_of(found: list[JobRow], query: ListQuery) -> Listing:
    """A page from the PAGE_SIZE + 1 jobs read for it (one more than shown: whether there are more)."""
    shown = found[:PAGE_SIZE]
    return Listing(shown, query, shown[-1].seq if len(found) > PAGE_SIZE else None)
