"""The Ray executor (app/executor.py): with AVP_RAY_ADDRESS set, each job runs on a node of a Ray cluster.

A job is a Ray task asking for one GPU and a sliver of the custom resource naming its model (app/ray_node.py:
`avp_model_<id>`, which a node declares when it holds that model's files), so it lands on a node that can run
it. The task (a streaming generator) runs `python -m gpu_runner run` there exactly as a local slot does, and
yields the runner's protocol lines as they come, the preview files before the events that announce them and
the results at the end; this side writes them into the portal's job directory and hands the events to the
worker, so SSE, previews and the outcome look as they do locally. The job's inputs (job.json and the files it
names) travel with the task.

Slots: one per GPU the cluster had when the portal started (`ray0`, `ray1`, ...; at least one), so the worker
never has more jobs in flight than the cluster has cards; which node takes a job is Ray's choice, and the
node's own runner admits the job against its card (a slot here has no memory figures). Once the node says where
the job runs, the job's `slot` names that node and card (`place_name`: "10.0.0.7:gpu1") instead of `rayN`.

Cancel: a small task pinned to the job's node SIGTERMs the runner's group and SIGKILLs it after the grace
period (app/ray_node.stop_group), as locally. A node that dies mid-job (the task's stream breaks with a Ray
error, not the runner's) ends the run `interrupted`, naming the node: the worker queues the job again once.
A model that no node declares fails the job at once (`model_missing`); Ray would otherwise hold it pending
for ever. SQLite stays the source of truth: Ray holds nothing the portal needs after a restart.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

import msgspec

from app.config import SettingsError
from app.executor import EventSink, Outcome, PlaceSink, SlotClaims, SlotState
from app.ray_node import model_resource, plain_name, run_job, stop_group
from app.runner import Transcript, classify
from contract import jobdir

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 5.0  # how long the start-up check waits for the Ray address to answer
MODEL_SHARE = 0.001  # of a node's model resource a job asks for: the node's GPUs, not this, limit its jobs
DEFAULT_RAY_PORT = 6379


def check_reachable(address: str) -> None:
    """Refuse to start (SettingsError, exit 2) when nothing answers at AVP_RAY_ADDRESS (`host:port` of the head's
    GCS, or `ray://host:port`)."""
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parts.hostname, parts.port or DEFAULT_RAY_PORT
    except ValueError as exc:
        raise SettingsError(f"AVP_RAY_ADDRESS={address!r} is not host:port ({exc})") from None
    if not host:
        raise SettingsError(f"AVP_RAY_ADDRESS={address!r} is not host:port of the Ray head, e.g. 10.0.0.5:6379")
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise SettingsError(
            f"AVP_RAY_ADDRESS={address}: nothing answers there ({exc.strerror or exc}); start the Ray head "
            "(`ray start --head`, deploy/README.md) or fix the address"
        ) from None


class _RayRun:
    """One job in flight: where it runs, once the node has said, and whether it was asked to stop."""

    def __init__(self) -> None:
        self.node_ip: str | None = None
        self.node_id: str | None = None
        self.runner_pgid: int | None = None
        self.cancel_requested = False
        self.stopping = False
        self.stream: object = None  # the task's ObjectRefGenerator


class RayExecutor:
    """Jobs on a Ray cluster's nodes: see the module's docstring."""

    def __init__(self, address: str, cancel_grace_s: float) -> None:
        import ray  # the optional extra: imported only where AVP_RAY_ADDRESS is set

        self._ray = ray
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        self._grace = cancel_grace_s
        gpus = int(ray.cluster_resources().get("GPU", 0))
        self._claims = SlotClaims(f"ray{n}" for n in range(max(1, gpus)))
        self._runs: dict[str, _RayRun] = {}
        self._run_job = ray.remote(run_job)
        self._stop = ray.remote(stop_group)
        log.info("Ray cluster at %s: %d GPU slots", address, self._claims.capacity)

    @property
    def capacity(self) -> int:
        return self._claims.capacity

    @property
    def slot_names(self) -> tuple[str, ...]:
        return self._claims.names

    @property
    def free_slots(self) -> int:
        return self._claims.free

    @property
    def cpu_only(self) -> bool:
        return False  # every job asks Ray for a GPU

    def unholdable(self, need_gib: float | None) -> str | None:
        return None  # the node's runner admits the job against its own card

    def look(self) -> RayExecutor:
        return self  # nothing to read: its slots hold no memory figures

    def claim(self, need_gib: float | None) -> str | None:
        name = next((slot for slot in self._claims.names if not self._claims.is_claimed(slot)), None)
        if name is not None:
            self._claims.take(name)
        return name

    def release(self, slot: str) -> None:
        self._claims.release(slot)

    def states(self) -> list[SlotState]:
        return [
            SlotState(
                name=slot,
                device="cuda",
                card=None,
                job=self._claims.job(slot),
                free_gib=None,
                total_gib=None,
                spare_pid=None,
            )
            for slot in self._claims.names
        ]

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self._ray.shutdown()

    def cancel(self, job_id: str) -> bool:
        run = self._runs.get(job_id)
        if run is None:
            return False
        run.cancel_requested = True
        if run.node_id is None:  # still waiting for a node: the task is cancelled before its runner starts
            with contextlib.suppress(Exception):
                self._ray.cancel(run.stream)
        self._stop_runner(run)
        return True

    async def run(
        self, job_id: str, job_dir: Path, on_event: EventSink, slot: str, on_placed: PlaceSink | None = None
    ) -> Outcome:
        self._claims.running(slot, job_id)
        job = msgspec.json.decode((job_dir / jobdir.JOB_FILE).read_bytes(), type=jobdir.JobFile)
        model = Path(job.model_path).name
        resource = model_resource(model)
        if resource not in self._ray.cluster_resources():
            return Outcome(
                "failed",
                "model_missing",
                f"No node of the Ray cluster holds the model {model!r}: start a node that has it in its models "
                f"directory with `ray start --resources '{{\"{resource}\": 1000}}'` (deploy/README.md).",
            )
        files = {name: (job_dir / name).read_bytes() for name in _inputs(job)}
        run = self._runs[job_id] = _RayRun()
        transcript, code = Transcript(), None
        stream = self._run_job.options(
            num_returns="streaming", max_retries=0, num_gpus=1, resources={resource: MODEL_SHARE}
        ).remote(job_id, files)
        run.stream = stream
        try:
            async for ref in stream:
                item = await ref
                if item[0] == "node":
                    run.node_ip, run.node_id, run.runner_pgid, *card = item[1:]  # card: a node since it says so
                    log.info("job %s runs on Ray node %s (%s)", job_id, run.node_ip, run.node_id)
                    if on_placed is not None:
                        await on_placed(place_name(run.node_ip, card[0] if card else None))
                    if run.cancel_requested:
                        self._stop_runner(run)
                elif item[0] == "file":
                    _receive_file(job_dir, item[1], item[2], run)
                elif item[0] == "line":
                    event = transcript.read(item[1])
                    if event is None:
                        log.warning("job %s: %s; stopping its runner", job_id, transcript.violation)
                        self._stop_runner(run)
                        break
                    await on_event(event)
                else:
                    code = item[1]
        except self._ray.exceptions.RayTaskError as exc:  # the task itself failed on the node (not the runner)
            log.warning("job %s: its Ray task failed: %s", job_id, exc)
            return Outcome("failed", "internal", f"The job's Ray task failed on node {_node(run)}: {exc.cause!r}")
        except self._ray.exceptions.RayError as exc:  # the node, its worker or the object store went away
            log.warning("job %s: Ray node %s lost: %r", job_id, _node(run), exc)
            if run.cancel_requested:
                return Outcome("cancelled", "cancelled", "Cancelled.")
            return Outcome("interrupted", "node_lost", f"The Ray node {_node(run)} went away while this job ran.")
        finally:
            if code is None:  # a shutdown, a broken protocol or a lost node: nothing of the job goes on
                self._stop_runner(run)
                with contextlib.suppress(Exception):
                    self._ray.cancel(stream, force=False)
            self._runs.pop(job_id, None)
        return classify(code, run.cancel_requested, transcript)

    def _stop_runner(self, run: _RayRun) -> None:
        """Ask the job's node to stop its runner (SIGTERM, SIGKILL after the grace period); once is enough."""
        if run.node_id is None or run.runner_pgid is None or run.stopping:
            return
        run.stopping = True
        strategy = self._ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(run.node_id, soft=False)
        self._stop.options(num_cpus=0, max_retries=0, scheduling_strategy=strategy).remote(run.runner_pgid, self._grace)


def _inputs(job: jobdir.JobFile) -> list[str]:
    """The files of the job directory its runner reads: job.json and those it names (images, an extension's
    source); never what an earlier attempt left (its preview)."""
    named = (job.image_file, *job.keyframe_files, job.source_video_file, job.source_audio_latents_file)
    return [jobdir.JOB_FILE, *(name for name in named if name)]


def _receive_file(job_dir: Path, name: str, data: bytes, run: _RayRun) -> None:
    """Write a file the node sent into the portal's job directory, whole (a reader never sees half a file); the
    node's runner.log is appended to the portal's, under a line saying where it ran."""
    name = plain_name(name)
    if name == jobdir.LOG_FILE:
        with open(job_dir / name, "ab") as log_file:
            log_file.write(f"--- ran on Ray node {_node(run)} ---\n".encode() + data)
        return
    partial = job_dir / f".{name}.part"
    partial.write_bytes(data)
    os.replace(partial, job_dir / name)


def place_name(node_ip: str, card: str | None) -> str:
    """Where a job ran on the cluster, as its `slot` says it: the node's address and the card Ray gave it
    ("10.0.0.7:gpu1"), or the address alone where the node did not say."""
    return node_ip if card is None else f"{node_ip}:gpu{card}"


def _node(run: _RayRun) -> str:
    if run.node_id is None:
        return "(not yet known)"
    return f"{run.node_ip} ({run.node_id[:12]})"
