"""LTX-2.5's diffusion decoder attends within 3D windows; diffusers runs that through FlexAttention unfused.

Unfused, FlexAttention builds the dense token-by-token mask and the full score matrix: at a production grid
(121 frames at 768x448 puts 387k tokens in the decoder's fourth stage and 1.7M in its pixel stage's tiles) that
is hundreds of GiB. `WindowedAttention` replaces diffusers' processor on every decoder attention: above
`EAGER_TOKENS` it builds the block mask with torch.compile (block by block, never dense) and runs the compiled,
fused FlexAttention kernel; small grids (the demo's) keep the eager path, which needs no compiler.
"""

from __future__ import annotations

import functools

import torch
from torch.nn.attention import flex_attention

from gpu_runner.compiling import COMPILE_RECOMPILE_LIMIT

# Above this many tokens the eager path's dense mask and scores (tokens² x (4 x heads + 1) bytes) pass ~1 GiB.
EAGER_TOKENS = 8192


@functools.cache
def _compiled(function):
    """`function` through torch.compile, one graph per grid (each stage and tile shape is its own)."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, COMPILE_RECOMPILE_LIMIT)
    return torch.compile(function, dynamic=False)


def window_mask(grid: tuple[int, int, int], kernel: tuple[int, int, int], device: torch.device, compiled: bool):
    """The BlockMask of a (frames, height, width) grid where each token sees the `kernel` window around it, moved
    inward at the edges so that it always holds the whole kernel (NATTEN's rule, which the decoder was trained on)."""
    frames, height, width = grid
    kernel = tuple(min(k, n) for k, n in zip(kernel, grid, strict=True))
    plane = height * width

    def position(index):
        return index // plane, index // width % height, index % width

    def mask(_batch, _head, query, key):
        inside = None
        for q_pos, k_pos, size, k in zip(position(query), position(key), grid, kernel, strict=True):
            start = torch.clamp(q_pos - k // 2, 0, size - k)
            here = (k_pos >= start) & (k_pos < start + k)
            inside = here if inside is None else inside & here
        return inside

    tokens = frames * plane
    build = _compiled(flex_attention.create_block_mask) if compiled else flex_attention.create_block_mask
    return build(mask, B=None, H=None, Q_LEN=tokens, KV_LEN=tokens, device=device)


class WindowedAttention:
    """A processor for diffusers' LTX2VideoVaeNeighborhoodAttention. It is not diffusers' flex processor, so the
    decoder's stages hand it no mask (`build_block_mask` builds one only for that class): it keeps the last grid's
    mask itself, which every block of a stage shares."""

    def __init__(self) -> None:
        self._mask_key: tuple | None = None
        self._mask = None

    def mask(self, grid: tuple[int, int, int], kernel: tuple[int, int, int], device: torch.device, compiled: bool):
        key = (grid, kernel, device, compiled)
        if key != self._mask_key:
            self._mask = None  # the old one's memory goes before the new one is built
            self._mask = window_mask(grid, kernel, device, compiled)
            self._mask_key = key
        return self._mask

    def __call__(self, attn, hidden_states: torch.Tensor, block_mask=None) -> torch.Tensor:
        batch, frames, height, width, _ = hidden_states.shape
        tokens = frames * height * width
        compiled = tokens > EAGER_TOKENS
        query, key, value = (
            x.reshape(batch, tokens, attn.heads, attn.head_dim).transpose(1, 2) for x in attn.project_qkv(hidden_states)
        )
        mask = self.mask((frames, height, width), attn.kernel_size, hidden_states.device, compiled)
        attend = _compiled(flex_attention.flex_attention) if compiled else flex_attention.flex_attention
        # scale 1: project_qkv has already scaled the query
        out = attend(query, key, value, block_mask=mask, scale=1.0)
        out = out.transpose(1, 2).reshape(batch, frames, height, width, attn.heads * attn.head_dim)
        return attn.to_out[0](out)

    def release(self) -> None:
        self._mask_key = self._mask = None


def use_windowed_attention(decoder: torch.nn.Module) -> WindowedAttention:
    """Give every neighbourhood attention of `decoder` one shared `WindowedAttention` (so a stage's mask is built
    once); `release` it with the decoder."""
    from diffusers.models.autoencoders.ltx2_diffusion_decoder import LTX2VideoVaeNeighborhoodAttention

    processor = WindowedAttention()
    for module in decoder.modules():
        if isinstance(module, LTX2VideoVaeNeighborhoodAttention):
            module.set_processor(processor)
    return processor
