"""The JSON API (README, "Using it"). Handlers stay thin: the work is in app.jobs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import msgspec
from litestar import Controller, Request, Response, delete, get, post, put
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.openapi.spec import OpenAPIMediaType, Operation, Reference, RequestBody
from litestar.params import FromPath, FromQuery, QueryParameter

from app.auth import PUBLIC
from app.config import Settings
from app.jobs import Jobs, present, present_delivery
from app.queue import Worker
from app.schemas import (
    Health,
    JobList,
    JobOut,
    ModelDefaults,
    ModelList,
    ModelOut,
    UnusableModel,
    WebhookDeliveryList,
    WorkerHealth,
    decode_body,
)
from app.store import JobRow
from contract.request import given


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
    """The OpenAPI of a handler that decodes its JSON body itself (with decode_body): a request's fields."""

    def __post_init__(self) -> None:
        schema = Reference(ref="#/components/schemas/Request")
        self.request_body = RequestBody(content={"application/json": OpenAPIMediaType(schema=schema)}, required=True)


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
            )
        ],
    )
    async def create_job(
        self, request: Request, jobs: NamedDependency[Jobs], settings: NamedDependency[Settings]
    ) -> Response[JobOut]:
        # The body is decoded here, not by Litestar, so that any body gets a 400 saying what is wrong with it.
        job = present(await jobs.submit(decode_body(await request.body()), client_address(request)), settings)
        return Response(job, status_code=201, headers={"Location": job.links.self})

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
        return JobList(
            jobs=[present(j, settings) for j in page],
            next_before=page[-1].id if len(found) > limit else None,
        )

    @get("/jobs/{job_id:str}", summary="One job")
    async def get_job(
        self, job_id: FromPath[str], jobs: NamedDependency[Jobs], settings: NamedDependency[Settings]
    ) -> JobOut:
        return present(await load_job(jobs, job_id), settings)

    @get("/jobs/{job_id:str}/webhooks", summary="The job's webhook deliveries: event, status, attempts, last error")
    async def job_webhooks(self, job_id: FromPath[str], jobs: NamedDependency[Jobs]) -> WebhookDeliveryList:
        job = await load_job(jobs, job_id)
        return WebhookDeliveryList(deliveries=[present_delivery(d) for d in await jobs.webhook_deliveries(job.id)])

    @post("/jobs/{job_id:str}/cancel", status_code=202, summary="Cancel a queued or running job")
    async def cancel_job(
        self, job_id: FromPath[str], jobs: NamedDependency[Jobs], settings: NamedDependency[Settings]
    ) -> JobOut:
        await jobs.cancel(await load_job(jobs, job_id))
        return present(await load_job(jobs, job_id), settings)

    @delete("/jobs/{job_id:str}", status_code=204, summary="Delete a finished job and its files")
    async def delete_job(self, job_id: FromPath[str], jobs: NamedDependency[Jobs]) -> None:
        await jobs.delete(await load_job(jobs, job_id))

    @put("/jobs/{job_id:str}/keep", summary="Mark a job keep: retention never removes its files")
    async def keep_job(
        self, job_id: FromPath[str], jobs: NamedDependency[Jobs], settings: NamedDependency[Settings]
    ) -> JobOut:
        return present(await jobs.set_keep(await load_job(jobs, job_id), True), settings)

    @delete("/jobs/{job_id:str}/keep", status_code=200, summary="Unmark a job keep: retention may remove its files")
    async def unkeep_job(
        self, job_id: FromPath[str], jobs: NamedDependency[Jobs], settings: NamedDependency[Settings]
    ) -> JobOut:
        return present(await jobs.set_keep(await load_job(jobs, job_id), False), settings)

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
                    note=spec.note,
                    constraints=spec.constraints,
                    defaults=msgspec.convert(given(spec.mode_defaults()), ModelDefaults),
                    presets=[list(p) for p in spec.presets],
                    fps_choices=list(spec.fps_choices),
                )
                for spec in offer.models.values()
            ],
            unusable=[UnusableModel(**msgspec.structs.asdict(found)) for found in offer.unusable],
        )


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
        ),
        queued=queued,
        disk=disk,
    )
    return Response(body, status_code=200 if worker.alive else 503)
