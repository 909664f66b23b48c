"""A job's cost before it runs: how long it holds the worker, its peak memory, the disk it writes.

One estimate for everything that asks: the runner's admission (the peak, against free VRAM), the
portal's admission (the duration, against AVP_MAX_JOB_MINUTES), the data-disk check (the disk), and
the duration a queued job shows, with the queue's start and finish times built on it (`forecast_queue`).
Torch-free: the web process and the runner both import it.

The duration is a fixed part (spawn, loading, text encoding, the first step's warm-up) plus three
parts that grow with the clip: denoising (the transformer's FLOPs: linears per token, attention per
token pair, times steps and guidance rows), the video decode (pixels x frames x the VAE's size) and
the audio decode (seconds of clip). First principles give each part a device's default rate; past
runs of the same model on the same kind of device replace it (the median of what they measured over
what the default predicted), so the estimate follows this machine as soon as it has run a job.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import msgspec

from contract.protocol import ENHANCE_STAGE
from contract.request import DenoiseStage, Request, denoise_stages

GIB = 1024**3
DeviceKind = Literal["cpu", "cuda"]

# ---- the clip in the transformer's tokens (the LTX-2 family: a cell per 32x32 px and 8 frames) -------------


def latent_shape(request: Request) -> tuple[int, int, int]:
    """Latent frames, rows and columns: one cell per 32x32 pixels and 8 frames (the first frame alone)."""
    return (request.num_frames - 1) // 8 + 1, request.height // 32, request.width // 32


def video_tokens(request: Request) -> int:
    """Transformer tokens of the clip: one per latent cell."""
    frames, rows, columns = latent_shape(request)
    return frames * rows * columns


# ---- peak memory, per phase (the runner admits a CUDA job by it) ----------------------------------------

# Past this many video tokens a clip is "long": activations, not weights, would grow the peak.
# At 768x448x481 (20,496 tokens, x2 for CFG) an unsliced feed-forward alone holds ~2.7 GB of
# 4x-wide intermediates; slices of 4096 tokens hold ~0.3 GB.
LONG_CLIP_TOKENS = 4096
# Room for the CUDA context, the caching allocator's slack and what a family's figures miss.
MARGIN_GIB = 1.0
# The constants below were measured on full-size LTX-2.0 components with random weights on an H200
# (bench/gpu_smoke.py; bench/results/); they scale with the model's files and width, so the tiny demo
# is predicted tiny.
# Resident FP8 transformer over its bf16 weight files: 17.99 GiB measured / 35.2 GiB.
FP8_RESIDENT_RATIO = 0.511
# Denoising activations per video token at an inner width of 4096 (LTX-2), measured at 768x448:
# 49 frames (2,352 tokens) batched CFG added 0.80 GiB; 481 frames (20,496 tokens), one guidance
# row at a time with sliced feed-forwards, added 2.37 GiB.
ACTIVATION_GIB_PER_TOKEN_BATCHED = 0.80 / 2352
ACTIVATION_GIB_PER_TOKEN_ONE_ROW = 2.37 / 20496
REFERENCE_WIDTH = 4096
# The text phase beyond the connectors' weights: streamed encoder layers, hidden states, context.
TEXT_STREAMING_GIB = 3.0


# ---- the prompt enhancer (LTX-2.5, enhance_prompt: true): its own phase, before the text encoder --------------
# It generates token by token, so it runs whole on the GPU in its files' dtype (streaming its layers would move every
# weight once a token): its weights plus this much for the KV cache of its chat (the 2.5 system prompt and the user's
# prompt, ~2k tokens, then up to ENHANCE_MAX_NEW_TOKENS) and generate()'s working tensors. Planned from first
# principles, not yet measured: LTX-2.5's enhancer is a Gemma-4 E2B, whose KV per token stays under a 12B Gemma-4's
# ~0.4 MB of bf16 (48 layers x 2 x 8 heads x 256 x 2 bytes), the bound used here: ~1 GiB for 2.6k tokens.
ENHANCE_WORKING_GIB = 1.5
# diffusers' GEMMA4_PROMPT_ENHANCEMENT_CONFIG.max_new_tokens (a unit test keeps it so): AVP_ENHANCE_MAX_TOKENS' default
ENHANCE_MAX_NEW_TOKENS = 600
# Its time: loading its files (LOAD_GIB_PER_S), then each new token reads every weight once, so a token costs the
# weights over the memory bandwidth: assumed a third of an H100's 3.3 TB/s on CUDA, 10 GB/s on a CPU. The ETA plans
# for the most tokens it may write; learned rates leave this stage out (its time is not the clip's).
ENHANCE_READ_GIB_PER_S = {"cpu": 10.0, "cuda": 1000.0}


def enhance_gib(enhancer_file_gib: float) -> float:
    """The enhancer phase's peak: nothing for a model without one (or a job that does not ask)."""
    return enhancer_file_gib + ENHANCE_WORKING_GIB if enhancer_file_gib else 0.0


@dataclass(frozen=True)
class PeakPrediction:
    """A job's peak per phase, each one model at a time (docs/architecture.md): the prompt enhancer's (a job that
    asks for it), text, denoise, decode."""

    text_gib: float
    denoise_gib: float
    decode_gib: float
    enhance_gib: float = 0.0

    @property
    def peak_gib(self) -> float:
        return max(self.enhance_gib, self.text_gib, self.denoise_gib, self.decode_gib) + MARGIN_GIB

    @property
    def peak_phase(self) -> str:
        phases = {
            "prompt enhancement": self.enhance_gib,
            "text encoding": self.text_gib,
            "denoising": self.denoise_gib,
            "decoding": self.decode_gib,
        }
        return max(phases, key=phases.__getitem__)


def predict_peak(
    *,
    transformer_file_gib: float,
    connectors_file_gib: float,
    vae_file_gib: float,
    precision: str,
    tokens: int,
    inner_width: int,
    latents: tuple[int, int, int],
    vae_width: int,
    guided: bool = True,
    upsampler_file_gib: float = 0.0,
    lora_file_gib: float = 0.0,
) -> PeakPrediction:
    """LTX-2's peak per phase, from the model's files, the tokens of its largest denoising stage (`guided`: in
    CFG's batch of two rows; fast mode's is one row, and its latent upsampler joins the transformer for a stage)
    and the clip's latent shape.

    The decode's tiles are planned within the larger of the other two phases (`decode_budget_gib`), so the
    decode costs no more than the job already holds unless even its smallest tiles do not fit.
    """
    transformer_gib = transformer_file_gib * (FP8_RESIDENT_RATIO if precision == "fp8" else 1.0)
    if tokens > LONG_CLIP_TOKENS:
        per_token = ACTIVATION_GIB_PER_TOKEN_ONE_ROW
    else:
        per_token = ACTIVATION_GIB_PER_TOKEN_BATCHED / (1 if guided else 2)
    width_scale = inner_width / REFERENCE_WIDTH
    text_gib = connectors_file_gib + TEXT_STREAMING_GIB * width_scale
    denoise_gib = transformer_gib + upsampler_file_gib + lora_file_gib + tokens * per_token * width_scale
    vae = VaeDecoder(weights_gib=vae_file_gib, width=vae_width, element_bytes=4 if precision == "fp32" else 2)
    tiles = plan_decode_tiles(latents, vae, decode_budget_gib(text_gib, denoise_gib))
    return PeakPrediction(text_gib=text_gib, denoise_gib=denoise_gib, decode_gib=decode_peak_gib(latents, tiles, vae))


# LTX-2.5's fast mode (diffusers' keyframe-slot pipeline) denoises the clip padded to whole keyframe segments of 24
# or 32 frames (whichever pads least; the longer on a tie) and one more latent frame per segment, its keyframe slot:
# up to a third more tokens than the clip's. The runner lays the canvas out with diffusers' own rule
# (dfr_layout.resolve_canvas); this torch-free count plans for it, and a test holds the two equal.
SLOT_SEGMENT_FRAMES = (32, 24)


def slot_canvas_frames(num_frames: int) -> int:
    """The frame count whose latent frames are as many as the slot pipeline denoises for a clip of `num_frames`
    (121 frames: 15 latent frames of canvas + 1, and 5 slots: 21 latent frames, as 161 frames have)."""
    content = num_frames - 1
    segment = min(SLOT_SEGMENT_FRAMES, key=lambda frames: (-content % frames, -frames))
    padded = content + -content % segment
    latent_frames = padded // 8 + 1 + padded // segment
    return (latent_frames - 1) * 8 + 1


def denoised_frames(request: Request, slot_pipeline: bool = False) -> int:
    """The frame count whose latent frames are as many as a job denoises: the clip's, or with `slot_pipeline`
    (LTX-2.5's fast mode) its slot canvas's, and one latent frame more per keyframe appended as tokens of its own
    (every one not at frame 0, which replaces the first latent frame's tokens instead)."""
    frames = slot_canvas_frames(request.num_frames) if slot_pipeline and request.mode == "fast" else request.num_frames
    appended = sum(1 for keyframe in request.keyframes or () if keyframe.frame != 0)
    return frames + 8 * appended


def predict_job_peak(
    weights_gib: Callable[[str], float],
    inner_width: int,
    vae_width: int,
    precision: str,
    request: Request,
    lora_gib: float = 0.0,
    enhancer_gib: float = 0.0,
    slot_pipeline: bool = False,
) -> PeakPrediction:
    """A resolved request's peak per phase (`predict_peak`), its denoising at its largest stage; `weights_gib`
    gives a component's weight files' size, `lora_gib` the job's LoRA files' (held beside the transformer, as
    stored), `enhancer_gib` the prompt enhancer's (counted where the request asks for it). A request whose length
    the model chooses (num_frames "auto") must come `planned` (contract.request). With `slot_pipeline` (LTX-2.5)
    a fast job denoises its slot canvas (`slot_canvas_frames`) and decodes with the diffusion decoder, which holds
    its weights and the whole clip's pixels at once. Keyframes add their tokens (`denoised_frames`). The web
    process's estimate and the runner's admission both use it."""
    stages = denoise_stages(request)
    slots = slot_pipeline and request.mode == "fast"
    denoised = msgspec.structs.replace(request, num_frames=denoised_frames(request, slot_pipeline))
    peak = predict_peak(
        transformer_file_gib=weights_gib("transformer"),
        connectors_file_gib=weights_gib("connectors"),
        vae_file_gib=weights_gib("vae"),
        precision=precision,
        tokens=max(video_tokens(at_size_of(denoised, stage)) for stage in stages),
        inner_width=inner_width,
        latents=latent_shape(request),
        vae_width=vae_width,
        guided=any(stage.guidance_scale > 1.0 for stage in stages),
        upsampler_file_gib=weights_gib("latent_upsampler") if len(stages) > 1 else 0.0,
        lora_file_gib=lora_gib,
    )
    if slots:
        pixels_gib = request.num_frames * request.width * request.height * 3 * (4 if precision == "fp32" else 2) / GIB
        decoding = weights_gib("diffusion_decoder") + pixels_gib  # its working memory beyond these: to be measured
        peak = dataclasses.replace(peak, decode_gib=max(peak.decode_gib, decoding))
    return dataclasses.replace(peak, enhance_gib=enhance_gib(enhancer_gib if request.enhance_prompt else 0.0))


# The least budget a decode gets: a tiny model's job (the demo's) holds almost nothing before its decode. It is
# also a CPU job's whole budget, in RAM (nothing is admitted there): by the cost model the demo's VAE takes 32
# bytes an output voxel in float32 (~48 measured on a CPU), so its clips at the default 320x192 decode untiled
# up to ~260 frames, and at its largest preset, 512x320, untiled up to ~100 frames, longer ones in whole frames
# ~90 at a time.
MIN_DECODE_BUDGET_GIB = 0.5


def decode_budget_gib(text_gib: float, denoise_gib: float, free_gib: float = math.inf) -> float:
    """What the video decode may hold on a GPU: the job's peak before it (its text or denoise phase, whichever
    is larger: the decode then adds nothing to the job's peak, the transformer being freed before it) or
    MIN_DECODE_BUDGET_GIB if more, and never more than was free at admission."""
    return min(max(text_gib, denoise_gib, MIN_DECODE_BUDGET_GIB), free_gib - MARGIN_GIB)


# ---- the video decode's tiles, from a memory budget --------------------------------------------------------
#
# The decode's peak is the VAE's weights plus activations in proportion to the output voxels (frames x
# pixels) of the largest tile it decodes at once: each output voxel holds the activations of the decoder's
# highest-resolution stage. LTX-2.0's VAE (2.28 GiB of bf16 weights) measured 59-63 elements a voxel:
# diffusers' untiled 481-frame 768x448 decode peaked at 20.4 GiB (H100), our 512 px / 64-frame tiles at
# 3.79 and 4.36 GiB for 49 and 481 frames (H200, bench/gpu_smoke.py), random weights. LTX-2.3's VAE
# needed 13% less than 2.0's a voxel on a CPU (float32, the growth from 9 to 25 frames at 256x256), so
# 2.0's figure covers both. bench/decode_tiles_bench.py measures it on a GPU: 59.2 (2.0) and 52.6 (2.3) on an
# H100 (bench/results/2026-12-06-h100-decode-tiles.md), so 64 keeps every plan's prediction at or above it.
# Both decoders' full-resolution stage is 256 channels wide (`decoder_block_out_channels[0]`); other widths
# (the demo's 32) scale it.
DECODE_ELEMENTS_PER_VOXEL = 64.0
REFERENCE_VAE_WIDTH = 256
# A spatially tiled decode adds its tiles into a float32 RGB buffer as large as one temporal tile's frames
# (and the overlap it carries to the next): 12 bytes a voxel and a third again for the blend's temporaries.
BLEND_BUFFER_BYTES_PER_VOXEL = 16
# Temporal tiles overlap by 3 latent frames (24 frames), spatial ones by 2 latent cells (64 px); the smallest
# tiles, where nothing larger fits, are 8 latent frames (64 frames) by 4 cells (128 px).
OVERLAP_LATENT_FRAMES, OVERLAP_LATENT_CELLS = 3, 2
MIN_LATENT_FRAMES, MIN_LATENT_CELLS = 8, 4
FRAMES_PER_LATENT, PIXELS_PER_LATENT = 8, 32


@dataclass(frozen=True)
class VaeDecoder:
    """A video VAE as far as its decode's memory goes."""

    weights_gib: float  # resident on the device while it decodes
    width: int  # channels of the decoder's full-resolution stage: decoder_block_out_channels[0]
    element_bytes: int  # 2 in bf16, 4 in float32

    @property
    def bytes_per_voxel(self) -> float:
        return DECODE_ELEMENTS_PER_VOXEL * self.width / REFERENCE_VAE_WIDTH * self.element_bytes


@dataclass(frozen=True)
class DecodeTiles:
    """Tile and overlap sizes in frames and pixels (the tiled decoder's arguments); spatial tiles are square."""

    tile_frames: int
    overlap_frames: int
    tile_pixels: int
    overlap_pixels: int


def plan_decode_tiles(latents: tuple[int, int, int], vae: VaeDecoder, budget_gib: float) -> DecodeTiles:
    """The largest tiles of a clip of `latents` (frames, rows, columns) whose decode fits `budget_gib`.

    In order: the whole clip as one tile; else whole frames in temporal tiles (a temporal seam costs the
    overlap's frames once; spatial seams cost a blend buffer and more decoder edges), as few as fit and
    then evened out; else the smallest temporal tiles with the largest square spatial tiles that fit. Where
    nothing fits, the smallest tiles: the decode then needs more than `budget_gib` (`decode_peak_gib` says how much).
    """
    frames, rows, columns = latents
    whole_frame = max(rows, columns)
    everything = _tiles(frames, 0, whole_frame, 0)
    if decode_peak_gib(latents, everything, vae) <= budget_gib:
        return everything
    shortest = min(MIN_LATENT_FRAMES, frames)
    overlap = OVERLAP_LATENT_FRAMES if shortest < frames else 0
    for length in range(frames - 1, shortest - 1, -1):
        tiles = _tiles(length, overlap, whole_frame, 0)
        if decode_peak_gib(latents, tiles, vae) <= budget_gib:
            return _tiles(_evened(frames, length, overlap), overlap, whole_frame, 0)
    for side in range(whole_frame - 1, MIN_LATENT_CELLS - 1, -1):
        tiles = _tiles(shortest, overlap, side, OVERLAP_LATENT_CELLS)
        if decode_peak_gib(latents, tiles, vae) <= budget_gib:
            return tiles
    smallest = min(MIN_LATENT_CELLS, whole_frame)
    return _tiles(shortest, overlap, smallest, OVERLAP_LATENT_CELLS if smallest < whole_frame else 0)


def decode_peak_gib(latents: tuple[int, int, int], tiles: DecodeTiles, vae: VaeDecoder) -> float:
    """The cost model: the VAE's weights, the largest tile's activations, and the blend buffer where tiled in space."""
    frames, rows, columns = latents
    tile_latents = tiles.tile_frames // FRAMES_PER_LATENT
    tile_cells = tiles.tile_pixels // PIXELS_PER_LATENT
    # One tile holds the clip's 8(F' - 1) + 1 frames; a later temporal tile decodes one latent frame more
    # (the causal one, then dropped): 8t + 1 frames.
    tile_frames = FRAMES_PER_LATENT * (min(tile_latents, frames) - (tile_latents >= frames)) + 1
    tile_area = min(tile_cells, rows) * min(tile_cells, columns) * PIXELS_PER_LATENT**2
    frame_area = rows * columns * PIXELS_PER_LATENT**2
    activations = vae.bytes_per_voxel * tile_frames * tile_area
    if tile_cells < max(rows, columns):
        buffers = BLEND_BUFFER_BYTES_PER_VOXEL * tile_frames * frame_area
    else:  # whole frames: nothing to blend into, only the temporal overlap carried to the next tile (float32 RGB)
        buffers = 12 * tiles.overlap_frames * frame_area
    return vae.weights_gib + (activations + buffers) / GIB


def _tiles(latent_frames: int, overlap: int, cells: int, overlap_cells: int) -> DecodeTiles:
    return DecodeTiles(
        tile_frames=FRAMES_PER_LATENT * latent_frames,
        overlap_frames=FRAMES_PER_LATENT * overlap,
        tile_pixels=PIXELS_PER_LATENT * cells,
        overlap_pixels=PIXELS_PER_LATENT * overlap_cells,
    )


def _evened(length: int, tile: int, overlap: int) -> int:
    """The shortest tile that covers `length` in as many tiles as `tile` needs, so the tiles come out even."""
    count = 1 + math.ceil(max(length - tile, 0) / (tile - overlap))
    return math.ceil((length + (count - 1) * overlap) / count)


# ---- the model, as far as its cost goes: read from its files, no weights loaded -------------------------


def component_gib(model_dir: Path, component: str) -> float:
    """Size of a component's weight files as stored (bf16 for LTX-2's transformer)."""
    files = (model_dir / component).glob("*")
    return sum(f.stat().st_size for f in files if f.name.endswith((".safetensors", ".bin"))) / GIB


WEIGHT_COMPONENTS = (
    "text_encoder",
    "connectors",
    "transformer",
    "vae",
    "audio_vae",
    "vocoder",
    "latent_upsampler",
    "diffusion_decoder",  # LTX-2.5's (none elsewhere: 0)
)


def vae_width(vae_config: dict) -> int:
    """The video VAE decoder's full-resolution width, the one its decode's activations grow with."""
    return int(vae_config["decoder_block_out_channels"][0])


@dataclass(frozen=True)
class ModelSize:
    layers: int
    inner_width: int
    vae_width: int
    weights_gib: dict[str, float]  # per component, as stored
    enhancer_gib: float = 0.0  # the prompt enhancer's files (0: none); apart, as only a job that asks loads it

    @classmethod
    def read(cls, model_dir: Path) -> ModelSize:
        """From a Diffusers-format directory; raises OSError or ValueError when it is not one."""
        config = json.loads((model_dir / "transformer" / "config.json").read_text())
        return cls(
            layers=int(config["num_layers"]),
            inner_width=int(config["num_attention_heads"]) * int(config["attention_head_dim"]),
            vae_width=vae_width(json.loads((model_dir / "vae" / "config.json").read_text())),
            weights_gib={name: component_gib(model_dir, name) for name in WEIGHT_COMPONENTS},
            enhancer_gib=component_gib(model_dir, "prompt_enhancer"),
        )


# Transformer passes a denoising step makes: one per guidance row. Guidance 1 is a single unguided pass;
# otherwise the demo runs CFG (2 rows) and LTX-2 CFG, STG and modality guidance (4 rows; the STG row
# shares its first blocks with another, gpu_runner/families/ltx2/guidance.py, so a little less).
GUIDED_ROWS = {"demo": 2, "ltx-2": 4, "ltx-2.3": 4, "ltx-2.5": 4}


def guidance_rows(model_kind: str, guidance_scale: float) -> int:
    return 1 if guidance_scale <= 1.0 else GUIDED_ROWS.get(model_kind, 4)


def denoise_flop(size: ModelSize, model_kind: str, request: Request) -> float:
    """The transformer's FLOPs for the whole denoise, every stage (fast mode's two): per layer and token ~32 d^2 in
    its linears (self-attention, cross-attention, a 4x feed-forward), and 4 d per token pair in attention."""
    width = size.inner_width
    total = 0.0
    for stage in denoise_stages(request):
        tokens = video_tokens(at_size_of(request, stage))
        per_pass = size.layers * tokens * (32 * width * width + 4 * tokens * width)
        total += per_pass * guidance_rows(model_kind, stage.guidance_scale) * stage.steps
    return total


def denoise_passes(model_kind: str, request: Request) -> int:
    """Transformer passes over the whole denoise: steps times guidance rows, every stage."""
    return sum(stage.steps * guidance_rows(model_kind, stage.guidance_scale) for stage in denoise_stages(request))


def at_size_of(request: Request, stage: DenoiseStage) -> Request:
    """`request` at the size `stage` runs at."""
    return msgspec.structs.replace(request, width=stage.width, height=stage.height)


def denoise_steps(request: Request) -> int:
    """Denoising steps over every stage of the job."""
    return sum(stage.steps for stage in denoise_stages(request))


def decode_work(size: ModelSize, request: Request) -> float:
    """The video decode's work, in pixel-frames x GiB of VAE weights (a convolution's cost grows with both)."""
    return request.width * request.height * request.num_frames * size.weights_gib["vae"]


def clip_seconds(request: Request) -> float:
    return request.num_frames / request.fps


# ---- the duration: a device's rates, from first principles or from past runs ----------------------------


class Rates(msgspec.Struct, frozen=True):
    """How fast one kind of device runs one model: the fixed part and three rates."""

    fixed_s: float  # everything that does not grow with the clip
    denoise_flop_per_s: float
    decode_work_per_s: float  # decode_work units a second
    audio_s_per_clip_s: float  # seconds of audio decoding per second of clip
    # Learned only, where past runs of different shapes tell them apart from the rates: what a transformer pass
    # costs beyond its FLOPs (a small model's per-call overhead), and what a video decode costs whatever its size.
    denoise_s_per_pass: float = 0.0
    decode_base_s: float = 0.0


# First principles, on purpose nearer the slow end of each kind (so a queued job is not promised too
# soon). CPU: a 2-core x86 machine runs the demo's transformer at ~6.7e10 FLOP/s with nothing else on it
# and its VAE at ~7e4 work units/s. CUDA: an H200 runs LTX-2's FP8 compiled step at ~6.6e14 FLOP/s by
# the count above (README's table: 0.333 s at 768x448x49); the default assumes a GPU 3x slower.
FIRST_PRINCIPLES = {
    "cpu": Rates(fixed_s=3.0, denoise_flop_per_s=5e10, decode_work_per_s=5e4, audio_s_per_clip_s=0.5),
    "cuda": Rates(fixed_s=30.0, denoise_flop_per_s=2e14, decode_work_per_s=5e7, audio_s_per_clip_s=0.1),
}
# Loading: the fixed part grows with the weights a job reads (a GiB a second on CUDA, less on a CPU,
# which also casts them to float32).
LOAD_GIB_PER_S = {"cpu": 0.5, "cuda": 1.0}


# The stages whose time grows with the clip, as a result's timings name them.
# (fast mode's upsample and refine count as denoising: the estimate's denoise part covers its two stages)
_GROWING = (("denoise", "upsample", "refine"), ("decode_video",), ("decode_audio",))


class PastRun(msgspec.Struct, frozen=True):
    """A finished job of the same model, as the store has it."""

    request: Request
    device: DeviceKind
    held_s: float  # started to finished: the time it held the worker
    timings: dict[str, float]  # per stage, from its result
    first_step_s: float | None = None  # its first denoising step, which warms up (or compiles) as well


def first_principles(size: ModelSize, device: DeviceKind) -> Rates:
    rates = FIRST_PRINCIPLES[device]
    loading = sum(size.weights_gib.values()) / LOAD_GIB_PER_S[device]
    return msgspec.structs.replace(rates, fixed_s=rates.fixed_s + loading)


def learned(size: ModelSize, model_kind: str, default: Rates, runs: Sequence[PastRun]) -> Rates:
    """`default` corrected by what `runs` measured: each rate by the median of measured over predicted,
    the fixed part by the median of what the growing parts leave of each run's time. A run's first step
    counts as fixed (it warms up, or compiles on CUDA): the denoise rate is measured on the steps after it.

    Where the runs differ in shape enough to tell a per-pass (denoise) or per-job (video decode) cost from the
    rate, both are fitted (`_fit`): a small model's steps cost mostly their calls, not their FLOPs, and a rate
    alone would make a larger clip's prediction grow far faster than its time does."""
    if not runs:
        return default
    fixed, denoise, decode, audio = [], [], [], []
    denoise_points, decode_points = [], []
    for run in runs:
        predicted = list(_parts(size, model_kind, default, run.request)[1:])
        measured = [sum(run.timings.get(stage, 0.0) for stage in stages) for stages in _GROWING]
        steps = denoise_steps(run.request)
        flop, passes = denoise_flop(size, model_kind, run.request), denoise_passes(model_kind, run.request)
        if steps == 1:
            predicted[0] = measured[0] = 0.0  # its one step is all warm-up: fixed
        elif run.first_step_s is not None:
            predicted[0] *= (steps - 1) / steps
            measured[0] -= run.first_step_s
            flop, passes = flop * (steps - 1) / steps, passes * (steps - 1) / steps
        for ratios, guess, took in zip((denoise, decode, audio), predicted, measured, strict=True):
            if guess > 0 and took > 0:
                ratios.append(took / guess)
        if predicted[0] > 0 and measured[0] > 0:
            denoise_points.append((passes, flop, measured[0]))
        if measured[1] > 0:
            decode_points.append((1.0, decode_work(size, run.request), measured[1]))
        fixed.append(max(0.0, run.held_s - sum(measured) - run.timings.get(ENHANCE_STAGE, 0.0)))

    def slower(rate: float, ratios: list[float]) -> float:
        return rate / statistics.median(ratios) if ratios else rate

    rates = Rates(
        fixed_s=statistics.median(fixed),
        denoise_flop_per_s=slower(default.denoise_flop_per_s, denoise),
        decode_work_per_s=slower(default.decode_work_per_s, decode),
        audio_s_per_clip_s=default.audio_s_per_clip_s * (statistics.median(audio) if audio else 1.0),
    )
    if (per_pass := _fit(denoise_points)) is not None:
        rates = msgspec.structs.replace(rates, denoise_s_per_pass=per_pass[0], denoise_flop_per_s=1 / per_pass[1])
    if (per_job := _fit(decode_points)) is not None:
        rates = msgspec.structs.replace(rates, decode_base_s=per_job[0], decode_work_per_s=1 / per_job[1])
    return rates


# Two shapes tell a per-unit cost from a rate only if their work per unit differs by this much.
FIT_SPREAD = 1.5


def _fit(points: Sequence[tuple[float, float, float]]) -> tuple[float, float] | None:
    """(a, b), both positive, with measured ~ a * units + b * work over `points` (units, work, measured), fitted
    by least relative squares (each run weighs by its own error, so the largest job does not decide alone);
    None when the points' work per unit spans less than FIT_SPREAD (one shape, or shapes alike: nothing tells a
    from b), or the best fit is not positive (noise: the rate alone does better)."""
    spread = [work / units for units, work, _ in points if units > 0]
    if len(points) < 2 or not spread or max(spread) < FIT_SPREAD * min(spread):
        return None
    uu = uw = ww = um = wm = 0.0
    for units, work, took in points:
        weight = 1 / took**2
        uu, uw, ww = uu + weight * units * units, uw + weight * units * work, ww + weight * work * work
        um, wm = um + weight * units * took, wm + weight * work * took
    determinant = uu * ww - uw * uw
    if determinant <= 0:
        return None
    a, b = (um * ww - wm * uw) / determinant, (uu * wm - uw * um) / determinant
    return (a, b) if a > 0 and b > 0 else None


def _parts(size: ModelSize, model_kind: str, rates: Rates, request: Request) -> tuple[float, float, float, float]:
    """Seconds: fixed, denoise, video decode, audio decode."""
    return (
        rates.fixed_s,
        denoise_flop(size, model_kind, request) / rates.denoise_flop_per_s
        + denoise_passes(model_kind, request) * rates.denoise_s_per_pass,
        rates.decode_base_s + decode_work(size, request) / rates.decode_work_per_s,
        clip_seconds(request) * rates.audio_s_per_clip_s,
    )


# ---- the estimate ---------------------------------------------------------------------------------------

# The MP4 at the muxer's CRF 18: ~1.6 bits a pixel covers busy footage (calm clips take far less), plus
# AAC audio; runner.log and preview.jpg stay well under a MiB between them.
MP4_BYTES_PER_PIXEL_FRAME = 0.2
AUDIO_BYTES_PER_S = 32_000
LOG_AND_PREVIEW_BYTES = 2**20


class Estimate(msgspec.Struct, frozen=True, kw_only=True):
    """A job's predicted cost, made when it is submitted (the README, "Before a job starts": how far off it is)."""

    duration_s: float  # from start to finished MP4: how long it holds the worker
    denoise_s: float  # of which denoising
    decode_s: float | None = None  # of which the video and audio decodes after it (None: an estimate made before)
    peak_gib: float  # VRAM on CUDA, RAM on a CPU
    disk_bytes: int  # what the job writes to its directory: the MP4, preview, log
    device: DeviceKind
    past_runs: int  # how many finished jobs it learned from; 0: first principles alone


def estimate(
    size: ModelSize,
    model_kind: str,
    request: Request,
    *,
    device: DeviceKind,
    precision: str,
    runs: Sequence[PastRun] = (),
    enhance_tokens: int = ENHANCE_MAX_NEW_TOKENS,
) -> Estimate:
    """`request` (resolved, and `planned` where the model chooses its length) on `device`, from `runs` of the same
    model on that kind of device where there are."""
    relevant = [run for run in runs if run.device == device]
    rates = learned(size, model_kind, first_principles(size, device), relevant)
    parts = _parts(size, model_kind, rates, request)
    precision = precision if device == "cuda" else "fp32"  # a CPU computes in float32
    peak = predict_job_peak(
        lambda name: size.weights_gib.get(name, 0.0),
        size.inner_width,
        size.vae_width,
        precision,
        request,
        enhancer_gib=size.enhancer_gib,
        slot_pipeline=model_kind == "ltx-2.5",
    )
    enhancing = enhance_seconds(size.enhancer_gib, device, enhance_tokens) if request.enhance_prompt else 0.0
    pixel_frames = request.width * request.height * request.num_frames
    disk = pixel_frames * MP4_BYTES_PER_PIXEL_FRAME + clip_seconds(request) * AUDIO_BYTES_PER_S + LOG_AND_PREVIEW_BYTES
    return Estimate(
        duration_s=sum(parts) + enhancing,
        denoise_s=parts[1],
        decode_s=parts[2] + parts[3],
        peak_gib=round(peak.peak_gib, 2),
        disk_bytes=math.ceil(disk),
        device=device,
        past_runs=len(relevant),
    )


def enhance_seconds(enhancer_file_gib: float, device: DeviceKind, tokens: int = ENHANCE_MAX_NEW_TOKENS) -> float:
    """The prompt enhancer's stage at most: loading its files, then writing `tokens` (AVP_ENHANCE_MAX_TOKENS)."""
    reading = tokens * enhancer_file_gib / ENHANCE_READ_GIB_PER_S[device]
    return enhancer_file_gib / LOAD_GIB_PER_S[device] + reading


# ---- the queue: when each job starts and ends --------------------------------------------------------------


def seconds_left(estimate: Estimate | None, elapsed_s: float, denoise_left_s: float | None) -> float | None:
    """How long a running job still takes: while it denoises, the runner's own measure of the steps left
    (`denoise_left_s`) and the decodes after them; otherwise what its estimate leaves after `elapsed_s`
    (never below nothing). None when it has no estimate and no measure."""
    if denoise_left_s is not None and estimate is not None and estimate.decode_s is not None:
        return denoise_left_s + estimate.decode_s
    if estimate is None:
        return denoise_left_s
    return max(estimate.duration_s - elapsed_s, 0.0)


class SlotTime(msgspec.Struct, frozen=True):
    """One slot as the queue's forecast sees it."""

    frees_in_s: float | None  # when its running job ends, from now (0: free; None: unknown)
    pace: float = 1.0  # how long its jobs take against their estimates (`pace`): 2 = twice as long


def forecast_queue(
    slots: Sequence[SlotTime], queued_s: Sequence[float | None]
) -> list[tuple[float | None, float | None]]:
    """(start, finish), seconds from now, of each queued job in queue order, on `slots` run side by side: each job
    starts on the slot that frees first (of two that free together, the faster: the worker picks among free slots
    by their memory, which this does not know) and takes its duration (`queued_s`, its estimate) times that slot's
    pace. Unknown (None) from the first job whose slot frees at an unknown time on: a job's unknown duration makes
    its slot's next start unknown."""
    free_at = [(math.inf if s.frees_in_s is None else s.frees_in_s, s.pace, order) for order, s in enumerate(slots)]
    heapq.heapify(free_at)
    forecast: list[tuple[float | None, float | None]] = []
    for duration in queued_s:
        start, pace, order = heapq.heappop(free_at) if free_at else (math.inf, 1.0, 0)
        finish = math.inf if duration is None else start + duration * pace
        heapq.heappush(free_at, (finish, pace, order))
        forecast.append((_known(start), _known(finish)))
    return forecast


PACE_RUNS = 10  # a slot's newest runs that make its pace


def pace(held_over_estimated: Sequence[float]) -> float:
    """A slot's pace: the median of its newest runs' time held over their estimated duration (a slower card, a
    CPU slot beside cards, shows above 1); 1 (as estimated) before it has run a job."""
    runs = [ratio for ratio in held_over_estimated[:PACE_RUNS] if ratio > 0]
    return statistics.median(runs) if runs else 1.0


def paced(estimate: Estimate | None, pace: float) -> Estimate | None:
    """The estimate of a job on a slot of this pace: its durations scaled (peak and disk as they were)."""
    if estimate is None or pace == 1.0:
        return estimate
    decode = None if estimate.decode_s is None else estimate.decode_s * pace
    return msgspec.structs.replace(
        estimate, duration_s=estimate.duration_s * pace, denoise_s=estimate.denoise_s * pace, decode_s=decode
    )


def _known(seconds: float) -> float | None:
    return None if math.isinf(seconds) else round(seconds, 1)


# Where a loaded NVIDIA driver shows: Linux, and WSL's GPU bridge.
GPU_DRIVER_PATHS = ("/proc/driver/nvidia/version", "/dev/dxg")


def likely_device(runs: Sequence[PastRun]) -> DeviceKind:
    """The device a job's runner will use, as far as the web process (which never imports torch) can tell:
    CUDA where a GPU driver is loaded or the newest past run used CUDA, else the CPU. It errs toward the
    GPU: a GPU machine predicted as a CPU would refuse the very jobs that could teach it otherwise."""
    if any(Path(path).exists() for path in GPU_DRIVER_PATHS) or (runs and runs[0].device == "cuda"):
        return "cuda"
    return "cpu"


def say_duration(seconds: float) -> str:
    """`seconds` as people say it: "about 40 s", "about 12 min", "about 3.5 h"."""
    if seconds < 90:
        return f"about {max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"about {round(seconds / 60)} min"
    return f"about {seconds / 3600:.1f} h" if seconds < 48 * 3600 else f"about {round(seconds / 86400)} days"


def over_limit(estimate: Estimate, request: Request, limit_minutes: float) -> str | None:
    """Why a job predicted past `limit_minutes` is refused, with what to reduce; None when it fits (or 0: no limit)."""
    limit_s = limit_minutes * 60
    if not limit_minutes or estimate.duration_s <= limit_s:
        return None
    if request.steps is None:  # fast mode: its steps are fixed
        fix = "use fewer frames or a smaller size"
    else:
        per_step = estimate.denoise_s / request.steps
        rest = estimate.duration_s - estimate.denoise_s
        fitting_steps = math.floor((limit_s - rest) / per_step) if per_step else 0
        fix = (
            f"use at most {fitting_steps} steps, or fewer frames or a smaller size"
            if fitting_steps >= 1
            else "use fewer frames or a smaller size (fewer steps alone would not do)"
        )
    where = "the GPU" if estimate.device == "cuda" else "the CPU"
    basis = f"{estimate.past_runs} past runs of this model" if estimate.past_runs else "first principles"
    return (
        f"This job is predicted to take {say_duration(estimate.duration_s)} on {where} "
        f"({round(estimate.duration_s / 60)} minutes, from {basis}), over the limit of {limit_minutes:g} minutes "
        f"(AVP_MAX_JOB_MINUTES); {fix}"
    )
