"""The JSON API (README, "Using it"). Handlers stay thin: the work is in app.jobs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import anyio.to_thread
import msgspec
from litestar import Controller, Request, Response, delete, get, post, put
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.openapi.spec import (
    OpenAPIFormat,
    OpenAPIMediaType,
    OpenAPIType,
    Operation,
    Reference,
    RequestBody,
    Schema,
)
from litestar.params import FromPath, FromQuery, HeaderParameter, QueryParameter

from app import webhook_targets
from app.auth import PUBLIC
from app.config import Settings
from app.jobs import IDEMPOTENCY_HEADER, Jobs, present, present_batch, present_delivery
from app.places import places
from app.queue import Worker
from app.schemas import (
    BatchOut,
    CancelledJobs,
    FieldError,
    Health,
    InvalidRequest,
    JobList,
    JobOut,
    LoraList,
    LoraOut,
    ModelDefaults,
    ModelList,
    ModelOut,
    QueueOut,
    SlotHealth,
    UnusableModel,
    WebhookDeliveryList,
    WorkerHealth,
    decode_body,
)
from app.store import JobRow
from contract import loras
from contract.request import given

MAX_WAIT_S = 60  # Prefer: wait=N, at most (Replicate's limit)
Prefer = Annotated[
    str | None,
    HeaderParameter(name="Prefer", description=f"wait=N (N <= {MAX_WAIT_S}): answer once the job ends or N s pass"),
]
IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name=IDEMPOTENCY_HEADER,
        description="the same key with the same body within 24 h answers with the first job (200), not a new one",
    ),
]


def client_address(request: Request) -> str:
    """Who is asking: behind a trusted proxy uvicorn has already put the forwarded client here."""
    return request.client.host if request.client else "unknown"


async def load_job(jobs: Jobs, job_id: str) -> JobRow:
    job = await jobs.get_job(job_id)
    if job is None:
        raise NotFoundException(f"No job with id {job_id!r}.")
    return job


@dataclass
class _TakesARequest(Operation):
    """The OpenAPI of a handler that decodes its JSON body itself (with decode_body): a request's fields and
    the job's webhook, which is no field of the request (app/webhook_targets.py)."""

    def __post_init__(self) -> None:
        webhook = Schema(
            type=OpenAPIType.OBJECT,
            properties={
                "webhook": Schema(
                    type=OpenAPIType.STRING,
                    format=OpenAPIFormat.URI,
                    max_length=webhook_targets.MAX_URL_CHARS,
                    description="where the job's signed webhook deliveries go (its host allowed by AVP_WEBHOOK_ALLOW)",
                ),
                "webhook_events": Schema(
                    type=OpenAPIType.ARRAY,
                    items=Schema(type=OpenAPIType.STRING, enum=list(webhook_targets.EVENTS)),
                    description=f"the events delivered there; {', '.join(webhook_targets.DEFAULT_EVENTS)} by default",
                ),
            },
        )
        schema = Schema(all_of=[Reference(ref="#/components/schemas/Request"), webhook])
        self.request_body = RequestBody(content={"application/json": OpenAPIMediaType(schema=schema)}, required=True)


def wait_preference(prefer: str | None) -> int | None:
    """The seconds a `Prefer: wait=N` header asks to wait (RFC 7240: preferences separated by commas, their
    parameters by semicolons); None when it asks for none. A wait that is no whole number of seconds up to
    MAX_WAIT_S is a 400 naming the header."""
    for preference in (prefer or "").split(","):
        name, _, value = preference.split(";")[0].partition("=")
        if name.strip().lower() != "wait":
            continue
        value = value.strip().strip('"')
        if not value.isascii() or not value.isdigit() or int(value) > MAX_WAIT_S:
            message = f"wait must be a whole number of seconds from 0 to {MAX_WAIT_S}, not {value[:20]!r}"
            raise InvalidRequest([FieldError(field="Prefer", message=message)])
        return int(value)
    return None


async def answer(
    jobs: Jobs, settings: Settings, job: JobRow, wait: int | None, status_code: int = 200, **headers: str
) -> Response[JobOut]:
    """The job as it is, after waiting up to `wait` seconds for it to end (Prefer: wait)."""
    if wait is not None:
        await jobs.wait(job.id, wait)
        job = await jobs.get_job(job.id) or job  # deleted meanwhile: as it was
        headers["Preference-Applied"] = f"wait={wait}"
    shown = present(job, settings, await jobs.places(), await jobs.extensions_of(job.id))
    return Response(shown, status_code=status_code, headers=headers)


class JobsApi(Controller):
    path = "/api"
    tags = ["jobs"]

    @post(
        "/jobs",
        status_code=201,
        summary="Submit a generation request",
        operation_class=_TakesARequest,
        response_headers=[
            ResponseHeader(
                name="Location",
                description="the job's API URL",
                value="/api/jobs/ID",  # documentation only: its type makes the header's schema (a string)
                documentation_only=True,
            ),
            ResponseHeader(
                name="Preference-Applied",
                description="wait=N, as it was waited",
                value="wait=N",
                documentation_only=True,
            ),
        ],
    )
    async def create_job(
        self,
        request: Request,
        jobs: NamedDependency[Jobs],
        settings: NamedDependency[Settings],
        prefer: Prefer = None,
        idempotency_key: IdempotencyKey = None,
    ) -> Response[JobOut]:
        """201 with a new job; 200 with the first job of an Idempotency-Key sent again with the same body."""
        wait = wait_preference(prefer)  # a bad header makes no job
        # The body is decoded here, not by Litestar, so that any body gets a 400 saying what is wrong with it.
        raw = decode_body(await request.body())
        if idempotency_key is None:
            job, created = await jobs.submit(raw, client_address(request)), True
        else:
            job, created = await jobs.submit_once(raw, client_address(request), idempotency_key)
        location = settings.url(f"/api/jobs/{job.id}")
        return await answer(jobs, settings, job, wait, 201 if created else 200, Location=location)

    @get("/jobs", summary="Jobs, newest first")
    async def list_jobs(
        self,
        jobs: NamedDependency[Jobs],
        settings: NamedDependency[Settings],
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
        before: FromQuery[str | None] = None,
    ) -> JobList:
        before_seq = None
        if before is not None:
            before_seq = (await load_job(jobs, before)).seq
        found = await jobs.newest(limit + 1, before_seq)
        page = found[:limit]
        places = await jobs.places()
        return JobList(
            jobs=[present(j, settings, places) for j in page],
            next_before=page[-1].id if len(found) > limit else None,
        )

    @get("/jobs/{job_id:str}", summary="One job (Prefer: wait=N answers once it ends or N s pass)")
    async def get_job(
        self,
        job_id: FromPath[str],
        jobs: NamedDependency[Jobs],
        settings: NamedDependency[Settings],
        prefer: Prefer = None,
    ) -> Response[JobOut]:
        wait = wait_preference(prefer)
        return await answer(jobs, settings, await load_job(jobs, job_id), wait)

    @get("/jobs/{job_id:str}/webhooks", summary="The job's webhook deliveries: event, status, attempts, last error")
    async def job_webhooks(self, job_id: FromPath[str], jobs: NamedDependency[Jobs]) -> WebhookDeliveryList:
        job = await load_job(jobs, job_id)
        return WebhookDeliveryList(deliveries=[present_delivery(d) for d in await jobs.webhook_deliveries(job.id)])

    @post("/jobs/{job_id:str}/cancel", status_code=202, summary="Cancel a queued or running job")
    async def cancel_job(
        self, job_id: FromPath[str], jobs: NamedDependency[Jobs], settings: NamedDependency[Settings]
    ) -> JobOut:
        await jobs.cancel(await load_job(jobs, job_id))
        return present(await load_job(jobs, job_id), settings, await jobs.places())

    @post("/jobs/{job_id:str}/prioritize", status_code=200, summary="Move a queued job to the front of the queue")
    async def prioritize_job(
        self, job_id: FromPath[str], jobs: NamedDependency[Jobs], settings: NamedDependency[Settings]
    ) -> JobOut:
        await jobs.prioritize(await load_job(jobs, job_id))
        return present(await load_job(jobs, job_id), settings, await jobs.places())

    @delete("/jobs/{job_id:str}", status_code=204, summary="Delete a finished job and its files")
    async def delete_job(self, job_id: FromPath[str], jobs: NamedDependency[Jobs]) -> None:
        await jobs.delete(await load_job(jobs, job_id))

    @put("/jobs/{job_id:str}/keep", summary="Mark a job keep: retention never removes its files")
    async def keep_job(
        self, job_id: FromPath[str], jobs: NamedDependency[Jobs], settings: NamedDependency[Settings]
    ) -> JobOut:
        return present(await jobs.set_keep(await load_job(jobs, job_id), True), settings, await jobs.places())

    @delete("/jobs/{job_id:str}/keep", status_code=200, summary="Unmark a job keep: retention may remove its files")
    async def unkeep_job(
        self, job_id: FromPath[str], jobs: NamedDependency[Jobs], settings: NamedDependency[Settings]
    ) -> JobOut:
        return present(await jobs.set_keep(await load_job(jobs, job_id), False), settings, await jobs.places())

    @get("/models", summary="Models with their constraints and defaults, and model directories that cannot be used")
    async def list_models(self, settings: NamedDependency[Settings]) -> ModelList:
        offer = settings.library()
        return ModelList(
            models=[
                ModelOut(
                    id=spec.id,
                    label=spec.label,
                    kind=spec.kind,
                    version=spec.version,
                    variant=spec.variant,
                    modes=list(spec.modes),
                    parts=list(spec.parts),
                    disabled_modes=spec.disabled_modes,
                    note=spec.note,
                    source=spec.source,
                    constraints=spec.constraints,
                    defaults=msgspec.convert(given(spec.mode_defaults()), ModelDefaults),
                    presets=[list(p) for p in spec.presets],
                    fps_choices=list(spec.fps_choices),
                )
                for spec in offer.models.values()
            ],
            unusable=[UnusableModel(**msgspec.structs.asdict(found)) for found in offer.unusable],
        )

    @get("/loras", summary="LoRAs of the library: base family and version, rank, size, trigger words, models fitted")
    async def list_loras(self, settings: NamedDependency[Settings]) -> LoraList:
        return await anyio.to_thread.run_sync(lora_list, settings)


def lora_list(settings: Settings) -> LoraList:
    """The LoRA library as the API shows it (headers read in a thread: a new file's header is read once)."""
    library, models = settings.lora_library(), settings.models().values()
    return LoraList(
        loras=[
            LoraOut(
                name=lora.name,
                family=lora.family,
                version=lora.version,
                rank=lora.rank,
                size_bytes=lora.size_bytes,
                trigger_words=list(lora.trigger_words),
                layers=len(lora.layers),
                models=loras.fitting(lora, models),
                problem=lora.problem,
            )
            for lora in sorted(library.loras.values(), key=lambda lora: lora.name)
        ],
        directory=str(settings.loras_dir),
    )


async def queue_state(jobs: Jobs, settings: Settings) -> QueueOut:
    snapshot = await jobs.queue()
    where = places(snapshot, jobs.worker.slot_names)
    return QueueOut(
        paused=snapshot.paused,
        slots=jobs.worker.slots,
        running=[present(job, settings, where) for job in snapshot.running],
        queued=[present(job, settings, where) for job in snapshot.queued],
    )


@dataclass
class _TakesABatch(_TakesARequest):
    """The OpenAPI of POST /api/batches: a job's body and the batch's prompts and seeds (app/batches.py)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        variations = Schema(
            type=OpenAPIType.OBJECT,
            properties={
                "prompts": Schema(
                    type=OpenAPIType.ARRAY,
                    items=Schema(type=OpenAPIType.STRING),
                    min_items=1,
                    description="one job per prompt (in place of `prompt`), each with every seed",
                ),
                "seeds": Schema(
                    one_of=[
                        Schema(type=OpenAPIType.INTEGER, minimum=1),
                        Schema(type=OpenAPIType.ARRAY, items=Schema(type=OpenAPIType.INTEGER), min_items=1),
                    ],
                    description="a count of jobs (seeded from `seed` up, or at random), or a list of seeds",
                ),
            },
        )
        body = self.request_body.content["application/json"].schema
        body.all_of = [*body.all_of, variations]


async def load_batch(jobs: Jobs, batch_id: str) -> list[JobRow]:
    found = await jobs.batch(batch_id)
    if not found:
        raise NotFoundException(f"No batch with id {batch_id!r}.")
    return found


class BatchesApi(Controller):
    """Several prompts and/or seeds in one submit: a job each, seen and cancelled as one batch."""

    path = "/api/batches"
    tags = ["batches"]

    @post(
        "/",
        status_code=201,
        summary="Submit a batch: a request with prompts and/or seeds",
        operation_class=_TakesABatch,
    )
    async def create_batch(
        self, request: Request, jobs: NamedDependency[Jobs], settings: NamedDependency[Settings]
    ) -> Response[BatchOut]:
        """201 with the batch's jobs, all queued; a 400 naming `prompts[i]`, `seeds` or a field when any job would
        be refused (then none is made); a 429 when the queue has no room for all of them."""
        made = await jobs.submit_batch(decode_body(await request.body()), client_address(request))
        batch_id = made[0].batch_id
        assert batch_id is not None
        body = present_batch(batch_id, made, settings, await jobs.places())
        return Response(body, status_code=201, headers={"Location": settings.url(f"/api/batches/{batch_id}")})

    @get("/{batch_id:str}", summary="A batch: its jobs in order, how many have each status")
    async def get_batch(
        self, batch_id: FromPath[str], jobs: NamedDependency[Jobs], settings: NamedDependency[Settings]
    ) -> BatchOut:
        return present_batch(batch_id, await load_batch(jobs, batch_id), settings, await jobs.places())

    @post("/{batch_id:str}/cancel", status_code=202, summary="Cancel every job of a batch that has not ended")
    async def cancel_batch(
        self, batch_id: FromPath[str], jobs: NamedDependency[Jobs], settings: NamedDependency[Settings]
    ) -> BatchOut:
        await jobs.cancel_batch(await load_batch(jobs, batch_id))
        return present_batch(batch_id, await load_batch(jobs, batch_id), settings, await jobs.places())


class QueueApi(Controller):
    """The queue as a whole: its state, pause and resume, cancel what waits."""

    path = "/api/queue"
    tags = ["queue"]

    @get("/", summary="The queue: paused or not, the running jobs, the queued ones in order with their times")
    async def get_queue(self, jobs: NamedDependency[Jobs], settings: NamedDependency[Settings]) -> QueueOut:
        return await queue_state(jobs, settings)

    @post("/pause", status_code=200, summary="Pause the queue: running jobs finish, no queued job starts")
    async def pause(self, jobs: NamedDependency[Jobs], settings: NamedDependency[Settings]) -> QueueOut:
        await jobs.set_paused(True)
        return await queue_state(jobs, settings)

    @post("/resume", status_code=200, summary="Resume the queue")
    async def resume(self, jobs: NamedDependency[Jobs], settings: NamedDependency[Settings]) -> QueueOut:
        await jobs.set_paused(False)
        return await queue_state(jobs, settings)

    @post("/cancel-queued", status_code=200, summary="Cancel every queued job (running jobs go on)")
    async def cancel_queued(self, jobs: NamedDependency[Jobs]) -> CancelledJobs:
        return CancelledJobs(cancelled=await jobs.cancel_queued())


@get("/healthz", summary="Liveness, the worker's, and free disk space", tags=["health"], opt={PUBLIC: True})
async def healthz(
    jobs: NamedDependency[Jobs], worker: NamedDependency[Worker], settings: NamedDependency[Settings]
) -> Response[Health]:
    """503 only when the worker is dead; a data disk below AVP_MIN_FREE_MB still serves (`low_disk`)."""
    queued = await jobs.count_queued()
    disk = settings.data_disk.status()
    body = Health(
        status="worker_dead" if not worker.alive else "low_disk" if disk.low else "ok",
        worker=WorkerHealth(
            alive=worker.alive,
            state=worker.state,
            current_job=worker.current_job,
            running_jobs=list(worker.running_jobs),
            slots=worker.slots,
            slot_states=[msgspec.convert(state, SlotHealth, from_attributes=True) for state in worker.slot_states()],
            waiting_for_room=list(worker.waiting_for_room),
        ),
        queued=queued,
        disk=disk,
    )
    return Response(body, status_code=200 if worker.alive else 503)
