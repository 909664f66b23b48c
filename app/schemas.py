"""Request and response structs of the JSON API, and request validation.

msgspec stops at the first error, but a person fixing a form wants every problem at once:
each field is converted on its own, then the model spec's rules are checked together.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal, get_args, get_origin

import msgspec

from app.disk import DiskStatus
from app.progress import JobProgress
from app.statuses import Ended, JobStatus
from contract import protocol
from contract.cost import Estimate
from contract.loras import Library as LoraLibrary
from contract.loras import problems as lora_problems
from contract.models import ModelSpec, Offer
from contract.provenance import Provenance
from contract.request import TEXT_FIELDS, Constraints, Request


class Base(msgspec.Struct, kw_only=True):
    pass


class FieldError(Base):
    field: str
    message: str


class ErrorResponse(Base):
    detail: str
    errors: list[FieldError] = []


class InvalidRequest(Exception):
    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = errors


_FIELDS = {f.name: f for f in msgspec.structs.fields(Request)}
_TYPE_WORDS = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}


def _type_word(field: msgspec.structs.FieldInfo) -> str:
    kinds = getattr(field.type, "__args__", (field.type,))
    # a fixed word the field also takes (num_frames' "auto")
    words = [f'"{word}"' for kind in kinds if get_origin(kind) is Literal for word in get_args(kind)]
    for kind, word in _TYPE_WORDS.items():
        if kind in kinds:
            return " or ".join([word, *words])
    return "a value of the right type"


EXAMPLE_BODY = '{"prompt": "a red ball bouncing"}'
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def decode_body(body: bytes) -> Any:
    """A JSON request body, decoded; raises InvalidRequest saying what is wrong with it, and nothing else."""
    if not body.strip():
        raise _body_error(f"is empty; send a JSON object of request fields, e.g. {EXAMPLE_BODY}")
    try:
        return msgspec.json.decode(body)
    except RecursionError:  # msgspec nests as deep as the data does; the limit is Python's own
        message = f"is nested too deeply; send a flat JSON object of request fields, e.g. {EXAMPLE_BODY}"
        raise _body_error(message) from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest([_undecodable(body, exc)]) from None


def _body_error(message: str) -> InvalidRequest:
    return InvalidRequest([FieldError(field="body", message=message)])


def _undecodable(body: bytes, exc: msgspec.DecodeError) -> FieldError:
    """What is wrong with a body msgspec cannot decode. Well-formed JSON holding a lone UTF-16 surrogate
    (half of an emoji, say) is refused with a message about truncation or a byte offset; the standard
    library reads it, which finds the field."""
    try:
        field = _where_lone_surrogate(json.loads(body))
    except (ValueError, RecursionError):
        field = None
    if field is not None:
        message = "contains an invalid character (a lone UTF-16 surrogate); send it as valid Unicode text"
        return FieldError(field=field, message=message)
    return FieldError(field="body", message=f"is not valid JSON ({exc}); send a JSON object such as {EXAMPLE_BODY}")


def _where_lone_surrogate(raw: Any) -> str | None:
    """The request field whose value holds a lone surrogate; "body" where it is elsewhere; None if nowhere."""
    if isinstance(raw, dict):
        for name, value in raw.items():
            if _holds_lone_surrogate(value) and not _holds_lone_surrogate(name):
                return name
    return "body" if _holds_lone_surrogate(raw) else None


def _holds_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return _LONE_SURROGATE.search(value) is not None
    if isinstance(value, list):
        return any(_holds_lone_surrogate(v) for v in value)
    if isinstance(value, dict):
        return any(_holds_lone_surrogate(k) or _holds_lone_surrogate(v) for k, v in value.items())
    return False


def parse_request(raw: Any, *, strict: bool = True) -> tuple[Request, list[FieldError]]:
    """Convert client data field by field: the well-typed fields, and an error for each other one.

    Raises InvalidRequest when the data is not an object at all. A field with the wrong type
    is left out, so the model's rules still check the rest. `strict=False` accepts numbers
    written as strings and treats blank strings as omitted (text fields excepted), which is
    what an HTML form sends.
    """
    if not isinstance(raw, dict):
        raise InvalidRequest([FieldError(field="body", message="must be a JSON object of request fields")])
    errors: list[FieldError] = []
    values: dict[str, Any] = {}
    for name, value in raw.items():
        field = _FIELDS.get(name)
        if field is None:
            known = ", ".join(_FIELDS)
            errors.append(FieldError(field=name, message=f"is not a request field; the fields are: {known}"))
            continue
        if not strict and isinstance(value, str) and not value.strip() and name not in TEXT_FIELDS:
            continue
        try:
            values[name] = msgspec.convert(value, field.type, strict=strict)
        except msgspec.ValidationError:
            errors.append(FieldError(field=name, message=f"must be {_type_word(field)}, not {value!r}"[:200]))
    if "prompt" not in raw:
        errors.append(FieldError(field="prompt", message="is required; describe the clip you want"))
    return Request(**values), errors


def validate_request(
    raw: Any, models: Offer, *, strict: bool = True, loras: LoraLibrary | None = None
) -> tuple[Request, ModelSpec]:
    """Types, then the model's rules (and, given the LoRA library, whether each LoRA is there and fits the model),
    with every problem reported at once; raises InvalidRequest."""
    request, errors = parse_request(raw, strict=strict)
    seen = {e.field for e in errors}
    try:
        resolved, spec = resolve_request(request, models, loras)
    except InvalidRequest as exc:
        errors += [e for e in exc.errors if e.field not in seen]
    if errors:
        raise InvalidRequest(errors)
    return resolved, spec


def resolve_request(request: Request, offer: Offer, loras: LoraLibrary | None = None) -> tuple[Request, ModelSpec]:
    """Fill defaults from the model's spec, choose a seed, check every rule; raises InvalidRequest."""
    model_id = request.model or next(iter(offer.models))
    spec = offer.models.get(model_id)
    if spec is None:
        raise InvalidRequest([FieldError(field="model", message=_model_problem(model_id, offer))])
    resolved = spec.resolve(request)
    problems = spec.violations(resolved, offer.models.values())
    if loras is not None and not any(field == "loras" for field, _ in problems):
        problems += lora_problems(resolved.loras, spec, loras)
    if problems:
        raise InvalidRequest([FieldError(field=f, message=m) for f, m in problems])
    return resolved, spec


def _model_problem(model_id: str, offer: Offer) -> str:
    """Why `model_id` cannot be used, and what to do instead."""
    available = f"pick one of {', '.join(offer.models)} (GET /api/models)"
    unusable = next((found for found in offer.unusable if found.id == model_id), None)
    if unusable is None:
        return f"unknown model {model_id!r}; {available}"
    return (
        f"model {model_id!r} cannot be used: its directory {unusable.directory!r} {unusable.problem}. "
        f"Repair the directory, or {available}"
    )


# ---- responses ---------------------------------------------------------------------


class JobError(Base):
    code: protocol.ErrorCode
    message: str


class JobLinks(Base):
    self: str
    page: str
    events: str
    video: str | None
    webhooks: str | None = None  # its webhook deliveries, where it has a webhook


class JobOut(Base):
    id: str
    status: JobStatus
    request: Request  # as resolved: every field the model needs set, the seed chosen
    progress: JobProgress
    error: JobError | None
    result: protocol.Result | None  # the runner's result event, once the job succeeded
    attempts: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    estimate: Estimate | None  # predicted at submit, again while queued as runs end; None for older jobs
    queue_position: int | None  # 1 = starts next; None when not queued
    eta_start_s: float | None  # seconds from now until it should start; None when started, paused or unknown
    eta_finish_s: float | None  # seconds from now until it should finish; None when finished or unknown
    keep: bool  # marked keep: retention (AVP_KEEP_DAYS, AVP_KEEP_GB) never removes its files
    files_removed_at: str | None  # when retention removed its files (video, preview, log); the job itself stays
    links: JobLinks
    webhook: str | None = None  # the URL its webhook deliveries go to
    webhook_events: list[str] | None = None  # the events it sends there (Replicate's names, and progress)
    # the jobs that extend this one (their request's extend_from names it); filled for one job, not in lists
    extended_by: list[str] | None = None
    batch_id: str | None = None  # the batch it was submitted in (POST /api/batches); None: submitted alone
    # what made it (model revision, LoRA hashes, portal version), recorded at submit; None for older jobs
    provenance: Provenance | None = None
    # LTX-2.5's text phase (issue 16): "auto" where the request left the length to the duration head (request's
    # num_frames is then "auto" until the head has chosen, the chosen count after); None where it gave a number
    num_frames_requested: Literal["auto"] | None = None
    enhanced_prompt: str | None = None  # the prompt enhancer's rewrite (enhance_prompt: true), once made
    slot: str | None = None  # the runner slot it runs or last ran on ("gpu0", "cpu1", AVP_GPUS); None: never started


class BatchOut(Base):
    id: str
    jobs: list[JobOut]  # in submission order: prompt by prompt, each with every seed
    counts: dict[str, int]  # how many of its jobs have each status
    finished: bool  # every job of it has ended
    page: str  # the gallery filtered to the batch


class WebhookDeliveryOut(Base):
    id: str  # the `webhook-id` header: the same on every attempt of the delivery
    event: str  # start, output, logs, progress or completed
    status: str  # pending, delivered or failed (given up after AVP_WEBHOOK_ATTEMPTS)
    attempts: int
    created_at: str
    next_attempt_at: str | None  # when a pending delivery is tried next
    last_attempt_at: str | None
    last_status_code: int | None  # the HTTP status the receiver answered last, if it answered
    last_error: str | None  # why the last attempt failed


class WebhookDeliveryList(Base):
    deliveries: list[WebhookDeliveryOut]  # oldest first


class QueueOut(Base):
    paused: bool  # no queued job starts until the queue is resumed; running jobs finish
    slots: int  # how many jobs run at once
    running: list[JobOut]  # as they started
    queued: list[JobOut]  # in the order they start (queue_position 1, 2, ...)


class CancelledJobs(Base):
    cancelled: list[str]  # the ids of the jobs cancelled, in queue order


class JobList(Base):
    jobs: list[JobOut]
    next_before: str | None  # pass as ?before= for the next (older) page


class UploadOut(Base):
    upload_id: str  # pass as image_upload_id in a request
    filename: str  # as the client named it; display text only
    width: int  # upright, after EXIF orientation
    height: int
    thumbnail_url: str


class ModelDefaults(Request, omit_defaults=True):
    """A model's defaults in its default mode: the request fields it sets, and only those, so a client may submit
    them as they are."""


class ModelOut(Base):
    id: str
    label: str
    kind: str
    version: str  # "2.0", "2.3" or "2.5" (the demo is a tiny 2.0)
    variant: str  # "dev" or "distilled": transformer/'s
    modes: list[str]  # what the portal can run with it: "fast" (distilled two-stage), "quality" (full guidance)
    parts: list[str]  # optional parts present: "latent_upsampler", "distilled_lora", "diffusion_decoder", ...
    disabled_modes: dict[str, str]  # each mode it cannot run, with what its directory lacks for it
    note: str
    source: str  # where an imported model came from ("imported from ltx-2-19b-dev.safetensors, ..."); "" if not
    constraints: Constraints
    defaults: ModelDefaults
    presets: list[list[int]]
    fps_choices: list[float]


class UnusableModel(Base):
    id: str | None  # the id it would have (None: its directory's name gives none)
    directory: str  # the directory's name, in AVP_MODELS_DIR (or AVP_MODEL_DIR's)
    problem: str  # what is missing or unknown, naming the file or key
    source: str  # where an imported model came from; "" when it was not imported


class ModelList(Base):
    models: list[ModelOut]  # the default first
    unusable: list[UnusableModel]  # model directories found that cannot be used, and why


class LoraOut(Base):
    """A LoRA of the library (AVP_LORA_DIR, the models' loras/), as its file's header describes it."""

    name: str  # what a job's loras[].name gives
    family: str | None  # "ltx-2" where its layers are LTX-2's; None: unknown
    version: str | None  # "2.0" or "2.3" where its metadata or layers say; None: either
    rank: int | None  # its largest layer's
    size_bytes: int
    trigger_words: list[str]  # from its metadata; put them in the prompt
    layers: int  # how many layers it changes
    models: list[str]  # the ids of the offered models it fits
    problem: str | None  # why it cannot be used (not safetensors, too big, unreadable); None: usable


class LoraList(Base):
    loras: list[LoraOut]  # by name
    directory: str  # AVP_LORA_DIR: where to put more


class SlotHealth(Base):
    name: str  # "gpu0", "cpu1": what a job's `slot` says
    device: str  # "cuda" or "cpu"
    card: int | None  # the card's number, as nvidia-smi shows it; None for a CPU slot
    job: str | None  # the job it runs; None: free
    free_gib: float | None  # what a job may take there now: the card's free memory, a CPU slot's AVP_SLOT_MEMORY_GB
    total_gib: float | None  # the most a job could ever take there; None (and free_gib None): not checked
    spare_pid: int | None  # its spare runner, waiting with torch imported; None: none now (or AVP_SPARE_RUNNER=off)
    # warm mode (AVP_KEEP_WARM_S): the model id whose weights stay loaded in its warm runner, until when (Unix
    # time), and that runner's pid; all None: nothing resident (the default: warm mode off)
    resident_model: str | None = None
    resident_until: float | None = None
    resident_pid: int | None = None


class WorkerHealth(Base):
    alive: bool
    state: str  # "starting", "idle", "running", "waiting for disk space", "stopped"
    current_job: str | None  # the first of running_jobs
    running_jobs: list[str]  # in the order they started
    slots: int  # how many jobs it runs at once
    slot_states: list[SlotHealth]  # every slot (AVP_GPUS), in order
    waiting_for_room: list[str]  # queued jobs, in order, that no free slot could hold at the last look


class Health(Base):
    status: Literal["ok", "low_disk", "worker_dead"]
    worker: WorkerHealth
    queued: int
    disk: DiskStatus


# ---- a job's event stream (GET /api/jobs/{id}/events): what each SSE message's data is -------------------------
# The runner's events as stored: each with its number in the job, which is also the SSE id (for Last-Event-ID).


class StageEvent(protocol.Stage, kw_only=True, tag="stage"):
    id: int


class StepEvent(protocol.Step, kw_only=True, tag="step"):
    id: int


class TileEvent(protocol.Tile, kw_only=True, tag="tile"):
    id: int


class MemoryEvent(protocol.Memory, kw_only=True, tag="memory"):
    id: int


class PreviewEvent(protocol.Preview, kw_only=True, tag="preview"):
    id: int


class TokenEvent(protocol.Token, kw_only=True, tag="token"):
    id: int


class EnhancedPromptEvent(protocol.EnhancedPrompt, kw_only=True, tag="enhanced_prompt"):
    id: int


class NumFramesEvent(protocol.NumFrames, kw_only=True, tag="num_frames"):
    id: int


class ResultEvent(protocol.Result, kw_only=True, tag="result"):
    id: int


class ErrorEvent(protocol.Error, kw_only=True, tag="error"):
    id: int


class StatusEvent(Base):
    """The portal's own events: the job's status changed (its `type` is the new status)."""

    type: JobStatus
    id: int
    attempt: int | None = None  # running: which attempt (a job interrupted by a restart runs again)
    code: protocol.ErrorCode | None = None  # failed: what kind of failure
    message: str | None = None  # failed, cancelled, interrupted, queued again: for a person


class EndEvent(Base):
    """The last message of a stream, never stored (so it has no id): the job ended with `status`."""

    type: Literal["end"]
    status: Ended


JobEvent = (
    StageEvent
    | StepEvent
    | TileEvent
    | MemoryEvent
    | PreviewEvent
    | TokenEvent
    | EnhancedPromptEvent
    | NumFramesEvent
    | ResultEvent
    | ErrorEvent
    | StatusEvent
    | EndEvent
)
