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
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_smoke import CONFIGS, materialize  # noqa: E402

from gpu_runner import fp8  # noqa: E402


def timed(fn, repeats: int = 3) -> float:
    fn()
    fn()  # a second warm-up: compiled kernels settle on their dynamic shapes
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return statistics.median(times)


def ceiling_tflops() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    return 2 * 8192**3 / timed(lambda: a @ b, repeats=10) / 1e12


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
    from accelerate import init_empty_weights
    from diffusers import LTX2VideoTransformer3DModel

    with init_empty_weights(include_buffers=False):
        bf16 = LTX2VideoTransformer3DModel(**CONFIGS["transformer"])
    materialize(bf16, "cuda", torch.bfloat16)
    bf16.eval()
    stored = copy.deepcopy(bf16)
    fp8.store_in_fp8(stored)
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
