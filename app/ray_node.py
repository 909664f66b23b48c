"""What runs on a Ray node for the Ray executor (app/ray_executor.py): a job's runner, as a local slot runs it.

`run_job` is the body of a Ray streaming-generator task. It writes the job's inputs (job.json and the images,
sent with the task) into a scratch job directory of the node's own, points job.json's absolute paths (the portal
host's) at the node's directories, runs `python -m gpu_runner run <scratch job dir>` in a session of its own and
yields, as they come:

- ("node", ip, node id, runner pgid, card): where the job runs (card: the GPU Ray gave the task, by the node's
  numbering; None where it gave none), so the portal can name the node and card and stop the runner;
- ("file", name, bytes): a file of the job directory, a preview before the event that announces it, and the
  clip, poster and other results (runner.log among them) once the runner has ended;
- ("line", bytes): one protocol line of the runner's stdout;
- ("exit", code): the runner's exit status (negative: the signal that ended it).

The node's directories come from the environment `ray start` ran with: AVP_MODELS_DIR (required: the model id is
resolved there, `<AVP_MODELS_DIR>/<id>`), AVP_LORA_DIR (default `<AVP_MODELS_DIR>/loras`) and AVP_RAY_SCRATCH
(default `<temp dir>/avp-ray`: the job directories, which are removed when the task ends, and the caches).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec

from contract import jobdir, protocol

MODEL_RESOURCE_PREFIX = "avp_model_"  # a node holding model <id> declares the custom resource avp_model_<id>
STOP_POLL_S = 0.1


def model_resource(model_id: str) -> str:
    """The custom resource a node declares for a model whose files it holds (`ray start --resources`)."""
    return MODEL_RESOURCE_PREFIX + model_id


def node_directories() -> tuple[Path, Path, Path]:
    """(models, LoRAs, scratch) on this node, from the environment `ray start` ran with."""
    models = os.environ.get("AVP_MODELS_DIR", "").strip()
    if not models:
        raise RuntimeError("this Ray node was started without AVP_MODELS_DIR (its models directory)")
    lora = os.environ.get("AVP_LORA_DIR", "").strip() or os.path.join(models, "loras")
    scratch = os.environ.get("AVP_RAY_SCRATCH", "").strip() or os.path.join(tempfile.gettempdir(), "avp-ray")
    return Path(models), Path(lora), Path(scratch)


def localise(job: jobdir.JobFile, models: Path, loras: Path, scratch: Path) -> jobdir.JobFile:
    """job.json with the portal host's absolute paths replaced by this node's: the model by its id under the node's
    models directory, the LoRAs by their file names in its LoRA folder, the caches under its scratch directory."""
    caches = scratch / "cache"

    def cache(path: str | None, name: str) -> str | None:
        return None if path is None else str(caches / name)

    return msgspec.structs.replace(
        job,
        model_path=str(models / Path(job.model_path).name),
        prompt_cache_dir=cache(job.prompt_cache_dir, "prompts"),
        weight_cache_dir=cache(job.weight_cache_dir, "weights"),
        compile_cache_dir=cache(job.compile_cache_dir, "compiled"),
        preview_colours_dir=cache(job.preview_colours_dir, "preview-colours"),
        lora_dirs=(str(loras),) if job.lora_dirs else (),
        loras=tuple(msgspec.structs.replace(lora, path=str(loras / Path(lora.path).name)) for lora in job.loras),
    )


def node_runner_env() -> dict[str, str]:
    """A node's runner's environment, warm mode off whatever the node's own says: the runner runs one job and exits
    (its stdin is /dev/null, so no later job could come, and its `resident` line would reach the portal as the job's
    event)."""
    from app.runner import runner_env

    return runner_env({"AVP_KEEP_WARM_S": "0"})


def run_job(job_id: str, files: dict[str, bytes]) -> Iterator[tuple]:
    """The task's body: see the module's docstring."""
    import ray  # on the node, inside a Ray worker

    models, loras, scratch = node_directories()
    job_dir = scratch / "jobs" / job_id
    shutil.rmtree(job_dir, ignore_errors=True)  # an earlier attempt's leftovers
    job_dir.mkdir(parents=True)
    try:
        for name, data in files.items():
            (job_dir / plain_name(name)).write_bytes(data)
        job = msgspec.json.decode((job_dir / jobdir.JOB_FILE).read_bytes(), type=jobdir.JobFile)
        jobdir.write_job_file(job_dir, localise(job, models, loras, scratch))
        with open(job_dir / jobdir.LOG_FILE, "ab") as log:
            runner = subprocess.Popen(
                [sys.executable, "-m", "gpu_runner", "run", str(job_dir)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=job_dir,
                env=node_runner_env(),
                start_new_session=True,  # its own group: a stop reaches whatever it starts
            )
        try:
            context = ray.get_runtime_context()
            cards = context.get_accelerator_ids().get("GPU") or [None]
            yield ("node", ray.util.get_node_ip_address(), context.get_node_id(), runner.pid, cards[0])
            assert runner.stdout is not None
            for line in runner.stdout:
                preview = _preview_file(line)
                if preview is not None and (job_dir / preview).is_file():
                    yield ("file", preview, (job_dir / preview).read_bytes())
                yield ("line", line)
            code = runner.wait()
        finally:
            stop_group(runner.pid, 0.0)  # anything the runner left behind in its group
            runner.wait()
        for path in sorted(job_dir.iterdir()):
            if path.name not in files and path.name != jobdir.PREVIEW_FILE and path.is_file():
                yield ("file", path.name, path.read_bytes())
        yield ("exit", code)
    finally:
        shutil.rmtree(job_dir, ignore_errors=True)


def stop_group(pgid: int, grace_s: float) -> None:
    """SIGTERM the runner's group, SIGKILL it after `grace_s` if any of it is still there (as a local slot does)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            os.killpg(pgid, 0)  # ProcessLookupError once the whole group is gone
            time.sleep(STOP_POLL_S)
        os.killpg(pgid, signal.SIGKILL)


def _preview_file(line: bytes) -> str | None:
    """The file a preview event names, if the line is one."""
    try:
        event = protocol.decode(line)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None  # the portal reports the broken line
    return plain_name(event.file) if isinstance(event, protocol.Preview) and event.file else None


def plain_name(name: str) -> str:
    """A file name of the job directory, never a path elsewhere."""
    if Path(name).name != name or name in ("", ".", ".."):
        raise ValueError(f"not a file name of the job directory: {name!r}")
    return name
