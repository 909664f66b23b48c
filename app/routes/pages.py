"""HTML pages and the fragments htmx swaps in (hypermedia: the server renders, the browser shows).

One URL family per thing shown: the create page with its form and the live job list (a grid of cards, filtered by
its query string: app/job_list.py), the job page with its live panel. Each page opens ONE event stream, which
pushes the fragments it shows, rendered (app/routes/events.py, app/page_feed.py).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import anyio.to_thread
import msgspec
from litestar import Request, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, FromQuery, URLEncodedBody
from litestar.plugins.htmx import ClientRedirect, HTMXTemplate
from litestar.response import Redirect, Template

from app import job_list
from app.auth import PUBLIC
from app.config import Settings
from app.disk import DiskFull
from app.jobs import Conflict, Jobs, QueueFull, present_batch, present_delivery, provenance_changes
from app.page_feed import PageFeed, job_context
from app.ratelimit import RateLimited
from app.routes.api import client_address, load_batch, load_job
from app.schemas import FieldError, InvalidRequest
from contract import loras
from contract.models import ModelSpec
from contract.request import FAST_FIXED, FIELDS, LORA_SCALES, MAX_KEYFRAMES, MAX_LORAS, valid_frame_counts

USE_ENHANCED_PROMPT = "enhanced_prompt"  # ?use=: the job page's "use this prompt" (templates/fragments/_job_panel.html)


def _form_context(settings: Settings, values: dict[str, Any], errors: dict[str, str] | None = None) -> dict[str, Any]:
    """What the create form needs: the chosen model, its choices, the current values, the errors."""
    offer = settings.library()
    models = offer.models
    spec = models.get(str(values.get("model") or "")) or next(iter(models.values()))
    # The model's defaults, then what the person chose; a field with neither shows blank (a random seed).
    merged = {name: "" if value is None else value for name, value in msgspec.structs.asdict(spec.defaults).items()}
    merged.update({k: v for k, v in values.items() if v is not None and v != ""})
    merged["model"] = spec.id
    if merged.get("mode") not in spec.modes:
        merged["mode"] = spec.modes[0]
    fast = merged["mode"] == "fast"
    presets = [preset for preset in spec.presets if not fast or _on_fast_grid(spec, preset)]
    chosen = _size(merged)
    if chosen and chosen not in presets and (not fast or _on_fast_grid(spec, chosen)):
        presets.insert(0, chosen)  # a job's own size, to make it again ("use these settings again")
    return {
        **_lora_context(settings, spec, merged.get("loras")),
        "fast": fast,  # the schedule is fixed: no steps or guidance to set, sides on fast mode's grid
        "presets": presets,
        "models": list(models.values()),
        "unusable": offer.unusable,
        "spec": spec,
        "values": merged,
        "errors": errors or {},
        "frame_choices": _frame_choices(spec, merged["fps"]),
        "max_keyframes": MAX_KEYFRAMES,
        "max_batch": settings.max_queue,
    }


# ---- LoRAs (issue 17): the form's picker, a name and a scale slider per slot ----------------------


def _lora_context(settings: Settings, spec: ModelSpec, chosen: Any) -> dict[str, Any]:
    """The LoRAs the form offers for `spec` (those of the library that fit it) and its MAX_LORAS slots, filled with
    the current choice (a job's, for "use these settings again")."""
    library = settings.lora_library()
    offered = [
        lora
        for lora in sorted(library.loras.values(), key=lambda lora: lora.name)
        if lora.problem is None and loras.fit_problem(lora, Path(spec.path), spec.version, spec.id) is None
    ]
    slots = []
    for choice in list(chosen or ())[:MAX_LORAS]:
        if isinstance(choice, dict):
            name, scale = choice.get("name"), choice.get("scale", 1)
        else:  # a job's LoraChoice
            name, scale = choice.name, choice.scale
        slots.append({"name": name or "", "scale": scale})
    slots += [{"name": "", "scale": 1} for _ in range(MAX_LORAS - len(slots))]
    return {"lora_choices": offered, "lora_slots": slots, "lora_scales": LORA_SCALES}


def _form_loras(form: dict[str, str]) -> list[dict[str, str]] | None:
    """The picker's slots as the request's `loras`: each slot with a name chosen, with its slider's scale."""
    chosen = [
        {"name": form[f"lora_name_{slot}"], "scale": form.get(f"lora_scale_{slot}") or "1"}
        for slot in range(MAX_LORAS + 1)  # one past the limit: a forged form's extra slot is refused, not dropped
        if form.get(f"lora_name_{slot}", "").strip()
    ]
    return chosen or None


# ---- end LoRAs ------------------------------------------------------------------------------


def _frame_choices(spec: ModelSpec, fps: Any) -> list[tuple[int, str]]:
    try:
        rate = float(fps)
    except (TypeError, ValueError):
        rate = spec.defaults.fps
    if not spec.constraints.min_fps <= rate <= spec.constraints.max_fps:
        rate = spec.defaults.fps
    return [(n, f"{n / rate:.2f} s ({n} frames)") for n in valid_frame_counts(spec.constraints, rate)]


def _size(values: dict[str, Any]) -> tuple[int, int] | None:
    try:
        return int(values["width"]), int(values["height"])
    except (KeyError, TypeError, ValueError):
        return None


def _on_fast_grid(spec: ModelSpec, preset: tuple[int, int]) -> bool:
    return all(side % spec.constraints.fast_size_multiple == 0 for side in preset)


def _form_values(form: dict[str, str]) -> dict[str, Any]:
    """Request fields from the HTML form; the resolution preset "WxH" becomes width and height.

    The form leaves out steps and guidance in fast mode; a browser without script, which cannot redraw the form
    when the mode changes, still sends them from the quality form: fast mode fixes them, so they are dropped."""
    values: dict[str, Any] = {k: form[k] for k in FIELDS if k in form}
    width, _, height = form.get("resolution", "").partition("x")
    if width and height:
        values["width"], values["height"] = width, height
    if values.get("mode") == "fast":
        values = {k: v for k, v in values.items() if k not in FAST_FIXED}
    keyframes = _form_keyframes(form)
    if keyframes:
        values["keyframes"] = keyframes
    else:
        values.pop("keyframes", None)
    if not str(values.get("extend_from") or "").strip():
        values.pop("extend_from", None)
    if (chosen := _form_loras(form)) is not None:
        values["loras"] = chosen
    return values


def _form_keyframes(form: dict[str, str]) -> list[dict[str, Any]]:
    """The timeline's keyframes: rows `keyframe_upload_<i>`, `keyframe_frame_<i>`, `keyframe_strength_<i>` (a row
    without an upload is an empty slot); numbers stay text, converted with the rest of the form."""
    rows = []
    for i in range(MAX_KEYFRAMES):
        upload_id = form.get(f"keyframe_upload_{i}", "").strip()
        if not upload_id:
            continue
        row: dict[str, Any] = {"upload_id": upload_id, "frame": _number(form.get(f"keyframe_frame_{i}", ""))}
        strength = form.get(f"keyframe_strength_{i}", "").strip()
        if strength:
            row["strength"] = _number(strength)
        rows.append(row)
    return rows


def _number(text: str) -> Any:
    """A form's number as a number where it reads as one; else the text, for the rules to name."""
    for kind in (int, float):
        try:
            return kind(text.strip())
        except ValueError:
            pass
    return text


def _list_context(pages: PageFeed) -> dict[str, Any]:
    """What a job list shows beside its jobs: their places in the queue, and whether it is paused."""
    return {"places": pages.places, "paused": pages.paused}


class ListParams(msgspec.Struct, frozen=True):
    """The job list's query parameters as a request gives them, read by every handler of the list (its page, its
    Load more fragment, its stream); `query` checks them."""

    status: str | None
    model: str | None
    q: str | None
    before: str | None
    batch: str | None

    def query(self, settings: Settings) -> job_list.ListQuery:
        """The list's query; a bad parameter is an InvalidRequest naming it."""
        models = list(settings.models())
        return job_list.read_query(models, self.status, self.model, self.q, self.before, self.batch)


def _list_params(
    status: FromQuery[str | None] = None,
    model: FromQuery[str | None] = None,
    q: FromQuery[str | None] = None,
    before: FromQuery[str | None] = None,
    batch: FromQuery[str | None] = None,
) -> ListParams:
    return ListParams(status, model, q, before, batch)


# The handlers that show the job list take `listed: NamedDependency[ListParams]`.
LIST_PARAMS = {"listed": Provide(_list_params, sync_to_thread=False)}


async def read_listing(jobs: Jobs, query: job_list.ListQuery) -> job_list.Listing:
    return job_list.page_of(await jobs.newest(job_list.PAGE_SIZE + 1, query.before, query.only), query)


@get("/", name="index", dependencies=LIST_PARAMS)
async def index(
    jobs: NamedDependency[Jobs],
    settings: NamedDependency[Settings],
    pages: NamedDependency[PageFeed],
    listed: NamedDependency[ListParams],
    from_job: FromQuery[str | None] = None,
    use: FromQuery[str | None] = None,
    extend_from: FromQuery[str | None] = None,
) -> Template:
    """The create page and the job list. `?from_job=<id>` fills the form with that job's settings (seed included),
    with `&use=enhanced_prompt` its enhanced prompt as the prompt ("use this prompt": not enhanced again);
    `status`, `model`, `q` and `before` pick the jobs listed (a bad one: the page, with a 400 that names it)."""
    values: dict[str, Any] = {}
    changed: list[str] = []
    if from_job:
        source = await jobs.get_job(from_job)
        if source is not None:
            values = msgspec.structs.asdict(source.request)
            if use == USE_ENHANCED_PROMPT and source.enhanced_prompt:
                values |= {"prompt": source.enhanced_prompt, "enhance_prompt": False}
            changed = await anyio.to_thread.run_sync(provenance_changes, source, settings)
    if extend_from:  # a finished job's Extend link: its model, size and frame rate, and a prompt to write
        source = await jobs.get_job(extend_from)
        if source is not None:
            kept = {name: getattr(source.request, name) for name in ("model", "mode", "width", "height", "fps")}
            values = {**kept, "extend_from": source.id}
    context = {
        **_list_context(pages),
        **_form_context(settings, values),
        "provenance_changes": changed,  # what differs since that job (its model's files, its LoRAs, the portal)
        "statuses": job_list.OFFERED_STATUSES,
        "max_search": job_list.MAX_SEARCH_CHARS,
    }
    try:
        query = listed.query(settings)
    except InvalidRequest as exc:
        context |= {"listing": None, "list_errors": exc.errors}
        return HTMXTemplate(template_name="index.html", context=context, status_code=400)
    context["listing"] = await read_listing(jobs, query)
    if query.only.batch is not None:
        context["batch"] = present_batch(query.only.batch, await jobs.batch(query.only.batch), settings, {})
    return HTMXTemplate(template_name="index.html", context=context)


@get("/fragments/form", name="form_fragment")
async def form_fragment(
    settings: NamedDependency[Settings],
    model: FromQuery[str | None] = None,
    fps: FromQuery[str | None] = None,
    num_frames: FromQuery[str | None] = None,
    mode: FromQuery[str | None] = None,
) -> Template:
    """The form again after the model, the mode or the frame rate changed: its choices depend on them."""
    values = {"model": model, "fps": fps, "num_frames": num_frames, "mode": mode}
    return HTMXTemplate(template_name="fragments/_form.html", context=_form_context(settings, values))


@post("/jobs", name="create_job", status_code=200)
async def create_job(
    request: Request,
    data: URLEncodedBody[dict[str, str]],
    jobs: NamedDependency[Jobs],
    settings: NamedDependency[Settings],
) -> Template | ClientRedirect | Redirect:
    values = _form_values(data)
    count, lines = data.get("count", "").strip(), bool(data.get("prompt_lines"))
    shown = {**values, "count": count, "prompt_lines": lines}  # the form again, as it was sent
    try:
        if count in ("", "1") and not lines:
            url = f"/jobs/{(await jobs.submit(values, client_address(request), strict=False)).id}"
        else:
            made = await jobs.submit_batch(_batch_body(values, count, lines), client_address(request), strict=False)
            url = f"/?batch={made[0].batch_id}"
    except InvalidRequest as exc:
        # A problem of the request as a whole (predicted too long) shows above the form.
        errors = dict(_on_the_form(e) for e in exc.errors)
        return HTMXTemplate(
            template_name="fragments/_form.html", context=_form_context(settings, shown, errors), status_code=200
        )
    except (QueueFull, RateLimited, DiskFull) as exc:
        errors = {"form": str(exc)}
        return HTMXTemplate(template_name="fragments/_form.html", context=_form_context(settings, shown, errors))
    url = settings.url(url)
    return ClientRedirect(url) if request.headers.get("hx-request") else Redirect(url, status_code=303)


def _batch_body(values: dict[str, Any], count: str, lines: bool) -> dict[str, Any]:
    """A batch's body from the form: one job per non-blank line of the prompt (with `lines`), `count` seeds each."""
    body = dict(values)
    if lines:
        body["prompts"] = [line.strip() for line in str(body.pop("prompt", "")).splitlines() if line.strip()]
    if count:
        body["seeds"] = int(count) if count.isascii() and count.isdigit() else count
    return body


def _on_the_form(error: FieldError) -> tuple[str, str]:
    """The form's field a request's or a batch's problem shows under (`form`, above it, for the request as a
    whole), and what it says there."""
    if error.field.startswith("prompts["):  # prompts[i]: the (i + 1)th non-blank line of the prompt
        return "prompt", f"prompt {int(error.field[8:-1]) + 1} (of its lines): {error.message}"
    if error.field in ("prompts", "seeds"):
        return ("prompt" if error.field == "prompts" else "count"), error.message
    field = error.field.split("[")[0]  # beside its widget: loras[1].scale beside the LoRA picker
    return (field if field in FIELDS else "form"), error.message


@get("/fragments/jobs", name="jobs_fragment", dependencies=LIST_PARAMS)
async def jobs_fragment(
    jobs: NamedDependency[Jobs],
    settings: NamedDependency[Settings],
    pages: NamedDependency[PageFeed],
    listed: NamedDependency[ListParams],
) -> Template:
    """A page of the job list's cards (Load more appends it to the grid) and the link to the next (out of band).
    A bad parameter is a 400 naming it."""
    listing = await read_listing(jobs, listed.query(settings))
    context = {**_list_context(pages), "listing": listing}
    return HTMXTemplate(template_name="fragments/_job_cards_more.html", context=context)


async def _panel_context(jobs: Jobs, settings: Settings, pages: PageFeed, job_id: str) -> dict[str, Any]:
    job = await load_job(jobs, job_id)
    return {
        **job_context(job, settings.models(), pages.places.get(job.id)),
        "extended_by": await jobs.extensions_of(job.id),
    }


@get("/jobs/{job_id:str}", name="job_page")
async def job_page(
    job_id: FromPath[str],
    jobs: NamedDependency[Jobs],
    settings: NamedDependency[Settings],
    pages: NamedDependency[PageFeed],
) -> Template:
    context = await _panel_context(jobs, settings, pages, job_id)
    job = context["job"]
    deliveries = [present_delivery(d) for d in await jobs.webhook_deliveries(job.id)] if job.webhook else []
    return HTMXTemplate(template_name="job.html", context={**context, "deliveries": deliveries})


@get("/jobs/{job_id:str}/webhooks", name="job_webhooks_fragment")
async def job_webhooks_fragment(job_id: FromPath[str], jobs: NamedDependency[Jobs]) -> Template:
    """The job page's table of webhook deliveries as they stand now (it asks for itself while some may change); a
    job without a webhook has none: 404."""
    job = await load_job(jobs, job_id)
    if job.webhook is None:
        raise NotFoundException("This job has no webhook.")
    deliveries = [present_delivery(d) for d in await jobs.webhook_deliveries(job.id)]
    context = {"job": job, "deliveries": deliveries}
    return HTMXTemplate(template_name="fragments/_webhook_deliveries.html", context=context)


@get("/jobs/{job_id:str}/panel", name="job_panel")
async def job_panel(
    job_id: FromPath[str],
    jobs: NamedDependency[Jobs],
    settings: NamedDependency[Settings],
    pages: NamedDependency[PageFeed],
) -> Template:
    context = await _panel_context(jobs, settings, pages, job_id)
    return HTMXTemplate(template_name="fragments/_job_panel.html", context=context)


@post("/jobs/{job_id:str}/cancel", name="cancel_job_form", status_code=200)
async def cancel_job_form(
    job_id: FromPath[str],
    jobs: NamedDependency[Jobs],
    settings: NamedDependency[Settings],
    pages: NamedDependency[PageFeed],
) -> Template:
    with contextlib.suppress(Conflict):  # it finished meanwhile: the panel below shows how
        await jobs.cancel(await load_job(jobs, job_id))
    context = await _panel_context(jobs, settings, pages, job_id)
    return HTMXTemplate(template_name="fragments/_job_panel.html", context=context)


def _back_home(request: Request, settings: Settings) -> Response[None] | Redirect:
    """What a job list's queue controls get back: htmx, nothing (the list's stream shows the change); a browser
    without script, the home page again."""
    if request.headers.get("hx-request"):
        return Response(None, status_code=204)
    return Redirect(settings.url("/"), status_code=303)


@post("/batches/{batch_id:str}/cancel", name="cancel_batch_form", status_code=200)
async def cancel_batch_form(
    request: Request, batch_id: FromPath[str], jobs: NamedDependency[Jobs], settings: NamedDependency[Settings]
) -> Redirect | ClientRedirect:
    """Cancel what of a batch has not ended; back to the batch's gallery, where its cards show it."""
    await jobs.cancel_batch(await load_batch(jobs, batch_id))
    url = settings.url(f"/?batch={batch_id}")
    return ClientRedirect(url) if request.headers.get("hx-request") else Redirect(url, status_code=303)


@post("/queue/pause", name="pause_queue_form", status_code=200)
async def pause_queue_form(
    request: Request, jobs: NamedDependency[Jobs], settings: NamedDependency[Settings]
) -> Response[None] | Redirect:
    await jobs.set_paused(True)
    return _back_home(request, settings)


@post("/queue/resume", name="resume_queue_form", status_code=200)
async def resume_queue_form(
    request: Request, jobs: NamedDependency[Jobs], settings: NamedDependency[Settings]
) -> Response[None] | Redirect:
    await jobs.set_paused(False)
    return _back_home(request, settings)


@post("/jobs/{job_id:str}/prioritize", name="prioritize_job_form", status_code=200)
async def prioritize_job_form(
    request: Request, job_id: FromPath[str], jobs: NamedDependency[Jobs], settings: NamedDependency[Settings]
) -> Response[None] | Redirect:
    with contextlib.suppress(Conflict):  # it started meanwhile: the list shows it running
        await jobs.prioritize(await load_job(jobs, job_id))
    return _back_home(request, settings)


@post("/jobs/{job_id:str}/delete", name="delete_job_form", status_code=200)
async def delete_job_form(
    request: Request, job_id: FromPath[str], jobs: NamedDependency[Jobs], settings: NamedDependency[Settings]
) -> ClientRedirect | Redirect:
    await jobs.delete(await load_job(jobs, job_id))
    home = settings.url("/")
    return ClientRedirect(home) if request.headers.get("hx-request") else Redirect(home, status_code=303)


@get("/favicon.ico", name="favicon", opt={PUBLIC: True}, include_in_schema=False)
async def favicon(settings: NamedDependency[Settings]) -> Redirect:
    """For browsers and tools that ask for it before reading the page's <link rel="icon">."""
    return Redirect(settings.url("/static/favicon.svg"), status_code=301)


@post("/jobs/{job_id:str}/keep", name="keep_job_form", status_code=200)
async def keep_job_form(
    request: Request,
    job_id: FromPath[str],
    data: URLEncodedBody[dict[str, str]],
    jobs: NamedDependency[Jobs],
    settings: NamedDependency[Settings],
) -> Template | Redirect:
    """The panel's keep switch: `keep=on` marks the job keep, `keep=off` unmarks it; htmx gets the switch back."""
    if data.get("keep") not in ("on", "off"):
        raise InvalidRequest([FieldError(field="keep", message="must be on or off")])
    job = await jobs.set_keep(await load_job(jobs, job_id), data["keep"] == "on")
    if not request.headers.get("hx-request"):
        return Redirect(settings.url(f"/jobs/{job.id}"), status_code=303)
    return HTMXTemplate(template_name="fragments/_keep_form.html", context={"job": job})


handlers = [
    favicon,
    index,
    form_fragment,
    create_job,
    jobs_fragment,
    job_page,
    job_panel,
    job_webhooks_fragment,
    cancel_job_form,
    cancel_batch_form,
    delete_job_form,
    keep_job_form,
    pause_queue_form,
    resume_queue_form,
    prioritize_job_form,
]
