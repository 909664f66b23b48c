"""GPU smoke: the runner's own stages on full-size LTX-2.0, 2.3 or 2.5 components with RANDOM WEIGHTS.

Builds every component at full size in memory (no weights can be downloaded) from
bench/configs/ltx2-family-configs.json: the 19B DiT, video VAE, audio VAE, vocoder, connectors,
latent upsampler and the Gemma-3 12B text encoder of `--version` (2.5: Gemma-4 12B, and the diffusion
decoder its fast mode decodes with). Then runs
`gpu_runner.pipeline.generate` - the same stages a job runs - at 768x448 for each frame count,
and prints per-stage time and peak VRAM.

"load" stages here build random weights in memory instead of reading a checkpoint from
disk, so their times are not load times. Run on the lent GPU:

    python bench/gpu_smoke.py --frames 49 481 --steps 3

Its builders (`ModelSize`, `random_transformer`, `RandomWeights`, `run`) are shared with
bench/fp8_matmul.py and bench/gpu_bench.py; `TINY_SIZE` builds the demo model's sizes for CPU smokes.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import itertools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec
import torch
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from contract import jobdir, library, protocol  # noqa: E402
from contract.models import ltx2_spec, with_parts  # noqa: E402
from contract.request import Keyframe, Request, denoise_stages  # noqa: E402
from gpu_runner import fp8, memory  # noqa: E402
from gpu_runner.cancel import Cancellation  # noqa: E402
from gpu_runner.demo import model as demo_model  # noqa: E402
from gpu_runner.demo.model import ltx2_scheduler  # noqa: E402
from gpu_runner.families.ltx2 import Ltx2  # noqa: E402
from gpu_runner.families.ltx2.loading import (  # noqa: E402
    ConditionedDenoisingPipeline,
    DenoisingPipeline,
    SlotDenoisingPipeline,
    is_fp8_layer,
)
from gpu_runner.families.ltx2.text import PrecomputedConnectors, prepare_text_encoder  # noqa: E402
from gpu_runner.job import Job  # noqa: E402
from gpu_runner.memory import empty_weights  # noqa: E402
from gpu_runner.pipeline import generate  # noqa: E402

FAMILY = json.loads((Path(__file__).parent / "configs" / "ltx2-family-configs.json").read_text())
VERSIONS = ("2.0", "2.3", "2.5")
TEXT_STAGES = ("load_text_encoder", "encode_prompt", "free_text_encoder")


def materialize(module: nn.Module, device: str | torch.device, dtype: torch.dtype) -> None:
    """Give every parameter still on the meta device real random storage (normal, std 0.02).

    The numbers are drawn on the GPU when there is one (a 12B model's worth is minutes on a CPU).
    """
    draw_on = "cuda" if torch.cuda.is_available() else "cpu"
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is not None and param.is_meta:
                data = torch.empty(param.shape, device=draw_on, dtype=dtype).normal_(0, 0.02)
                sub._parameters[name] = nn.Parameter(data.to(device), requires_grad=False)
    module.to(device)  # buffers, built for real on the CPU


@dataclass(frozen=True)
class ModelSize:
    """How to construct each component at one size; built under `empty_weights`, then materialised."""

    name: str
    transformer: Callable[[], nn.Module]
    vae: Callable[[], nn.Module]
    audio_vae: Callable[[], nn.Module]
    vocoder: Callable[[], nn.Module]
    connectors: Callable[[], nn.Module]
    text_encoder: Callable[[int], nn.Module]  # the tokenizer's vocabulary size -> encoder
    latent_upsampler: Callable[[], nn.Module]  # fast mode's x2 spatial upsampler
    sequence_length: int  # prompt tokens
    version: str = "2.0"
    diffusion_decoder: Callable[[], nn.Module] | None = None  # LTX-2.5's: its fast mode's video decoder


def family_component(version: str, component: str) -> Callable[[], nn.Module]:
    """A builder of one full-size component from bench/configs/ltx2-family-configs.json (class and arguments)."""
    entry = FAMILY[version][component]
    module_name, class_name = entry["class"].rsplit(".", 1)
    cls = getattr(importlib.import_module(module_name), class_name)
    if "config_class" in entry:  # a transformers model: its config object, then the model
        config_module, config_name = entry["config_class"].rsplit(".", 1)
        config_class = getattr(importlib.import_module(config_module), config_name)
        return lambda: cls(config_class.from_dict(entry["config"]))
    return lambda: cls(**entry["config"])


def full_size(version: str) -> ModelSize:
    """Every component of LTX-`version` at full size (the text encoder, Gemma-3 12B with its vision tower, brings
    its own 262k vocabulary, which covers any tokenizer)."""
    component = functools.partial(family_component, version)
    return ModelSize(
        name=f"LTX-{version}",
        transformer=component("transformer"),
        vae=component("vae"),
        audio_vae=component("audio_vae"),
        vocoder=component("vocoder"),
        connectors=component("connectors"),
        text_encoder=lambda _vocab_size=None: component("text_encoder")(),
        latent_upsampler=component("latent_upsampler"),
        sequence_length=1024,
        version=version,
        diffusion_decoder=component("diffusion_decoder") if "diffusion_decoder" in FAMILY[version] else None,
    )


FULL_SIZE = full_size("2.0")
# The demo model's sizes (gpu_runner/demo/model.py): the same classes, tiny widths, CPU-quick.
TINY_SIZE = ModelSize(
    name="demo (tiny)",
    transformer=demo_model.transformer,
    vae=demo_model.video_vae,
    audio_vae=demo_model.audio_vae,
    vocoder=demo_model.vocoder,
    connectors=demo_model.connectors,
    text_encoder=demo_model.text_encoder,
    latent_upsampler=lambda: demo_model.latent_upsampler("2.0"),
    sequence_length=demo_model.PROMPT_TOKENS,
)


def random_module(factory: Callable[[], nn.Module], device: str | torch.device, dtype: torch.dtype) -> nn.Module:
    """A component with random weights: built on the meta device, then given real storage on `device`."""
    with empty_weights():
        module = factory()
    materialize(module, device, dtype)
    return module.eval()


def random_transformer(size: ModelSize, device: str | torch.device, dtype: torch.dtype, fp8_storage: bool) -> nn.Module:
    """The DiT with random weights, built block by block on `device`.

    With `fp8_storage` each block is cast to our FP8 layout before the next exists, as the real
    loader does on the CPU, so the bf16 copy never sits in memory whole.
    """
    with empty_weights():
        transformer = size.transformer()
    for index, block in enumerate(transformer.transformer_blocks):
        materialize(block, device, dtype)
        if fp8_storage:
            fp8.store_in_fp8(block, is_fp8_layer, prefix=f"transformer_blocks.{index}.")
    materialize(transformer, device, dtype)
    return transformer.eval()


def random_context(size: ModelSize, device: torch.device, dtype: torch.dtype) -> PrecomputedConnectors:
    """Random stand-ins for the connectors' outputs for [negative, positive]: what the transformer attends to.

    As wide as this size's connectors make them per modality (2.0: 3840 both; 2.3: 4096 video, 2048 audio); the
    mask is all ones, as LTX-2's connectors return it.
    """
    with empty_weights():
        config = size.connectors().config
    generator = torch.Generator(device).manual_seed(0)

    def states(modality: str) -> torch.Tensor:
        width = config[f"{modality}_connector_num_attention_heads"] * config[f"{modality}_connector_attention_head_dim"]
        shape = (2, size.sequence_length, width)
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)

    mask = torch.ones((2, size.sequence_length), device=device, dtype=torch.int64)
    return PrecomputedConnectors({"video": states("video"), "audio": states("audio"), "mask": mask})


def device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"


class RandomWeights:
    """The runner's model source (see gpu_runner/families/ltx2/loading.py), built from configs with random weights."""

    def __init__(self, size: ModelSize = FULL_SIZE) -> None:
        self.size = size
        self.built_s: dict[str, float] = {}
        self.passes = 0  # transformer forwards
        self.pass_rows = 0  # their batch rows (guidance batches several)

    def revision(self) -> str:
        return "random"

    def latent_revision(self) -> str:
        return "random"

    def sequence_length(self) -> int:
        return self.size.sequence_length

    @property
    def version(self) -> str:
        return self.size.version

    @property
    def slot_pipeline(self) -> bool:
        """As loading.DiffusersDirectory: LTX-2.5's fast mode runs the keyframe-slot pipeline and diffusion decoder."""
        return self.version == "2.5"

    def is_ltx2_0(self) -> bool:
        return self.version == "2.0"

    def transformer_config(self) -> dict:
        with empty_weights():
            return dict(self.size.transformer().config)

    def vae_config(self) -> dict:
        with empty_weights():
            return dict(self.size.vae().config)

    def weights_gib(self, component: str) -> float:
        """What the component's bf16 weight files would weigh: its parameter count, counted on the meta device; none
        for a part this size lacks (the prompt enhancer, which the family configs leave out; 2.5's own parts
        elsewhere)."""
        factory = getattr(self.size, component, None)
        if factory is None:
            return 0.0
        with empty_weights():
            module = factory()
        return sum(p.numel() for p in module.parameters()) * 2 / 2**30

    def load_text_side(self, dtype: torch.dtype, device: torch.device):
        from diffusers import LTX2Pipeline

        began = time.monotonic()
        tokenizer = demo_model.build_tokenizer()
        tokenizer.model_max_length = self.sequence_length()
        # Its home is the CPU: it streams through the GPU block by block.
        encoder = random_module(lambda: self.size.text_encoder(len(tokenizer)), "cpu", dtype)
        encoder.tie_weights()
        with torch.device("cpu"):
            connectors = self.size.connectors().to(dtype).eval()
        self.built_s["text side"] = time.monotonic() - began
        # Building went through the GPU a tensor at a time; a checkpoint read from disk would not.
        memory.reset_peak(device)
        return LTX2Pipeline(
            scheduler=None,
            vae=None,
            audio_vae=None,
            text_encoder=prepare_text_encoder(encoder, device),
            tokenizer=tokenizer,
            connectors=connectors,
            transformer=None,
            vocoder=None,
        )

    def load_denoiser(
        self,
        dtype: torch.dtype,
        precision: str,
        connectors: PrecomputedConnectors,
        device: torch.device,
        conditioned,
        fast: bool = False,
        keep_transformer: bool = True,  # warm mode's (gpu_runner/resident.py): random weights are never kept
    ):
        began = time.monotonic()
        transformer = random_transformer(self.size, device, dtype, fp8_storage=precision == "fp8")
        with torch.device("cpu"):  # the decoders wait on the CPU while the transformer denoises
            vae = self.size.vae().to(dtype)
            audio_vae = self.size.audio_vae()
            vocoder = self.size.vocoder()
        pipeline_class = ConditionedDenoisingPipeline if conditioned else DenoisingPipeline  # as the runner picks
        if fast and self.slot_pipeline:
            pipeline_class = SlotDenoisingPipeline
        pipe = pipeline_class(
            scheduler=ltx2_scheduler("distilled" if fast else "dev"),
            vae=vae.eval(),
            audio_vae=audio_vae.eval(),
            text_encoder=None,
            tokenizer=None,
            connectors=connectors,
            transformer=transformer,
            vocoder=vocoder.eval(),
        )
        transformer.register_forward_pre_hook(self._count_pass, with_kwargs=True)
        self.built_s["denoiser"] = time.monotonic() - began
        return pipe

    def load_upsampler(self, dtype: torch.dtype) -> nn.Module:
        """Fast mode's upsampler, on the CPU until its stage as the runner keeps it."""
        began = time.monotonic()
        upsampler = random_module(self.size.latent_upsampler, "cpu", dtype)
        self.built_s["upsampler"] = time.monotonic() - began
        return upsampler

    def load_diffusion_decoder(self, dtype: torch.dtype) -> nn.Module:
        """LTX-2.5's diffusion decoder, built on the CPU when its stage comes, as the runner reads it then."""
        began = time.monotonic()
        decoder = random_module(self.size.diffusion_decoder, "cpu", dtype)
        self.built_s["diffusion decoder"] = time.monotonic() - began
        return decoder

    def _count_pass(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        self.passes += 1
        self.pass_rows += hidden.shape[0]


def run(
    frames: int,
    steps: int,
    precision: str,
    workdir: Path,
    size: ModelSize = FULL_SIZE,
    width: int = 768,
    height: int = 448,
    prompt_cache: Path | None = None,
    compile_blocks: bool = False,
    compile_dynamic: bool = False,
    mode: str = "quality",
    first_and_last: bool = False,
    image: bool = False,
) -> dict:
    """One job through `gpu_runner.pipeline.generate`; with `prompt_cache`, a repeated prompt skips the encoder.

    `mode` "fast" runs the distilled two-stage path (its steps are fixed: `steps` is ignored); the random
    transformer stands in for a distilled one, which has the same layout. `first_and_last` pins the clip's first
    and last frames to two images (keyframes at frames 0 and -1), as a job with two uploads would; `image` starts
    it from one image (image-to-video), as a job with an uploaded still would.
    """
    job_dir = workdir / f"job-{mode}-{frames}-{width}x{height}-{len(list(workdir.glob('job-*')))}"
    job_dir.mkdir()
    model_dir = workdir / "no-checkpoint"
    spec = with_parts(
        ltx2_spec(model_dir, size.version),
        library.Recognised(
            family="ltx-2",
            version=size.version,
            variant="distilled",
            upsampler=True,
            # LTX-2.5 as published: the random transformer stands in for both of its transformers
            full_transformer=library.FULL_TRANSFORMER if size.version == "2.5" else None,
            diffusion_decoder=size.diffusion_decoder is not None,
        ),
    )
    generation = {"mode": "fast"} if mode == "fast" else {"mode": "quality", "steps": steps, "guidance_scale": 4.0}
    asked = Request(
        prompt="a red ball bouncing on a wooden floor, with clicks",
        negative_prompt="blurry",
        width=width,
        height=height,
        num_frames=frames,
        fps=24.0,
        keyframes=(Keyframe(upload_id="first", frame=0), Keyframe(upload_id="last", frame=-1))
        if first_and_last
        else None,
        image_upload_id="image" if image else None,
        **generation,
    )
    request = spec.resolve(asked, seed=1)
    options = jobdir.RunnerOptions(
        precision=precision,
        prompt_cache_dir=None if prompt_cache is None else str(prompt_cache),
        compile_cache_dir=str(workdir / "compiled") if compile_blocks else None,
        compile_dynamic=compile_dynamic,
    )
    job_file = jobdir.job_file(job_dir.name, request, spec, options, image=image)
    for index, name in enumerate(job_file.keyframe_files):  # what the web process writes from the uploads
        colour = (200, 40, 30) if index == 0 else (30, 60, 220)
        Image.new("RGB", (width, height), colour).save(job_dir / name, format="PNG")
    if image:
        Image.new("RGB", (width, height), (40, 160, 60)).save(job_dir / jobdir.IMAGE_FILE, format="PNG")
    job = Job(directory=job_dir, file=job_file, spec=spec, model_dir=model_dir)
    events: list[tuple[float, protocol.Event]] = []
    source = RandomWeights(size)
    began = time.monotonic()

    def record(event: protocol.Event) -> None:
        events.append((time.monotonic(), event))
        if isinstance(event, protocol.Stage | protocol.Step | protocol.Memory):  # a call cut short still shows where
            line = msgspec.json.encode(event).decode()
            print(f"  {time.monotonic() - began:7.1f} s  {line}", file=sys.stderr, flush=True)

    result = generate(job, record, Cancellation(), began, family=Ltx2(source))
    return {
        "predicted": Ltx2(source).predict_peak(precision, request),
        "frames": frames,
        "mode": mode,
        "size": f"{width}x{height}",
        "steps": sum(stage.steps for stage in denoise_stages(request)),
        "result": result,
        "memory": {e.stage: e for _, e in events if isinstance(e, protocol.Memory)},
        "step_s": step_seconds(events),
        "first_step_s": first_step_seconds(events),
        "built_s": source.built_s,
        "passes": source.passes,
        "pass_rows": source.pass_rows,
        "cold_prompt": "load_text_encoder" in result.timings,
    }


def step_seconds(events: list[tuple[float, protocol.Event]]) -> dict[str, float]:
    """Per denoising stage, the median seconds between its consecutive steps (so its first step, which may
    compile, counts only in the stage's time)."""
    steps = [(t, e) for t, e in events if isinstance(e, protocol.Step)]
    between: dict[str, list[float]] = {}
    for (before, earlier), (after, later) in itertools.pairwise(steps):
        if earlier.stage == later.stage:
            between.setdefault(later.stage, []).append(after - before)
    return {stage: statistics.median(seconds) for stage, seconds in between.items()}


def first_step_seconds(events: list[tuple[float, protocol.Event]]) -> dict[str, float]:
    """Per denoising stage, seconds from the stage's start to its first step (where a compiled job compiles)."""
    started: dict[str, float] = {}
    first: dict[str, float] = {}
    for t, event in events:
        if isinstance(event, protocol.Stage):
            started[event.name] = t
        elif isinstance(event, protocol.Step) and event.stage not in first and event.stage in started:
            first[event.stage] = t - started[event.stage]
    return first


def stage_table(runs: list[dict]) -> list[str]:
    """Per-stage time and peak VRAM of each run, then the job's totals, as markdown lines."""
    lines = [
        "| stage | " + " | ".join(f"{_label(r)}: s / peak GiB" for r in runs) + " |",
        "|---|" + "---|" * len(runs),
    ]
    for stage in protocol.STAGES:
        cells = []
        for r in runs:
            seconds = r["result"].timings.get(stage)
            snapshot = r["memory"].get(stage)
            if seconds is None or snapshot is None:
                cells.append("-")
            else:
                peak = "-" if snapshot.peak_gib is None else f"{snapshot.peak_gib:.2f}"
                cells.append(f"{seconds:.2f} / {peak}")
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    rows = {
        **{
            f"{stage} step (median)": [_seconds(r["step_s"].get(stage), ".3f") for r in runs]
            for stage in ("denoise", "refine")
        },
        **{
            f"{stage}: its first step": [_seconds(r["first_step_s"].get(stage), ".2f") for r in runs]
            for stage in ("denoise", "refine")
        },
        "transformer forwards (batch rows)": [f"{r['passes']} ({r['pass_rows']})" for r in runs],
        "allocated after load_transformer": [_gib(r["memory"]["load_transformer"].allocated_gib) for r in runs],
        "predicted peak (admission)": [f"{r['predicted'].peak_gib:.2f} GiB, {r['predicted'].peak_phase}" for r in runs],
        "job peak VRAM": [_gib(r["result"].peak_vram_gib) for r in runs],
        "text phase peak": [_text_peak(r) for r in runs],
        "every stage but the two loads": [f"{unloaded_s(r):.1f} s" for r in runs],
        "30 steps, end to end (extrapolated)": [_seconds(end_to_end_30_steps(r), ".1f") for r in runs],
        "random weights built in memory": [", ".join(f"{k} {v:.1f} s" for k, v in r["built_s"].items()) for r in runs],
    }
    for name, cells in rows.items():
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _label(run: dict) -> str:
    return run.get("label") or f"{run['mode']} {run['frames']}f {run['size']}"


def end_to_end_30_steps(run: dict) -> float | None:
    """A quality job's stage times with its denoise stretched to 30 steps at the median step time (extrapolated);
    None for fast mode, whose steps are fixed."""
    if run["mode"] == "fast":
        return None
    timings = run["result"].timings
    return sum(timings.values()) - timings["denoise"] + 30 * run["step_s"]["denoise"]


LOAD_STAGES = ("load_text_encoder", "load_transformer")


def unloaded_s(run: dict) -> float:
    """The job's stages but its two loads, which random weights replace by building in memory (not a load time)."""
    return sum(seconds for stage, seconds in run["result"].timings.items() if stage not in LOAD_STAGES)


def _text_peak(run: dict) -> str:
    """The text phase's peak: "-" when a cached prompt skipped it, or off CUDA."""
    peaks = [run["memory"][s].peak_gib for s in TEXT_STAGES if s in run["memory"]]
    peaks = [p for p in peaks if p is not None]
    return _gib(max(peaks)) if peaks else "-"


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} GiB"


def _seconds(value: float | None, spec: str) -> str:
    return "-" if value is None else f"{value:{spec}} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[49, 481])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--precision", choices=["fp8", "bf16"], default="fp8")
    parser.add_argument("--version", choices=VERSIONS, default="2.0")
    parser.add_argument("--mode", choices=["fast", "quality"], default="quality")
    args = parser.parse_args()
    size = full_size(args.version)
    with tempfile.TemporaryDirectory() as tmp:
        runs = [run(f, args.steps, args.precision, Path(tmp), size, mode=args.mode) for f in args.frames]
    print(f"# GPU smoke: {device_name()}, torch {torch.__version__}, RANDOM WEIGHTS")
    steps = "" if args.mode == "fast" else f", {args.steps} timed steps"
    print(f"# {size.name} sizes, 768x448 at 24 fps, {args.mode}, precision {args.precision}{steps}, cold prompt\n")
    print("\n".join(stage_table(runs)))


if __name__ == "__main__":
    main()
