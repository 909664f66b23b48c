"""LoRAs on the runner: read through diffusers' LTX-2 LoRA loader, applied beside the weights as a low-rank path.

A LoRA file's tensors are read with safetensors (never pickle) and handed, as a state dict, to diffusers'
`LTX2LoraLoaderMixin.lora_state_dict`, which turns the original LTX-2 trainer's names (`diffusion_model.`...)
into the transformer's module names. What comes out is one (down, up) pair per linear layer.

Two ways to apply it were measured (bench/lora_bench.py, bench/results/):

- **fused before the FP8 cast** (`fuse_into`): diffusers' loader puts peft's LoRA layers on the bf16
  transformer while it is still on the CPU, `fuse_lora` adds scale x up @ down into each weight, then the FP8 cast
  stores the result. Free per step, but every LoRA set is another FP8 transformer: the weight cache would need an
  entry per model and LoRA set (18 GiB each at full size), a job with a new set reads and casts the bf16 weights
  again (minutes), and fast mode on a dev model, which applies its distilled LoRA to stage 2 alone, would need two
  transformers in one job.
- **a separate low-rank path** (`attach`, kept): each targeted layer, FP8 or not, is wrapped in `LowRank`,
  which adds x @ down.T @ up.T (per group of LoRAs, scales folded into `up`) to the layer's output. The FP8
  weights and their cache entry stay those of the model alone; switching a group on or off between stages is a
  flag; scale 0 is exactly the model; the cost is two thin matmuls per layer and per group, and the LoRAs' own
  bytes in VRAM (rank 32 over every attention projection of the 19B model: about 0.2 GiB).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

# Which part of a LoRA's state dict the transformer takes (diffusers' prefix for it); the connectors' part is
# refused at submit (contract/loras.py), the text side being encoded before the LoRAs are loaded.
TRANSFORMER_PREFIX = "transformer."
DOWN_SUFFIXES = (".lora_A.weight", ".lora_down.weight")
UP_SUFFIXES = (".lora_B.weight", ".lora_up.weight")


@dataclass(frozen=True)
class LoraLayer:
    down: torch.Tensor  # (rank, in)
    up: torch.Tensor  # (out, rank)
    alpha: float  # the LoRA's own scale is alpha / rank


@dataclass(frozen=True)
class LoraWeights:
    name: str
    layers: dict[str, LoraLayer]  # by the transformer's module name


def read_lora(path: Path, name: str | None = None) -> LoraWeights:
    """A LoRA file's transformer layers, through diffusers' LTX-2 loader (names converted to the transformer's)."""
    from diffusers.loaders.lora_pipeline import LTX2LoraLoaderMixin

    with safe_open(str(path), framework="pt", device="cpu") as file:
        metadata = file.metadata() or {}
        raw = {key: file.get_tensor(key) for key in file.keys()}  # noqa: SIM118 (safe_open is no mapping)
    converted = LTX2LoraLoaderMixin.lora_state_dict(raw)
    return LoraWeights(name or path.stem, layers_of(converted, default_alpha(metadata)))


def default_alpha(metadata: dict[str, str]) -> float | None:
    """The alpha diffusers saves in the file's metadata (`lora_adapter_metadata`), None where there is none
    (then alpha is the rank: scale 1, as peft's default)."""
    try:
        adapter = json.loads(metadata.get("lora_adapter_metadata", "{}"))
        return float(adapter["lora_alpha"]) if "lora_alpha" in adapter else None
    except (ValueError, TypeError):
        return None


def layers_of(state: dict[str, torch.Tensor], alpha: float | None = None) -> dict[str, LoraLayer]:
    """(down, up, alpha) per module from a diffusers-named LoRA state dict; keys of other parts are left out."""
    layers = {}
    for key, down in state.items():
        suffix = next((s for s in DOWN_SUFFIXES if key.endswith(s)), None)
        if suffix is None or not key.startswith(TRANSFORMER_PREFIX):
            continue
        stem = key[: -len(suffix)]
        module = stem[len(TRANSFORMER_PREFIX) :]
        up = next((state[stem + u] for u in UP_SUFFIXES if stem + u in state), None)
        if up is None:
            raise ValueError(f"{module} has a down projection but no up projection")
        own = state.get(f"{stem}.alpha")
        rank = down.shape[0]
        layer_alpha = float(own) if own is not None else (alpha if alpha is not None else float(rank))
        layers[module] = LoraLayer(down, up, layer_alpha)
    return layers


class LowRank(nn.Module):
    """A linear layer (nn.Linear or fp8.FP8Linear) plus the low-rank updates of its active groups of LoRAs.

    Each group (the job's LoRAs; fast mode's distilled LoRA for stage 2) is one pair of matrices: the LoRAs'
    down projections stacked, their up projections side by side with scale x alpha / rank folded in, so 4 LoRAs
    cost what one of their summed rank does. Not in the state dict (the weight cache stores the model alone).
    """

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base
        self.groups: list[str] = []
        self.active: tuple[str, ...] = ()

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def add(self, group: str, down: torch.Tensor, up: torch.Tensor) -> None:
        if group in self.groups:
            down = torch.cat([self.get_buffer(f"down_{group}"), down])
            up = torch.cat([self.get_buffer(f"up_{group}"), up], dim=1)
        else:
            self.groups.append(group)
        self.register_buffer(f"down_{group}", down, persistent=False)
        self.register_buffer(f"up_{group}", up, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        for group in self.active:
            down, up = self.get_buffer(f"down_{group}"), self.get_buffer(f"up_{group}")
            out = out + nn.functional.linear(nn.functional.linear(x, down.to(x.dtype)), up.to(x.dtype))
        return out


class NoSuchLayer(ValueError):
    """A LoRA names a layer the transformer lacks or has at another width (the submit check should have said)."""


def attach(
    transformer: nn.Module,
    loras: Sequence[tuple[LoraWeights, float]],
    group: str = "job",
    dtype: torch.dtype | None = None,
) -> int:
    """Wrap every layer the LoRAs touch in `LowRank` and add them, as `group`, at their scales; returns how many
    layers carry them. The group starts active. Raises NoSuchLayer before changing anything where one does not fit."""
    modules = dict(transformer.named_modules())
    for lora, _scale in loras:
        for name, layer in lora.layers.items():
            _check_fits(modules, lora.name, name, layer)
    touched: dict[str, LowRank] = {}
    for lora, scale in loras:
        for name, layer in lora.layers.items():
            wrapped = touched.get(name) or wrap(transformer, name, modules)
            touched[name] = wrapped
            weight_dtype = dtype or _compute_dtype(wrapped.base)
            factor = scale * layer.alpha / layer.down.shape[0]
            home = wrapped.base.weight.device  # beside the layer's weights (a weight-cache load puts them on the GPU)
            down = layer.down.to(home, weight_dtype)
            up = (layer.up.float() * factor).to(home, weight_dtype)
            wrapped.add(group, down, up)
    for wrapped in touched.values():
        if group not in wrapped.active:
            wrapped.active = (*wrapped.active, group)
    return len(touched)


def activate(transformer: nn.Module, groups: Iterable[str]) -> None:
    """Which groups of LoRAs the transformer applies from now on (e.g. stage 2's distilled LoRA)."""
    wanted = tuple(groups)
    for module in transformer.modules():
        if isinstance(module, LowRank):
            module.active = tuple(group for group in module.groups if group in wanted)


def fuse_into(transformer: nn.Module, loras: Sequence[tuple[LoraWeights, float]]) -> None:
    """The alternative bench/lora_bench.py measures: the LoRAs fused into the (bf16, CPU) weights through diffusers'
    peft loader, before the FP8 cast; the transformer is left with plain Linear layers holding the sums."""
    adapters = []
    for index, (lora, _scale) in enumerate(loras):
        state = {}
        for name, layer in lora.layers.items():
            state[f"{name}.lora_A.weight"] = layer.down
            state[f"{name}.lora_B.weight"] = layer.up * (layer.alpha / layer.down.shape[0])
        adapter = f"lora{index}"
        transformer.load_lora_adapter(state, adapter_name=adapter, prefix=None)
        adapters.append(adapter)
    if not adapters:
        return
    transformer.set_adapters(adapters, [scale for _lora, scale in loras])
    transformer.fuse_lora(adapter_names=adapters)
    transformer.unload_lora()


def _check_fits(modules: dict[str, nn.Module], lora: str, name: str, layer: LoraLayer) -> None:
    module = modules.get(name)
    if isinstance(module, LowRank):
        module = module.base
    if module is None or not hasattr(module, "in_features"):
        raise NoSuchLayer(f"LoRA {lora!r} targets {name}, which this transformer has no linear layer for")
    rank, width_in = layer.down.shape
    width_out, rank_up = layer.up.shape
    if (width_in, width_out) != (module.in_features, module.out_features) or rank != rank_up:
        raise NoSuchLayer(
            f"LoRA {lora!r} targets {name} as {width_in}->{width_out}, but it is "
            f"{module.in_features}->{module.out_features} here"
        )


def wrap(transformer: nn.Module, name: str, modules: dict[str, nn.Module] | None = None) -> LowRank:
    """The layer `name` wrapped in LowRank (in place; the wrapper when it is one already)."""
    modules = dict(transformer.named_modules()) if modules is None else modules
    module = modules[name]
    if isinstance(module, LowRank):
        return module
    parent_name, _, child = name.rpartition(".")
    wrapped = LowRank(module)
    setattr(transformer.get_submodule(parent_name) if parent_name else transformer, child, wrapped)
    modules[name] = wrapped
    return wrapped


def _compute_dtype(layer: nn.Module) -> torch.dtype:
    """The dtype the layer computes in: its bias's, else its weight's unless that is FP8 storage (then bf16)."""
    bias = getattr(layer, "bias", None)
    if bias is not None:
        return bias.dtype
    weight = layer.weight
    return torch.bfloat16 if weight.dtype.itemsize == 1 else weight.dtype


def files_gib(paths: list[Path]) -> float:
    """LoRA files' size (held beside the transformer while it denoises: `Family.lora_files`), what the runner adds
    to the predicted peak before admitting the job."""
    return sum(path.stat().st_size for path in paths if path.is_file()) / 2**30
