"""An on-disk cache of the transformer as the GPU holds it: FP8-stored, so later jobs skip the bf16 read and the cast.

The first FP8 job of a model reads its bf16 transformer (~38 GB at full size), casts the big
linears to FP8 on the CPU (gpu_runner/fp8.py) and writes the result here as one safetensors
file (~half the size): FP8 weights, their float32 per-row scales, every other tensor as loaded.
Later jobs build the transformer on the meta device, lay it out in FP8 and load the file's
tensors straight onto the GPU, so the CPU never holds the model.

An entry's name covers the component's directory and a fingerprint of its config and weight
files (names, sizes and modification times: a fine-tune has the same names and sizes), the
compute dtype and this module's format version. Writing an entry removes the others of the
same directory, so a model keeps one. An entry is written whole or not at all (`.partial`,
fsync, rename); a missing, truncated or differently laid out file is a miss, and the job loads
the slow way and writes the entry again. The cache never fails a job: a write that cannot
finish (a full disk, say) is logged and skipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from gpu_runner.prompt_cache import model_revision

# Bump when what an entry holds changes meaning (which layers are FP8, how they are scaled).
FORMAT_VERSION = 1

log = logging.getLogger(__name__)


class WeightCache:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def entry(self, component_dir: Path, dtype: torch.dtype) -> CachedWeights:
        """Where the FP8 copy of the component in `component_dir` (e.g. <model>/transformer) is kept."""
        component_dir = component_dir.resolve()
        place = _digest(str(component_dir))
        revision = model_revision(component_dir.parent, (component_dir.name,), modified_times=True)
        content = _digest(json.dumps([FORMAT_VERSION, str(dtype), revision]))
        return CachedWeights(self.directory / f"{place}-{content}.safetensors")


@dataclass(frozen=True)
class CachedWeights:
    path: Path

    def load(self, build: Callable[[], nn.Module], device: torch.device) -> nn.Module | None:
        """The cached model on `device`, or None when the entry is missing, torn or laid out differently.

        `build` makes the model's skeleton: its parameters on the meta device, laid out as the entry
        stores them (FP8 where it holds FP8). It is called only when the entry exists.
        """
        if not self.path.is_file():
            return None
        began = time.monotonic()
        model = build()
        expected = model.state_dict()  # meta tensors: names, shapes and dtypes, no storage
        try:
            with safe_open(self.path, framework="pt", device=str(device)) as stored:
                names = set(stored.keys())
                if names != expected.keys():
                    return _miss(self.path, f"{len(names ^ expected.keys())} tensor names differ")
                tensors = {}
                for name in _in_file_order(self.path):  # sequential reads, for a file not in the page cache
                    tensor = stored.get_tensor(name)
                    wanted = expected[name]
                    if (tensor.shape, tensor.dtype) != (wanted.shape, wanted.dtype):
                        return _miss(self.path, f"{name} is {tensor.dtype}{list(tensor.shape)}")
                    tensors[name] = tensor
        except (OSError, ValueError, SafetensorError) as error:
            return _miss(self.path, str(error))
        model.load_state_dict(tensors, strict=True, assign=True)
        gib = sum(t.numel() * t.element_size() for t in tensors.values()) / 2**30
        seconds = time.monotonic() - began
        log.info("weight cache: loaded %s (%.2f GiB) onto %s in %.1f s", self.path.name, gib, device, seconds)
        return model

    def save(self, model: nn.Module) -> None:
        """Write the model's tensors (on the CPU) as this entry, then drop the other entries of its directory."""
        began = time.monotonic()
        partial = self.path.with_suffix(".partial")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            save_file(model.state_dict(), partial)
            with partial.open("rb") as written:
                os.fsync(written.fileno())  # on disk before it gets its name: a named entry is a whole one
            partial.replace(self.path)
        except (OSError, SafetensorError, ValueError) as error:
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
            log.warning("weight cache: could not write %s (%s); the next job casts again", self.path, error)
            return
        place = self.path.name.split("-")[0]
        for other in self.path.parent.glob(f"{place}-*"):
            if other != self.path:
                other.unlink(missing_ok=True)  # an older revision of this model, or a crashed write
        gib = self.path.stat().st_size / 2**30
        log.info("weight cache: wrote %s (%.2f GiB) in %.1f s", self.path.name, gib, time.monotonic() - began)


def _miss(path: Path, why: str) -> None:
    log.warning("weight cache: %s is unusable (%s); loading the original weights", path.name, why)
    return None


def _in_file_order(path: Path) -> list[str]:
    """A safetensors file's tensor names in the order of their data: its header is 8 bytes of length, then JSON."""
    with path.open("rb") as file:
        header = json.loads(file.read(int.from_bytes(file.read(8), "little")))
    header.pop("__metadata__", None)
    return sorted(header, key=lambda name: header[name]["data_offsets"][0])


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]
