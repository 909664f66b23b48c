"""The video decode's tiles, planned from a memory budget (contract/cost.py): torch-free, by the cost model alone."""

from __future__ import annotations

import pytest

from contract.cost import (
    FRAMES_PER_LATENT,
    PIXELS_PER_LATENT,
    DecodeTiles,
    VaeDecoder,
    decode_peak_gib,
    plan_decode_tiles,
)

LTX2_VAE = VaeDecoder(weights_gib=2.28, width=256, element_bytes=2)  # LTX-2.0's, in bf16
DEMO_VAE = VaeDecoder(weights_gib=0.01, width=32, element_bytes=4)  # the demo's, in float32 on a CPU
# Latent shapes (frames, rows, columns): 481 and 121 frames at 768x448, 121 at 1280x704, a 9-frame clip,
# a tall one and the demo's default 25 frames at 256x160.
SHAPES = [(61, 14, 24), (16, 14, 24), (16, 22, 40), (2, 14, 24), (31, 40, 6), (4, 5, 8)]
BUDGETS_GIB = [0.0, 0.5, 1, 2.3, 2.5, 3, 4, 6, 8, 12, 16, 20, 24, 32, 48, 64, 128]


def tile_voxels(latents: tuple[int, int, int], tiles: DecodeTiles) -> int:
    """Output frames x pixels of the plan's largest tile (within the clip)."""
    frames, rows, columns = latents
    cells = tiles.tile_pixels // PIXELS_PER_LATENT
    tile_frames = min(tiles.tile_frames // FRAMES_PER_LATENT, frames)
    return tile_frames * min(cells, rows) * min(cells, columns)


def spans(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """The tiled decoder's spans (gpu_runner/families/ltx2/tiling.py), restated without torch."""
    starts = [0]
    while starts[-1] + tile < length:
        starts.append(starts[-1] + tile - overlap)
    return [(start, min(start + tile, length)) for start in starts]


def assert_valid(latents: tuple[int, int, int], tiles: DecodeTiles) -> None:
    """Frame- and cell-aligned sizes whose tiles keep a part of their own beyond the overlaps and cover the clip."""
    frames, rows, columns = latents
    for size, overlap, unit, lengths in (
        (tiles.tile_frames, tiles.overlap_frames, FRAMES_PER_LATENT, [frames]),
        (tiles.tile_pixels, tiles.overlap_pixels, PIXELS_PER_LATENT, [rows, columns]),
    ):
        assert size % unit == 0 and overlap % unit == 0, tiles
        tile, shared = size // unit, overlap // unit
        assert tile >= 1 and 0 <= shared <= tile - shared, tiles
        for length in lengths:
            covered = spans(length, tile, shared)
            assert covered[-1][1] == length and all(end > start for start, end in covered), tiles


@pytest.mark.parametrize("vae", [LTX2_VAE, DEMO_VAE], ids=["ltx2", "demo"])
@pytest.mark.parametrize("latents", SHAPES)
def test_the_plan_fits_its_budget_wherever_the_smallest_tiles_do(latents, vae):
    smallest = plan_decode_tiles(latents, vae, budget_gib=0.0)
    for budget in BUDGETS_GIB:
        tiles = plan_decode_tiles(latents, vae, budget)
        assert_valid(latents, tiles)
        if decode_peak_gib(latents, smallest, vae) <= budget:
            assert decode_peak_gib(latents, tiles, vae) <= budget, (budget, tiles)
        else:
            assert tiles == smallest, "a budget nothing fits gets the smallest tiles, not an error"


@pytest.mark.parametrize("vae", [LTX2_VAE, DEMO_VAE], ids=["ltx2", "demo"])
@pytest.mark.parametrize("latents", SHAPES)
def test_more_budget_never_gives_smaller_tiles(latents, vae):
    sizes = [tile_voxels(latents, plan_decode_tiles(latents, vae, budget)) for budget in BUDGETS_GIB]
    assert sizes == sorted(sizes)
    assert sizes[0] < sizes[-1] or latents == (2, 14, 24)  # the budgets do span tiled to whole, bar one tiny clip


@pytest.mark.parametrize("latents", SHAPES)
def test_a_budget_the_whole_clip_fits_gives_one_tile(latents):
    tiles = plan_decode_tiles(latents, LTX2_VAE, budget_gib=1000.0)
    frames, rows, columns = latents

    assert tiles.tile_frames >= FRAMES_PER_LATENT * frames
    assert tiles.tile_pixels >= PIXELS_PER_LATENT * max(rows, columns)
    # And exactly the whole clip's cost is the least budget that does it.
    needed = decode_peak_gib(latents, tiles, LTX2_VAE)
    assert plan_decode_tiles(latents, LTX2_VAE, needed) == tiles
    assert plan_decode_tiles(latents, LTX2_VAE, needed * 0.99) != tiles


def test_a_tiny_budget_still_gives_small_valid_tiles():
    latents = (61, 22, 40)  # 481 frames at 1280x704
    tiles = plan_decode_tiles(latents, LTX2_VAE, budget_gib=0.0)

    assert_valid(latents, tiles)
    assert tiles == DecodeTiles(tile_frames=64, overlap_frames=24, tile_pixels=128, overlap_pixels=64)
    assert decode_peak_gib(latents, tiles, LTX2_VAE) < LTX2_VAE.weights_gib + 1.0


def test_whole_frames_tiled_in_time_come_before_any_spatial_tile():
    # 481 frames at 768x448 where a 12 GiB budget does not hold the whole clip: whole frames, tiled in time,
    # in tiles of even length (not one long and one short).
    latents = (61, 14, 24)
    tiles = plan_decode_tiles(latents, LTX2_VAE, budget_gib=12.0)

    assert tiles.tile_pixels >= 768 and tiles.overlap_pixels == 0
    lengths = [end - start for start, end in spans(61, tiles.tile_frames // 8, tiles.overlap_frames // 8)]
    assert len(lengths) > 1 and max(lengths) - min(lengths) <= len(lengths)
    # Only where even the shortest whole-frame tiles do not fit are frames split in space.
    shortest_whole = DecodeTiles(tile_frames=64, overlap_frames=24, tile_pixels=768, overlap_pixels=0)
    just_under = decode_peak_gib(latents, shortest_whole, LTX2_VAE) - 0.01
    assert plan_decode_tiles(latents, LTX2_VAE, just_under + 0.01).tile_pixels == 768
    assert plan_decode_tiles(latents, LTX2_VAE, just_under).tile_pixels < 768


def test_a_wider_or_float32_vae_costs_more_per_voxel():
    bf16, float32 = VaeDecoder(1.0, 256, 2), VaeDecoder(1.0, 256, 4)
    assert float32.bytes_per_voxel == 2 * bf16.bytes_per_voxel
    assert VaeDecoder(1.0, 32, 2).bytes_per_voxel == bf16.bytes_per_voxel / 8
