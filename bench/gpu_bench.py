"""GPU bench: diffusers' stock LTX-2 path against our runner's, per denoising step, RANDOM WEIGHTS.

One process, one card, full-size LTX-2.0 components built in memory (bench/gpu_smoke.py's
helpers: meta device, then random storage). For each frame count at 768x448 it measures these
paths (`--paths` picks some by their keys, `--frames` the frame counts):

- `stock-bf16`: diffusers' `LTX2VideoTransformer3DModel` in bf16, driven by the stock pipeline's
  own denoising loop (`LTX2Pipeline.__call__`), so one step is exactly the passes it makes with
  default guidance: the CFG batch of two, the STG pass and the modality-isolation pass;
- `stock-bf16-cudnn`: the same with cuDNN attention preferred (below);
- `stock-fp8-hooks`: the same model after `enable_layerwise_casting(float8_e4m3fn, bfloat16)`;
- `ours`: the runner's transformer (gpu_runner/fp8.py's layout, `memory.fit_long_clips`) with FP8
  matmuls, and variants of it: `ours-fused` (the activation quantisation fused by torch.compile),
  `ours-cudnn` (cuDNN attention preferred), `ours-no-text-mask` (the all-ones text masks dropped,
  below), `ours-cudnn-no-text-mask` (both), `ours-min-rows` (FP8 matmuls only from
  `--fp8-min-rows` rows up, a row per value; below, the weights are upcast) and `ours-compiled`
  (every transformer block through torch.compile, regional compilation; default mode, as
  max-autotune would tune every GEMM shape for minutes), and `ours-compiled-stg-prefix`, the runner's
  step: compiled, with the STG pass started at its block from the positive CFG row's states there
  (gpu_runner/families/ltx2/guidance.py), and `ours-compiled-<backend>` for AVP_ATTENTION's backends
  (`_native_cudnn`, `_native_flash`, `_native_efficient`): compiled blocks with that backend on the mask-free
  attentions, set by gpu_runner/attention.py as the runner sets it; their latents are compared with
  `ours-compiled`'s. A backend this process cannot run (the CUDA-only ones on the CPU) gets
  a row saying why instead of a time. Where a path compiles, the
  compile time shows as the extra seconds of its first step: each compiled path compiles its blocks afresh
  (Dynamo is reset after it, as each runner process compiles its own, and no path's graphs count toward
  another's recompile limit), torch's on-disk kernel cache aside;
- `runner`: the runner job, `gpu_runner.pipeline.generate` end to end (gpu_smoke.run), stage by stage;
- `decode`: the stock video VAE decode, untiled where it fits, else with diffusers' tiling;
- and a bf16 matmul of 8192^3, the card's ceiling.

Every path gets the same precomputed text context (the runner's `PrecomputedConnectors`) and the
LTX-2.0 guidance settings. A step's FLOPs are counted once per frame count on the stock bf16 path
(torch.utils.flop_counter, during its warm-up step); every path computes the same guidance (the
STG-prefix path with fewer block runs: its TFLOP/s is an effective rate). Timing: CUDA
events at the pipeline's step callbacks, one warm-up step, then the median of `--repeats` steps.
Each step path's final latents are compared with its base path's (stock bf16, ours, or for an attention
backend ours-compiled), and every path's with stock bf16's, same seed: a variant that only changes kernels
should differ by rounding alone.

`--profile FRAMES` instead times one default-guidance step of each chosen path, profiles the next
with torch.profiler and breaks its device time down by kernel category (`KERNEL_CATEGORIES`),
beside the step's wall time and how long the CPU took to issue it: a step whose kernels add up to
much less than its wall time leaves the GPU idle, waiting for launches.

Attention, read from diffusers 0.42.1 (transformer_ltx2.py, attention_dispatch.py, connectors.py):

- LTX-2's attention processors call `dispatch_attention_fn` with no backend, so diffusers' active
  backend runs it: "native", `torch.nn.functional.scaled_dot_product_attention`, which takes the
  first backend that accepts the inputs in torch's priority order (flash, memory-efficient, math,
  cuDNN in torch 2.13; the report's header gives the measured torch's). Per block there are six
  attentions: video and audio self-attention and the audio<->video cross-attentions get no mask
  and run on flash; the two text cross-attentions (`attn2`, `audio_attn2`) get
  `encoder_attention_mask`.
- The transformer turns that 0/1 mask into an additive bias, (1 - mask) * -10000, shape (B, 1, L),
  and every processor call repeats it per head to (B, heads, 1, L). Flash takes no mask at all, so
  the text cross-attentions fall to the memory-efficient kernel.
- The mask is all ones: LTX-2's connectors (128 learnable registers) move the prompt's tokens to
  the front, fill the padding with registers and return an all-ones mask. The bias is then all
  zeros, and dropping it (passing None) changes no math: bit-identical on a CPU (the demo
  transformer, tests/unit/test_gpu_bench.py), kernel rounding only on a GPU (flash instead of
  memory-efficient). Converting it would not help: a boolean mask rules flash out too. Dropping
  is safe only while the mask is all ones, as it is for every LTX-2 prompt through its connectors.
- Backends: diffusers 0.42 has `set_attention_backend` and an `attention_backend` context, but its
  `_native_cudnn` backend allows cuDNN alone (an error where cuDNN refuses the inputs) and copies
  q, k and v to contiguous first. The `-cudnn` paths keep the native path and only reorder torch's
  priority: `sdpa_kernel([CUDNN, FLASH, EFFICIENT, MATH], set_priority=True)`; the
  `ours-compiled-<backend>` paths set diffusers' backends per module (gpu_runner/attention.py).
- `compile_repeated_blocks` exists (`_repeated_blocks = ["LTX2VideoTransformerBlock"]`) but
  compiles the blocks in place for good; the bench wraps each block in `torch.compile` and puts
  the originals back afterwards, so the paths after it run uncompiled.

    python bench/gpu_bench.py --out bench/results/<date>-<card>.md
    python bench/gpu_bench.py --frames 49 --paths stock-bf16 ours ours-cudnn
    python bench/gpu_bench.py --profile 49 --paths stock-bf16 ours
    python bench/gpu_bench.py --frames 49 481 --paths stock-bf16 ours-compiled ours-compiled-_native_cudnn \
        ours-compiled-_native_flash
    python bench/gpu_bench.py --tiny       # the demo model's sizes on the CPU: a smoke of this script
"""

from __future__ import annotations

import argparse
import collections
import datetime
import itertools
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from unittest import mock

import diffusers
import torch
from torch.autograd import DeviceType
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_smoke  # noqa: E402
from fp8_matmul import ceiling_tflops, mark, seconds_between, timed  # noqa: E402
from gpu_smoke import (  # noqa: E402
    FULL_SIZE,
    TINY_SIZE,
    ModelSize,
    device_name,
    random_context,
    random_module,
    random_transformer,
)

from contract.jobdir import ATTENTION_BACKENDS, DEFAULT_ATTENTION  # noqa: E402
from gpu_runner import fp8, memory  # noqa: E402
from gpu_runner.attention import unavailable_reason, use_attention_backend  # noqa: E402
from gpu_runner.compiling import COMPILE_RECOMPILE_LIMIT  # noqa: E402
from gpu_runner.demo.model import ltx2_scheduler  # noqa: E402
from gpu_runner.families.ltx2 import LTX2_0_GUIDANCE  # noqa: E402
from gpu_runner.families.ltx2.guidance import share_stg_prefix  # noqa: E402
from gpu_runner.families.ltx2.loading import DenoisingPipeline  # noqa: E402
from gpu_runner.families.ltx2.text import PrecomputedConnectors  # noqa: E402

STOCK_BF16 = "stock bf16"
STOCK_FP8 = "stock fp8 hooks"
OURS = "ours fp8 matmul"
OURS_FUSED = "ours fp8 matmul, fused quantisation"
OURS_COMPILED = "ours fp8 matmul, compiled blocks"
RUNNER_JOB = "runner job (generate)"
DECODE = "stock video VAE decode"
RUNNER_KEY, DECODE_KEY = "runner", "decode"
COLUMNS = (
    "path",
    "frames",
    "s per step (decode: per clip)",
    "TFLOP/s",
    "% of ceiling",
    "peak VRAM GiB",
    "30 steps end to end, s (extrapolated)",
    "reference model, s per step",
    "time / stock bf16",
    "time / stock fp8 hooks",
    "latents vs base path, rel. diff",
    "latents vs stock bf16, rel. diff",
    "notes",
)
FPS = 24.0
GUIDANCE_SCALE = 4.0  # gpu_smoke's job; the passes per step do not depend on it
FULL_STEPS = 30
REFERENCE_481_FRAMES_S = 7 * 60  # the reference portal, 30 steps at 768x448
# --fp8-min-rows: at 768x448, 512 upcasts the audio stream's linears (51 rows a batch row at 49 frames,
# 501 at 481); 2048 the text keys and values of the one-row passes too (1024); 4096 the video of 49
# frames' one-row passes too (2352). CFG's pass has a batch of two but 481 frames' runs row by row.
FP8_MIN_ROWS = (512, 2048, 4096)


def reference_step_s(frames: int) -> float:
    """The reference portal's per-step cost (a 96 GB Blackwell card, FP8-cast DiT)."""
    return 0.025 + 0.026 * frames


# --- the step paths: a transformer and what is switched on around its steps ----------------------------

Tweak = Callable[[torch.nn.Module], AbstractContextManager]  # transformer -> a context around the steps
STOCK, MINE = "stock", "ours"  # which transformer a path runs: diffusers' bf16 build or ours in FP8


@dataclass(frozen=True)
class Variant:
    key: str  # its --paths name
    name: str  # its rows' name
    model: str  # STOCK or MINE
    tweaks: tuple[Tweak, ...] = ()
    compiles: bool = False  # its first step compiles: the note shows the extra seconds
    attention: str | None = None  # the backend it sets on the mask-free attentions (AVP_ATTENTION)
    compared_with: str | None = None  # the path its latents are compared with, where not its base

    @property
    def base(self) -> str:
        """The uncompiled path its first step is compared with (and its latents, unless `compared_with`)."""
        return STOCK_BF16 if self.model == STOCK else OURS

    @property
    def reference(self) -> str:
        """The path its latents are compared with."""
        return self.compared_with or self.base


@contextmanager
def cudnn_attention(_transformer: torch.nn.Module) -> Iterator[None]:
    """SDPA tries cuDNN's attention first, then torch's usual order (flash, memory-efficient, math)."""
    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    with sdpa_kernel(order, set_priority=True):
        yield


@contextmanager
def text_masks_dropped(transformer: torch.nn.Module) -> Iterator[None]:
    """The text cross-attentions run without their masks, so on flash: exact while the masks are all
    ones, as the bench's text context's are (and every LTX-2 prompt's; the module docstring says why)."""
    forward = transformer.forward  # the runner's long-clip wrapper, where there is one

    def without_text_masks(**kwargs):
        return forward(**{**kwargs, "encoder_attention_mask": None, "audio_encoder_attention_mask": None})

    transformer.forward = without_text_masks
    try:
        yield
    finally:
        transformer.forward = forward


@contextmanager
def fused_quantisation(_transformer: torch.nn.Module) -> Iterator[None]:
    fp8.fuse_quantisation(True)
    try:
        yield
    finally:
        fp8.fuse_quantisation(False)


def compile_block(block: torch.nn.Module) -> torch.nn.Module:
    return torch.compile(block)


@contextmanager
def compiled_blocks(transformer: torch.nn.Module) -> Iterator[None]:
    """Every transformer block through torch.compile (the blocks share one graph), the originals back afterwards."""
    blocks = transformer.transformer_blocks
    originals = list(blocks)
    for index, block in enumerate(originals):
        blocks[index] = compile_block(block)
    # as the runner allows: more graph versions per block than dynamo's default (gpu_runner/compiling.py)
    try:
        with torch._dynamo.config.patch(recompile_limit=COMPILE_RECOMPILE_LIMIT):
            yield
    finally:
        for index, block in enumerate(originals):
            blocks[index] = block
        torch._dynamo.reset()  # the next compiled path compiles its own graphs, as a runner process does


def attention_backend(backend: str) -> Tweak:
    """The mask-free attentions on `backend`, as the runner sets AVP_ATTENTION; native again afterwards."""

    @contextmanager
    def chosen(transformer: torch.nn.Module) -> Iterator[None]:
        use_attention_backend(transformer, backend)
        try:
            yield
        finally:
            use_attention_backend(transformer, DEFAULT_ATTENTION)

    return chosen


@contextmanager
def stg_prefix_shared(transformer: torch.nn.Module) -> Iterator[None]:
    """The STG pass starts at its block from the positive CFG row's states, as the runner runs it."""
    forward = transformer.forward
    share_stg_prefix(transformer, guidance(transformer)["spatio_temporal_guidance_blocks"])
    try:
        yield
    finally:
        transformer.forward = forward


def fp8_from_rows(min_rows: int) -> Tweak:
    return lambda _transformer: mock.patch.object(fp8, "FP8_MATMUL_MIN_ROWS", min_rows)


MIN_ROWS_KEY = "ours-min-rows"
HOOKS = Variant("stock-fp8-hooks", STOCK_FP8, STOCK)  # measured last: the hooks cast the stock model in place
VARIANTS = (
    Variant("stock-bf16", STOCK_BF16, STOCK),
    Variant("stock-bf16-cudnn", "stock bf16, cuDNN attention", STOCK, (cudnn_attention,)),
    HOOKS,
    Variant("ours", OURS, MINE),
    Variant("ours-fused", OURS_FUSED, MINE, (fused_quantisation,), compiles=True),
    Variant("ours-cudnn", "ours fp8 matmul, cuDNN attention", MINE, (cudnn_attention,)),
    Variant("ours-no-text-mask", "ours fp8 matmul, text masks dropped", MINE, (text_masks_dropped,)),
    Variant(
        "ours-cudnn-no-text-mask",
        "ours fp8 matmul, cuDNN attention, text masks dropped",
        MINE,
        (cudnn_attention, text_masks_dropped),
    ),
    Variant(MIN_ROWS_KEY, "ours fp8 matmul, FP8 from {} rows", MINE),  # one per --fp8-min-rows value
    Variant("ours-compiled", OURS_COMPILED, MINE, (compiled_blocks,), compiles=True),
    Variant(
        "ours-compiled-stg-prefix",
        "ours fp8 matmul, compiled blocks, STG pass from its block (the runner's path)",
        MINE,
        (compiled_blocks, stg_prefix_shared),
        compiles=True,
    ),
    *(
        Variant(
            f"ours-compiled-{backend}",
            f"{OURS_COMPILED}, {backend} on the mask-free attentions",
            MINE,
            (attention_backend(backend), compiled_blocks),
            compiles=True,
            attention=backend,
            compared_with=OURS_COMPILED,
        )
        for backend in ATTENTION_BACKENDS
        if backend != DEFAULT_ATTENTION  # that is ours-compiled
    ),
)
PATH_KEYS = tuple(v.key for v in VARIANTS) + (RUNNER_KEY, DECODE_KEY)


def chosen_variants(keys: tuple[str, ...], min_rows: tuple[int, ...]) -> tuple[Variant, ...]:
    """The chosen step paths in VARIANTS' order, the min-rows path spelled out per threshold."""
    chosen = []
    for variant in VARIANTS:
        if variant.key not in keys:
            continue
        if variant.key == MIN_ROWS_KEY:
            chosen += [replace(variant, name=variant.name.format(n), tweaks=(fp8_from_rows(n),)) for n in min_rows]
        else:
            chosen.append(variant)
    return tuple(chosen)


# --- what one step's kernels do ------------------------------------------------------------------------

# Kernel names to categories, first match wins (case-insensitive). On CUDA they match the kernels
# torch launches: flash (pytorch_flash::flash_fwd_kernel), memory-efficient (fmha_cutlassF_*, the
# PyTorchMemEffAttention kernels) and cuDNN (cudnn_generated_*sdpa*) attention; the quantisation's
# abs, amax (MaxNanFunctor), clamp_min, divide (DivFunctor) and cast to e4m3 (float8_copy_kernel_cuda,
# ConvertToFloat8E4M3fnOp), or the Triton kernels torch.compile fuses them into (triton_*_amax_*, *_div_*);
# FP8 GEMMs (torch's CUTLASS rowwise kernel with cutlass::float_e4m3_t, cuBLAS *e4m3* kernels) and
# bf16 GEMMs (cuBLAS sm90_xmma_gemm_*, nvjet_*, cutlass). Everything else, the FP8 weights' upcast
# on the upcast path included, is "other". On a CPU they match aten op names (aten::_scaled_mm,
# aten::addmm, ...), where the "bf16 GEMM" computes in float32. In a compiled path one Triton kernel
# may fuse a norm with an amax: it counts as quantisation. The stock paths' quantisation share is
# what these patterns catch by accident. `--profile` lists each path's top kernels to check them by.
KERNEL_CATEGORIES = (
    ("attention", r"flash|fmha|sdpa|attention|cudnn"),
    (
        "activation quantisation",
        r"float8_copy|ConvertToFloat8|MaxNanFunctor|AbsFunctor|DivFunctor|clamp_min|triton\w*_(amax|abs|div)"
        r"|^aten::(abs|amax|clamp|clamp_min|div)$",
    ),
    # cuBLAS's Hopper FP8 kernels are named nvjet_sm90_qqtst_..._ovscale (qq: both inputs quantised), seen on an H200
    (
        "FP8 GEMM",
        r"scaled_mm|f8f8|nvjet\w*_qq|(gemm|cutlass|xmma|nvjet).*(e4m3|fp8|float8)|(e4m3|fp8|float8).*(gemm|xmma|nvjet)",
    ),
    ("bf16 GEMM", r"gemm|nvjet|xmma|cublas|cutlass|^aten::(mm|addmm|bmm)$"),
)
OTHER = "other"
CATEGORIES = tuple(name for name, _pattern in KERNEL_CATEGORIES) + (OTHER,)
TOP_KERNELS = 12


def category(kernel: str) -> str:
    return next((name for name, pattern in KERNEL_CATEGORIES if re.search(pattern, kernel, re.IGNORECASE)), OTHER)


@dataclass
class Profile:
    """One profiled step: its wall time and everything the device ran in it."""

    path: str
    frames: int
    wall_s: float  # synchronised at both ends
    issue_s: float  # until the CPU had issued the whole step (its step callback ran)
    kernels: list[tuple[str, float]]  # the next step's (name, seconds): CUDA kernels, memcpys, memsets; CPU: aten ops

    @property
    def kernel_s(self) -> float:
        return sum(seconds for _name, seconds in self.kernels)

    def by_category(self) -> dict[str, float]:
        seconds = dict.fromkeys(CATEGORIES, 0.0)
        for name, kernel_s in self.kernels:
            seconds[category(name)] += kernel_s
        return seconds

    def top(self) -> list[tuple[str, float, int]]:
        """The kernels that took longest in all, by name: (name, seconds, launches)."""
        seconds, launches = collections.Counter(), collections.Counter()
        for name, kernel_s in self.kernels:
            seconds[name] += kernel_s
            launches[name] += 1
        return [(name, total, launches[name]) for name, total in seconds.most_common(TOP_KERNELS)]


def device_work(profiler: torch.profiler.profile, device: torch.device) -> list[tuple[str, float]]:
    """What ran on the device: every CUDA activity with its own duration; on a CPU, every aten op's self time."""
    if device.type == "cuda":
        return [
            (e.name, e.time_range.elapsed_us() / 1e6) for e in profiler.events() if e.device_type == DeviceType.CUDA
        ]
    return [(e.name, e.self_cpu_time_total / 1e6) for e in profiler.events() if e.device_type == DeviceType.CPU]


# --- the results ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """Where and at what size the bench runs, and what it measures."""

    size: ModelSize
    device: torch.device
    width: int
    height: int
    frames: tuple[int, ...]
    repeats: int
    runner_steps: int
    compile_blocks: bool
    ceiling_size: int  # the ceiling matmul's side
    long_clip_tokens: int  # the runner's long-clip threshold (memory.fit_long_clips)
    variants: tuple[Variant, ...]  # the step paths
    runner: bool
    decode: bool
    profile: bool  # profile one step of each step path instead of timing


@dataclass
class Row:
    path: str
    frames: int
    seconds: float | None  # per step; per clip for the decode; None: skipped (the note says why)
    peak_gib: float | None
    first_s: float | None = None  # the warm-up step, compile included where there is one
    note: str = ""
    end_to_end_s: float | None = None  # the runner job: every stage, denoise stretched to 30 steps


@dataclass
class Results:
    setting: Setting
    command: str
    out: Path | None  # rewritten after every row, so a run cut short still leaves its rows
    ceiling_tflops: float | None = None
    step_flops: dict[int, float] = field(default_factory=dict)  # frames -> one step's FLOPs
    decode_flops: dict[int, float] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    latents: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)  # (path, frames) -> final video latents
    profiles: list[Profile] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # paths this process cannot run, with the reason
    runs: list[dict] = field(default_factory=list)  # gpu_smoke.run's, for the stage table

    def row(self, path: str, frames: int) -> Row | None:
        return next((r for r in self.rows if r.path == path and r.frames == frames), None)

    def variant(self, path: str) -> Variant | None:
        return next((v for v in self.setting.variants if v.name == path), None)

    def paths(self) -> list[str]:
        """Every row's path, in the table's order."""
        return [v.name for v in self.setting.variants] + [RUNNER_JOB, DECODE]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- what one denoising step costs ---------------------------------------------------------------------


def denoising_pipeline(transformer, decoders: dict, context: PrecomputedConnectors) -> DenoisingPipeline:
    """The stock LTX2Pipeline's loop around `transformer`; the decoders stay on the CPU, never called."""
    pipe = DenoisingPipeline(
        scheduler=ltx2_scheduler(),
        vae=decoders["vae"],
        audio_vae=decoders["audio_vae"],
        text_encoder=None,
        tokenizer=None,
        connectors=context,
        transformer=transformer,
        vocoder=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def guidance(transformer: torch.nn.Module) -> dict:
    """LTX-2.0's guidance settings; a model with fewer blocks perturbs its last one for STG."""
    blocks = [
        min(block, len(transformer.transformer_blocks) - 1)
        for block in LTX2_0_GUIDANCE["spatio_temporal_guidance_blocks"]
    ]
    return dict(LTX2_0_GUIDANCE, spatio_temporal_guidance_blocks=blocks)


def denoise(
    pipe: DenoisingPipeline, setting: Setting, frames: int, steps: int, on_step_end: Callable[[int], None]
) -> torch.Tensor:
    """`steps` steps of default guidance through the stock pipeline's loop; returns the final video latents."""
    video, _audio = pipe(
        **pipe.connectors.placeholder_embeds(),
        width=setting.width,
        height=setting.height,
        num_frames=frames,
        frame_rate=FPS,
        num_inference_steps=steps,
        guidance_scale=GUIDANCE_SCALE,
        **guidance(pipe.transformer),
        generator=torch.Generator("cpu").manual_seed(0),
        output_type="latent",
        return_dict=False,
        callback_on_step_end=lambda _pipe, index, _timestep, _tensors: on_step_end(index) or {},
    )
    return video


def time_steps(
    pipe: DenoisingPipeline, setting: Setting, frames: int, count_flops: bool = False
) -> tuple[Row, float, torch.Tensor]:
    """One warm-up step and `repeats` timed steps of default guidance, in one pipeline call.

    Returns the row (median step, peak VRAM, the warm-up step's seconds), the warm-up step's FLOPs
    when counted (0.0 otherwise) and the final video latents. Counting runs during the warm-up step
    only: the counter dispatches every op through Python, which would slow a timed step.
    """
    device = setting.device
    marks = []
    counter = FlopCounterMode(display=False) if count_flops else None

    def on_step_end(index: int) -> None:
        if index == 0 and counter is not None:
            counter.__exit__(None, None, None)
        marks.append(mark(device))

    memory.release(device)
    memory.reset_peak(device)
    start = mark(device)
    if counter is not None:
        counter.__enter__()
    try:
        latents = denoise(pipe, setting, frames, 1 + setting.repeats, on_step_end)
    finally:
        if counter is not None and not marks:
            counter.__exit__(None, None, None)
    synchronize(device)
    seconds = [seconds_between(a, b) for a, b in itertools.pairwise([start, *marks])]
    row = Row(
        path="",
        frames=frames,
        seconds=statistics.median(seconds[1:]),
        peak_gib=memory.peak_vram_gib(device),
        first_s=seconds[0],
    )
    return row, float(counter.get_total_flops()) if counter is not None else 0.0, latents.float().cpu()


def profile_step(pipe: DenoisingPipeline, setting: Setting, frames: int) -> Profile:
    """A warm-up step, a step timed on the CPU's clock, then a step under torch.profiler for its kernels.

    The timed step runs unprofiled, as profiling every op slows the CPU side whose launch time it
    measures; the profiled one records CPU ops too (CUDA activity alone has been seen to lose kernels).
    """
    device = setting.device
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    profiler = torch.profiler.profile(activities=activities)
    clock: dict[str, float] = {}
    profiling = False

    def on_step_end(index: int) -> None:
        nonlocal profiling
        if index == 0:
            synchronize(device)
            clock["start"] = time.perf_counter()
        elif index == 1:
            clock["issued"] = time.perf_counter()
            synchronize(device)
            clock["done"] = time.perf_counter()
            profiler.start()
            profiling = True
        else:
            synchronize(device)
            profiler.stop()
            profiling = False

    memory.release(device)
    try:
        denoise(pipe, setting, frames, 3, on_step_end)
    finally:
        if profiling:  # the step failed under the profiler: free it for the next path
            profiler.stop()
    return Profile(
        path="",
        frames=frames,
        wall_s=clock["done"] - clock["start"],
        issue_s=clock["issued"] - clock["start"],
        kernels=device_work(profiler, device),
    )


Measure = Callable[[Results, DenoisingPipeline, Variant, int, str], None]  # (results, pipe, path, frames, note)


def time_variant(results: Results, pipe: DenoisingPipeline, variant: Variant, frames: int, note: str) -> None:
    count_flops = variant.name == STOCK_BF16
    row, flops, latents = time_steps(pipe, results.setting, frames, count_flops=count_flops)
    if count_flops:
        results.step_flops[frames] = flops
    if variant.compiles:
        note = "; ".join(filter(None, [note, compile_note(results, row, variant)]))
    results.rows.append(replace(row, path=variant.name, note=note))
    results.latents[variant.name, frames] = latents


def compile_note(results: Results, row: Row, variant: Variant) -> str:
    """The compile time: how much longer its first step took than its uncompiled base path's."""
    base = results.row(variant.base, row.frames)
    if base is None:
        return f"first step {row.first_s:.1f} s, compiling for these shapes included"
    return f"first step +{max(0.0, row.first_s - base.first_s):.1f} s (compiling for these shapes)"


def profile_variant(results: Results, pipe: DenoisingPipeline, variant: Variant, frames: int, note: str) -> None:
    results.profiles.append(replace(profile_step(pipe, results.setting, frames), path=variant.name))


def run_variant(
    results: Results, pipe: DenoisingPipeline, variant: Variant, frames: int, note: str, measure: Measure
) -> None:
    """One path at one frame count, its tweaks on around it. A path that fails is reported and the
    bench goes on: the run is one unattended GPU call. One this process cannot run is skipped, saying why."""
    log(f"{variant.name}, {frames} frames")
    reason = variant.attention and unavailable_reason(variant.attention, results.setting.device)
    if reason:
        results.skipped.append(f"{variant.name}, {frames} frames: {reason}")
        results.rows.append(
            Row(path=variant.name, frames=frames, seconds=None, peak_gib=None, note=f"skipped: {reason}")
        )
        log(f"skipped: {reason}")
        write(results)
        return
    try:
        with ExitStack() as tweaks:
            for tweak in variant.tweaks:
                tweaks.enter_context(tweak(pipe.transformer))
            measure(results, pipe, variant, frames, note)
    except Exception as error:
        results.failures.append(f"{variant.name}, {frames} frames: {type(error).__name__}: {error}")
        log(f"failed: {results.failures[-1]}")
    memory.release(results.setting.device)
    write(results)


def measure_stock(
    results: Results, transformer: torch.nn.Module, decoders: dict, dtype: torch.dtype, measure: Measure
) -> None:
    """The stock transformer's paths in bf16, then with diffusers' layerwise FP8 hooks (cast in place)."""
    setting = results.setting
    pipe = denoising_pipeline(transformer, decoders, random_context(setting.size, setting.device, dtype))
    variants = [v for v in setting.variants if v.model == STOCK]
    for variant in sorted(variants, key=lambda v: v == HOOKS):
        if variant == HOOKS:
            transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
            memory.release(setting.device)
        for frames in setting.frames:
            run_variant(results, pipe, variant, frames, "", measure)


def measure_ours(
    results: Results, transformer: torch.nn.Module, decoders: dict, dtype: torch.dtype, measure: Measure
) -> None:
    """The runner's transformer with FP8 matmuls and its variants, frame counts in rising order.

    The runner sets a long clip up once (sliced feed-forwards, the guidance batch a row at a
    time) and that cannot be undone, so short clips go first and the set-up happens on the way.
    """
    setting = results.setting
    pipe = denoising_pipeline(transformer, decoders, random_context(setting.size, setting.device, dtype))
    fp8.use_fp8_matmul(transformer)
    long_clip = False
    for frames in sorted(setting.frames):
        tokens = video_tokens(setting, frames)
        if tokens > setting.long_clip_tokens and not long_clip:
            memory.fit_long_clips(transformer, tokens, setting.long_clip_tokens)
            long_clip = True
        note = "long clip: sliced feed-forwards, guidance batch row by row" if long_clip else ""
        for variant in (v for v in setting.variants if v.model == MINE):
            run_variant(results, pipe, variant, frames, note, measure)


def video_tokens(setting: Setting, frames: int) -> int:
    return ((frames - 1) // 8 + 1) * (setting.height // 32) * (setting.width // 32)


def relative_difference(results: Results, path: str, base: str, frames: int) -> float | None:
    latents, reference = results.latents.get((path, frames)), results.latents.get((base, frames))
    if path == base or latents is None or reference is None:
        return None
    return ((latents - reference).norm() / reference.norm()).item()


# --- the stock video decode ----------------------------------------------------------------------------


def measure_decode(results: Results, vae: torch.nn.Module, dtype: torch.dtype) -> None:
    """The stock VAE decode of one clip's latents: untiled where it fits, else diffusers' spatial tiling."""
    setting = results.setting
    for frames in setting.frames:
        log(f"{DECODE}, {frames} frames")
        shape = (1, vae.config.latent_channels, (frames - 1) // 8 + 1, setting.height // 32, setting.width // 32)
        latents = torch.randn(shape, device=setting.device, dtype=dtype)
        try:
            row, results.decode_flops[frames] = _decode(vae, latents, setting)
            row.note = "untiled"
        except Exception as error:
            if not memory.is_out_of_memory(error):
                raise
            memory.release(setting.device)
            vae.enable_tiling()
            row, results.decode_flops[frames] = _decode(vae, latents, setting)
            row.note = "diffusers spatial tiling (untiled ran out of memory)"
            vae.disable_tiling()
        row.path, row.frames = DECODE, frames
        results.rows.append(row)
        del latents
        memory.release(setting.device)
        write(results)


def _decode(vae: torch.nn.Module, latents: torch.Tensor, setting: Setting) -> tuple[Row, float]:
    def decode():
        with torch.no_grad():
            return vae.decode(latents, return_dict=False)[0]

    memory.release(setting.device)
    memory.reset_peak(setting.device)
    with FlopCounterMode(display=False) as counter:
        decode()  # the warm-up, counted
    seconds = timed(decode, repeats=setting.repeats, warmup=0, device=setting.device)
    return Row(path="", frames=0, seconds=seconds, peak_gib=memory.peak_vram_gib(setting.device)), float(
        counter.get_total_flops()
    )


# --- the runner job ------------------------------------------------------------------------------------


def measure_runner(results: Results, workdir: Path) -> None:
    """`generate` per frame count (gpu_smoke.run); the first job encodes the prompt, the rest hit the cache."""
    setting = results.setting
    for frames in setting.frames:
        log(f"{RUNNER_JOB}, {frames} frames")
        run = gpu_smoke.run(
            frames,
            setting.runner_steps,
            "fp8",
            workdir,
            setting.size,
            setting.width,
            setting.height,
            prompt_cache=workdir / "prompts",
            compile_blocks=setting.compile_blocks,
        )
        results.runs.append(run)
        prompt = "cold prompt" if run["cold_prompt"] else "cached prompt"
        if setting.compile_blocks:
            prompt += ", compiled blocks (the first step compiles: see denoise below)"
        results.rows.append(
            Row(
                path=RUNNER_JOB,
                frames=frames,
                seconds=run["step_s"]["denoise"],
                peak_gib=run["result"].peak_vram_gib,
                note=f"{setting.runner_steps} steps, {prompt}, every stage (stage table below)",
                end_to_end_s=gpu_smoke.end_to_end_30_steps(run),
            )
        )
        memory.release(setting.device)
        write(results)


# --- the report ----------------------------------------------------------------------------------------


def table(results: Results) -> list[str]:
    """One markdown table: a row per (frames, path) measured so far."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for frames in results.setting.frames:
        for path in results.paths():
            row = results.row(path, frames)
            if row is not None:
                lines.append("| " + " | ".join(_cells(results, row)) + " |")
    return lines


def _cells(results: Results, row: Row) -> list[str]:
    if row.seconds is None:  # skipped
        return [row.path, str(row.frames), *["-"] * (len(COLUMNS) - 3), row.note]
    decode_row = results.row(DECODE, row.frames)
    if row.path == DECODE:
        flops, end_to_end, reference = results.decode_flops.get(row.frames), None, None
    else:
        flops, reference = results.step_flops.get(row.frames), reference_step_s(row.frames)
        end_to_end = row.end_to_end_s
        if end_to_end is None and decode_row is not None:
            end_to_end = FULL_STEPS * row.seconds + decode_row.seconds
    tflops = flops / row.seconds / 1e12 if flops else None
    share = 100 * tflops / results.ceiling_tflops if tflops and results.ceiling_tflops else None
    variant = results.variant(row.path)
    ours = row.path == RUNNER_JOB or (variant is not None and variant.model == MINE)
    return [
        row.path,
        str(row.frames),
        f"{row.seconds:.3f}",
        _number(tflops, ".3g"),
        _number(share, ".3g"),
        _number(row.peak_gib, ".2f"),
        _number(end_to_end, ".1f"),
        _number(reference, ".3f"),
        _number(_ratio(results, row, STOCK_BF16) if row.path not in (STOCK_BF16, DECODE) else None, ".2f"),
        _number(_ratio(results, row, STOCK_FP8) if ours else None, ".2f"),
        _number(relative_difference(results, row.path, variant.reference, row.frames) if variant else None, ".2g"),
        _number(relative_difference(results, row.path, STOCK_BF16, row.frames) if variant else None, ".2g"),
        row.note,
    ]


def _ratio(results: Results, row: Row, baseline_path: str) -> float | None:
    baseline = results.row(baseline_path, row.frames)
    return None if baseline is None or baseline.seconds is None else row.seconds / baseline.seconds


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def summary(results: Results) -> list[str]:
    """The ceiling, the 481-frame job against the reference portal's 7 minutes, and what the rows mean."""
    setting = results.setting
    lines = []
    if results.ceiling_tflops is not None:
        lines.append(
            f"- bf16 matmul ceiling: {results.ceiling_tflops:.3g} TFLOP/s "
            f"({setting.ceiling_size}^3, median of 10); % of ceiling is against it, FP8 paths included."
        )
    if 481 in setting.frames:
        estimates = []
        for path in results.paths():
            row = results.row(path, 481)
            cells = _cells(results, row) if row and path != DECODE else None
            if cells and cells[6] != "-":
                estimates.append(f"{path} {float(cells[6]) / 60:.1f} min")
        if estimates:
            lines.append(
                f"- 481 frames, {FULL_STEPS} steps end to end (extrapolated): "
                + ", ".join(estimates)
                + f"; the reference portal: {REFERENCE_481_FRAMES_S / 60:.0f} min."
            )
    lines += [
        f"- A step is default guidance: the CFG batch of two, the STG pass and the modality pass; {setting.repeats} "
        "timed steps after one warm-up, median. Step FLOPs counted on the stock bf16 path; every path computes the "
        "same guidance, and the STG-prefix path (the runner's) skips the STG pass's blocks before its STG block, so "
        "its TFLOP/s is the stock step's FLOPs over its time: an effective rate, which can pass the ceiling.",
        f"- 30 steps end to end: {FULL_STEPS} x the step + the stock VAE decode of that row's frames; for the runner "
        "job, every stage as measured with its denoise stretched to 30 steps (its load stages build random weights, "
        "so they are not checkpoint load times).",
        "- The reference model is the reference portal's per-step fit, 0.025 + 0.026 x frames s.",
        "- Latents vs base path: the final video latents' relative L2 difference from the base path's, same seed and "
        f"steps: {STOCK_BF16} for the stock paths, {OURS_COMPILED} for an attention backend's, {OURS} for ours; "
        f"vs stock bf16: from {STOCK_BF16}'s, where it ran.",
    ]
    return lines + failures(results)


def failures(results: Results) -> list[str]:
    return [f"- FAILED: {failure}" for failure in results.failures] + [
        f"- SKIPPED: {skipped}" for skipped in results.skipped
    ]


PROFILE_COLUMNS = (
    "path",
    "frames",
    "step wall s",
    "CPU issued it in, s",
    "kernel s",
    "GPU busy %",
    "kernels",
    *(f"{name} s (%)" for name in CATEGORIES),
)


def profile_table(results: Results) -> list[str]:
    """A row per profiled path: the step's wall time against its kernels' sum, then that sum by category."""
    lines = ["| " + " | ".join(PROFILE_COLUMNS) + " |", "|" + "---|" * len(PROFILE_COLUMNS)]
    for profile in results.profiles:
        kernel_s = profile.kernel_s
        shares = [
            f"{seconds:.3f} ({100 * seconds / kernel_s if kernel_s else 0:.0f}%)"
            for seconds in profile.by_category().values()
        ]
        cells = [
            profile.path,
            str(profile.frames),
            f"{profile.wall_s:.3f}",
            f"{profile.issue_s:.3f}",
            f"{kernel_s:.3f}",
            f"{100 * kernel_s / profile.wall_s:.0f}",
            str(len(profile.kernels)),
            *shares,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def top_kernels(profile: Profile) -> list[str]:
    lines = [f"{profile.path}, {profile.frames} frames, top {TOP_KERNELS} kernels by time:", ""]
    lines += ["| kernel | category | s | launches |", "|---|---|---|---|"]
    for name, seconds, launches in profile.top():
        shown = name if len(name) <= 120 else name[:117] + "..."
        lines.append(f"| `{shown.replace('|', '/')}` | {category(name)} | {seconds:.4f} | {launches} |")
    return lines


def profile_notes(results: Results) -> list[str]:
    on_cuda = results.setting.device.type == "cuda"
    kernels = "CUDA kernels, memcpys and memsets" if on_cuda else "aten ops' self CPU times"
    return [
        "- Step wall s: one default-guidance step after a warm-up step, synchronised at both ends, unprofiled. "
        f"Kernel s: the sum of its {kernels} in the next step, run under torch.profiler. GPU busy: kernel s / step "
        "wall s; well under 100% means the GPU waited for the CPU to launch work.",
        "- CPU issued it in: from the step's start until the CPU had queued its last kernel; close to the wall time "
        "with a low GPU busy share = launch-bound.",
        "- Categories by kernel name (KERNEL_CATEGORIES in bench/gpu_bench.py); check them against the top kernels "
        "below.",
    ] + failures(results)


def sdpa_priority() -> list[str]:
    """The order in which SDPA tries its backends, first that accepts the inputs wins (outside `cudnn_attention`)."""
    return [SDPBackend(backend).name for backend in torch._C._get_sdp_priority_order()]


def report(results: Results) -> str:
    setting = results.setting
    today = datetime.date.today().isoformat()
    kind = "GPU profile" if setting.profile else "GPU bench"
    header = [
        f"# {kind}, {today}, {device_name()}, RANDOM WEIGHTS",
        "",
        f"`{results.command}`: torch {torch.__version__}, diffusers {diffusers.__version__}, "
        f"{setting.size.name} sizes with random weights, {setting.width}x{setting.height} at {FPS:g} fps. "
        f"SDPA backends in torch's default order: {', '.join(sdpa_priority())}.",
        "",
    ]
    if setting.profile:
        body = profile_table(results) + [""] + profile_notes(results)
        for profile in results.profiles:
            body += [""] + top_kernels(profile)
    else:
        body = table(results) + [""] + summary(results)
    if results.runs:
        body += ["", "The runner jobs stage by stage (s / peak GiB of each stage):", ""] + gpu_smoke.stage_table(
            results.runs
        )
    return "\n".join(header + body) + "\n"


def write(results: Results) -> None:
    """Rewrite the report with what is measured so far, so a run cut short still leaves its rows."""
    if results.out is not None:
        results.out.parent.mkdir(parents=True, exist_ok=True)
        results.out.write_text(report(results))


# --- the run -------------------------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", help="frame counts (default 49 121 361 481; tiny: 9 17)")
    parser.add_argument(
        "--paths", nargs="+", choices=PATH_KEYS, default=PATH_KEYS, metavar="PATH", help=f"default all: {PATH_KEYS}"
    )
    parser.add_argument(
        "--fp8-min-rows",
        type=int,
        nargs="+",
        default=FP8_MIN_ROWS,
        help="the thresholds the ours-min-rows path measures (fp8.FP8_MATMUL_MIN_ROWS)",
    )
    parser.add_argument(
        "--profile", type=int, metavar="FRAMES", help="profile one step of each step path at FRAMES instead of timing"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed steps (decodes) after one warm-up; median")
    parser.add_argument("--runner-steps", type=int, default=2, help="steps of each runner job (its median step)")
    parser.add_argument(
        "--compile-blocks", action="store_true", help="runner jobs compile their transformer blocks (compile_blocks)"
    )
    parser.add_argument("--out", type=Path, help="also write the report (with its header) here")
    parser.add_argument("--tiny", action="store_true", help="the demo model's sizes at 256x160 on the CPU")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.runner_steps < 2:
        parser.error("--repeats must be at least 1 and --runner-steps at least 2 (a step interval)")
    if args.profile is not None and args.frames is not None:
        parser.error("--profile FRAMES is the one frame count a profile runs at; leave --frames out")
    return args


def setting_for(args: argparse.Namespace) -> Setting:
    profile = args.profile is not None
    chosen = dict(
        variants=chosen_variants(tuple(args.paths), tuple(args.fp8_min_rows)),
        runner=RUNNER_KEY in args.paths and not profile,
        decode=DECODE_KEY in args.paths and not profile,
        profile=profile,
        repeats=args.repeats,
        runner_steps=args.runner_steps,
        compile_blocks=args.compile_blocks,
    )
    if args.tiny:
        return Setting(
            size=TINY_SIZE,
            device=torch.device("cpu"),
            width=256,
            height=160,
            frames=(args.profile,) if profile else tuple(args.frames or (9, 17)),
            ceiling_size=512,
            long_clip_tokens=100,  # so 17 frames (120 tokens) takes the long-clip set-up too
            **chosen,
        )
    if not torch.cuda.is_available():
        sys.exit("gpu_bench needs a CUDA GPU; --tiny runs it at the demo model's size on the CPU")
    return Setting(
        size=FULL_SIZE,
        device=torch.device("cuda"),
        width=768,
        height=448,
        frames=(args.profile,) if profile else tuple(args.frames or (49, 121, 361, 481)),
        ceiling_size=8192,
        long_clip_tokens=memory.LONG_CLIP_TOKENS,
        **chosen,
    )


def main(argv: list[str] | None = None) -> str:
    args = parse(argv)
    setting = setting_for(args)
    command = "python bench/gpu_bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
    results = Results(setting=setting, command=command.strip(), out=args.out)
    threads = torch.get_num_threads()
    if args.tiny:
        # The tiny model's ops are too small to split: a team of threads only spins, the more so on a
        # shared CPU (20x slower on two busy cores).
        torch.set_num_threads(1)
    try:
        measure(results)
    finally:
        torch.set_num_threads(threads)
    text = report(results)
    print(text)
    return text


def measure(results: Results) -> None:
    """Every chosen path in turn, the report rewritten after each so a run cut short still leaves its rows."""
    setting = results.setting
    device, dtype = setting.device, torch.bfloat16
    step = profile_variant if setting.profile else time_variant
    began = time.monotonic()

    if not setting.profile:
        log("ceiling matmul")
        results.ceiling_tflops = ceiling_tflops(device, setting.ceiling_size)

    # The decoders: the video VAE is measured on the GPU, then waits on the CPU beside the audio VAE
    # (the pipeline reads their latent statistics and compression ratios).
    vae = random_module(setting.size.vae, device, dtype)
    if setting.decode:
        measure_decode(results, vae, dtype)
    decoders = {"vae": vae.cpu(), "audio_vae": random_module(setting.size.audio_vae, "cpu", torch.float32)}
    memory.release(device)

    # The stock transformer is built once in bf16 (the FP8 hooks cast it in place at the end); ours block
    # by block in our FP8 layout, as the runner's loader does. One at a time on the GPU.
    for model, what, fp8_storage, measure in (
        (STOCK, "the bf16 transformer", False, measure_stock),
        (MINE, "our FP8 transformer", True, measure_ours),
    ):
        if any(v.model == model for v in setting.variants):
            log(f"building {what}")
            transformer = random_transformer(setting.size, device, dtype, fp8_storage=fp8_storage)
            measure(results, transformer, decoders, dtype, step)
            del transformer
            memory.release(device)
    del decoders

    if setting.runner:
        with tempfile.TemporaryDirectory() as tmp:
            measure_runner(results, Path(tmp))
    write(results)
    log(f"measured in {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
