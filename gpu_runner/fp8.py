"""FP8 storage for a transformer's big linears: stored as float8_e4m3fn, upcast per matmul.

Which layers is the model family's choice (LTX-2's: gpu_runner/families/ltx2/loading.py's
`is_fp8_layer`); this module only stores and multiplies them.

Each output row gets its own scale (amax / 448, the largest e4m3 value), so small rows keep
their precision instead of falling into e4m3's subnormal range.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8_DTYPE).max  # 448
# FP8 matmuls pay on big GEMMs only: each one first quantises its activations (several kernels and
# launches), which a GEMM of a few rows does not earn back. Below this many rows (tokens x batch) an
# FP8Linear upcasts its weight instead. The audio stream's linears see tens to hundreds of rows, the
# video's thousands. 0 (FP8 for every GEMM): on an H200 no threshold measured faster (512-4096 rows were
# within noise at 49 frames and 2-3% slower at 481; bench/results/2026-11-26-h200-compiled.md), and
# compiled blocks fuse the quantisation anyway. Kept as a knob for bench/gpu_bench.py's "ours-min-rows".
FP8_MATMUL_MIN_ROWS = 0


class FP8Linear(nn.Module):
    """A Linear whose weight is stored in FP8 with per-row scales and upcast for each matmul."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach()
        if weight.is_meta:  # a skeleton for the weight cache to fill: the layout, without meta arithmetic (~2 s)
            scale = torch.empty(weight.shape[0], 1, dtype=torch.float32, device="meta")
            stored = torch.empty(weight.shape, dtype=FP8_DTYPE, device="meta")
        else:
            stored, scale = quantise_weight(weight)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = nn.Parameter(stored, requires_grad=False)
        self.weight_scale = nn.Parameter(scale, requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)
        self.fp8_matmul = False  # set by use_fp8_matmul on GPUs with FP8 tensor cores

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if takes_fp8_matmul(self.fp8_matmul, x.numel() // x.shape[-1], FP8_MATMUL_MIN_ROWS):
            return _scaled_linear(x, self.weight, self.weight_scale, self.bias)
        weight = self.weight.to(x.dtype) * self.weight_scale.to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return nn.functional.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, storage={FP8_DTYPE}"


def quantise_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear's weight as FP8Linear stores it: e4m3, and one float32 scale per output row (amax / 448)."""
    scale = weight.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX
    return (weight.float() / scale).to(FP8_DTYPE), scale


def takes_fp8_matmul(enabled: bool, rows: int, min_rows: int) -> bool:
    """Whether a matmul of `rows` activation rows runs on the FP8 tensor cores (else the weight is upcast)."""
    return enabled and rows >= min_rows


def _scaled_linear(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None):
    """x @ W.T on FP8 tensor cores: activations quantised per token, weights per row, bf16 out."""
    rows = x.reshape(-1, x.shape[-1])
    count = rows.shape[0]
    padded = -count % 16  # the FP8 GEMM wants row counts in multiples of 16
    if padded:
        rows = nn.functional.pad(rows, (0, 0, 0, padded))
    quantised, scale = _quantise(rows)
    out = torch._scaled_mm(
        quantised, weight.t(), scale_a=scale, scale_b=weight_scale.t(), out_dtype=x.dtype, use_fast_accum=True
    )[:count]
    if bias is not None:
        out = out + bias.to(out.dtype)
    return out.reshape(*x.shape[:-1], out.shape[-1])


def quantise_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows to e4m3 with one float32 scale each (amax / 448)."""
    scale = rows.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX
    return (rows / scale.to(rows.dtype)).to(FP8_DTYPE), scale


_quantise = quantise_rows


@functools.cache
def _fused_quantise():
    return torch.compile(quantise_rows, dynamic=True)


def fuse_quantisation(enabled: bool = True) -> None:
    """Compile the activation quantisation into fused kernels (amax, scale and cast in one pass), or not."""
    global _quantise
    _quantise = _fused_quantise() if enabled else quantise_rows


def fp8_matmul_available(device: torch.device) -> bool:
    """FP8 tensor cores: Ada and Hopper (compute capability 8.9) and newer."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def use_fp8_matmul(model: nn.Module, enabled: bool = True) -> int:
    """Switch every FP8Linear of `model` to (or back from) FP8 matmuls; returns how many."""
    layers = [m for m in model.modules() if isinstance(m, FP8Linear)]
    for layer in layers:
        layer.fp8_matmul = enabled
    return len(layers)


def store_in_fp8(model: nn.Module, selects: Callable[[str], bool], prefix: str = "") -> int:
    """Replace the Linear layers of `model` that `selects` by name in place; returns how many were replaced.

    `prefix` is the model's own name inside the transformer, when it is one block of it
    (e.g. "transformer_blocks.7."), so the selection sees full names.

    Works layer by layer, so at most one layer's full-precision weight is alive beside the
    FP8 copies: call it before moving the model to the GPU (or per block while materialising).
    """
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear) and selects(prefix + name)]
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, FP8Linear(linear))
    return len(targets)
