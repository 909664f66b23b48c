"""Tiled decoding of LTX-2 video latents: our own tiles, so peak memory stays flat with clip length.

Not diffusers' `enable_tiling()`: its temporal ("framewise") tiles shift every frame after
the first tile by one. Here each tile is planned in latent units with the VAE's causal
alignment (LTX-2 compresses 8x in time): latent frame 0 decodes to frame 0 alone and latent
frame i >= 1 to frames 8i-7 .. 8i, so the latent interval [s, e) holds frames [8s-7, 8e-7)
(from 0 when s = 0). A decode of [s, e) starts with one frame decoded from latent s as if it
were a clip's first, so every temporal tile but the first is decoded from one latent frame
earlier and that extra frame is dropped. Overlapping tiles are blended with linear ramps
whose weights sum to one, along time, height and width; frames are handed out as soon as
no later tile can touch them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from contract.cost import VaeDecoder, vae_width

# The tiles: 64 frames with 24 overlap in time, 512 px with 64 overlap in space.
TILE_FRAMES, OVERLAP_FRAMES = 64, 24
TILE_PIXELS, OVERLAP_PIXELS = 512, 64

OnTile = Callable[[int, int], None]  # (tiles done, tiles in the plan)


@dataclass(frozen=True)
class Span:
    """One tile along one axis in latent units, [start, end), with the latents it shares with its neighbours."""

    start: int
    end: int
    overlap_before: int
    overlap_after: int


def spans(length: int, tile: int, overlap: int) -> list[Span]:
    """Cover [0, length) with tiles of `tile` latents, consecutive tiles sharing exactly `overlap`.

    Only the last tile may be shorter; it still reaches past the previous one's overlap.
    """
    stride = tile - overlap
    starts = [0]
    while starts[-1] + tile < length:
        starts.append(starts[-1] + stride)
    last = len(starts) - 1
    return [
        Span(
            start=start,
            end=min(start + tile, length),
            overlap_before=overlap if index > 0 else 0,
            overlap_after=overlap if index < last else 0,
        )
        for index, start in enumerate(starts)
    ]


def in_latents(tile: int, overlap: int, per_latent: int, axis: str) -> tuple[int, int]:
    """Tile and overlap sizes in frames or pixels -> in latents, refusing sizes the plan cannot honour."""
    if tile % per_latent or overlap % per_latent:
        raise ValueError(f"{axis} tile {tile} and overlap {overlap} must be multiples of {per_latent}")
    tile, overlap = tile // per_latent, overlap // per_latent
    if tile < 1 or not 0 <= overlap <= tile - overlap:
        raise ValueError(f"each {axis} tile must keep a part of its own beyond its overlaps")
    return tile, overlap


@dataclass(frozen=True)
class TilePlan:
    """Every tile of one decode, known before the first is decoded so progress can name the total."""

    times: list[Span]
    rows: list[Span]
    columns: list[Span]
    frames_per_latent: int
    pixels_per_latent: int

    @classmethod
    def for_latents(
        cls,
        latent_shape: tuple[int, ...],
        frames_per_latent: int,
        pixels_per_latent: int,
        *,
        tile_frames: int = TILE_FRAMES,
        overlap_frames: int = OVERLAP_FRAMES,
        tile_pixels: int = TILE_PIXELS,
        overlap_pixels: int = OVERLAP_PIXELS,
    ) -> TilePlan:
        *_, latent_frames, latent_height, latent_width = latent_shape
        temporal = in_latents(tile_frames, overlap_frames, frames_per_latent, "temporal")
        spatial = in_latents(tile_pixels, overlap_pixels, pixels_per_latent, "spatial")
        return cls(
            times=spans(latent_frames, *temporal),
            rows=spans(latent_height, *spatial),
            columns=spans(latent_width, *spatial),
            frames_per_latent=frames_per_latent,
            pixels_per_latent=pixels_per_latent,
        )

    @property
    def total(self) -> int:
        return len(self.times) * len(self.rows) * len(self.columns)

    @property
    def tiled_in_space(self) -> bool:
        return len(self.rows) * len(self.columns) > 1

    def first_frame(self, latent: int) -> int:
        """The first frame latent frame `latent` holds (the causal first latent holds frame 0 alone)."""
        return max(self.frames_per_latent * (latent - 1) + 1, 0)

    def pixels(self, span: Span) -> slice:
        return slice(span.start * self.pixels_per_latent, span.end * self.pixels_per_latent)

    def spatial_weights(self, row: Span, column: Span) -> torch.Tensor:
        """(height, width) blend weights of one spatial tile."""
        rows, columns = (
            ramp(
                (span.end - span.start) * self.pixels_per_latent,
                span.overlap_before * self.pixels_per_latent,
                span.overlap_after * self.pixels_per_latent,
            )
            for span in (row, column)
        )
        return rows[:, None] * columns[None, :]


def decode_tiled(
    vae,
    latents: torch.Tensor,
    on_tile: OnTile,
    *,
    tile_frames: int = TILE_FRAMES,
    overlap_frames: int = OVERLAP_FRAMES,
    tile_pixels: int = TILE_PIXELS,
    overlap_pixels: int = OVERLAP_PIXELS,
) -> Iterator[np.ndarray]:
    """Decode one clip's latents into chunks of (frames, height, width, 3) uint8 RGB.

    `latents` are (1, C, F', H', W'), already denormalised (the pipeline's latent output);
    the chunks, in order, hold 1 + 8(F'-1) frames. `on_tile(done, total)` runs after each
    tile's decode (a place to report progress and to stop). Between chunks the generator
    holds one temporal tile's overlap, whatever the clip's length.
    """
    if latents.shape[0] != 1:
        raise ValueError(f"decode_tiled decodes one clip at a time, not a batch of {latents.shape[0]}")
    plan = TilePlan.for_latents(
        tuple(latents.shape),
        vae.temporal_compression_ratio,
        vae.spatial_compression_ratio,
        tile_frames=tile_frames,
        overlap_frames=overlap_frames,
        tile_pixels=tile_pixels,
        overlap_pixels=overlap_pixels,
    )
    latents = latents.to(device=vae.device, dtype=vae.dtype)
    # A timestep-conditioned VAE decodes at timestep 0 (the pipeline's default decode_timestep).
    timestep = torch.zeros(1, device=latents.device, dtype=latents.dtype) if vae.config.timestep_conditioning else None
    height, width = (size * plan.pixels_per_latent for size in latents.shape[-2:])
    done = 0
    carried: torch.Tensor | None = None  # the previous temporal tile's weighted frames over the shared overlap
    for time in plan.times:
        num_frames = plan.first_frame(time.end) - plan.first_frame(time.start)
        # Whole frames need no buffer to blend spatial tiles into: the decoded tile is the video.
        video = torch.zeros(3, num_frames, height, width, device=latents.device) if plan.tiled_in_space else None
        # Decode from one latent earlier unless at the clip's start; the extra frame is the causal one, dropped.
        read_from = max(time.start - 1, 0)
        for row in plan.rows:
            for column in plan.columns:
                tile = latents[:, :, read_from : time.end, row.start : row.end, column.start : column.end]
                decoded = vae.decode(tile, timestep, return_dict=False)[0][0, :, time.start - read_from :]
                if video is None:
                    video = decoded.float()
                else:
                    weights = plan.spatial_weights(row, column).to(decoded.device)
                    video[:, :, plan.pixels(row), plan.pixels(column)] += decoded.float() * weights
                del decoded
                done += 1
                on_tile(done, plan.total)
        overlap_before, overlap_after = (plan.frames_per_latent * n for n in (time.overlap_before, time.overlap_after))
        video *= ramp(num_frames, overlap_before, overlap_after).to(video.device)[:, None, None]
        if carried is not None:
            video[:, :overlap_before] += carried
        finished = num_frames - overlap_after
        carried = video[:, finished:].clone() if overlap_after else None
        chunk = to_rgb_frames(video[:, :finished])
        del video  # not held while the consumer encodes the chunk
        yield chunk


def decoder_cost(vae) -> VaeDecoder:
    """The VAE as the tile planner (contract/cost.py) sees it: its weights as they are, its width, its dtype."""
    weights_gib = sum(p.numel() * p.element_size() for p in vae.parameters()) / 2**30
    return VaeDecoder(weights_gib, vae_width(vae.config), torch.finfo(vae.dtype).bits // 8)


def ramp(length: int, rise: int, fall: int) -> torch.Tensor:
    """Blend weights over a tile's `length` output units: rising over its first `rise`, falling over its last `fall`.

    Consecutive tiles' ramps over a shared overlap of n units are (k+1)/(n+1) and (n-k)/(n+1),
    so each output unit's weights sum to one and tiles that agree blend to the same value.
    """
    weights = torch.ones(length)
    weights[:rise] = torch.arange(1, rise + 1) / (rise + 1)
    if fall:
        weights[length - fall :] = torch.arange(fall, 0, -1) / (fall + 1)
    return weights


def to_rgb_frames(video: torch.Tensor) -> np.ndarray:
    """Decoded video (3, frames, height, width) in [-1, 1] -> (frames, height, width, 3) uint8 RGB."""
    pixels = ((video.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return pixels.permute(1, 2, 3, 0).cpu().numpy()
