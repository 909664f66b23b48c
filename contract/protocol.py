"""The runner's events: one JSON object per line on the runner's stdout, its exit codes, its stages.

The web process parses what the runner emits with these types, the runner emits them;
docs/protocol.md shows a whole job's events, checked by a test.
"""

from __future__ import annotations

from typing import Literal

import msgspec

STAGES = (
    "load_text_encoder",
    "encode_prompt",
    "free_text_encoder",
    "load_transformer",
    "denoise",
    "upsample",  # fast mode only: the x2 spatial latent upsample between its two denoising stages
    "refine",  # fast mode only: the second denoising stage, at full size
    "free_transformer",
    "decode_audio",  # before the video: the muxer takes video frames as they are decoded
    "decode_video",
    "mux",  # finishing the file; the streams are muxed while the video decodes
)

ErrorCode = Literal["invalid_input", "model_missing", "out_of_memory", "disk_full", "cancelled", "internal"]

FAST_ONLY = ("upsample", "refine")
DENOISING = ("denoise", "upsample", "refine")  # the stages between loading the transformer and freeing it


# Stages only a job that asks for them has (LTX-2.5, issue 16): the prompt enhancer rewrites the prompt before
# anything else loads (enhance_prompt: true); the duration head picks the clip's length once the prompt's context
# exists, before the transformer loads (num_frames "auto").
ENHANCE_STAGE = "enhance_prompt"
DURATION_STAGE = "predict_duration"


def stages_of(mode: str | None, *, enhance: bool = False, auto_frames: bool = False) -> tuple[str, ...]:
    """The stages a job of this mode goes through, in order (with the enhancer's and the duration head's where it
    asks for them)."""
    stages = STAGES if mode == "fast" else tuple(name for name in STAGES if name not in FAST_ONLY)
    if auto_frames:
        at = stages.index("load_transformer")
        stages = (*stages[:at], DURATION_STAGE, *stages[at:])
    return (ENHANCE_STAGE, *stages) if enhance else stages


# Exit codes the supervisor classifies; anything else is an internal failure.
EXIT_OK = 0
EXIT_INVALID_INPUT = 2
EXIT_OUT_OF_MEMORY = 3
EXIT_MODEL_MISSING = 4
EXIT_DISK_FULL = 5
EXIT_CANCELLED_INT = 130
EXIT_CANCELLED_TERM = 143

EXIT_FOR_ERROR: dict[str, int] = {
    "invalid_input": EXIT_INVALID_INPUT,
    "out_of_memory": EXIT_OUT_OF_MEMORY,
    "model_missing": EXIT_MODEL_MISSING,
    "disk_full": EXIT_DISK_FULL,
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
    step: int  # 1-based: steps of its denoising stage finished so far
    total: int  # that stage's steps
    elapsed_s: float  # since that stage's start
    eta_s: float | None  # seconds of denoising left, later stages included; None while unknown (a first step compiled)
    stage: str = "denoise"  # the denoising stage: "denoise", or fast mode's "refine"
    stage_number: int = 1  # 1-based among the job's denoising stages: "stage 2 of 2"
    stages: int = 1


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
    file: str | None  # None: no picture this time (the model has no colour map yet), `note` says why
    step: int
    note: str | None = None


class Token(_Event, tag="token"):
    done: int  # tokens the prompt enhancer has generated so far
    total: int  # the most it may generate (it usually stops sooner)


class EnhancedPrompt(_Event, tag="enhanced_prompt"):
    prompt: str  # what the prompt enhancer made of the request's prompt: the prompt this job encodes


class NumFrames(_Event, tag="num_frames"):
    num_frames: int  # the clip's length the duration head chose (num_frames "auto"), within the model's limits


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


# A loading stage's note where a warm runner kept everything it loads from its last job; the portal marks a job
# whose every loading stage says so
WEIGHTS_RESIDENT = "Weights resident: this runner kept the model loaded after its last job (AVP_KEEP_WARM_S)."
LOADING_STAGES = ("load_text_encoder", "load_transformer")  # the stages that load a model's weights from disk


class Resident(_Event, tag="resident"):
    """Warm mode (AVP_KEEP_WARM_S): after its job's `result` the runner stays, its model loaded, and reads the next
    job's directory on stdin; this line ends the job's transcript. Never stored as the job's event."""

    model: str  # the model id whose weights it keeps
    device_gib: float | None  # GPU memory it holds while idle (its CUDA context and allocator); None on a CPU
    rss_gib: float  # the process's RAM, where the weights wait between jobs


Event = Stage | Step | Tile | Memory | Preview | Token | EnhancedPrompt | NumFrames | Result | Error | Resident

_decoder = msgspec.json.Decoder(Event)


def decode(line: bytes | str) -> Event:
    """Parse one protocol line; raises msgspec.ValidationError / DecodeError on garbage."""
    return _decoder.decode(line)


def encode(event: Event) -> bytes:
    return msgspec.json.encode(event)
