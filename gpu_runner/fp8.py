"""FP8 storage for the transformer's big linears: stored as float8_e4m3fn, upcast per matmul.

Which layers: the attention projections (to_q, to_k, to_v, to_out.0) and the feed-forward
linears (net.0.proj, net.2) inside `transformer_blocks`, video, audio and cross-modal alike.
They hold ~95% of the DiT's weights; everything else (embeddings, norms, adaLN, proj_out)
stays in the compute dtype, where a low-precision copy would cost quality for little memory.

Each output row gets its own scale (amax / 448, the largest e4m3 value), so small rows keep
their precision instead of falling into e4m3's subnormal range.
"""

from __future__ import annotations

import re

import torch
from torch import nn

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8_DTYPE).max  # 448
FP8_LAYER = re.compile(r"transformer_blocks\.\d+\.(?:.+\.)?(?:to_q|to_k|to_v|to_out\.0|net\.0\.proj|net\.2)")


class FP8Linear(nn.Module):
    """A Linear whose weight is stored in FP8 with per-row scales and upcast for each matmul."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach()
        scale = weight.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = nn.Parameter((weight.float() / scale).to(FP8_DTYPE), requires_grad=False)
        self.weight_scale = nn.Parameter(scale, requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.to(x.dtype) * self.weight_scale.to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return nn.functional.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, storage={FP8_DTYPE}"


def is_fp8_layer(name: str) -> bool:
    return FP8_LAYER.fullmatch(name) is not None


def store_in_fp8(model: nn.Module, prefix: str = "") -> int:
    """Replace the selected Linear layers of `model` in place; returns how many were replaced.

    `prefix` is the model's own name inside the transformer, when it is one block of it
    (e.g. "transformer_blocks.7."), so the selection sees full names.

    Works layer by layer, so at most one layer's full-precision weight is alive beside the
    FP8 copies: call it before moving the model to the GPU (or per block while materialising).
    """
    targets = [
        (name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear) and is_fp8_layer(prefix + name)
    ]
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, FP8Linear(linear))
    return len(targets)
