"""The Litestar application: its parts, lifespan (worker + recovery), error handling, templates."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import msgspec
from litestar import Litestar, Request, Response, Router
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import HTTPException, ValidationException
from litestar.plugins.htmx import HTMXPlugin
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from app import sse_names
from app.auth import PUBLIC, Authenticator, LoginRequired, LoginThrottle, load_or_create_secret, require_login
from app.broker import Broker
from app.config import Settings
from app.disk import DiskFull
from app.executor import Executor
from app.jobs import Conflict, Jobs, KeyReused, QueueFull, present
from app.journal import Journal
from app.openapi import openapi_config
from app.page_feed import PageFeed, queue_context
from app.posters import make_missing_posters
from app.queue import Worker
from app.ratelimit import RateLimited, SubmitRateLimit
from app.retention import Retention
from app.routes import api, events, files, login, pages, uploads
from app.runner import LocalSlots
from app.schemas import ErrorResponse, FieldError, InvalidRequest
from app.security import CrossOriginProtection, ServedHostsOnly, add_security_headers
from app.store import Store
from app.uploads import MULTIPART_ENVELOPE, UploadRejected, Uploads
from app.webhooks import Webhooks
from app.webhooks import load_or_create_secret as load_or_create_webhook_secret
from contract.cost import say_duration
from contract.disk import is_disk_full

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
RETRY_AFTER_S = 30


def build_templates(settings: Settings) -> JinjaTemplateEngine:
    """The pages' templates; built before the app, since the page feed renders fragments with them too."""
    templates = JinjaTemplateEngine(directory=ROOT / "templates")
    templates.engine.globals.update(
        url=settings.url,
        auth_enabled=settings.auth_enabled,
        sse=sse_names,
        say_duration=say_duration,
        data_disk=settings.data_disk.status,
        queue_context=queue_context,
    )
    return templates


class Parts(msgspec.Struct, frozen=True):
    """The portal's long-lived parts, made once per app. Handlers get the ones they name (see
    `dependencies` in create_app); the store and the journal stay behind Jobs."""

    settings: Settings
    store: Store
    broker: Broker
    pages: PageFeed
    worker: Worker
    jobs: Jobs
    retention: Retention
    uploads: Uploads
    auth: Authenticator
    login_throttle: LoginThrottle
    webhooks: Webhooks

    def injectable(self) -> dict[str, Provide]:
        return {name: _constant(getattr(self, name)) for name in INJECTED}


# What a handler may ask for by parameter name.
INJECTED = ("settings", "broker", "pages", "worker", "jobs", "uploads", "auth", "login_throttle")


def _constant(value: object) -> Provide:
    return Provide(lambda: value, sync_to_thread=False)


def build_parts(settings: Settings, secret: bytes, templates: JinjaTemplateEngine) -> Parts:
    settings.jobs_dir.mkdir(parents=True, exist_ok=True)
    store = Store(settings.db_path)
    broker = Broker()
    pages = PageFeed(broker, templates, settings)
    webhooks = Webhooks(
        store,
        # the job as the API shows it, its place in the queue as the pages last worked it out; rendered in the
        # store's thread, inside the transaction that queues the delivery, so it may read the store
        lambda job: present(job, settings, pages.places, store.extensions_of(job.id)),
        load_or_create_webhook_secret(settings.data_dir, settings.webhook_secret),
        settings.webhook_allow,
        settings.webhook_backoff_s,
        settings.webhook_attempts,
        settings.webhook_ca_file,
    )
    spare_jobs_dir = settings.jobs_dir if settings.spare_runner else None
    executor: Executor
    if settings.ray_address:
        from app.ray_executor import RayExecutor  # ray, the optional extra, only where it is asked for

        executor = RayExecutor(settings.ray_address, settings.cancel_grace_s)
    else:
        executor = LocalSlots(
            *settings.slots(), settings.runner_python, settings.cancel_grace_s, spare_jobs_dir, settings.keep_warm_s
        )
    journal = Journal(store, broker, pages, slots=executor.slot_names, webhooks=webhooks)
    worker = Worker(store, journal, executor, settings.jobs_dir, settings.runner_python)
    uploads = Uploads(settings.uploads_dir, store, settings.max_upload_bytes, settings.upload_ttl_s, settings.data_disk)
    jobs = Jobs(settings, store, journal, worker, uploads, SubmitRateLimit(settings.submit_per_minute))
    journal.estimate_at_length = jobs.estimate_at_length
    return Parts(
        settings=settings,
        store=store,
        broker=broker,
        pages=pages,
        worker=worker,
        jobs=jobs,
        retention=Retention(jobs, worker, settings),
        uploads=uploads,
        auth=Authenticator(settings, secret),
        login_throttle=LoginThrottle(),
        webhooks=webhooks,
    )


def _error(status: int, detail: str, errors: list[FieldError] | None = None, **headers: str) -> Response[ErrorResponse]:
    return Response(ErrorResponse(detail=detail, errors=errors or []), status_code=status, headers=headers or None)


def _invalid(_: Request, exc: InvalidRequest) -> Response[ErrorResponse]:
    return _error(400, f"Invalid request: {exc}", exc.errors)


def _key_reused(_: Request, exc: KeyReused) -> Response[ErrorResponse]:
    return _error(422, f"Unprocessable request: {exc}", exc.errors)


def _validation(_: Request, exc: ValidationException) -> Response[ErrorResponse]:
    def field(key: object) -> str:
        return "body" if key in (None, "", "data") else str(key)  # handlers name the request body `data`

    errors = [
        FieldError(field=field(e.get("key")), message=str(e.get("message")))
        for e in (exc.extra if isinstance(exc.extra, list) else [])
        if isinstance(e, dict)
    ] or [FieldError(field="body", message=exc.detail)]
    return _error(400, f"Invalid request: {exc.detail}", errors)


def _is_page(request: Request) -> bool:
    """Whether a person's browser asked for the path (the API, streams, the schema's document and static files are
    not pages; the schema's page at /schema is)."""
    path = request.url.path
    return path == "/schema" or not path.startswith(("/api/", "/events/", "/schema", "/static/"))


def _http(request: Request, exc: HTTPException) -> Response[ErrorResponse] | Template:
    # A person's browser gets a page, not JSON: for an unknown or deleted job's page, say, or another site's form.
    page = {404: "not_found.html", 403: "refused.html"}.get(exc.status_code)
    if page is not None and _is_page(request):
        return Template(template_name=page, context={"detail": exc.detail}, status_code=exc.status_code)
    errors = [FieldError(field="body", message=exc.detail)] if exc.status_code == 400 else None
    return _error(exc.status_code, exc.detail, errors, **(exc.headers or {}))


def _queue_full(_: Request, exc: QueueFull) -> Response[ErrorResponse]:
    return _error(429, str(exc), **{"Retry-After": str(RETRY_AFTER_S)})


def _rate_limited(_: Request, exc: RateLimited) -> Response[ErrorResponse]:
    return _error(429, str(exc), **{"Retry-After": str(exc.retry_after_s)})


def _login_required(request: Request, exc: LoginRequired) -> Response[ErrorResponse] | Redirect:
    """A person opening a page goes to the login page (and back afterwards); anything else gets 401."""
    settings: Settings = request.app.state.parts.settings
    if request.method == "GET" and _is_page(request):
        login_url = settings.url(login.login_path(request))
        if request.headers.get("hx-request"):  # htmx would swap the login page into a fragment
            return _error(401, exc.detail, **{"HX-Redirect": login_url})
        return Redirect(login_url, status_code=303)
    return _error(401, exc.detail, **{"WWW-Authenticate": "Bearer"})


def _upload_rejected(_: Request, exc: UploadRejected) -> Response[ErrorResponse]:
    # Close the connection: the rest of a refused body is not worth reading.
    return _error(exc.status, exc.message, [FieldError(field="file", message=exc.message)], Connection="close")


def _conflict(_: Request, exc: Conflict) -> Response[ErrorResponse]:
    return _error(409, str(exc))


def _disk_full(_: Request, exc: DiskFull) -> Response[ErrorResponse]:
    return _error(507, exc.message, [FieldError(field="request", message=exc.message)])


def _unexpected(request: Request, exc: Exception) -> Response[ErrorResponse]:
    if is_disk_full(exc):  # a write of any handler (SQLite, a file) that found no space gets the same answer
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        return _disk_full(request, request.app.state.parts.settings.data_disk.full("the change"))
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error(500, "The portal hit an internal error; it is logged on the server.")


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or Settings.from_env()
    secret = load_or_create_secret(settings.data_dir)
    templates = build_templates(settings)
    parts = build_parts(settings, secret, templates)

    @contextlib.asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        async def run_worker() -> None:
            try:
                await parts.worker.run(settings.demo_model_dir if "demo" in settings.models() else None)
            except Exception:  # the lifespan must outlive a dead worker; /healthz reports it
                log.exception("the worker stopped")

        async def reestimate_queued() -> None:
            """Each ended job teaches the estimate: the queued jobs' times follow."""
            ended = 0
            while True:
                ended = await parts.worker.wait_for_job_end(ended)
                try:
                    await parts.jobs.reestimate_queued()
                except Exception:  # the times shown stay as they were; the queue itself goes on
                    log.exception("could not estimate the queued jobs again")

        await parts.jobs.refresh_job_files()  # before recovery queues them again
        await parts.worker.recover()
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_worker)
            tg.start_soon(reestimate_queued)
            tg.start_soon(parts.broker.beat_every, settings.heartbeat_s)
            tg.start_soon(parts.uploads.sweep_forever)
            tg.start_soon(parts.retention.run)
            tg.start_soon(parts.webhooks.run)
            tg.start_soon(make_missing_posters, settings.runner_python, settings.jobs_dir)
            try:
                yield
            finally:
                parts.broker.close()
                tg.cancel_scope.cancel()
        parts.store.close()

    return Litestar(
        route_handlers=[
            api.JobsApi,
            api.QueueApi,
            api.BatchesApi,
            api.healthz,
            events.job_events,
            files.job_video,
            files.job_preview,
            files.job_poster,
            *uploads.handlers,
            # The pages and their streams are no API: /schema leaves them out.
            Router(
                "/",
                route_handlers=[events.job_list_page_events, events.job_page_events, *pages.handlers, *login.handlers],
                include_in_schema=False,
            ),
            create_static_files_router(path="/static", directories=[ROOT / "static"], opt={PUBLIC: True}),
        ],
        guards=[require_login],
        middleware=[ServedHostsOnly(settings), CrossOriginProtection(settings)],
        before_send=[add_security_headers],
        request_max_body_size=settings.max_upload_bytes + MULTIPART_ENVELOPE,
        dependencies=parts.injectable(),
        lifespan=[lifespan],
        exception_handlers={
            KeyReused: _key_reused,
            InvalidRequest: _invalid,
            ValidationException: _validation,
            QueueFull: _queue_full,
            RateLimited: _rate_limited,
            LoginRequired: _login_required,
            Conflict: _conflict,
            UploadRejected: _upload_rejected,
            DiskFull: _disk_full,
            HTTPException: _http,
            Exception: _unexpected,
        },
        template_config=TemplateConfig(instance=templates),
        plugins=[HTMXPlugin()],
        openapi_config=openapi_config(settings),
        state=State({"parts": parts}),
    )
