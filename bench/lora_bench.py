"""LoRAs on the FP8 transformer, two ways (RANDOM WEIGHTS): fused before the FP8 cast, or a separate low-rank path.

For 0, 1 and 4 LoRAs of each rank over every attention projection of the transformer's blocks:

- **fused**: diffusers' LoRA loader (peft) puts the LoRAs on the bf16 transformer on the CPU and fuses them into its
  weights (`gpu_runner.lora.fuse_into`); the FP8 cast follows. A step costs what the model alone costs (the same
  shapes), so its step time and peak are the 0-LoRA row's; what it costs is the set-up per LoRA set (the fuse, then
  the whole cast again, or a weight-cache entry per set) and a separate FP8 copy per set (not measured in memory:
  shown as the cache bytes each set needs).
- **low-rank**: the FP8 transformer as the weight cache holds it, with `gpu_runner.lora.attach`'s `LowRank`
  wrappers adding x @ down.T @ up.T per layer (what the runner does).

One transformer forward (one denoising pass) at a clip's token count, timed after a warm-up: the median of
`--repeats`. Peak: CUDA's max_memory_allocated over the pass, weights included; on a CPU the weights' and LoRAs'
bytes instead (no allocator statistics there).

    python bench/lora_bench.py                                   # the demo model's sizes, on the CPU
    python bench/lora_bench.py --full-size --device cuda --version 2.0 --out $OUT/lora-2.0.md
    # give that at least 300 s: it fuses for about 2 minutes on the CPU first (--no-fuse skips that part)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_smoke import TINY_SIZE, ModelSize, full_size, random_context, random_transformer  # noqa: E402

from gpu_runner import fp8  # noqa: E402
from gpu_runner.families.ltx2.loading import is_fp8_layer  # noqa: E402
from gpu_runner.lora import LoraLayer, LoraWeights, LowRank, attach, fuse_into  # noqa: E402

ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def attention_layers(transformer: nn.Module) -> dict[str, tuple[int, int]]:
    """Every attention projection inside the blocks, by name, as (in, out): what LTX-2 LoRAs train."""
    return {
        name: (module.in_features, module.out_features)
        for name, module in transformer.named_modules()
        if name.startswith("transformer_blocks.") and name.endswith(ATTENTION) and hasattr(module, "in_features")
    }


def random_lora(name: str, layers: dict[str, tuple[int, int]], rank: int, seed: int) -> LoraWeights:
    generator = torch.Generator().manual_seed(seed)
    made = {}
    for module, (width_in, width_out) in layers.items():
        down = torch.randn(rank, width_in, generator=generator) / width_in**0.5
        up = torch.randn(width_out, rank, generator=generator) * 0.01
        made[module] = LoraLayer(down.to(torch.bfloat16), up.to(torch.bfloat16), float(rank))
    return LoraWeights(name, made)


def clip_inputs(size: ModelSize, transformer: nn.Module, device: torch.device, dtype: torch.dtype, full: bool):
    """One pass's arguments at a clip's size: 121 frames of 768x512 at full size, 25 of 256x160 for the demo."""
    config = transformer.config
    frames, height, width = (16, 16, 24) if full else (4, 5, 8)  # latent frames, rows, columns
    audio_frames = 126 if full else 26
    context = random_context(size, device, dtype).context  # [negative, positive]: the positive row
    generator = torch.Generator(device).manual_seed(0)
    video = torch.randn(
        (1, frames * height * width, config.in_channels), generator=generator, device=device, dtype=dtype
    )
    audio = torch.randn((1, audio_frames, config.audio_in_channels), generator=generator, device=device, dtype=dtype)
    timestep = torch.tensor([500.0], device=device)
    return {
        "hidden_states": video,
        "audio_hidden_states": audio,
        "encoder_hidden_states": context["video"][1:],
        "audio_encoder_hidden_states": context["audio"][1:],
        "timestep": timestep,
        "sigma": timestep,
        "encoder_attention_mask": context["mask"][1:],
        "audio_encoder_attention_mask": context["mask"][1:],
        "num_frames": frames,
        "height": height,
        "width": width,
        "fps": 24.0,
        "audio_num_frames": audio_frames,
        "video_coords": transformer.rope.prepare_video_coords(1, frames, height, width, device, fps=24.0),
        "audio_coords": transformer.audio_rope.prepare_audio_coords(1, audio_frames, device),
        "use_cross_timestep": True,
        "return_dict": False,
    }


def timed_pass(transformer: nn.Module, inputs: dict, device: torch.device, repeats: int) -> tuple[float, float]:
    """The median seconds of one pass over `repeats` (after one warm-up), and the peak GiB (CUDA) or the weights'."""
    with torch.no_grad():
        transformer(**inputs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for _ in range(repeats):
            began = time.perf_counter()
            transformer(**inputs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - began)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else resident_gib(transformer)
    return statistics.median(times), peak


def resident_gib(module: nn.Module) -> float:
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**30


def detach(transformer: nn.Module) -> None:
    """Unwrap every LowRank layer (the bench reuses one transformer for every LoRA set)."""
    for name, module in list(transformer.named_modules()):
        if isinstance(module, LowRank):
            parent, _, child = name.rpartition(".")
            setattr(transformer.get_submodule(parent), child, module.base)


def run(args: argparse.Namespace) -> str:
    device = torch.device(args.device)
    full = args.full_size
    size = full_size(args.version) if full else TINY_SIZE
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    ranks = args.ranks or ((32, 128) if full else (8, 32))
    counts = (0, 1, 4)

    log(f"building the {size.name} transformer (random bf16 weights, on the CPU)")
    transformer = random_transformer(size, "cpu", dtype, fp8_storage=False)
    layers = attention_layers(transformer)
    sets = {
        (count, rank): [random_lora(f"r{rank}-{i}", layers, rank, i) for i in range(count)]
        for rank in ranks
        for count in counts
    }

    fuse_seconds: dict[tuple[int, int], float] = {}
    for key, loras in sets.items():
        if not loras or args.no_fuse:
            continue
        began = time.perf_counter()
        fuse_into(transformer, [(lora, 1.0) for lora in loras])  # through diffusers' loader and peft
        fuse_seconds[key] = time.perf_counter() - began
        log(f"fused {key[0]} LoRA(s) of rank {key[1]} in {fuse_seconds[key]:.2f} s")

    began = time.perf_counter()
    fp8.store_in_fp8(transformer, is_fp8_layer)
    cast_seconds = time.perf_counter() - began
    fp8_gib = resident_gib(transformer)
    transformer = transformer.to(device).eval()
    if fp8.fp8_matmul_available(device):
        fp8.use_fp8_matmul(transformer)
    inputs = clip_inputs(size, transformer, device, dtype, full)
    base_step, base_peak = timed_pass(transformer, inputs, device, args.repeats)
    log(f"no LoRA: {base_step * 1000:.1f} ms a pass, {base_peak:.2f} GiB")

    rows = [["none", "0", "-", f"{base_step * 1000:.1f}", f"{base_peak:.2f}", f"{cast_seconds:.1f} (cast)", "-"]]
    for (count, rank), loras in sets.items():
        if not loras:
            continue
        began = time.perf_counter()
        attach(transformer, [(lora, 1.0) for lora in loras], dtype=dtype)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        attach_seconds = time.perf_counter() - began
        step, peak = timed_pass(transformer, inputs, device, args.repeats)
        detach(transformer)
        lora_gib = (
            sum(
                (layer.down.numel() + layer.up.numel()) * dtype.itemsize
                for lora in loras
                for layer in lora.layers.values()
            )
            / 2**30
        )
        fused = fuse_seconds.get((count, rank))
        fused_setup = "not timed" if fused is None else f"{fused + cast_seconds:.1f}"
        rows.append(
            [
                "fused",
                str(count),
                str(rank),
                f"{base_step * 1000:.1f}",
                f"{base_peak:.2f}",
                fused_setup,
                f"{fp8_gib:.2f}",
            ]
        )
        rows.append(
            [
                "low-rank",
                str(count),
                str(rank),
                f"{step * 1000:.1f}",
                f"{peak:.2f}",
                f"{attach_seconds:.2f}",
                f"0 (+{lora_gib:.3f} in VRAM)",
            ]
        )
        log(f"{count} x rank {rank}: low-rank {step * 1000:.1f} ms, {peak:.2f} GiB")

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    header = (
        f"# LoRA application, {size.name}, {device_name}, {dtype}, FP8 storage, one pass at "
        f"{inputs['hidden_states'].shape[1]} video + {inputs['audio_hidden_states'].shape[1]} audio tokens\n\n"
        f"{len(layers)} attention projections per LoRA. Peak: "
        + (
            "CUDA max_memory_allocated over a pass, weights included."
            if device.type == "cuda"
            else "the weights' and LoRAs' bytes (a CPU has no allocator statistics)."
        )
        + " Set-up: fused = diffusers/peft fuse on the CPU + the FP8 cast again (per LoRA set); low-rank = attach.\n"
        "Cache GiB per set: the FP8 weight-cache entry each LoRA set needs of its own.\n\n"
    )
    columns = ("way", "LoRAs", "rank", "ms a pass", "peak GiB", "set-up s", "cache GiB per set")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return header + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full-size", action="store_true", help="full-size LTX-2 transformer (needs a big GPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--version", default="2.0", choices=("2.0", "2.3"))
    parser.add_argument("--ranks", type=int, nargs="*", help="default: 32 128 at full size, 8 32 for the demo")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--no-fuse",
        action="store_true",
        help="skip timing the fuses on the CPU (about 2 minutes at full size, before any GPU row): a short device "
        "call still gets every step time and peak",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    table = run(args)
    print(table)
    if args.out:
        args.out.write_text(table)
    return table


if __name__ == "__main__":
    main()
