"""FP8 matmuls against the upcast path and bf16: one full-size LTX-2.0 transformer forward, RANDOM WEIGHTS.

Builds the 19B DiT from bench/configs in bf16 and an FP8-stored copy, then times one forward
(median of 3 after a warm-up) at 768x448 for each frame count in three ways: bf16, FP8
storage upcast per matmul (the portable path), and FP8 matmuls on the tensor cores
(torch._scaled_mm, activations per token, weights per row). Prints seconds, TFLOP/s
(torch.utils.flop_counter) against a measured 8192^3 bf16 matmul, and the relative error of
each FP8 path against bf16 on the same weights and inputs. Run on the lent GPU:

    python bench/fp8_matmul.py --frames 49 121 481
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_smoke import FULL_SIZE, random_transformer  # noqa: E402

from gpu_runner import fp8  # noqa: E402
from gpu_runner.families.ltx2.loading import is_fp8_layer  # noqa: E402


def mark(device: torch.device) -> torch.cuda.Event | float:
    """A point on the device's timeline: a recorded CUDA event, or the CPU clock."""
    if device.type != "cuda":
        return time.perf_counter()
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event


def seconds_between(start: torch.cuda.Event | float, end: torch.cuda.Event | float) -> float:
    """Seconds between two marks; CUDA marks must have completed (synchronize first)."""
    if isinstance(start, float):
        return end - start
    return start.elapsed_time(end) / 1000


def timed(fn, repeats: int = 3, warmup: int = 2, device: torch.device | None = None) -> float:
    """Median seconds of `repeats` calls after `warmup` (the default two let compiled kernels settle on their
    dynamic shapes)."""
    device = device or torch.device("cuda")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = mark(device)
        fn()
        end = mark(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(seconds_between(start, end))
    return statistics.median(times)


def ceiling_tflops(device: torch.device | None = None, size: int = 8192) -> float:
    """The card's bf16 matmul ceiling: a size^3 matmul's rate, median of 10."""
    device = device or torch.device("cuda")
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    return 2 * size**3 / timed(lambda: a @ b, repeats=10, device=device) / 1e12


def inputs(frames: int, batch: int) -> dict:
    latent_frames, rows, columns = (frames - 1) // 8 + 1, 448 // 32, 768 // 32
    audio_frames = round(frames / 24 * 25)
    g = torch.Generator("cuda").manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, device="cuda", dtype=torch.bfloat16, generator=g)

    return dict(
        hidden_states=randn(batch, latent_frames * rows * columns, 128),
        audio_hidden_states=randn(batch, audio_frames, 128),
        encoder_hidden_states=randn(batch, 1024, 3840),
        audio_encoder_hidden_states=randn(batch, 1024, 3840),
        encoder_attention_mask=torch.ones(batch, 1024, device="cuda"),
        audio_encoder_attention_mask=torch.ones(batch, 1024, device="cuda"),
        timestep=torch.full((batch,), 500.0, device="cuda"),
        num_frames=latent_frames,
        height=rows,
        width=columns,
        audio_num_frames=audio_frames,
        return_dict=False,
    )


def relative_error(approx, exact) -> float:
    return max(((a.float() - e.float()).norm() / e.float().norm()).item() for a, e in zip(approx, exact, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[49, 121, 481])
    args = parser.parse_args()
    bf16 = random_transformer(FULL_SIZE, "cuda", torch.bfloat16, fp8_storage=False)
    stored = copy.deepcopy(bf16)
    fp8.store_in_fp8(stored, is_fp8_layer)
    ceiling = ceiling_tflops()

    print(f"# FP8 matmul bench: {torch.cuda.get_device_name()}, torch {torch.__version__}, RANDOM WEIGHTS")
    print(f"# one LTX-2.0 transformer forward at 768x448; bf16 matmul ceiling {ceiling:.0f} TFLOP/s (8192^3)\n")
    print("| frames (batch) | path | seconds | TFLOP/s | % of ceiling | rel. error vs bf16 |")
    print("|---|---|---|---|---|---|")
    with torch.no_grad():
        for frames in args.frames:
            batch = 2 if frames <= 121 else 1  # CFG's batch of two where it fits beside a bf16 copy
            x = inputs(frames, batch)
            with FlopCounterMode(display=False) as counter:
                reference = bf16(**x)
            flops = counter.get_total_flops()
            rows = [
                ("bf16", bf16, None),
                ("fp8 storage, upcast", stored, False),
                ("fp8 matmul", stored, True),
                ("fp8 matmul, fused quantisation", stored, "fused"),
            ]
            for name, model, fast in rows:
                fp8.fuse_quantisation(fast == "fused")
                if fast is not None:
                    fp8.use_fp8_matmul(model, bool(fast))
                seconds = timed(lambda m=model, x=x: m(**x))
                error = "-" if fast is None else f"{relative_error(model(**x), reference):.4f}"
                tflops = flops / seconds / 1e12
                cells = f"{seconds:.3f} | {tflops:.0f} | {100 * tflops / ceiling:.0f}% | {error}"
                print(f"| {frames} ({batch}) | {name} | {cells} |")
            del reference
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
