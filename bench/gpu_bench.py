"""GPU bench: diffusers' stock LTX-2 path against our runner's, per denoising step, RANDOM WEIGHTS.

One process, one card, full-size LTX-2.0 components built in memory (bench/gpu_smoke.py's
helpers: meta device, then random storage). For each frame count at 768x448 it measures:

- stock bf16: diffusers' `LTX2VideoTransformer3DModel` in bf16, driven by the stock pipeline's own
  denoising loop (`LTX2Pipeline.__call__`), so one step is exactly the passes it makes with default
  guidance: the CFG batch of two, the STG pass and the modality-isolation pass;
- stock fp8 hooks: the same model after `enable_layerwise_casting(float8_e4m3fn, bfloat16)`;
- ours: the runner's transformer (gpu_runner/fp8.py's layout, `memory.fit_long_clips`) with FP8
  matmuls, then again with the activation quantisation fused by torch.compile (its compile time
  shows as the extra seconds of its first step);
- the runner job: `gpu_runner.pipeline.generate` end to end (gpu_smoke.run), stage by stage;
- the stock video VAE decode, untiled where it fits, else with diffusers' tiling;
- a bf16 matmul of 8192^3, the card's ceiling.

Every path gets the same precomputed text context (the runner's `PrecomputedConnectors`) and the
LTX-2.0 guidance settings. A step's FLOPs are counted once per frame count on the stock bf16 path
(torch.utils.flop_counter, during its warm-up step); every path does the same math. Timing: CUDA
events at the pipeline's step callbacks, one warm-up step, then the median of `--repeats` steps.

    python bench/gpu_bench.py --out bench/results/<date>-<card>.md
    python bench/gpu_bench.py --tiny       # the demo model's sizes on the CPU: a smoke of this script
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import diffusers
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_smoke  # noqa: E402
from fp8_matmul import ceiling_tflops, mark, seconds_between, timed  # noqa: E402
from gpu_smoke import FULL_SIZE, TINY_SIZE, ModelSize, device_name, random_module, random_transformer  # noqa: E402

from gpu_runner import fp8, memory  # noqa: E402
from gpu_runner.demo_model import ltx2_scheduler  # noqa: E402
from gpu_runner.loading import DenoisingPipeline  # noqa: E402
from gpu_runner.pipeline import LTX2_0_GUIDANCE  # noqa: E402
from gpu_runner.text import PrecomputedConnectors  # noqa: E402

STOCK_BF16 = "stock bf16"
STOCK_FP8 = "stock fp8 hooks"
OURS = "ours fp8 matmul"
OURS_FUSED = "ours fp8 matmul, fused quantisation"
RUNNER_JOB = "runner job (generate)"
DECODE = "stock video VAE decode"
PATHS = (STOCK_BF16, STOCK_FP8, OURS, OURS_FUSED, RUNNER_JOB, DECODE)
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
    "notes",
)
FPS = 24.0
GUIDANCE_SCALE = 4.0  # gpu_smoke's job; the passes per step do not depend on it
FULL_STEPS = 30
REFERENCE_481_FRAMES_S = 7 * 60  # the reference portal, 30 steps at 768x448 (DESIGN.md)


def reference_step_s(frames: int) -> float:
    """The reference portal's per-step cost (a 96 GB Blackwell card, FP8-cast DiT; DESIGN.md)."""
    return 0.025 + 0.026 * frames


@dataclass(frozen=True)
class Setting:
    """Where and at what size the bench runs."""

    size: ModelSize
    device: torch.device
    width: int
    height: int
    frames: tuple[int, ...]
    repeats: int
    runner_steps: int
    ceiling_size: int  # the ceiling matmul's side
    long_clip_tokens: int  # the runner's long-clip threshold (memory.fit_long_clips)


@dataclass
class Row:
    path: str
    frames: int
    seconds: float  # per step; per clip for the decode
    peak_gib: float | None
    first_s: float | None = None  # the warm-up step, compile included where there is one
    note: str = ""
    end_to_end_s: float | None = None  # the runner job: every stage, denoise stretched to 30 steps


@dataclass
class Results:
    setting: Setting
    command: str
    ceiling_tflops: float | None = None
    step_flops: dict[int, float] = field(default_factory=dict)  # frames -> one step's FLOPs
    decode_flops: dict[int, float] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    runs: list[dict] = field(default_factory=list)  # gpu_smoke.run's, for the stage table

    def row(self, path: str, frames: int) -> Row | None:
        return next((r for r in self.rows if r.path == path and r.frames == frames), None)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- what one denoising step costs ---------------------------------------------------------------------


def text_context(setting: Setting, transformer: torch.nn.Module, dtype: torch.dtype) -> PrecomputedConnectors:
    """Random stand-ins for the connectors' outputs for [negative, positive]: what every path attends to."""
    generator = torch.Generator(setting.device).manual_seed(0)
    shape = (2, setting.size.sequence_length, transformer.config.caption_channels)
    return PrecomputedConnectors(
        {
            "video": torch.randn(shape, generator=generator, device=setting.device, dtype=dtype),
            "audio": torch.randn(shape, generator=generator, device=setting.device, dtype=dtype),
            "mask": torch.ones(shape[:2], device=setting.device, dtype=torch.int64),
        }
    )


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


def time_steps(pipe: DenoisingPipeline, setting: Setting, frames: int, count_flops: bool = False) -> tuple[Row, float]:
    """One warm-up step and `repeats` timed steps of default guidance, in one pipeline call.

    Returns the row (median step, peak VRAM, the warm-up step's seconds) and the warm-up step's
    FLOPs when counted (0.0 otherwise). Counting runs during the warm-up step only: the counter
    dispatches every op through Python, which would slow a timed step.
    """
    device = setting.device
    marks = []
    counter = FlopCounterMode(display=False) if count_flops else None

    def on_step_end(_pipe, index: int, _timestep, _tensors: dict) -> dict:
        if index == 0 and counter is not None:
            counter.__exit__(None, None, None)
        marks.append(mark(device))
        return {}

    memory.release(device)
    memory.reset_peak(device)
    start = mark(device)
    if counter is not None:
        counter.__enter__()
    try:
        pipe(
            **pipe.connectors.placeholder_embeds(),
            width=setting.width,
            height=setting.height,
            num_frames=frames,
            frame_rate=FPS,
            num_inference_steps=1 + setting.repeats,
            guidance_scale=GUIDANCE_SCALE,
            **guidance(pipe.transformer),
            generator=torch.Generator("cpu").manual_seed(0),
            output_type="latent",
            return_dict=False,
            callback_on_step_end=on_step_end,
        )
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
    return row, float(counter.get_total_flops()) if counter is not None else 0.0


def measure_stock(results: Results, transformer: torch.nn.Module, decoders: dict, dtype: torch.dtype) -> None:
    """The stock transformer in bf16, then with diffusers' layerwise FP8 hooks (cast in place)."""
    setting = results.setting
    pipe = denoising_pipeline(transformer, decoders, text_context(setting, transformer, dtype))
    for frames in setting.frames:
        log(f"{STOCK_BF16}, {frames} frames")
        row, results.step_flops[frames] = time_steps(pipe, setting, frames, count_flops=True)
        results.rows.append(replace(row, path=STOCK_BF16))
    transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
    memory.release(setting.device)
    for frames in setting.frames:
        log(f"{STOCK_FP8}, {frames} frames")
        row, _ = time_steps(pipe, setting, frames)
        results.rows.append(replace(row, path=STOCK_FP8))


def measure_ours(results: Results, transformer: torch.nn.Module, decoders: dict, dtype: torch.dtype) -> None:
    """The runner's transformer with FP8 matmuls, unfused and fused, frame counts in rising order.

    The runner sets a long clip up once (sliced feed-forwards, the guidance batch a row at a
    time) and that cannot be undone, so short clips go first and the set-up happens on the way.
    """
    setting = results.setting
    pipe = denoising_pipeline(transformer, decoders, text_context(setting, transformer, dtype))
    fp8.use_fp8_matmul(transformer)
    long_clip = False
    try:
        for frames in sorted(setting.frames):
            tokens = video_tokens(setting, frames)
            if tokens > setting.long_clip_tokens and not long_clip:
                memory.fit_long_clips(transformer, tokens, setting.long_clip_tokens)
                long_clip = True
            note = "long clip: sliced feed-forwards, guidance batch row by row" if long_clip else ""
            log(f"{OURS}, {frames} frames")
            fp8.fuse_quantisation(False)
            row, _ = time_steps(pipe, setting, frames)
            results.rows.append(replace(row, path=OURS, note=note))
            log(f"{OURS_FUSED}, {frames} frames")
            fp8.fuse_quantisation(True)
            fused, _ = time_steps(pipe, setting, frames)
            compile_s = max(0.0, fused.first_s - row.first_s)
            compiled = f"first step +{compile_s:.1f} s (compiling for these shapes)"
            results.rows.append(replace(fused, path=OURS_FUSED, note="; ".join(filter(None, [note, compiled]))))
    finally:
        fp8.fuse_quantisation(False)


def video_tokens(setting: Setting, frames: int) -> int:
    return ((frames - 1) // 8 + 1) * (setting.height // 32) * (setting.width // 32)


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
        )
        results.runs.append(run)
        prompt = "cold prompt" if run["cold_prompt"] else "cached prompt"
        results.rows.append(
            Row(
                path=RUNNER_JOB,
                frames=frames,
                seconds=run["step_s"],
                peak_gib=run["result"].peak_vram_gib,
                note=f"{setting.runner_steps} steps, {prompt}, every stage (stage table below)",
                end_to_end_s=gpu_smoke.end_to_end_30_steps(run),
            )
        )
        memory.release(setting.device)


# --- the report ----------------------------------------------------------------------------------------


def table(results: Results) -> list[str]:
    """One markdown table: a row per (frames, path) measured so far."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for frames in results.setting.frames:
        for path in PATHS:
            row = results.row(path, frames)
            if row is not None:
                lines.append("| " + " | ".join(_cells(results, row)) + " |")
    return lines


def _cells(results: Results, row: Row) -> list[str]:
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
    return [
        row.path,
        str(row.frames),
        f"{row.seconds:.3f}",
        _number(tflops, ".3g"),
        _number(share, ".3g"),
        _number(row.peak_gib, ".2f"),
        _number(end_to_end, ".1f"),
        _number(reference, ".3f"),
        _number(_ratio(results, row, STOCK_BF16, (STOCK_FP8, OURS, OURS_FUSED, RUNNER_JOB)), ".2f"),
        _number(_ratio(results, row, STOCK_FP8, (OURS, OURS_FUSED, RUNNER_JOB)), ".2f"),
        row.note,
    ]


def _ratio(results: Results, row: Row, baseline_path: str, compared: tuple[str, ...]) -> float | None:
    baseline = results.row(baseline_path, row.frames)
    if row.path not in compared or baseline is None:
        return None
    return row.seconds / baseline.seconds


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
        for path in (STOCK_BF16, STOCK_FP8, OURS, OURS_FUSED, RUNNER_JOB):
            row = results.row(path, 481)
            cells = _cells(results, row) if row else None
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
        "timed steps after one warm-up, median. Step FLOPs counted on the stock bf16 path; every path does the "
        "same math.",
        f"- 30 steps end to end: {FULL_STEPS} x the step + the stock VAE decode of that row's frames; for the runner "
        "job, every stage as measured with its denoise stretched to 30 steps (its load stages build random weights, "
        "so they are not checkpoint load times).",
        "- The reference model is the reference portal's per-step fit, 0.025 + 0.026 x frames s.",
    ]
    return lines


def report(results: Results) -> str:
    setting = results.setting
    today = datetime.date.today().isoformat()
    header = [
        f"# GPU bench, {today}, {device_name()}, RANDOM WEIGHTS",
        "",
        f"`{results.command}`: torch {torch.__version__}, diffusers {diffusers.__version__}, "
        f"{setting.size.name} sizes with random weights, {setting.width}x{setting.height} at {FPS:g} fps.",
        "",
    ]
    body = table(results) + [""] + summary(results)
    if results.runs:
        body += ["", "The runner jobs stage by stage (s / peak GiB of each stage):", ""] + gpu_smoke.stage_table(
            results.runs
        )
    return "\n".join(header + body) + "\n"


def write(results: Results, out: Path | None) -> None:
    """Rewrite the report with what is measured so far, so a run cut short still leaves its rows."""
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report(results))


# --- the run -------------------------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", help="frame counts (default 49 121 361 481; tiny: 9 17)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps (decodes) after one warm-up; median")
    parser.add_argument("--runner-steps", type=int, default=2, help="steps of each runner job (its median step)")
    parser.add_argument("--skip-runner", action="store_true", help="no runner jobs (no Gemma-3 12B)")
    parser.add_argument("--out", type=Path, help="also write the report (with its header) here")
    parser.add_argument("--tiny", action="store_true", help="the demo model's sizes at 256x160 on the CPU")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.runner_steps < 2:
        parser.error("--repeats must be at least 1 and --runner-steps at least 2 (a step interval)")
    return args


def setting_for(args: argparse.Namespace) -> Setting:
    if args.tiny:
        return Setting(
            size=TINY_SIZE,
            device=torch.device("cpu"),
            width=256,
            height=160,
            frames=tuple(args.frames or (9, 17)),
            repeats=args.repeats,
            runner_steps=args.runner_steps,
            ceiling_size=512,
            long_clip_tokens=100,  # so 17 frames (120 tokens) takes the long-clip set-up too
        )
    if not torch.cuda.is_available():
        sys.exit("gpu_bench needs a CUDA GPU; --tiny runs it at the demo model's size on the CPU")
    return Setting(
        size=FULL_SIZE,
        device=torch.device("cuda"),
        width=768,
        height=448,
        frames=tuple(args.frames or (49, 121, 361, 481)),
        repeats=args.repeats,
        runner_steps=args.runner_steps,
        ceiling_size=8192,
        long_clip_tokens=memory.LONG_CLIP_TOKENS,
    )


def main(argv: list[str] | None = None) -> str:
    args = parse(argv)
    setting = setting_for(args)
    command = "python bench/gpu_bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
    results = Results(setting=setting, command=command.strip())
    threads = torch.get_num_threads()
    if args.tiny:
        # The tiny model's ops are too small to split: a team of threads only spins, the more so on a
        # shared CPU (20x slower on two busy cores).
        torch.set_num_threads(1)
    try:
        measure(results, args)
    finally:
        torch.set_num_threads(threads)
    text = report(results)
    print(text)
    return text


def measure(results: Results, args: argparse.Namespace) -> None:
    """Every path in turn, writing the report after each so a run cut short still leaves its rows."""
    setting = results.setting
    device, dtype = setting.device, torch.bfloat16
    began = time.monotonic()

    log("ceiling matmul")
    results.ceiling_tflops = ceiling_tflops(device, setting.ceiling_size)

    # The decoders: the video VAE is measured on the GPU, then waits on the CPU beside the audio VAE
    # (the pipeline reads their latent statistics and compression ratios).
    vae = random_module(setting.size.vae, device, dtype)
    measure_decode(results, vae, dtype)
    decoders = {"vae": vae.cpu(), "audio_vae": random_module(setting.size.audio_vae, "cpu", torch.float32)}
    memory.release(device)
    write(results, args.out)

    # The stock transformer: built once in bf16, then cast in place by the FP8 hooks.
    log("building the bf16 transformer")
    transformer = random_transformer(setting.size, device, dtype, fp8_storage=False)
    measure_stock(results, transformer, decoders, dtype)
    del transformer
    memory.release(device)
    write(results, args.out)

    # Ours: built block by block in our FP8 layout, as the runner's loader does.
    log("building our FP8 transformer")
    transformer = random_transformer(setting.size, device, dtype, fp8_storage=True)
    measure_ours(results, transformer, decoders, dtype)
    del transformer, decoders
    memory.release(device)
    write(results, args.out)

    if not args.skip_runner:
        with tempfile.TemporaryDirectory() as tmp:
            measure_runner(results, Path(tmp))
        write(results, args.out)
    log(f"measured in {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
