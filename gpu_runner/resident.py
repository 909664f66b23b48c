"""Warm mode (AVP_KEEP_WARM_S): what a runner keeps loaded between jobs of one model, and where it keeps it.

The portal hands a warm runner its next job only where that job's model is the one it holds (app/runner.py); here
each component is still keyed by what it was loaded from (the model directory, the component's files with their
sizes and modification times, the dtype and precision, the device), so a model changed on disk loads again and
an older copy goes before its successor loads. Between jobs the weights wait in the process's RAM: `park` moves
them off the GPU wherever a runner without warm mode frees them (the transformer before the decode, the audio
decoders after theirs, everything at the end of a job that succeeded), so the job's peak on its card is the one
admission predicted.

A transformer that carries a job's LoRAs is not kept (their low-rank paths wrap its layers): such a job loads a
fresh one and drops the resident copy. Off (`enabled` False, every runner without AVP_KEEP_WARM_S) `load` just
loads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from contract import protocol

WEIGHTS_RESIDENT = protocol.WEIGHTS_RESIDENT  # the loading stages' note when what they load is held here


class Resident:
    """The components a warm runner holds, by key; the first element of a key names the component."""

    def __init__(self) -> None:
        self.enabled = False
        self._held: dict[tuple, Any] = {}

    def load(self, key: tuple, loader: Callable[[], Any]) -> Any:
        """The component held under `key`, else `loader()` (kept under `key` while warm mode is on)."""
        if not self.enabled:
            return loader()
        held = self._held.get(key)
        if held is not None:
            return held
        self.drop(key[0])  # another version of it (other files, dtype, device): gone before its successor loads
        self._held[key] = component = loader()
        return component

    def drop(self, component: str) -> None:
        """Forget every held version of `component` (the memory goes with the job's last reference)."""
        self._held = {key: held for key, held in self._held.items() if key[0] != component}

    def holds(self, keys: tuple[tuple, ...]) -> bool:
        """Whether every one of `keys` is held: `load` would take each from here."""
        return all(key in self._held for key in keys)

    def park(self) -> None:
        """Every held module that is on a GPU goes to the CPU (a no-op on a CPU host)."""
        for held in self._held.values():
            for module in modules_of(held):
                if any(p.device.type != "cpu" for p in module.parameters()):
                    module.to("cpu")


def modules_of(held: Any) -> list[nn.Module]:
    """A held module, or a held pipeline's module components."""
    if isinstance(held, nn.Module):
        return [held]
    components = getattr(held, "components", {})
    return [part for part in components.values() if isinstance(part, nn.Module)]


def compiled(module: nn.Module) -> bool:
    """Whether `module`'s repeated blocks were compiled by an earlier job of this process (their graphs are kept)."""
    blocks = getattr(module, "transformer_blocks", None) or []
    return any(getattr(block, "_compiled_call_impl", None) is not None for block in blocks)


RESIDENT = Resident()  # the process's one store: a runner runs one job at a time


# A CUDA context's own memory on the card (driver, kernels' code): not in torch's figures; about this on an H100
CUDA_CONTEXT_GIB = 0.5


def held_device_gib() -> float | None:
    """GPU memory the idle process keeps: the allocator's reservation plus its CUDA context (an estimate); None
    where CUDA never started (a CPU job)."""
    if not torch.cuda.is_initialized():
        return None
    return round(torch.cuda.memory_reserved() / 2**30 + CUDA_CONTEXT_GIB, 3)
