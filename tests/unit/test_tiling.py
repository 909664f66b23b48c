"""Tiled decoding: every frame, row and column lands where the untiled VAE would put it.

A fake decoder stands in for the VAE: its latents carry their own position and its pixels
name theirs (red = frame, green = row, blue = column, each mod 256), following the LTX
VAE's causal mapping, and a tile's first frame is garbage unless it is the clip's first,
as the real VAE's is. Any misplaced, unblended, double-counted or kept causal frame shows
up as a wrong value.
"""

from __future__ import annotations

import ctypes
import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from contract.cost import VaeDecoder, plan_decode_tiles
from gpu_runner.demo import world
from gpu_runner.families.ltx2 import Ltx2, tiling

FRAMES_PER_LATENT = 8  # LTX-2's temporal compression; its spatial one is 32
VALID_FRAME_COUNTS = range(9, 482, FRAMES_PER_LATENT)  # 8k + 1, up to 20 s at 24 fps


class PositionDecoder:
    """Decodes (1, 3, F', H', W') latents holding (latent frame, latent row, latent column) per cell.

    Its spatial compression may be smaller than LTX-2's 32x, so that clips split into many
    spatial tiles stay cheap to check.
    """

    dtype, device = torch.float32, torch.device("cpu")
    temporal_compression_ratio = FRAMES_PER_LATENT

    def __init__(self, pixels_per_latent: int = 32, timestep_conditioning: bool = False) -> None:
        self.spatial_compression_ratio = pixels_per_latent
        self.config = SimpleNamespace(timestep_conditioning=timestep_conditioning)
        self.timesteps: list[torch.Tensor | None] = []

    def decode(self, latents: torch.Tensor, timestep: torch.Tensor | None, return_dict: bool):
        assert not return_dict
        self.timesteps.append(timestep)
        first_latent, first_row, first_column = (int(latents[0, channel, 0, 0, 0]) for channel in range(3))
        frames = FRAMES_PER_LATENT * first_latent + torch.arange(1 + FRAMES_PER_LATENT * (latents.shape[2] - 1))
        if first_latent > 0:
            frames[0] += 128  # the causal frame decoded from a mid-clip latent: not fit to keep
        scale = self.spatial_compression_ratio
        rows = scale * first_row + torch.arange(scale * latents.shape[3])
        columns = scale * first_column + torch.arange(scale * latents.shape[4])
        shape = (len(frames), len(rows), len(columns))
        video = torch.stack(
            [
                as_pixel_values(frames)[:, None, None].expand(shape),
                as_pixel_values(rows)[None, :, None].expand(shape),
                as_pixel_values(columns)[None, None, :].expand(shape),
            ]
        )
        return (video[None],)


def as_pixel_values(indices: torch.Tensor) -> torch.Tensor:
    """Indices -> the [-1, 1] values that become `index mod 256` as uint8."""
    return (indices % 256).float() / 255 * 2 - 1


def positional_latents(num_frames: int, height: int, width: int, pixels_per_latent: int = 32) -> torch.Tensor:
    shape = ((num_frames - 1) // FRAMES_PER_LATENT + 1, height // pixels_per_latent, width // pixels_per_latent)
    grids = torch.meshgrid(*(torch.arange(size, dtype=torch.float32) for size in shape), indexing="ij")
    return torch.stack(grids)[None]


def misalignments(frames: np.ndarray) -> dict[str, int]:
    """How many frames, rows and columns hold a value other than their own index."""
    count, height, width, _ = frames.shape
    expected = [np.arange(size) % 256 for size in (count, height, width)]
    return {
        "frames": int(np.any(frames[..., 0] != expected[0][:, None, None], axis=(1, 2)).sum()),
        "rows": int(np.any(frames[..., 1] != expected[1][None, :, None], axis=(0, 2)).sum()),
        "columns": int(np.any(frames[..., 2] != expected[2][None, None, :], axis=(0, 1)).sum()),
    }


# name: (pixels per latent, (height, width), tile sizes (the defaults where none are given)).
# LTX-2's 32x compression where the clip fits one spatial tile; a 4x one where small tiles
# split it many ways, which runs the same code on far fewer pixels.
SMALL_SPATIAL_TILES = {"tile_pixels": 8, "overlap_pixels": 4}
CASES = {
    "32x32-default": (32, (32, 32), {}),
    "32x64-no-temporal-overlap": (32, (32, 64), {"tile_frames": 24, "overlap_frames": 0}),
    "16x24-4x-default": (4, (16, 24), {}),
    "12x8-4x-rows-tiled": (4, (12, 8), SMALL_SPATIAL_TILES),
    "8x20-4x-columns-tiled": (4, (8, 20), SMALL_SPATIAL_TILES),
    "24x36-4x-both-tiled": (4, (24, 36), {"tile_pixels": 12, "overlap_pixels": 4}),
    "8x12-4x-small-temporal": (4, (8, 12), {**SMALL_SPATIAL_TILES, "tile_frames": 16, "overlap_frames": 8}),
}


@pytest.fixture(autouse=True)
def one_thread():
    """The tensors here are tiny: handing them between threads costs more than it saves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def decode_all(decoder: PositionDecoder, latents: torch.Tensor, **tiles) -> np.ndarray:
    return np.concatenate(list(tiling.decode_tiled(decoder, latents, lambda done, total: None, **tiles)))


@pytest.mark.parametrize(("pixels_per_latent", "size", "tiles"), CASES.values(), ids=CASES.keys())
def test_no_frame_row_or_column_is_misaligned_for_any_valid_frame_count(pixels_per_latent, size, tiles):
    height, width = size
    decoder = PositionDecoder(pixels_per_latent)
    for num_frames in VALID_FRAME_COUNTS:
        frames = decode_all(decoder, positional_latents(num_frames, height, width, pixels_per_latent), **tiles)

        assert frames.shape == (num_frames, height, width, 3)
        assert misalignments(frames) == {"frames": 0, "rows": 0, "columns": 0}, num_frames


@pytest.mark.parametrize("num_frames", [9, 65, 137, 481])
def test_the_default_spatial_tiles_align_where_a_clip_needs_several(num_frames):
    # 544 px is the narrowest side LTX-2's 512 px tiles split; the other side stays small for speed.
    frames = decode_all(PositionDecoder(), positional_latents(num_frames, 32, 544))

    assert frames.shape == (num_frames, 32, 544, 3)
    assert misalignments(frames) == {"frames": 0, "rows": 0, "columns": 0}


def test_each_tile_is_reported_against_a_total_known_from_the_first_report():
    decoder, reports = PositionDecoder(4), []
    latents = positional_latents(481, 24, 36, 4)
    tiles = {"tile_pixels": 12, "overlap_pixels": 4}
    plan = tiling.TilePlan.for_latents(tuple(latents.shape), 8, 4, **tiles)

    chunks = list(tiling.decode_tiled(decoder, latents, lambda done, total: reports.append((done, total)), **tiles))

    assert plan.total == len(plan.times) * 3 * 4 == len(decoder.timesteps)
    assert reports == [(done, plan.total) for done in range(1, plan.total + 1)]
    # One chunk per temporal tile, none longer than a tile: frames leave as each tile completes.
    assert len(chunks) == len(plan.times) and max(len(chunk) for chunk in chunks) <= tiling.TILE_FRAMES


def test_a_timestep_conditioned_vae_decodes_every_tile_at_timestep_zero():
    decoder = PositionDecoder(4, timestep_conditioning=True)

    decode_all(decoder, positional_latents(137, 12, 8, 4), **SMALL_SPATIAL_TILES)

    assert decoder.timesteps and all(torch.equal(t, torch.zeros(1)) for t in decoder.timesteps)


@pytest.mark.parametrize(
    "tiles",
    [{"tile_frames": 60}, {"overlap_pixels": 48}, {"tile_frames": 16, "overlap_frames": 16}, {"tile_pixels": 0}],
    ids=["frames-not-a-multiple-of-8", "pixels-not-a-multiple-of-32", "overlap-swallows-the-tile", "empty-tile"],
)
def test_tile_sizes_the_plan_cannot_honour_are_refused(tiles):
    with pytest.raises(ValueError, match="tile"):
        tiling.TilePlan.for_latents((1, 8, 13, 4, 4), 8, 32, **tiles)


# ---- the demo model's real VAE ----------------------------------------------------------

# Tiles small enough that a 97-frame 64x384 clip splits in time (the default 64-frame tiles:
# two) and in width (256 px tiles: two), so both blends run on the real VAE.
DEMO_TILES = {"tile_pixels": 256, "overlap_pixels": 64}
# The trained demo VAE decoding a real world clip (a ball moving right): a tile's decode sees no
# latents beyond its borders while the whole clip's does, so near the overlaps the two differ a
# little (measured: 48.9 dB overall, the worst frame 40.8 dB; 42-62 dB on other clips). A
# one-frame shift, the error diffusers' framewise tiling makes, scores 34.9 dB (31-35 on others).
MIN_PSNR_DB = 38.0
MISALIGNED_PSNR_DB = 36.0


def psnr_db(a: np.ndarray, b: np.ndarray) -> float:
    mean_square = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / mean_square))


@pytest.fixture(scope="module")
def demo_decodes(demo_model_dir):
    """The demo VAE's untiled and tiled decodes of the same world clip's latents."""
    from diffusers import AutoencoderKLLTX2Video

    vae = AutoencoderKLLTX2Video.from_pretrained(demo_model_dir / "vae", torch_dtype=torch.float32).eval()
    scenes = world.sample_scenes(1, seed=4, motion="moving right")
    clip = world.render_video(scenes, width=384, height=64, frames=97, fps=24.0) * 2 - 1
    with torch.no_grad():
        latents = vae.encode(clip).latent_dist.mode()
        untiled = tiling.to_rgb_frames(vae.decode(latents, return_dict=False)[0][0])
        tiled = np.concatenate(list(tiling.decode_tiled(vae, latents, lambda done, total: None, **DEMO_TILES)))
    plan = tiling.TilePlan.for_latents(tuple(latents.shape), 8, 32, **DEMO_TILES)
    assert (len(plan.times), len(plan.rows), len(plan.columns)) == (2, 1, 2)  # both axes really tile
    return untiled, tiled


def test_the_demo_vaes_tiled_decode_agrees_with_its_untiled_one(demo_decodes):
    untiled, tiled = demo_decodes

    assert tiled.shape == untiled.shape == (97, 64, 384, 3)
    assert psnr_db(tiled, untiled) >= MIN_PSNR_DB
    assert psnr_db(tiled[1:], untiled[:-1]) < MISALIGNED_PSNR_DB  # the bound does tell a shifted clip apart


def test_every_tiled_demo_frame_is_nearest_the_untiled_frame_of_its_index(demo_decodes):
    untiled, tiled = demo_decodes

    def nearest(index: int) -> int:
        candidates = range(max(index - 1, 0), min(index + 2, len(untiled)))
        return max(candidates, key=lambda other: psnr_db(tiled[index], untiled[other]))

    assert [nearest(index) for index in range(len(tiled))] == list(range(len(tiled)))


class HeapPeak:
    """The peak of glibc's in-use heap bytes (mallinfo2) over the points a decode passes.

    In-use bytes, not RSS: freed memory the allocator keeps cached would otherwise count, and
    it varies from run to run. Read after every VAE module's forward (its output and inputs
    alive), after every tile and after every chunk: the same points for any clip length, so
    the figures compare exactly; a kernel's scratch inside one module is not seen.
    """

    class _MallInfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks")
        ] + [("fordblks", ctypes.c_size_t), ("keepcost", ctypes.c_size_t)]

    def __init__(self, vae) -> None:
        self._mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
        self._mallinfo2.restype = self._MallInfo2
        self._vae = vae

    def sample(self, *_ignored) -> None:
        info = self._mallinfo2()
        self.peak = max(self.peak, info.uordblks + info.hblkhd)  # heap chunks in use + mmapped chunks (big tensors)

    def __enter__(self) -> HeapPeak:
        self.peak = 0
        self.sample()
        self.baseline = self.peak
        self._hooks = [module.register_forward_hook(self.sample) for module in self._vae.modules()]
        return self

    def __exit__(self, *_exception) -> None:
        for hook in self._hooks:
            hook.remove()

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


def test_decode_memory_does_not_grow_with_clip_length(demo_model_dir):
    from diffusers import AutoencoderKLLTX2Video

    vae = AutoencoderKLLTX2Video.from_pretrained(demo_model_dir / "vae").eval()
    height = width = 128

    def peak_growth(num_frames: int, keep_frames: bool = False) -> int:
        latents = torch.randn(1, vae.config.latent_channels, (num_frames - 1) // 8 + 1, height // 32, width // 32)
        kept = []
        with torch.no_grad(), HeapPeak(vae) as heap:
            for chunk in tiling.decode_tiled(vae, latents, heap.sample):
                kept.append(chunk if keep_frames else len(chunk))
                heap.sample()
        assert sum(map(len, kept) if keep_frames else kept) == num_frames
        return heap.growth

    peak_growth(97)  # first-use allocations (kernels' caches) out of the way
    short, long = peak_growth(97), peak_growth(481)
    # The instrument sees growth: a consumer that keeps every frame (as an untiled decode must) grows.
    short_kept, long_kept = peak_growth(97, keep_frames=True), peak_growth(481, keep_frames=True)

    # The 384 extra frames take 18.0 MiB as uint8. Measured: the streaming peak is 32.4 MiB above
    # the baseline at 97 frames and 32.7 MiB at 481 (one tile's activations), while keeping the
    # frames reaches 49.3 MiB at 481 (the largest activations come early, before most frames exist).
    extra_frames_bytes = (481 - 97) * height * width * 3
    figures = [short, long, short_kept, long_kept]
    figures_mib = dict(zip(["97", "481", "97 kept", "481 kept"], (round(f / 2**20, 1) for f in figures), strict=True))
    assert long - short < extra_frames_bytes / 4, figures_mib
    assert long_kept - short_kept > extra_frames_bytes / 2, figures_mib


# ---- tiles planned from a memory budget (contract/cost.py) ------------------------------

PLANNED_VAE = VaeDecoder(weights_gib=0.0, width=256, element_bytes=2)


@pytest.mark.parametrize("num_frames", [9, 17, 97, 481])
@pytest.mark.parametrize("budget_gib", [0.0, 0.2, 0.5, 2.0, 100.0])
def test_every_planned_tiling_keeps_every_frame_row_and_column_aligned(num_frames, budget_gib):
    # 544x96 splits into spatial tiles at the smallest budgets and into temporal ones at the middle ones.
    latents = positional_latents(num_frames, 96, 544)
    tiles = plan_decode_tiles(tuple(latents.shape[2:]), PLANNED_VAE, budget_gib)

    frames = decode_all(PositionDecoder(), latents, **dataclasses.asdict(tiles))

    assert frames.shape == (num_frames, 96, 544, 3)
    assert misalignments(frames) == {"frames": 0, "rows": 0, "columns": 0}, tiles


def test_the_family_decodes_in_the_tiles_its_budget_allows(demo_model_dir):
    from diffusers import AutoencoderKLLTX2Video

    vae = AutoencoderKLLTX2Video.from_pretrained(demo_model_dir / "vae").eval()
    latents = torch.randn(1, vae.config.latent_channels, 13, 2, 3)  # 97 frames at 96x64

    def tiles_and_frames(budget_gib: float) -> tuple[int, int]:
        reports = []

        def on_tile(done: int, total: int) -> None:
            reports.append(total)

        with torch.no_grad():
            chunks = list(Ltx2(None).decode_video({"vae": vae}, latents, torch.device("cpu"), on_tile, budget_gib))
        return reports[0], sum(map(len, chunks))

    assert tiles_and_frames(1.0) == (1, 97)  # the whole clip fits: one tile, no seams
    assert tiles_and_frames(0.0) == (2, 97)  # nothing fits: the smallest tiles (64 frames), whole frames still
