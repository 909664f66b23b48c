"""GPU smoke: the runner's own stages on full-size LTX-2.0 components with RANDOM WEIGHTS.

Builds every component at full size in memory (no weights can be downloaded): the 19B DiT
from the LTX-2.0 config in bench/configs/, its video VAE, the audio VAE, vocoder and
1.4B connectors at diffusers' defaults (which are LTX-2.0's), and a Gemma-3 12B text
encoder. Then runs `gpu_runner.pipeline.generate` - the same stages a job runs - at
768x448 for each frame count, and prints per-stage time and peak VRAM.

"load" stages here build random weights in memory instead of reading a checkpoint from
disk, so their times are not load times. Run on the lent GPU:

    python bench/gpu_smoke.py --frames 49 481 --steps 3
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpu_runner import fp8, protocol  # noqa: E402
from gpu_runner.cancel import Cancellation  # noqa: E402
from gpu_runner.demo_model import ltx2_scheduler  # noqa: E402
from gpu_runner.job import Job  # noqa: E402
from gpu_runner.loading import DenoisingPipeline  # noqa: E402
from gpu_runner.pipeline import generate, predicted_peak  # noqa: E402
from gpu_runner.specs import ltx2_spec  # noqa: E402
from gpu_runner.text import PrecomputedConnectors, prepare_text_encoder  # noqa: E402

CONFIGS = json.loads((Path(__file__).parent / "configs" / "ltx2.0-diffusers-configs.json").read_text())
TEXT_STAGES = ("load_text_encoder", "encode_prompt", "free_text_encoder")


def materialize(module: nn.Module, device: str, dtype: torch.dtype) -> None:
    """Give every parameter still on the meta device real random storage (normal, std 0.02)."""
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is not None and param.is_meta:
                data = torch.empty(param.shape, device="cuda", dtype=dtype).normal_(0, 0.02)
                sub._parameters[name] = nn.Parameter(data.to(device), requires_grad=False)
    module.to(device)  # buffers, built for real on the CPU


def gemma3_12b() -> nn.Module:
    from accelerate import init_empty_weights
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    config = Gemma3Config(
        text_config=Gemma3TextConfig(
            vocab_size=262208,
            hidden_size=3840,
            intermediate_size=15360,
            num_hidden_layers=48,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=256,
            sliding_window=1024,
            query_pre_attn_scalar=256,
        ),
        vision_config=SiglipVisionConfig(
            hidden_size=1152,
            intermediate_size=4304,
            num_hidden_layers=27,
            num_attention_heads=16,
            image_size=896,
            patch_size=14,
        ),
        mm_tokens_per_image=256,
    )
    with init_empty_weights(include_buffers=False):
        model = Gemma3ForConditionalGeneration(config)
    materialize(model, "cpu", torch.bfloat16)  # its home: streamed through the GPU block by block
    model.tie_weights()
    return model.eval()


class RandomWeights:
    """The runner's model source (see gpu_runner/loading.py), built from configs with random weights."""

    def __init__(self) -> None:
        self.built_s: dict[str, float] = {}

    def revision(self) -> str:
        return "random"

    def sequence_length(self) -> int:
        return 1024

    def is_ltx2_0(self) -> bool:
        return True

    def inner_width(self) -> int:
        return CONFIGS["transformer"]["num_attention_heads"] * CONFIGS["transformer"]["attention_head_dim"]

    def weights_gib(self, component: str) -> float:
        """What the component's bf16 weight files would weigh: its parameter count, counted on the meta device."""
        from diffusers import AutoencoderKLLTX2Video, LTX2VideoTransformer3DModel
        from diffusers.pipelines.ltx2 import LTX2TextConnectors

        build = {
            "transformer": lambda: LTX2VideoTransformer3DModel(**CONFIGS["transformer"]),
            "connectors": LTX2TextConnectors,
            "vae": lambda: AutoencoderKLLTX2Video(**CONFIGS["vae"]),
        }[component]
        with torch.device("meta"):
            return sum(p.numel() for p in build().parameters()) * 2 / 2**30

    def load_text_side(self, dtype: torch.dtype, device: torch.device):
        from diffusers import LTX2Pipeline
        from diffusers.pipelines.ltx2 import LTX2TextConnectors

        from gpu_runner.demo_model import build_tokenizer

        began = time.monotonic()
        encoder = gemma3_12b()
        with torch.device("cpu"):
            connectors = LTX2TextConnectors().to(dtype).eval()
        tokenizer = build_tokenizer()
        tokenizer.model_max_length = self.sequence_length()
        self.built_s["text side"] = time.monotonic() - began
        # Building went through the GPU a tensor at a time; a checkpoint read from disk would not.
        torch.cuda.reset_peak_memory_stats()
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

    def load_denoiser(self, dtype: torch.dtype, precision: str, connectors: PrecomputedConnectors, conditioned: bool):
        from accelerate import init_empty_weights
        from diffusers import (
            AutoencoderKLLTX2Audio,
            AutoencoderKLLTX2Video,
            LTX2VideoTransformer3DModel,
        )
        from diffusers.pipelines.ltx2 import LTX2Vocoder

        began = time.monotonic()
        with init_empty_weights(include_buffers=False):
            transformer = LTX2VideoTransformer3DModel(**CONFIGS["transformer"])
        # Block by block: each one is cast to FP8 before the next exists, as the real loader does on the CPU.
        for index, block in enumerate(transformer.transformer_blocks):
            materialize(block, "cuda", dtype)
            if precision == "fp8":
                fp8.store_in_fp8(block, prefix=f"transformer_blocks.{index}.")
        materialize(transformer, "cuda", dtype)
        with torch.device("cpu"):  # the decoders wait on the CPU while the transformer denoises
            vae = AutoencoderKLLTX2Video(**CONFIGS["vae"]).to(dtype)
            audio_vae = AutoencoderKLLTX2Audio()
            vocoder = LTX2Vocoder()
        pipe = DenoisingPipeline(
            scheduler=ltx2_scheduler(),
            vae=vae.eval(),
            audio_vae=audio_vae.eval(),
            text_encoder=None,
            tokenizer=None,
            connectors=connectors,
            transformer=transformer.eval(),
            vocoder=vocoder.eval(),
        )
        self.built_s["denoiser"] = time.monotonic() - began
        return pipe


def run(frames: int, steps: int, precision: str, workdir: Path) -> dict:
    job_dir = workdir / f"job-{frames}"
    job_dir.mkdir()
    request = protocol.ResolvedRequest(
        prompt="a red ball bouncing on a wooden floor, with clicks",
        negative_prompt="blurry",
        model="ltx-2",
        width=768,
        height=448,
        num_frames=frames,
        fps=24.0,
        steps=steps,
        guidance_scale=4.0,
        seed=1,
        image_strength=1.0,
    )
    model_dir = workdir / "no-checkpoint"
    job_file = protocol.JobFile(
        id=job_dir.name, request=request, model_kind="ltx-2", model_path=str(model_dir), precision=precision
    )
    job = Job(directory=job_dir, file=job_file, spec=ltx2_spec(model_dir), model_dir=model_dir)
    events: list[tuple[float, protocol.Event]] = []
    source = RandomWeights()
    began = time.monotonic()
    result = generate(job, lambda e: events.append((time.monotonic(), e)), Cancellation(), began, source=source)
    step_times = [t for t, e in events if isinstance(e, protocol.Step)]
    step_s = [b - a for a, b in itertools.pairwise(step_times)] or [result.timings["denoise"] / steps]
    return {
        "predicted": predicted_peak(source, precision, request),
        "frames": frames,
        "result": result,
        "memory": {e.stage: e for _, e in events if isinstance(e, protocol.Memory)},
        "step_s": statistics.median(step_s),
        "built_s": source.built_s,
    }


def report(runs: list[dict], steps: int, precision: str) -> None:
    print(f"# GPU smoke: {torch.cuda.get_device_name()}, torch {torch.__version__}, RANDOM WEIGHTS")
    print(f"# LTX-2.0 sizes, 768x448 at 24 fps, precision {precision}, {steps} timed steps, cold prompt\n")
    print("| stage | " + " | ".join(f"{r['frames']} frames: s / peak GiB" for r in runs) + " |")
    print("|---|" + "---|" * len(runs))
    for stage in protocol.STAGES:
        cells = []
        for r in runs:
            seconds = r["result"].timings.get(stage)
            memory = r["memory"].get(stage)
            peak = memory.peak_gib if memory else None
            cells.append(f"{seconds:.2f} / {peak:.2f}" if seconds is not None and peak is not None else "-")
        print(f"| {stage} | " + " | ".join(cells) + " |")
    rows = {
        "denoise step (median)": [f"{r['step_s']:.3f} s" for r in runs],
        "allocated after load_transformer": [f"{r['memory']['load_transformer'].allocated_gib:.2f} GiB" for r in runs],
        "predicted peak (admission)": [f"{r['predicted'].peak_gib:.2f} GiB, {r['predicted'].peak_phase}" for r in runs],
        "job peak VRAM": [f"{r['result'].peak_vram_gib:.2f} GiB" for r in runs],
        "text phase peak": [f"{max(r['memory'][s].peak_gib for s in TEXT_STAGES):.2f} GiB" for r in runs],
        "30 steps, end to end (extrapolated)": [
            f"{sum(r['result'].timings.values()) - r['result'].timings['denoise'] + 30 * r['step_s']:.1f} s"
            for r in runs
        ],
        "random weights built in memory": [", ".join(f"{k} {v:.1f} s" for k, v in r["built_s"].items()) for r in runs],
    }
    for name, cells in rows.items():
        print(f"| {name} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[49, 481])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--precision", choices=["fp8", "bf16"], default="fp8")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [run(frames, args.steps, args.precision, Path(tmp)) for frames in args.frames]
    report(runs, args.steps, args.precision)


if __name__ == "__main__":
    main()
