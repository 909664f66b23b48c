"""Job operations shared by the JSON API and the HTML pages: submit, cancel, delete, present."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import re
import shutil
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import anyio.to_thread
import msgspec
from PIL import Image

from app import batches
from app.config import Settings
from app.journal import Journal
from app.places import Place, places
from app.queue import Worker
from app.ratelimit import SubmitRateLimit
from app.schemas import (
    BatchOut,
    FieldError,
    InvalidRequest,
    JobError,
    JobLinks,
    JobOut,
    WebhookDeliveryOut,
    validate_request,
)
from app.statuses import TERMINAL
from app.store import Delivery, JobFilter, JobRow, QueueSnapshot, Store, StoredEvent
from app.uploads import Upload, Uploads, write_job_image
from app.webhook_targets import FIELDS as WEBHOOK_FIELDS
from app.webhook_targets import Webhook, read_webhook
from contract import cost, jobdir, protocol
from contract.disk import is_disk_full
from contract.loras import Library as LoraLibrary
from contract.models import ModelSpec
from contract.provenance import (
    LoraUsed,
    ModelUsed,
    Provenance,
    changes,
    file_sha256,
    model_revision,
    portal_version,
)
from contract.request import AUTO, Request, planned

log = logging.getLogger(__name__)

_JOB_ID = re.compile(r"[0-9a-f]{32}")
# How many of a model's newest finished jobs a job-cost estimate learns from.
PAST_RUNS = 20
WITHDRAW_WAIT_S = 30  # how long a batch that could not be made whole waits for a started job of it to end


class QueueFull(Exception):
    def __init__(self, message: str = "The queue is full; try again when some jobs have finished.") -> None:
        super().__init__(message)


class Conflict(Exception):
    """The job is in a state that does not allow the operation; the message says what to do."""


IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY = 200


class KeyReused(InvalidRequest):
    """An Idempotency-Key sent again with another body (422)."""

    def __init__(self) -> None:
        message = (
            "was used in the last 24 hours for a request with another body; send the same body to get that "
            "job again, or a new key for a new job"
        )
        super().__init__([FieldError(field=IDEMPOTENCY_HEADER, message=message)])


class _Replayed(Exception):
    """Another submit with the same Idempotency-Key stored its job first: (its id, its body's hash)."""

    def __init__(self, first: tuple[str, str]) -> None:
        super().__init__(first[0])
        self.first = first


def body_hash(raw: Any) -> str:
    """What makes two bodies "the same" for an Idempotency-Key: their JSON, keys sorted, spacing aside."""
    return hashlib.sha256(msgspec.json.encode(raw, order="sorted")).hexdigest()


class Resolution(NamedTuple):
    """A request resolved by its model's rules (`Jobs._resolve`): what submitting it needs."""

    request: Request
    spec: ModelSpec
    source: JobRow | None  # the finished job an extension continues
    lora_library: LoraLibrary


class Backlog(msgspec.Struct, frozen=True):
    """A job's stream as it stands: the job (None once deleted), the id of its newest event, the id the
    replay starts after, and the stored events after that one (empty when not asked for)."""

    job: JobRow | None
    newest: int
    after: int
    events: list[StoredEvent]


class Jobs(msgspec.Struct, frozen=True):
    """The jobs as handlers see them: read, submit, cancel, delete. Handlers never reach the store."""

    settings: Settings
    store: Store
    journal: Journal
    worker: Worker
    uploads: Uploads
    submit_limit: SubmitRateLimit

    def job_dir(self, job_id: str) -> Path:
        """The job's directory, only for a well-formed server-made id, always inside jobs_dir."""
        if not _JOB_ID.fullmatch(job_id):
            raise ValueError("not a job id")
        root = self.settings.jobs_dir.resolve()
        path = (root / job_id).resolve()
        if not path.is_relative_to(root):
            raise ValueError("job directory outside the jobs directory")
        return path

    async def get_job(self, job_id: str) -> JobRow | None:
        if not _JOB_ID.fullmatch(job_id):
            return None
        return await self.store.call(self.store.get_job, job_id)

    async def newest(self, limit: int, before_seq: int | None = None, only: JobFilter | None = None) -> list[JobRow]:
        """Up to `limit` jobs, newest first; with `before_seq`, those submitted before that one; with `only`, those
        that match it."""
        return await self.store.call(self.store.list_jobs, limit, before_seq, only)

    async def backlog(self, job_id: str, last_id: int, *, events: bool = True) -> Backlog:
        """What a (re)connecting stream starts from, read in one trip so its parts agree.

        `last_id` is the client's Last-Event-ID; an id this job never had (beyond its newest, or
        negative) counts as none, so the client gets the job from its start.
        """

        def read() -> Backlog:
            job = self.store.get_job(job_id)
            newest = self.store.last_event_id(job_id)
            after = last_id if 0 <= last_id <= newest else 0
            return Backlog(job, newest, after, self.store.events_after(job_id, after) if events else [])

        return await self.store.call(read)

    async def extensions_of(self, job_id: str) -> list[str]:
        """The ids of the jobs that extend this one, oldest first."""
        return await self.store.call(self.store.extensions_of, job_id)

    async def count_queued(self) -> int:
        return await self.store.call(self.store.count_with_status, "queued")

    async def submit_once(self, raw: Any, client: str, key: str) -> tuple[JobRow, bool]:
        """`submit` under an Idempotency-Key: (the job, True) when it is new; (the key's first job, False) when the
        key came with the same body in the last 24 hours (nothing is validated or counted again); KeyReused
        when it came with another body. A key whose job was deleted since makes a new job."""
        if len(key) > MAX_IDEMPOTENCY_KEY or not key.strip():
            message = f"must be 1 to {MAX_IDEMPOTENCY_KEY} characters (a UUID is a good key), not {len(key)}"
            raise InvalidRequest([FieldError(field=IDEMPOTENCY_HEADER, message=message)])
        digest = body_hash(raw)
        first = await self.store.call(self.store.idempotent_job, key)
        if first is None:
            try:
                return await self.submit(raw, client, idempotency=(key, digest)), True
            except _Replayed as replayed:  # a submit with this key stored its job first
                first = replayed.first
        job_id, first_digest = first
        if first_digest != digest:
            raise KeyReused
        job = await self.get_job(job_id)
        if job is None:
            raise Conflict(f"The job this {IDEMPOTENCY_HEADER} made was deleted meanwhile; send a new key.")
        return job, False

    async def submit(
        self,
        raw: Any,
        client: str,
        *,
        strict: bool = True,
        idempotency: tuple[str, str] | None = None,
    ) -> JobRow:
        """Validate, write the job directory, store the job and queue it (with `idempotency`, its key and body hash).

        Raises InvalidRequest (a job predicted past AVP_MAX_JOB_MINUTES too), DiskFull (its files would not fit
        on the data disk with AVP_MIN_FREE_MB to spare, or failed to), RateLimited (this client submits too
        often) or QueueFull.
        """
        raw, webhook = await self._split_webhook(raw, strict)
        return await self._submit_resolved(await self._resolve(raw, strict), webhook, client, idempotency=idempotency)

    async def _submit_resolved(
        self,
        resolution: Resolution,
        webhook: Webhook | None,
        client: str,
        *,
        idempotency: tuple[str, str] | None = None,
        batch_id: str | None = None,
    ) -> JobRow:
        """`submit` of a request already resolved (`_resolve`); with `batch_id`, as a job of that batch, which took
        this client's submit from the rate limit already."""
        resolved, spec, source, lora_library = resolution
        job_loras, provenance = await anyio.to_thread.run_sync(made_with, resolved, spec, lora_library)
        estimate = await self.estimate(resolved, spec)
        too_long = None if estimate is None else cost.over_limit(estimate, resolved, self.settings.max_job_minutes)
        if too_long:
            raise InvalidRequest([FieldError(field="request", message=too_long)])
        unholdable = None if estimate is None else self.worker.unholdable(estimate.peak_gib)
        if unholdable:
            raise InvalidRequest([FieldError(field="request", message=unholdable)])
        await self._check_room(estimate)
        if batch_id is None:
            self.submit_limit.take(client)
        upload = await self._upload_for(resolved.image_upload_id)
        keyframe_uploads = [await self._keyframe_upload(i, k.upload_id) for i, k in enumerate(resolved.keyframes or ())]
        job_id = uuid.uuid4().hex
        job_dir = self.job_dir(job_id)
        job_file = jobdir.job_file(
            job_id,
            resolved,
            spec,
            self.settings.runner_options(),
            image=upload is not None,
            extension=source is not None,
            loras=job_loras,
            provenance=provenance,
        )
        image = None if upload is None else await self._fitted(upload, resolved.width, resolved.height)
        # Each keyframe's image gets the same normalisation as the first-frame image: fitted to the job's size.
        keyframe_images = [
            await self._fitted(u, resolved.width, resolved.height, "keyframes") for u in keyframe_uploads
        ]
        source_dir = None if source is None else self.job_dir(source.id)

        def write_and_store() -> tuple[JobRow, StoredEvent] | None:
            if idempotency is not None and (first := self.store.idempotent_job(idempotency[0])) is not None:
                raise _Replayed(first)
            job_dir.mkdir(parents=True)
            if image is not None:  # the runner sees only this normalised copy, never the upload
                write_job_image(image, job_dir / jobdir.IMAGE_FILE)
            for name, keyframe_image in zip(job_file.keyframe_files, keyframe_images, strict=True):
                write_job_image(keyframe_image, job_dir / name)
            if source_dir is not None:  # the earlier clip and its audio latents, for the runner to read
                copy_source(source_dir, job_dir)
            jobdir.write_job_file(job_dir, job_file)
            first = self.store.create_job(
                job_id,
                resolved,
                {"type": "queued"},
                self.settings.max_queue,
                estimate,
                webhook,
                idempotency,
                batch_id=batch_id,
                provenance=provenance,
            )
            if first is None:
                shutil.rmtree(job_dir)
                return None
            job = self.store.get_job(job_id)
            assert job is not None
            return job, first

        try:
            created = await self.store.call(write_and_store)
        except Exception as error:
            if not is_disk_full(error):
                raise
            await anyio.to_thread.run_sync(functools.partial(shutil.rmtree, job_dir, ignore_errors=True))
            raise self.settings.data_disk.full("the job") from error
        if created is None:
            raise QueueFull
        job, first = created
        await self.journal.queue_moved(besides=job_id)  # its place, before its row shows it
        self.journal.announce(job, first)
        self.worker.wake()
        return job

    async def _resolve(self, raw: Any, strict: bool) -> Resolution:
        """The request resolved by its model's rules and the LoRA library (an extension's unset fields taken from
        the job it extends, and checked against it): the request, its model, the job it extends, the LoRAs.
        Raises InvalidRequest naming every problem."""
        source = await self._extension_source(raw)
        if source is not None:
            raw = extension_defaults(raw, source.request)
        lora_library = self.settings.lora_library()
        resolved, spec = validate_request(raw, self.settings.library(), strict=strict, loras=lora_library)
        if source is not None:
            check_extension(resolved, source.request)
        return Resolution(resolved, spec, source, lora_library)

    async def submit_batch(self, raw: Any, client: str, *, strict: bool = True) -> list[JobRow]:
        """A batch's jobs (app/batches.py), submitted in order as one batch, or none of them.

        Every job's request is resolved once, before any is made (a bad one is an InvalidRequest naming its entry,
        e.g. `prompts[2]`, with the shared webhook's problems), then the queue's room for all of them is checked;
        the batch takes one submit from the client's rate limit. Should a job still be refused (the queue filled
        meanwhile, the disk), those made are withdrawn."""
        variations = batches.expand(raw, self.settings.max_queue)
        problems: dict[tuple[str, str], FieldError] = {}
        resolutions: list[Resolution] = []
        for variation in variations:
            rest = {name: value for name, value in variation.body.items() if name not in WEBHOOK_FIELDS}
            try:
                resolutions.append(await self._resolve(rest, strict))
            except InvalidRequest as exc:
                for error in exc.errors:
                    named = FieldError(field=variation.field_name(error.field), message=error.message)
                    problems.setdefault((named.field, named.message), named)
        # The webhook fields are the batch's, the same in every variation: checked once.
        webhook, webhook_problems = await read_webhook(variations[0].body, self.settings.webhook_allow)
        if problems or webhook_problems:
            raise InvalidRequest([*problems.values(), *webhook_problems])
        room = self.settings.max_queue - await self.count_queued()
        if len(variations) > room:
            raise QueueFull(
                f"The queue has room for {max(room, 0)} more jobs and this batch has {len(variations)}; "
                "try again when some jobs have finished, or send fewer prompts or seeds."
            )
        self.submit_limit.take(client)
        batch_id = uuid.uuid4().hex
        made: list[JobRow] = []
        try:
            for resolution in resolutions:
                made.append(await self._submit_resolved(resolution, webhook, client, batch_id=batch_id))
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._withdraw(made)
            raise
        return made

    async def _withdraw(self, made: list[JobRow]) -> None:
        """Cancel and delete the jobs of a batch that could not be made whole."""
        for job in made:
            current = await self.get_job(job.id)
            if current is not None and not current.finished:
                with contextlib.suppress(Conflict):  # it ended meanwhile
                    await self.cancel(current)
                await self.wait(job.id, WITHDRAW_WAIT_S)  # a started one ends once its runner has exited
            current = await self.get_job(job.id)
            if current is not None and current.finished:
                await self.delete(current)

    async def batch(self, batch_id: str) -> list[JobRow]:
        """A batch's jobs in submission order; none for an unknown (or wholly deleted) batch."""
        if not batches.BATCH_ID.fullmatch(batch_id):
            return []
        return await self.store.call(self.store.batch_jobs, batch_id)

    async def cancel_batch(self, batch: list[JobRow]) -> list[str]:
        """Cancel every job of a batch (its jobs, as `batch` read them) that has not ended; their ids."""
        cancelled = []
        for job in batch:
            if not job.finished:
                try:
                    await self.cancel(job)
                except Conflict:  # it ended meanwhile
                    continue
                cancelled.append(job.id)
        return cancelled

    async def _split_webhook(self, raw: Any, strict: bool) -> tuple[Any, Webhook | None]:
        """The request's fields, and its webhook (app/webhook_targets.py), which is about delivery, not generation:
        stored with the job, never in its job.json. Raises InvalidRequest naming every bad field, of both."""
        if not isinstance(raw, dict) or not any(name in raw for name in WEBHOOK_FIELDS):
            return raw, None
        rest = {name: value for name, value in raw.items() if name not in WEBHOOK_FIELDS}
        webhook, problems = await read_webhook(raw, self.settings.webhook_allow)
        if problems:
            try:
                validate_request(rest, self.settings.library(), strict=strict, loras=self.settings.lora_library())
            except InvalidRequest as exc:
                problems = exc.errors + problems
            raise InvalidRequest(problems)
        return rest, webhook

    async def webhook_deliveries(self, job_id: str) -> list[Delivery]:
        return await self.store.call(self.store.deliveries, job_id)

    async def places(self) -> dict[str, Place]:
        """Every running and queued job's place in the queue, as of now."""
        return places(await self.queue(), self.worker.slot_names)

    async def queue(self) -> QueueSnapshot:
        return await self.store.call(self.store.queue_snapshot)

    async def wait(self, job_id: str, seconds: float) -> None:
        """Return once the job has ended (or was deleted), or after `seconds` (Prefer: wait)."""
        with anyio.move_on_after(seconds), self.journal.broker.subscribe(job_id) as live:
            job = await self.get_job(job_id)  # read after subscribing: an end meanwhile is not missed
            if job is None or job.finished:
                return
            try:
                while (await live.receive()).get("type") not in TERMINAL:
                    pass
            except anyio.EndOfStream:  # shutting down: answer with the job as it is
                return

    async def prioritize(self, job: JobRow) -> None:
        """Move a queued job to the front of the queue."""
        if not await self.store.call(self.store.prioritize, job.id):
            raise Conflict(f"The job is {job.status}, not queued; only a queued job can move to the front.")
        await self.journal.queue_moved()

    async def set_paused(self, paused: bool) -> None:
        """Pause the queue (what runs finishes; nothing queued starts) or resume it."""
        await self.worker.set_paused(paused)
        await self.journal.queue_moved()

    async def cancel_queued(self) -> list[str]:
        """Cancel every queued job (what runs goes on); their ids, in queue order."""
        cancelled = []
        for queued in (await self.queue()).queued:
            job = await self.get_job(queued.id)
            if job is not None and job.status == "queued":  # not started, cancelled or deleted meanwhile
                await self.cancel(job)
                cancelled.append(job.id)
        return cancelled

    async def reestimate_queued(self) -> None:
        """Estimate the queued jobs again from the runs that have ended since (a job ended): their durations
        are what the queue's times add up."""
        snapshot = await self.queue()
        offer = self.settings.models()
        changed = False
        for job in snapshot.queued:
            spec = offer.get(job.request.model or "")
            fresh = None if spec is None else await self.estimate(job.request, spec)
            if fresh is not None and fresh != job.estimate:
                await self.store.call(self.store.set_estimate, job.id, fresh)
                changed = True
        if changed:
            await self.journal.queue_moved()

    async def estimate_at_length(self, job_id: str, num_frames: int) -> cost.Estimate | None:
        """A job's estimate at the length its model chose for it (num_frames "auto": estimated at the longest clip
        until the runner's duration head has chosen); None where its model is no longer offered or unreadable."""
        job = await self.get_job(job_id)
        spec = None if job is None else self.settings.models().get(job.request.model or "")
        if job is None or spec is None:
            return None
        return await self.estimate(msgspec.structs.replace(job.request, num_frames=num_frames), spec)

    async def _check_room(self, estimate: cost.Estimate | None) -> None:
        """Refuse (DiskFull) a job whose files, with those the jobs before it will still write, would eat into
        AVP_MIN_FREE_MB. The MP4 and preview are written under temporary names and renamed, so the estimate's
        bytes are the job's peak too; the caches it may fill keep their own limits."""
        ahead_bytes, ahead = await self.store.call(self.store.unfinished_disk_bytes)
        what = f"this job and the {ahead} queued or running before it" if ahead else "this job"
        self.settings.data_disk.check_room(ahead_bytes + (estimate.disk_bytes if estimate else 0), what)

    async def estimate(self, request: Request, spec: ModelSpec) -> cost.Estimate | None:
        """The job-cost estimate of a resolved request (contract/cost.py), learned from this model's past runs;
        None when the model's files cannot be read (its runner will fail the job as model_missing, saying
        what is missing)."""
        try:
            size = await anyio.to_thread.run_sync(cost.ModelSize.read, Path(spec.path))
        except (OSError, ValueError, KeyError):
            return None
        runs = await self.store.call(self.store.past_runs, spec.id, PAST_RUNS)
        return cost.estimate(
            size,
            spec.kind,
            planned(spec.constraints, request),  # num_frames "auto": the longest clip, until the runner has chosen
            device="cpu" if self.worker.cpu_only else cost.likely_device(runs),
            precision=self.settings.precision or spec.precision_cuda,
            runs=runs,
            enhance_tokens=self.settings.enhance_max_tokens,
        )

    async def _upload_for(self, upload_id: str | None) -> Upload | None:
        if upload_id is None:
            return None
        upload = await self.uploads.find(upload_id)
        if upload is None:
            raise _unknown_upload()
        return upload

    async def _fitted(self, upload: Upload, width: int, height: int, field: str = "image_upload_id") -> Image.Image:
        try:
            return await self.uploads.fitted(upload, width, height)
        except FileNotFoundError:  # swept away a moment ago
            raise _unknown_upload(field) from None

    async def _keyframe_upload(self, index: int, upload_id: str) -> Upload:
        upload = await self.uploads.find(upload_id)
        if upload is None:
            raise _unknown_upload("keyframes", f"keyframes[{index}].upload_id ")
        return upload

    async def _extension_source(self, raw: Any) -> JobRow | None:
        """The finished job an extension continues (`extend_from`), its clip and audio latents still there; None
        for a request that extends nothing. Raises InvalidRequest naming extend_from."""
        if not isinstance(raw, dict) or raw.get("extend_from") is None:
            return None  # (the form leaves a blank one out)
        job_id = raw["extend_from"]
        source = await self.get_job(job_id) if isinstance(job_id, str) else None
        problem = None
        if source is None:
            problem = f"{str(job_id)[:40]!r} is not a job here; give the id of a finished job (GET /api/jobs)"
        elif source.status != "succeeded":
            problem = f"job {source.id} {source.status}; only a finished clip can be extended"
        elif source.files_removed_at is not None:
            problem = f"job {source.id}'s files were removed (retention); its clip is gone"
        else:
            source_dir = self.job_dir(source.id)
            if not (source_dir / jobdir.AUDIO_LATENTS_FILE).is_file():
                problem = (
                    f"job {source.id} was made before clips kept their audio latents, so its soundtrack cannot be "
                    "continued; extend a newer job"
                )
        if problem:
            raise InvalidRequest([FieldError(field="extend_from", message=problem)])
        return source

    async def cancel(self, job: JobRow) -> None:
        if job.finished:
            raise Conflict(f"The job already {job.status}; there is nothing to cancel.")
        if self.worker.cancel(job.id):
            return  # the worker records `cancelled` once the runner has exited
        await self.journal.set_status(job.id, "cancelled", message="Cancelled before it started.")

    async def delete(self, job: JobRow) -> None:
        if not job.finished:
            raise Conflict(f"The job is {job.status}; cancel it first, then delete it.")
        # Its files first: on a full disk they are what frees the room the database needs to forget the job.
        await anyio.to_thread.run_sync(shutil.rmtree, self.job_dir(job.id), True)
        await self.store.call(self.store.delete_job, job.id)

    async def set_keep(self, job: JobRow, keep: bool) -> JobRow:
        """Mark the job keep (retention never removes its files), or unmark it; returns the job as it is now."""
        if job.files_removed_at is not None:
            raise Conflict(f"The job's files were removed on {_iso(job.files_removed_at)}; there is nothing to keep.")

        def mark() -> JobRow | None:
            return self.store.get_job(job.id) if self.store.set_keep(job.id, keep) else None

        marked = await self.store.call(mark)
        if marked is None:
            raise Conflict("The job was deleted or its files removed meanwhile; there is nothing to keep.")
        return marked

    async def with_removable_files(self) -> list[JobRow]:
        """Finished jobs not marked keep whose files are still there, the longest finished first."""
        return await self.store.call(self.store.jobs_with_removable_files)

    async def remove_files(self, job: JobRow) -> bool:
        """Remove a finished job's files (video, preview, image, log, job.json) but its poster, keeping its row
        with the time they went; False when the job may no longer lose them (marked keep or deleted meanwhile)."""
        if not await self.store.call(self.store.claim_files_removal, job.id, time.time()):
            return False
        try:
            await anyio.to_thread.run_sync(_remove_all_but_the_poster, self.job_dir(job.id))
        except FileNotFoundError:
            pass  # nothing was left
        except OSError as exc:  # the row says they went: it no longer offers the video
            log.warning("could not remove every file of job %s: %s", job.id, exc)
        removed = await self.get_job(job.id)
        if removed is not None:
            self.journal.pages.row_changed(removed)  # no event: its stream ended with the job
        return True

    async def refresh_job_files(self) -> None:
        """Point unfinished jobs' job.json at this installation's model and caches before they run again.

        job.json holds absolute paths, written when the job was submitted: a data directory that was
        moved, restored on another machine or made by an older release names directories that may
        be gone. The model is looked up again by its id; a job whose model id is no longer offered
        keeps its old path, and its runner fails it as model_missing, saying which directory it lacks.
        """
        models = self.settings.models()
        options = msgspec.structs.asdict(self.settings.runner_options())

        def refresh() -> None:
            for job in self.store.jobs_with_status(("queued", "running", "interrupted")):
                path = self.job_dir(job.id) / jobdir.JOB_FILE
                try:
                    stored = msgspec.json.decode(path.read_bytes(), type=jobdir.JobFile)
                except (OSError, msgspec.DecodeError):
                    continue  # the runner reports an unreadable job.json as invalid_input
                spec = models.get(stored.request.model or "")
                if spec is not None:
                    fresh = msgspec.structs.replace(stored, model_kind=spec.kind, model_path=spec.path, **options)
                    if fresh != stored:
                        jobdir.write_job_file(path.parent, fresh)

        await self.store.call(refresh)

    def video_path(self, job: JobRow) -> Path | None:
        if not has_video(job):
            return None
        path = self.job_dir(job.id) / jobdir.VIDEO_FILE
        return path if path.is_file() else None


def _remove_all_but_the_poster(job_dir: Path) -> None:
    """Empty a job's directory but for its poster (tens of KB: the gallery still shows the clip); the directory
    goes too when nothing is left."""
    with os.scandir(job_dir) as entries:
        for entry in entries:
            if entry.name == jobdir.POSTER_FILE and entry.is_file(follow_symlinks=False):
                continue
            with contextlib.suppress(FileNotFoundError):  # a runner's preview replaced as we go
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
    with contextlib.suppress(OSError):  # not empty: the poster stays
        job_dir.rmdir()


def has_video(job: JobRow) -> bool:
    return job.status == "succeeded" and job.files_removed_at is None


def _unknown_upload(field: str = "image_upload_id", what: str = "") -> InvalidRequest:
    message = f"{what}is not a current upload (unknown, or expired unused); upload the image again"
    return InvalidRequest([FieldError(field=field, message=message)])


# What an extension takes from the job it continues unless the request says it: the clips must join.
EXTENSION_INHERITS = ("model", "width", "height", "fps")


def extension_defaults(raw: dict, source: Request) -> dict:
    """An extension's request with the earlier job's model, size and frame rate where it leaves them out."""
    inherited = {name: getattr(source, name) for name in EXTENSION_INHERITS if raw.get(name) in (None, "")}
    return {**raw, **inherited}


def check_extension(resolved: Request, source: Request) -> None:
    """An extension joins its clip to the earlier one: the same model (its audio latents), size and frame rate."""
    problems = [
        FieldError(
            field=name,
            message=(
                f"is {getattr(resolved, name)!r}, but the clip it extends has {getattr(source, name)!r}; "
                "an extension keeps the earlier clip's (leave it out)"
            ),
        )
        for name in EXTENSION_INHERITS
        if getattr(resolved, name) != getattr(source, name)
    ]
    if problems:
        raise InvalidRequest(problems)


def copy_source(source_dir: Path, job_dir: Path) -> None:
    """The earlier job's clip and audio latents into an extension's job directory: hard links where the disk
    allows (the files never change once written), else copies."""
    for name, copy in (
        (jobdir.VIDEO_FILE, jobdir.SOURCE_VIDEO_FILE),
        (jobdir.AUDIO_LATENTS_FILE, jobdir.SOURCE_AUDIO_LATENTS_FILE),
    ):
        try:
            os.link(source_dir / name, job_dir / copy, follow_symlinks=False)
        except OSError:
            shutil.copyfile(source_dir / name, job_dir / copy, follow_symlinks=False)


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds") if ts is not None else None


def present(job: JobRow, settings: Settings, places: dict[str, Place], extended_by: list[str] | None = None) -> JobOut:
    """The job as the API shows it, with its place in the queue (`places`, from `Jobs.places`); its links are
    what a browser asks for (under AVP_ROOT_PATH)."""
    base = settings.url(f"/api/jobs/{job.id}")
    now = time.time()
    place = places.get(job.id) if job.status in ("queued", "running") else None
    return JobOut(
        id=job.id,
        status=job.status,
        request=msgspec.structs.replace(job.request, num_frames=job.num_frames or job.request.num_frames),
        progress=job.progress,
        error=JobError(**job.error) if job.error else None,
        result=msgspec.convert(job.result, protocol.Result) if job.result else None,
        attempts=job.attempts,
        created_at=_iso(job.created_at) or "",
        started_at=_iso(job.started_at),
        finished_at=_iso(job.finished_at),
        estimate=job.estimate,
        queue_position=None if place is None else place.position,
        eta_start_s=None if place is None else place.eta_start_s(now),
        eta_finish_s=None if place is None else place.eta_finish_s(now),
        keep=job.keep,
        files_removed_at=_iso(job.files_removed_at),
        links=JobLinks(
            self=base,
            page=settings.url(f"/jobs/{job.id}"),
            events=f"{base}/events",
            video=f"{base}/video" if has_video(job) else None,
            webhooks=f"{base}/webhooks" if job.webhook else None,
        ),
        webhook=job.webhook.url if job.webhook else None,
        webhook_events=list(job.webhook.events) if job.webhook else None,
        extended_by=extended_by,
        batch_id=job.batch_id,
        provenance=job.provenance,
        num_frames_requested=AUTO if job.request.num_frames == AUTO else None,
        enhanced_prompt=job.enhanced_prompt,
        slot=job.slot,
    )


def present_batch(batch_id: str, jobs: list[JobRow], settings: Settings, places: dict[str, Place]) -> BatchOut:
    """A batch as the API shows it: its jobs in order and how many have each status."""
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.status] = counts.get(job.status, 0) + 1
    return BatchOut(
        id=batch_id,
        jobs=[present(job, settings, places) for job in jobs],
        counts=counts,
        finished=all(job.finished for job in jobs),
        page=settings.url(f"/?batch={batch_id}"),
    )


def made_with(request: Request, spec: ModelSpec, library: LoraLibrary) -> tuple[tuple[jobdir.JobLora, ...], Provenance]:
    """A resolved request's LoRA files as the runner gets them, and its provenance (the model's revision, each
    LoRA's SHA-256, the portal's version): file reads, so call it in a thread."""
    job_loras = []
    for choice in request.loras or ():
        lora = library.get(choice.name)
        assert lora is not None  # validate_request checked
        path = Path(lora.path)
        job_loras.append(jobdir.JobLora(choice.name, choice.scale, str(path.absolute()), file_sha256(path)))
    return tuple(job_loras), current_provenance(spec, job_loras)


def provenance_changes(job: JobRow, settings: Settings) -> list[str]:
    """What differs between what made `job` and what its settings would use now, in words ("use these settings
    again" shows them); nothing for a job from before provenance was recorded. Reads files: call it in a thread."""
    then = job.provenance
    if then is None:
        return []
    spec = settings.models().get(then.model.id)
    if spec is None:
        return [f"model {then.model.id!r} is no longer offered"]
    library = settings.lora_library()
    found = []
    for used in then.loras:
        lora = library.get(used.name)
        if lora is not None and lora.problem is None:
            path = Path(lora.path)
            found.append(jobdir.JobLora(used.name, used.scale, str(path), file_sha256(path)))
    return changes(then, current_provenance(spec, found))


def current_provenance(spec: ModelSpec, job_loras) -> Provenance:
    """The provenance a job of `spec` with these LoRAs (JobLora) would have now."""
    return Provenance(
        portal_version=portal_version(),
        model=ModelUsed(
            id=spec.id,
            kind=spec.kind,
            version=spec.version,
            variant=spec.variant,
            revision=model_revision(Path(spec.path)),
        ),
        loras=tuple(
            LoraUsed(name=lora.name, scale=lora.scale, sha256=lora.sha256, size_bytes=Path(lora.path).stat().st_size)
            for lora in job_loras
        ),
    )


def present_delivery(delivery: Delivery) -> WebhookDeliveryOut:
    return WebhookDeliveryOut(
        id=delivery.id,
        event=delivery.event,
        status=delivery.state,
        attempts=delivery.attempts,
        created_at=_iso(delivery.created_at) or "",
        next_attempt_at=_iso(delivery.next_at),
        last_attempt_at=_iso(delivery.last_attempt_at),
        last_status_code=delivery.last_status,
        last_error=delivery.last_error,
    )
