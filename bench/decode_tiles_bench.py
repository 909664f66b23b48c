"""Video decode time and peak VRAM by tile plan, on full-size LTX-2.0 and LTX-2.3 video VAEs with RANDOM WEIGHTS.

For each VAE and clip size (latents random, (1, 128, F', H/32, W/32)): diffusers' untiled decode (the VAE's
forward alone), then the runner's tiled decoder (gpu_runner/families/ltx2/tiling.py, frames streamed back to
the host as the muxer takes them) with the tiles `contract.cost.plan_decode_tiles` picks at a few budgets,
and with the fixed tiles it used before (64 frames / 24 overlap, 512 px / 64 overlap). Before the plans,
the cost model's activations per output voxel are calibrated from one untiled decode per VAE (the figure
the plans then use; contract/cost.py's DECODE_ELEMENTS_PER_VOXEL should be the largest such figure). Peak =
torch.cuda.max_memory_allocated, weights included. The slow fixed-tile decodes run last, so `--seconds` cuts
them first. Run on the GPU (about two minutes on an H100):

    python bench/decode_tiles_bench.py --out bench/results/<date>-<card>-decode-tiles.md

The VAE configs are bench/configs/ltx2-family-configs.json's (diffusers' AutoencoderKLLTX2Video arguments).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpu_smoke import device_name, random_module  # noqa: E402

from contract import cost  # noqa: E402
from gpu_runner.families.ltx2 import tiling  # noqa: E402

FAMILY = json.loads((Path(__file__).parent / "configs" / "ltx2-family-configs.json").read_text())
CONFIGS = {version: FAMILY[version]["vae"]["config"] for version in ("2.0", "2.3")}
# (frames, width, height) and the budgets (GiB, weights included) the planner is given for each.
CLIPS = [((481, 768, 448), (6, 12, 20)), ((121, 768, 448), (6, 20)), ((121, 1280, 704), (6, 12, 20))]
FIXED = cost.DecodeTiles(
    tiling.TILE_FRAMES, tiling.OVERLAP_FRAMES, tiling.TILE_PIXELS, tiling.OVERLAP_PIXELS
)  # the tiles before budgets


def latents_for(frames: int, width: int, height: int) -> tuple[int, int, int]:
    return (frames - 1) // 8 + 1, height // 32, width // 32


def measure(decode) -> dict:
    """Seconds and peak GiB of one decode; 'OOM' where it ran out of memory."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    try:
        decode()
        torch.cuda.synchronize()
    except torch.OutOfMemoryError:
        return {"seconds": None, "peak_gib": None}
    return {"seconds": time.perf_counter() - began, "peak_gib": torch.cuda.max_memory_allocated() / cost.GIB}


def stock(vae, latents):
    return lambda: vae.decode(latents, return_dict=False)[0]


def ours(vae, latents, tiles: cost.DecodeTiles):
    def decode():
        chunks = tiling.decode_tiled(vae, latents, lambda *_: None, **dataclasses.asdict(tiles))
        frames = sum(len(chunk) for chunk in chunks)  # each chunk on the host, as the muxer takes it
        assert frames == 1 + 8 * (latents.shape[2] - 1)

    return decode


def plan_text(shape: tuple[int, int, int], tiles: cost.DecodeTiles) -> str:
    plan = tiling.TilePlan.for_latents((1, 128, *shape), 8, 32, **dataclasses.asdict(tiles))
    grid = f"{len(plan.times)}x{len(plan.rows)}x{len(plan.columns)}"
    return f"{grid} ({tiles.tile_frames}f/{tiles.overlap_frames}, {tiles.tile_pixels}px/{tiles.overlap_pixels})"


def bench_version(version: str, deadline: float, fixed: bool) -> list[dict]:
    """One VAE's rows: the stock decode and the planned tiles (calibrating first), or the fixed tiles (`fixed`)."""
    vae = random_module(lambda: _vae(version), "cuda", torch.bfloat16)
    weights_gib = sum(p.numel() * p.element_size() for p in vae.parameters()) / cost.GIB
    vae_cost = cost.VaeDecoder(weights_gib, CONFIGS[version]["decoder_block_out_channels"][0], 2)
    rows: list[dict] = []
    with torch.no_grad():
        ours(vae, torch.randn(1, 128, 3, 4, 4, device="cuda", dtype=torch.bfloat16), FIXED)()  # warm-up
        if not fixed:
            calibrate(vae, vae_cost, version)
        for (frames, width, height), budgets in CLIPS:
            shape = latents_for(frames, width, height)
            latents = torch.randn(1, 128, *shape, device="cuda", dtype=torch.bfloat16)
            runs = [("fixed tiles (before)", FIXED, None)]
            if not fixed:
                runs = [("diffusers untiled (VAE forward only)", None, None)]
                for budget in budgets:
                    tiles = cost.plan_decode_tiles(shape, vae_cost, budget)
                    runs.append((f"planned, budget {budget} GiB", tiles, cost.decode_peak_gib(shape, tiles, vae_cost)))
            for name, tiles, predicted in runs:
                clip = f"{frames}f {width}x{height}"
                if time.monotonic() > deadline:
                    print(f"LTX-{version} {clip} {name}: skipped (time)")
                    continue
                row = {"version": version, "clip": clip, "decode": name, "predicted_gib": predicted}
                row["tiles"] = "one, untiled" if tiles is None else plan_text(shape, tiles)
                row.update(measure(stock(vae, latents) if tiles is None else ours(vae, latents, tiles)))
                rows.append(row)
                print(_line(row), flush=True)
    del vae
    torch.cuda.empty_cache()
    return rows


def calibrate(vae, vae_cost: cost.VaeDecoder, version: str) -> None:
    """Set the cost model's activations per output voxel from one untiled decode of ours (121 frames, 768x448):
    its peak is the weights plus the whole clip's activations."""
    shape = latents_for(121, 768, 448)
    latents = torch.randn(1, 128, *shape, device="cuda", dtype=torch.bfloat16)
    whole = cost.plan_decode_tiles(shape, vae_cost, budget_gib=1e9)
    peak_gib = measure(ours(vae, latents, whole))["peak_gib"]
    voxels = (1 + 8 * (shape[0] - 1)) * shape[1] * shape[2] * 32 * 32
    cost.DECODE_ELEMENTS_PER_VOXEL = (peak_gib - vae_cost.weights_gib) * cost.GIB / voxels / 2
    print(
        f"LTX-{version} VAE: {vae_cost.weights_gib:.2f} GiB of bf16 weights; "
        f"{cost.DECODE_ELEMENTS_PER_VOXEL:.1f} activation elements per output voxel (calibrated)",
        flush=True,
    )


def _vae(version: str):
    from diffusers import AutoencoderKLLTX2Video

    return AutoencoderKLLTX2Video(**CONFIGS[version])


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _line(row: dict) -> str:
    seconds = "OOM" if row["seconds"] is None else f"{row['seconds']:.2f}"
    return (
        f"| {row['version']} | {row['clip']} | {row['decode']} | {row['tiles']} | {seconds} | "
        f"{_gib(row['peak_gib'])} | {_gib(row['predicted_gib'])} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", nargs="+", default=["2.0", "2.3"], choices=sorted(CONFIGS))
    parser.add_argument("--seconds", type=float, default=200, help="stop starting decodes after this long")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    deadline = time.monotonic() + args.seconds
    card = device_name()
    print(f"{card}, torch {torch.__version__}, RANDOM WEIGHTS")
    # The fixed tiles, the slowest, after every planned decode: the deadline cuts them first.
    rows = []
    for fixed in (False, True):
        for version in args.versions:
            rows += bench_version(version, deadline, fixed)
    header = [
        f"Video VAE decode on {card}, torch {torch.__version__}, full-size VAEs with RANDOM WEIGHTS, bf16.",
        "",
        "| VAE | clip | decode | tiles (time x rows x columns) | seconds | peak GiB | predicted GiB |",
        "|---|---|---|---|---|---|---|",
    ]
    table = "\n".join(header + [_line(row) for row in rows]) + "\n"
    print(table)
    args.out.write_text(table)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
