"""AVP_ATTENTION's backends one attention call at a time, at LTX-2's mask-free attention shapes: time and error.

For each frame count at 768x448 (LTX-2.0's heads: video 32 x 128, audio 32 x 64; the CFG batch of two) it calls
diffusers' `dispatch_attention_fn` as the transformer's processors do, with each backend, on random bf16 queries,
keys and values for the four mask-free attentions: video self (video tokens both sides), audio self,
audio-to-video (video queries, audio keys) and video-to-audio. Time: the median of `--repeats` calls after two
warm-ups, CUDA events. Error: the relative L2 difference from the same attention in float32 (memory-efficient SDPA
on a GPU, which needs no token x token matrix; math on the CPU).

`--sageattention` also runs the sageattention package (`sageattn`, where it imports; not an AVP_ATTENTION backend)
beside them, to show its error on the GPU: 1.0.6 keeps the padded keys of its 64-key blocks in its softmax, and
LTX-2's token counts are never multiples of 64 (gpu_runner/attention.py says why it is not offered).

    python bench/attention_bench.py --frames 49 481 --out $OUT/attention.md
    python bench/attention_bench.py --tiny    # the demo model's heads on the CPU: a smoke of this script
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import sys
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
import torch.nn.functional as F
from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fp8_matmul import timed  # noqa: E402
from gpu_smoke import FAMILY, device_name  # noqa: E402

from contract.cost import video_tokens  # noqa: E402
from contract.jobdir import ATTENTION_BACKENDS  # noqa: E402
from contract.request import Request  # noqa: E402
from gpu_runner.attention import unavailable_reason  # noqa: E402

FPS = 24.0
AUDIO_LATENTS_PER_SECOND = 16000 / 160 / 4  # LTX-2's audio VAE: 16 kHz, mel hop 160, 4x temporal compression
BATCH = 2  # the CFG pass
SAGEATTENTION = "sageattention 1.x (the package)"
COLUMNS = ("attention", "frames", "queries x keys", "heads x dim", "backend", "ms per call", "rel. error", "notes")


@dataclass(frozen=True)
class Shape:
    name: str
    queries: int
    keys: int
    heads: int
    head_dim: int


def shapes(frames: int, width: int, height: int, config: dict) -> list[Shape]:
    """The four mask-free attentions of a block at `frames` (the cross-attentions use the audio heads)."""
    video = video_tokens(Request(prompt="", width=width, height=height, num_frames=frames))
    audio = round(frames / FPS * AUDIO_LATENTS_PER_SECOND)
    video_heads, video_dim = config["num_attention_heads"], config["attention_head_dim"]
    audio_heads, audio_dim = config["audio_num_attention_heads"], config["audio_attention_head_dim"]
    return [
        Shape("video self (attn1)", video, video, video_heads, video_dim),
        Shape("audio self (audio_attn1)", audio, audio, audio_heads, audio_dim),
        Shape("audio to video", video, audio, audio_heads, audio_dim),
        Shape("video to audio", audio, video, audio_heads, audio_dim),
    ]


def reference(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """The attention in float32, (batch, tokens, heads, dim) in and out."""
    query, key, value = (x.float().transpose(1, 2) for x in (query, key, value))
    kernel = SDPBackend.EFFICIENT_ATTENTION if query.is_cuda else SDPBackend.MATH
    with sdpa_kernel(kernel):
        return F.scaled_dot_product_attention(query, key, value).transpose(1, 2)


def package_sage(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    sageattn = importlib.import_module("sageattention").sageattn
    return sageattn(query, key.clone(), value, tensor_layout="NHD", is_causal=False)  # it smooths the keys in place


def backends(device: torch.device, with_package: bool) -> list[tuple[str, str | None]]:
    """(backend, why it cannot run here or None) in AVP_ATTENTION's order, the sageattention package last."""
    chosen = [(backend, unavailable_reason(backend, device)) for backend in ATTENTION_BACKENDS]
    if with_package:
        try:
            importlib.import_module("sageattention")
            reason = None if device.type == "cuda" else "runs on a CUDA GPU only"
        except ImportError as error:
            reason = f"not importable ({error})"
        chosen.append((SAGEATTENTION, reason))
    return chosen


def call(backend: str, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """One attention as the processors make it: diffusers' dispatch with the module's backend (None: native)."""
    if backend == SAGEATTENTION:
        return package_sage(query, key, value)
    name = None if backend == "native" else AttentionBackendName(backend)
    return dispatch_attention_fn(query, key, value, backend=name)


def measure(device: torch.device, frames: tuple[int, ...], width: int, height: int, config: dict, args) -> list[str]:
    chosen = backends(device, args.sageattention)
    return [
        row
        for count in frames
        for shape in shapes(count, width, height, config)
        for row in measure_shape(device, shape, count, chosen, args.repeats)
    ]


def measure_shape(
    device: torch.device, shape: Shape, frames: int, chosen: list[tuple[str, str | None]], repeats: int
) -> list[str]:
    """Each backend on one attention's random inputs: a row each, timed and compared with float32 attention."""
    generator = torch.Generator(device).manual_seed(0)
    sizes = [(BATCH, tokens, shape.heads, shape.head_dim) for tokens in (shape.queries, shape.keys, shape.keys)]
    query, key, value = (torch.randn(size, generator=generator, device=device, dtype=torch.bfloat16) for size in sizes)
    exact = reference(query, key, value)
    cells = [shape.name, str(frames), f"{shape.queries} x {shape.keys}", f"{shape.heads} x {shape.head_dim}"]
    rows = []
    for backend, reason in chosen:
        if reason is not None:
            rows.append(_row([*cells, backend, "-", "-", f"skipped: {reason}"]))
            continue
        try:
            with torch.no_grad():
                out = call(backend, query, key, value)
                seconds = timed(lambda: call(backend, query, key, value), repeats, device=device)  # noqa: B023
            error = ((out.float() - exact).norm() / exact.norm()).item()
            rows.append(_row([*cells, backend, f"{seconds * 1e3:.3f}", f"{error:.2g}", ""]))
        except Exception as failure:  # one unattended GPU call: report and go on
            rows.append(_row([*cells, backend, "-", "-", f"FAILED: {type(failure).__name__}: {failure}"]))
        print(rows[-1], file=sys.stderr, flush=True)
    return rows


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "/").replace("\n", " ") for cell in cells) + " |"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", help="frame counts (default 49 481; tiny: 9 17)")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls after two warm-ups; median")
    parser.add_argument("--sageattention", action="store_true", help="also the sageattention package, for its error")
    parser.add_argument("--out", type=Path, help="also write the report (with its header) here")
    parser.add_argument("--tiny", action="store_true", help="the demo model's heads at 256x160 on the CPU")
    args = parser.parse_args(argv)
    if args.tiny:
        from gpu_runner.demo.model import transformer

        device, width, height = torch.device("cpu"), 256, 160
        config, frames = dict(transformer().config), tuple(args.frames or (9, 17))
    else:
        if not torch.cuda.is_available():
            sys.exit("attention_bench needs a CUDA GPU; --tiny runs it at the demo model's heads on the CPU")
        device, width, height = torch.device("cuda"), 768, 448
        config, frames = FAMILY["2.0"]["transformer"]["config"], tuple(args.frames or (49, 481))
    command = "python bench/attention_bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
    header = [
        f"# Attention backends, {datetime.date.today().isoformat()}, {device_name()}, RANDOM INPUTS",
        "",
        f"`{command.strip()}`: torch {torch.__version__}, diffusers {diffusers.__version__}, {width}x{height} at "
        f"{FPS:g} fps, batch {BATCH}, bf16. Error: relative L2 difference from float32 attention.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    text = "\n".join(header + measure(device, frames, width, height, config, args)) + "\n"
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return text


if __name__ == "__main__":
    main()
