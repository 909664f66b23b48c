"""The runner's progress protocol: one JSON object per line on the child's stdout.

Torch-free and litestar-free: the web process imports this module to parse what the
runner emits, the runner imports it to emit. DESIGN.md ("The progress protocol") and
docs/protocol.md describe every event with an example.
"""

from __future__ import annotations

import os
import sys
from typing import IO, Literal

import msgspec

STAGES = (
    "load_text_encoder",
    "encode_prompt",
    "free_text_encoder",
    "load_transformer",
    "denoise",
    "free_transformer",
    "decode_audio",  # before the video: the muxer takes video frames as they are decoded
    "decode_video",
    "mux",  # finishing the file; the streams are muxed while the video decodes
)

ErrorCode = Literal["invalid_input", "model_missing", "out_of_memory", "cancelled", "internal"]

# Exit codes the supervisor classifies; anything else is an internal failure.
EXIT_OK = 0
EXIT_INVALID_INPUT = 2
EXIT_OUT_OF_MEMORY = 3
EXIT_MODEL_MISSING = 4
EXIT_CANCELLED_INT = 130
EXIT_CANCELLED_TERM = 143

EXIT_FOR_ERROR: dict[str, int] = {
    "invalid_input": EXIT_INVALID_INPUT,
    "out_of_memory": EXIT_OUT_OF_MEMORY,
    "model_missing": EXIT_MODEL_MISSING,
    "cancelled": EXIT_CANCELLED_TERM,
    "internal": 1,
}


class _Event(msgspec.Struct, tag_field="type", omit_defaults=False, frozen=True):
    pass


class Stage(_Event, tag="stage"):
    name: str
    t: float  # seconds since the runner started the job (a spare runner: since it took the job)
    note: str | None = None  # what the user should know about this stage (e.g. its first step compiling)


class Step(_Event, tag="step"):
    step: int  # 1-based: steps finished so far
    total: int
    elapsed_s: float
    eta_s: float | None  # seconds left; None while unknown (after a first step that compiled)


class Tile(_Event, tag="tile"):
    done: int
    total: int


class Memory(_Event, tag="memory"):
    stage: str
    device: str
    allocated_gib: float | None = None
    reserved_gib: float | None = None
    peak_gib: float | None = None
    free_gib: float | None = None
    note: str | None = None


class Preview(_Event, tag="preview"):
    file: str
    step: int


class Result(_Event, tag="result"):
    file: str
    frames: int
    fps: float
    width: int
    height: int
    audio_sample_rate: int
    duration_s: float
    peak_vram_gib: float | None
    timings: dict[str, float]


class Error(_Event, tag="error"):
    code: ErrorCode
    message: str


Event = Stage | Step | Tile | Memory | Preview | Result | Error

_decoder = msgspec.json.Decoder(Event)


def decode(line: bytes | str) -> Event:
    """Parse one protocol line; raises msgspec.ValidationError / DecodeError on garbage."""
    return _decoder.decode(line)


def encode(event: Event) -> bytes:
    return msgspec.json.encode(event)


class Emitter:
    """Writes events to the protocol stream, one line each, flushed at once."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream

    def __call__(self, event: Event) -> None:
        self._stream.write(encode(event) + b"\n")
        self._stream.flush()


def claim_stdout() -> Emitter:
    """Reserve the process's stdout for the protocol.

    The original stdout descriptor is kept for events; descriptor 1 and sys.stdout are
    pointed at stderr, so prints from libraries (Python or C) cannot corrupt the stream.
    """
    protocol_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return Emitter(os.fdopen(protocol_fd, "wb", buffering=0))


# ---- job.json: what the web process hands the runner ---------------------------------

JOB_FILE = "job.json"
VIDEO_FILE = "video.mp4"
IMAGE_FILE = "image.png"  # the conditioning image, normalised to the job's size by the web process
LOG_FILE = "runner.log"
# A spare runner says this in its log, then the seconds, once its imports are done: benches and tests wait for it.
SPARE_READY = "spare runner {pid}: torch and diffusers imported in"
PREVIEW_FILE = "preview.jpg"  # replaced whole every few steps while denoising


class ResolvedRequest(msgspec.Struct, frozen=True):
    """A generation request after validation: every field set, the seed chosen."""

    prompt: str
    negative_prompt: str
    model: str
    width: int
    height: int
    num_frames: int
    fps: float
    steps: int
    guidance_scale: float
    seed: int
    image_strength: float
    image_upload_id: str | None = None


class JobFile(msgspec.Struct, frozen=True):
    id: str
    request: ResolvedRequest
    model_kind: str  # a ModelSpec.kind
    model_path: str  # absolute; the runner opens model files only under it
    image_file: str | None = None  # a file name inside the job directory
    precision: str | None = None  # overrides the spec's CUDA precision policy
    prompt_cache_dir: str | None = None  # absolute; encoded prompts are kept here between jobs
    prompt_cache_mb: int = 2048
    weight_cache_dir: str | None = None  # absolute; FP8-stored transformers are kept here between jobs
    # absolute; where set, on a CUDA GPU the transformer's blocks go through torch.compile and torch keeps
    # the compiled kernels here, so a later job of the same shape compiles in seconds
    compile_cache_dir: str | None = None
