"""The job directory: its file names, job.json (what the web process hands the runner), and the one way to write it.

`<data dir>/jobs/<job id>/` holds job.json, the conditioning image, preview.jpg, runner.log,
video.mp4 and poster.jpg. Everything that starts a job (the portal, benches, tests, the demo's evaluation)
writes job.json through `write_job_file`, so every runner reads the same shape.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import msgspec

from contract.cost import ENHANCE_MAX_NEW_TOKENS
from contract.models import ModelSpec
from contract.provenance import Provenance
from contract.request import Request

JOB_FILE = "job.json"
VIDEO_FILE = "video.mp4"
IMAGE_FILE = "image.png"  # the conditioning image, normalised to the job's size by the web process
LOG_FILE = "runner.log"  # the runner's stderr
PREVIEW_FILE = "preview.jpg"  # replaced whole every few steps while denoising
# One frame of the finished clip (gpu_runner/poster.py), written beside video.mp4; the one file retention keeps
POSTER_FILE = "poster.jpg"
# The clip's audio latents as the denoiser left them (safetensors, a few KB a second), kept so that a later job can
# extend this one with its soundtrack held over the overlap (issue 17, point 2)
AUDIO_LATENTS_FILE = "audio_latents.safetensors"
# An extension's copies of the earlier job's clip and audio latents (the runner opens nothing outside its job dir)
SOURCE_VIDEO_FILE = "source.mp4"
SOURCE_AUDIO_LATENTS_FILE = "source_audio_latents.safetensors"
DEFAULT_CACHE_GB = 50.0  # AVP_CACHE_GB: two full-size models' FP8 transformers (18 GiB each), prompts and kernels
# AVP_ATTENTION: the kernel of the transformer's mask-free attentions on a CUDA GPU (gpu_runner/attention.py), by
# diffusers' backend names; "native" sets none, leaving torch's SDPA to pick its kernel
ATTENTION_BACKENDS = ("native", "_native_cudnn", "_native_flash", "_native_efficient")
DEFAULT_ATTENTION = "native"


class RunnerOptions(msgspec.Struct, frozen=True, kw_only=True):
    """The installation's settings a runner needs, the same for every job (absolute directories)."""

    precision: str | None = None  # overrides the spec's CUDA precision policy
    prompt_cache_dir: str | None = None  # encoded prompts are kept here between jobs
    prompt_cache_mb: int = 2048
    weight_cache_dir: str | None = None  # FP8-stored transformers are kept here between jobs
    # where set, on a CUDA GPU the transformer's blocks go through torch.compile and torch keeps the
    # compiled kernels here, so a later job of the same shape compiles in seconds
    compile_cache_dir: str | None = None
    # AVP_COMPILE=dynamic: the blocks compile with dynamic shapes, one graph for every clip size up to 4,096 video
    # tokens (longer clips' sliced feed-forwards unroll per length); False: a graph per size, torch.compile's default
    compile_dynamic: bool = False
    cache_gb: float = DEFAULT_CACHE_GB  # the three caches together, least recently used entries removed first
    # each model's preview colour map, learnt from its first clip, is kept here (gpu_runner/preview_colours.py);
    # not a cache: a few hundred bytes a model, never removed
    preview_colours_dir: str | None = None
    # the LoRA folders (AVP_LORA_DIR, the models' loras/): the runner reads a job's LoRA files only inside them
    lora_dirs: tuple[str, ...] = ()
    # the most tokens a prompt enhancer (LTX-2.5, enhance_prompt: true) may write: AVP_ENHANCE_MAX_TOKENS
    enhance_max_tokens: int = ENHANCE_MAX_NEW_TOKENS
    attention: str = DEFAULT_ATTENTION  # one of ATTENTION_BACKENDS: AVP_ATTENTION


class JobLora(msgspec.Struct, frozen=True):
    """One of the job's LoRAs as the portal found it in the library: where its file is and what it was."""

    name: str
    scale: float
    path: str  # absolute, inside one of `lora_dirs`
    sha256: str


class JobFile(msgspec.Struct, frozen=True):
    """job.json. Fields are only ever added, with defaults, so a job written by an older portal still runs."""

    id: str
    request: Request  # resolved: every field the model needs is set, the seed chosen
    model_kind: str  # a key of contract.models.MODEL_KINDS
    model_path: str  # absolute; the runner opens model files only under it
    image_file: str | None = None  # a file name inside the job directory
    precision: str | None = None
    prompt_cache_dir: str | None = None
    prompt_cache_mb: int = 2048
    weight_cache_dir: str | None = None
    compile_cache_dir: str | None = None
    compile_dynamic: bool = False
    cache_gb: float = DEFAULT_CACHE_GB
    preview_colours_dir: str | None = None
    # ---- keyframes: one normalised image per request.keyframes entry, in its order (file names in the job dir)
    keyframe_files: tuple[str, ...] = ()
    # ---- extend: the earlier job's clip and audio latents, copied into this job directory
    source_video_file: str | None = None
    source_audio_latents_file: str | None = None
    # ---- LoRAs and provenance
    lora_dirs: tuple[str, ...] = ()
    loras: tuple[JobLora, ...] = ()  # request.loras, found (the same names in the same order)
    provenance: Provenance | None = None  # what made the clip; the runner writes it into the MP4
    # ---- LTX-2.5's prompt enhancer: the most tokens it may write (RunnerOptions')
    enhance_max_tokens: int = ENHANCE_MAX_NEW_TOKENS
    # ---- the mask-free attentions' backend on a CUDA GPU (RunnerOptions')
    attention: str = DEFAULT_ATTENTION


def keyframe_file(index: int) -> str:
    """The job directory's name for the normalised image of request.keyframes[index]."""
    return f"keyframe-{index}.png"


def job_file(
    job_id: str,
    request: Request,
    spec: ModelSpec,
    options: RunnerOptions,
    *,
    image: bool = False,
    extension: bool = False,
    loras: tuple[JobLora, ...] = (),
    provenance: Provenance | None = None,
) -> JobFile:
    """job.json's content for a resolved `request` on the model `spec`."""
    return JobFile(
        id=job_id,
        request=request,
        model_kind=spec.kind,
        model_path=spec.path,
        image_file=IMAGE_FILE if image else None,
        keyframe_files=tuple(keyframe_file(i) for i in range(len(request.keyframes or ()))),
        source_video_file=SOURCE_VIDEO_FILE if extension else None,
        source_audio_latents_file=SOURCE_AUDIO_LATENTS_FILE if extension else None,
        **msgspec.structs.asdict(options),
        loras=loras,
        provenance=provenance,
    )


def write_job_file(job_dir: Path, job: JobFile) -> Path:
    """Write job.json into an existing job directory; returns its path."""
    path = job_dir / JOB_FILE
    path.write_bytes(msgspec.json.encode(job))
    return path


def wants_poster(job_dir: Path) -> bool:
    """Whether a job directory holds a finished clip without its poster: video.mp4 a regular file (never a symlink)
    and nothing named poster.jpg (not even a dangling symlink, which a write must not follow)."""
    return _is_regular_file(job_dir / VIDEO_FILE) and not os.path.lexists(job_dir / POSTER_FILE)


def jobs_wanting_posters(jobs_dir: Path) -> list[Path]:
    """The job directories in `jobs_dir` whose clip has no poster (made before posters existed), by name.

    A job directory is a real directory (no symlink) right inside `jobs_dir` holding job.json as a regular
    file; anything else there (the spare runner's log, a stray file or link) is left alone.
    """
    try:
        with os.scandir(jobs_dir) as entries:
            found = [
                Path(entry.path)
                for entry in entries
                if entry.is_dir(follow_symlinks=False) and _is_regular_file(Path(entry.path) / JOB_FILE)
            ]
    except FileNotFoundError:
        return []
    return sorted(path for path in found if wants_poster(path))


def _is_regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False
