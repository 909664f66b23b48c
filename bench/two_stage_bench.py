"""Fast and quality jobs on one card, per LTX-2 version, against diffusers' stock two-stage path (RANDOM WEIGHTS).

One process per version (one device call), full-size components with random weights built in memory:

1. **Stock**: diffusers' own distilled two-stage path in bf16, as its LTX-2 docs chain it: LTX2Pipeline at half
   width and height with the 8 distilled sigmas and no guidance, LTX2LatentUpsamplePipeline x2, LTX2Pipeline
   at full size with the 3 refine sigmas, then the pipeline's own decode (untiled) to frames and waveform.
   Nothing is muxed. The connectors' outputs are random stand-ins, so no text phase runs.
2. **Ours**: the runner's jobs through `gpu_runner.pipeline.generate` (bench/gpu_smoke.py's `run`): FP8
   transformer, compiled blocks with an on-disk compile cache, decode tiles from the job's budget, the mux to
   MP4. The first job encodes the prompt (random Gemma-3 12B, streamed); later ones hit the prompt cache.
   Each fast setting runs twice: cold (the process compiles its shapes for the first time), then warm
   (torch's compile cache holds them, as for any later job of that shape). Quality jobs run `--quality-steps`
   steps and are stretched to 30 at their median step (extrapolated).

Load stages are not load times here (random weights are built in memory); "every stage but the two loads"
is the job without them. Run on the lent GPU, one version a call:

    python bench/two_stage_bench.py --version 2.3 --out $OUT/two-stage-2.3.md

`--tiny` runs the same at the demo model's sizes on the CPU (a smoke of the bench, not a measurement).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_smoke  # noqa: E402
from diffusers.pipelines.ltx2 import LTX2LatentUpsamplePipeline  # noqa: E402
from diffusers.pipelines.ltx2.utils import DISTILLED_SIGMA_VALUES, STAGE_2_DISTILLED_SIGMA_VALUES  # noqa: E402
from gpu_smoke import (  # noqa: E402
    TINY_SIZE,
    VERSIONS,
    ModelSize,
    _gib,
    device_name,
    full_size,
    random_context,
    random_module,
    random_transformer,
    stage_table,
    unloaded_s,
)

from gpu_runner import memory  # noqa: E402
from gpu_runner.demo.model import ltx2_scheduler  # noqa: E402
from gpu_runner.families.ltx2 import NO_GUIDANCE  # noqa: E402
from gpu_runner.families.ltx2.loading import DenoisingPipeline  # noqa: E402


@dataclass(frozen=True)
class Clip:
    mode: str
    frames: int
    width: int
    height: int
    first_and_last: bool = False  # keyframes at the first and the last frame
    image: bool = False  # image-to-video: the clip starts from an image

    @property
    def name(self) -> str:
        conditioning = (" first+last" if self.first_and_last else "") + (" image" if self.image else "")
        return f"{self.mode} {self.frames}f {self.width}x{self.height}{conditioning}"


FULL_CLIPS = (
    Clip("fast", 481, 768, 448),
    Clip("fast", 121, 768, 448),
    Clip("fast", 121, 1280, 704),
    Clip("quality", 121, 768, 448),
    Clip("quality", 481, 768, 448),
    Clip("fast", 121, 768, 448, first_and_last=True),
    Clip("fast", 121, 768, 448, image=True),
)
TINY_CLIPS = (
    Clip("fast", 17, 256, 128),
    Clip("fast", 9, 256, 128),
    Clip("quality", 9, 256, 128),
    Clip("fast", 17, 256, 128, first_and_last=True),
    Clip("fast", 17, 256, 128, image=True),
)
STOCK_COLUMNS = ("clip", "stage 1 s", "upsample s", "stage 2 + decode s", "total s", "peak VRAM GiB", "passes")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def synchronized(device: torch.device, work: Callable, **arguments) -> tuple[object, float]:
    """What `work(**arguments)` returns and its seconds, the device's queue drained at both ends."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    began = time.perf_counter()
    value = work(**arguments)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return value, time.perf_counter() - began


def stock_rows(size: ModelSize, clips: tuple[Clip, ...], device: torch.device) -> list[list[str]]:
    """Diffusers' stock distilled two-stage path per fast clip, every component in bf16 (as from_pretrained with
    torch_dtype=torch.bfloat16 loads it)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    transformer = random_transformer(size, device, dtype, fp8_storage=False)
    passes: list[int] = []
    transformer.register_forward_pre_hook(lambda *_: passes.append(1))
    with torch.device("cpu"):  # diffusers' own initialisation: real buffers (filters, latent statistics)
        vae, audio_vae, vocoder = (build().to(dtype) for build in (size.vae, size.audio_vae, size.vocoder))
    pipe = DenoisingPipeline(
        scheduler=ltx2_scheduler("distilled"),
        vae=vae.to(device).eval(),
        audio_vae=audio_vae.to(device).eval(),
        text_encoder=None,
        tokenizer=None,
        connectors=random_context(size, device, dtype),
        transformer=transformer,
        vocoder=vocoder.to(device).eval(),
    )
    upsampler = random_module(size.latent_upsampler, device, dtype)
    upsample = LTX2LatentUpsamplePipeline(vae=pipe.vae, latent_upsampler=upsampler)
    for stock in (pipe, upsample):
        stock.set_progress_bar_config(disable=True)
    rows = []
    for clip in (c for c in clips if c.mode == "fast" and not c.first_and_last and not c.image):
        log(f"stock, {clip.name}")
        passes.clear()
        memory.release(device)
        memory.reset_peak(device)
        seconds = stock_clip(pipe, upsample, clip, device)
        rows.append(
            [clip.name, *(f"{s:.2f}" for s in (*seconds, sum(seconds))), _gib(memory.peak_vram_gib(device))]
            + [str(len(passes))]
        )
    del pipe, upsample, upsampler, transformer
    memory.release(device)
    return rows


def stock_clip(pipe, upsample, clip: Clip, device: torch.device) -> tuple[float, float, float]:
    """Seconds of stage 1, the upsample, and stage 2 with the pipeline's own decode, for one clip."""
    common = {
        **pipe.connectors.placeholder_embeds(),
        "num_frames": clip.frames,
        "frame_rate": 24.0,
        **{k: v for k, v in NO_GUIDANCE.items() if k != "spatio_temporal_guidance_blocks"},
        "generator": torch.Generator("cpu").manual_seed(1),
        "return_dict": False,
    }
    first, second = DISTILLED_SIGMA_VALUES, STAGE_2_DISTILLED_SIGMA_VALUES
    (video, audio), stage_1_s = synchronized(
        device, pipe, width=clip.width // 2, height=clip.height // 2, sigmas=first,
        num_inference_steps=len(first), output_type="latent", **common,
    )  # fmt: skip
    (upsampled,), upsample_s = synchronized(
        device, upsample, latents=video, latents_normalized=False, output_type="latent", return_dict=False
    )
    _, stage_2_s = synchronized(
        device, pipe, width=clip.width, height=clip.height, latents=upsampled, audio_latents=audio, sigmas=second,
        num_inference_steps=len(second), noise_scale=second[0], output_type="np", **common,
    )  # fmt: skip
    return stage_1_s, upsample_s, stage_2_s


def our_runs(
    size: ModelSize,
    clips: tuple[Clip, ...],
    workdir: Path,
    quality_steps: int,
    device: torch.device,
    compile_dynamic: bool = False,
):
    """The runner's jobs: each fast clip cold then warm, each quality clip once; yields each run as it ends."""
    for clip in clips:
        for attempt in ("cold", "warm") if clip.mode == "fast" else ("",):
            log(f"ours, {clip.name} {attempt}")
            run = gpu_smoke.run(
                clip.frames,
                quality_steps,
                "fp8" if device.type == "cuda" else "bf16",
                workdir,
                size,
                clip.width,
                clip.height,
                prompt_cache=workdir / "prompts",
                compile_blocks=True,
                compile_dynamic=compile_dynamic,
                mode=clip.mode,
                first_and_last=clip.first_and_last,
                image=clip.image,
            )
            memory.release(device)
            run["label"] = f"{clip.name} {attempt}".strip()
            yield run


def summary_rows(runs: list[dict]) -> list[list[str]]:
    """A line per job: every stage but the loads, denoise + refine, decode, peak, passes."""
    rows = []
    for run in runs:
        timings = run["result"].timings
        denoising = sum(timings.get(s, 0.0) for s in ("denoise", "upsample", "refine"))
        rows.append(
            [
                run["label"],
                f"{unloaded_s(run):.1f}",
                f"{denoising:.1f}",
                f"{timings.get('decode_video', 0.0):.2f}",
                f"{timings.get('mux', 0.0):.2f}",
                _gib(run["result"].peak_vram_gib),
                f"{run['passes']} ({run['pass_rows']})",
                "cold prompt" if run["cold_prompt"] else "cached prompt",
            ]
        )
    return rows


SUMMARY_COLUMNS = (
    "job",
    "every stage but the loads, s",
    "denoise + upsample + refine, s",
    "decode_video, s",
    "mux, s",
    "job peak VRAM",
    "transformer forwards (rows)",
    "prompt",
)


def markdown(columns: tuple[str, ...], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def report(header: str, stock: list[list[str]], runs: list[dict]) -> str:
    lines = [header, "", "## Stock: diffusers' distilled two-stage, bf16", ""]
    lines += markdown(STOCK_COLUMNS, stock) if stock else ["(not run)"]
    lines += ["", "## Ours: runner jobs (generate)", ""]
    lines += markdown(SUMMARY_COLUMNS, summary_rows(runs)) if runs else ["(not run)"]
    if runs:
        lines += ["", "### Per stage", ""]
        lines += stage_table(runs)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", choices=VERSIONS, default="2.0")
    parser.add_argument("--tiny", action="store_true", help="the demo model's sizes on the CPU: a smoke")
    parser.add_argument("--quality-steps", type=int, default=3)
    parser.add_argument("--only", choices=["stock", "ours"], help="one half of the bench (default: both)")
    parser.add_argument("--out", type=Path, help="the report, rewritten after every job")
    parser.add_argument(
        "--clips",
        nargs="+",
        choices=[clip.name for clip in FULL_CLIPS],
        help="these full-size clips only (default: all), so that a version's table can take two device calls",
    )
    parser.add_argument(
        "--compile-dynamic",
        action="store_true",
        help="AVP_COMPILE=dynamic: one compiled graph for every clip size instead of one per size",
    )
    args = parser.parse_args(argv)
    size, clips = (TINY_SIZE, TINY_CLIPS) if args.tiny else (full_size(args.version), FULL_CLIPS)
    if args.clips and not args.tiny:
        by_name = {clip.name: clip for clip in clips}
        clips = tuple(by_name[name] for name in args.clips)  # in the order asked: the call's limit cuts the last
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    header = (
        f"# Two-stage bench: {size.name}, {device_name()}, torch {torch.__version__}, RANDOM WEIGHTS\n\n"
        "Load stages build random weights in memory (not load times). Fast jobs: cold = first of its shape in "
        f"the process, warm = torch's compile cache holds the shapes. Quality: {args.quality_steps} steps."
        + (" Blocks compiled with dynamic shapes (--compile-dynamic)." if args.compile_dynamic else "")
    )
    stock: list[list[str]] = []
    runs: list[dict] = []

    def write() -> str:
        text = report(header, stock, runs)
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text)
        return text

    if args.only != "ours":
        stock = stock_rows(size, clips, device)
        write()
    if args.only != "stock":
        with tempfile.TemporaryDirectory() as tmp:
            for run in our_runs(size, clips, Path(tmp), args.quality_steps, device, args.compile_dynamic):
                runs.append(run)
                write()
    text = write()
    print(text)
    return text


if __name__ == "__main__":
    main()
