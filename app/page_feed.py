"""What pages show of jobs, pushed to their streams as server-rendered fragments.

The journal hands the feed every stored change of a job with the job as it stands after it. The
feed renders each fragment once and publishes it, encoded as an SSE message, to a page topic of
the broker, which hands that same message to every subscriber: a job page's panel when some page
shows that job, a job list's card only when what the card shows of it live (status, stage, whole percent)
changed.

Fragments are rendered once for everybody: their forms carry nothing per person (no CSRF token; the
browser's Sec-Fetch-Site and Origin headers prove a post comes from the portal's page, app/security.py).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import ServerSentEventMessage

from app import sse_names
from app.broker import Broker
from app.config import Settings
from app.job_list import Listing
from app.places import Place, running_place
from app.store import JobRow, QueueSnapshot, StoredEvent
from contract.models import ModelSpec
from contract.protocol import stages_of
from contract.request import AUTO, FIELDS

ROWS_TOPIC = "job-rows"
_SHOWN_APART = ("prompt", "image_upload_id")  # the job page shows these above its settings table


def _setting(job: JobRow, name: str, value: Any) -> Any:
    """A setting as the job page's table shows it: keyframes as their frames and strengths, a length left to the
    model as what it chose."""
    if name == "keyframes" and value:
        return ", ".join(f"frame {k.frame} (strength {k.strength:g})" for k in value)
    if name == "num_frames" and value == AUTO:
        chosen = job.num_frames_chosen
        return "auto: the model chooses from the prompt" if chosen is None else f"{chosen} (auto: chosen by the model)"
    return value


def panel_topic(job_id: str) -> str:
    return f"job-panel:{job_id}"


class Encoded(ServerSentEventMessage):
    """A message encoded once and sent as is to every subscriber."""

    def __init__(self, message: ServerSentEventMessage) -> None:
        super().__init__()
        self.encoded = message.encode()

    def encode(self) -> bytes:
        return self.encoded


class Push(msgspec.Struct, frozen=True):
    message: Encoded
    event_id: int | None = 0  # the job's stored event it shows (a job page's Last-Event-ID); None: no new event,
    # the panel shows the job's place in a queue that moved
    ended: str | None = None  # the job's terminal status, once it has one: its page's stream ends after this
    adds: JobRow | None = None  # the job whose card this adds on top of the lists (each list takes it if it matches)


def queue_context(job: JobRow, place: Place | None) -> dict[str, Any]:
    """What a page shows of a job's place in the queue: its position, and in how many seconds it should start
    and finish (None: unknown). A running job's finish comes from its progress as it is now."""
    now = time.time()
    if job.status == "running":
        place = running_place(job, now)
    if job.status not in ("queued", "running") or place is None:
        return {"position": None, "starts_in": None, "finishes_in": None}
    return {"position": place.position, "starts_in": place.eta_start_s(now), "finishes_in": place.eta_finish_s(now)}


def job_context(job: JobRow, models: dict[str, ModelSpec], place: Place | None) -> dict[str, Any]:
    """What the job page's panel shows of a job: the job, its place in the queue, its stage timeline, its model,
    its settings."""
    current = job.progress.stage
    request = job.request
    stages = stages_of(request.mode, enhance=bool(request.enhance_prompt), auto_frames=request.num_frames == AUTO)
    reached = stages.index(current) if current in stages else -1
    if job.status == "succeeded":
        reached = len(stages)
    timeline = [
        {"name": name, "state": "done" if i < reached else "current" if i == reached else "pending"}
        for i, name in enumerate(stages)
    ]
    settings = [(name, _setting(job, name, getattr(request, name))) for name in FIELDS if name not in _SHOWN_APART]
    if job.webhook is not None:
        settings += [("webhook", job.webhook.url), ("webhook_events", ", ".join(job.webhook.events))]
    settings = [(name, _shown_loras(value) if name == "loras" else value) for name, value in settings]
    if job.provenance is not None:  # LoRAs and provenance (issue 17)
        model = job.provenance.model
        settings += [
            ("model_revision", f"{model.id} LTX-{model.version} {model.variant}, files {model.revision}"),
            ("portal_version", job.provenance.portal_version),
        ]
    removed = job.files_removed_at
    return {
        "job": job,
        "queue": queue_context(job, place),
        "files_removed_on": None if removed is None else f"{datetime.fromtimestamp(removed, UTC):%Y-%m-%d %H:%M} UTC",
        "timeline": timeline,
        "spec": models.get(job.request.model or ""),
        "settings": [(name, value) for name, value in settings if value is not None],
    }


def _shown_loras(loras) -> str | None:
    """A job's LoRAs as its settings table shows them: "demo-huge at 1, other at -0.5"; None: none."""
    return ", ".join(f"{lora.name} at {lora.scale:g}" for lora in loras) if loras else None


def _shown(place: Place | None) -> tuple[int | None, int | None, int | None] | None:
    """What pages show of a queued job's place: its position, and its times to the second."""
    if place is None:
        return None
    start, finish = place.starts_at, place.finishes_at
    return place.position, None if start is None else round(start), None if finish is None else round(finish)


def _row_shows(job: JobRow) -> tuple[str, str | None, int]:
    return job.status, job.progress.stage, job.progress.whole_percent


class PageFeed:
    def __init__(self, broker: Broker, templates: JinjaTemplateEngine, settings: Settings) -> None:
        self._broker = broker
        self._templates = templates
        self._settings = settings
        self._rows_shown: dict[str, tuple[str, str | None, int]] = {}  # unfinished jobs only
        self.places: dict[str, Place] = {}  # every unfinished job's, as the journal last worked them out
        self.paused = False  # the queue's state, as the journal last read it

    def watching(self, job_id: str) -> bool:
        """Whether a page shows this job now. If none does, forget what rows showed of it: the next
        list to connect gets every row as it stands, and the next change is pushed for sure."""
        if self._broker.listening(panel_topic(job_id)) or self._broker.listening(ROWS_TOPIC):
            return True
        self._rows_shown.pop(job_id, None)
        return False

    def changed(self, job: JobRow, stored: StoredEvent) -> None:
        """`stored` was recorded; `job` is the job with it applied."""
        topic = panel_topic(job.id)
        if self._broker.listening(topic):
            self._broker.publish(topic, self.panel(job, stored.id))
        shows = _row_shows(job)
        if stored.id > 1 and self._rows_shown.get(job.id) == shows:
            return
        if job.finished:
            self._rows_shown.pop(job.id, None)
        else:
            self._rows_shown[job.id] = shows
        if self._broker.listening(ROWS_TOPIC):
            self._broker.publish(ROWS_TOPIC, self.row(job, new=stored.id == 1))

    def queue_moved(self, snapshot: QueueSnapshot, places: dict[str, Place], besides: str | None) -> None:
        """Take the unfinished jobs' new `places` and show what changed on the pages open: the panel of a queued
        job some page shows and every queued job's row, where its place moved; the queue's controls on job
        lists, where it was paused or resumed. (A running job's panel and row work out its time left from its
        progress whenever its events push them.)"""
        before, self.places = self.places, places
        rows = self._broker.listening(ROWS_TOPIC)
        if snapshot.paused != self.paused:
            self.paused = snapshot.paused
            if rows:
                self._broker.publish(ROWS_TOPIC, self.controls())
        for job in snapshot.queued:
            if job.id == besides or _shown(before.get(job.id)) == _shown(places.get(job.id)):
                continue
            if self._broker.listening(panel_topic(job.id)):
                self._broker.publish(panel_topic(job.id), self.panel(job, None))
            if rows:
                self._broker.publish(ROWS_TOPIC, self.row(job, new=False))

    def controls(self) -> Push:
        html = self._render("fragments/_queue_controls.html", {"paused": self.paused, "oob": True})
        return Push(Encoded(ServerSentEventMessage(data=html, event=sse_names.JOB_ROW)))

    def shown_changed(self, job: JobRow) -> None:
        """Something an unfinished job's panel and card show changed with no event (where it runs)."""
        if self._broker.listening(panel_topic(job.id)):
            self._broker.publish(panel_topic(job.id), self.panel(job, None))
        self.row_changed(job)

    def row_changed(self, job: JobRow) -> None:
        """Something a list's card shows changed with no event (retention removed the job's files)."""
        if self._broker.listening(ROWS_TOPIC):
            self._broker.publish(ROWS_TOPIC, self.row(job, new=False))

    def panel(self, job: JobRow, event_id: int | None) -> Push:
        """The job's panel; `event_id` None: a queue move, no new event (the message keeps no id, so a page that
        reconnects still says the last event it saw)."""
        context = job_context(job, self._settings.models(), self.places.get(job.id))
        html = self._render("fragments/_job_panel.html", context)
        message = ServerSentEventMessage(
            data=html, event=sse_names.JOB_PANEL, id=None if event_id is None else str(event_id)
        )
        return Push(Encoded(message), event_id, ended=job.status if job.finished else None)

    def row(self, job: JobRow, *, new: bool) -> Push:
        """A job's card: replacing the card of that id where a list shows it, or, `new`, on top of the lists."""
        context = {"job": job, "new": new, "oob": not new, "places": self.places}
        html = self._render("fragments/_job_cards_push.html", context)
        return Push(Encoded(ServerSentEventMessage(data=html, event=sse_names.JOB_ROW)), adds=job if new else None)

    def rows(self, listing: Listing) -> Push:
        """A list's whole page of cards (what its stream sends on connecting), and its Load more link."""
        html = self._render("fragments/_job_cards_push.html", {"listing": listing, "places": self.places})
        return Push(Encoded(ServerSentEventMessage(data=html, event=sse_names.JOB_LIST)))

    def _render(self, name: str, context: dict[str, Any]) -> str:
        return self._templates.get_template(name).render(**context)
