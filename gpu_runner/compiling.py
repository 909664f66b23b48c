"""torch.compile for a job's repeated blocks: when it applies, and its imports paid ahead of a job.

Generic: a family compiles its denoiser's blocks by `compiles`, and the pipeline announces the
first step's compile by the same function, so the two agree.
"""

from __future__ import annotations

import contextlib
import importlib
from pathlib import Path

import torch

COMPILE_RECOMPILE_LIMIT = 32  # graphs per compiled block: one per guidance pass and clip shape (dynamo's default: 8)


def compiles(device: torch.device, compile_cache: Path | None) -> bool:
    """Whether a job's transformer blocks go through torch.compile: on a CUDA GPU, when the job has a compile cache.

    A family compiles by it and the pipeline announces the first step's compile by it, so the two agree.
    """
    return compile_cache is not None and device.type == "cuda"


def import_compiler() -> None:
    """Import what torch.compile's first use imports (functorch, Inductor, its Triton code generator): ~3 s
    of a GPU job's load_transformer stage and more of its first step, which a spare runner pays before its job.
    Nothing here touches CUDA. A torch built without CUDA never compiles (`compiles`), so it skips them."""
    if not torch.backends.cuda.is_built():
        return
    for module in ("functorch.compile", "torch._dynamo.backends.inductor", "torch._inductor.compile_fx"):
        importlib.import_module(module)
    with contextlib.suppress(ImportError):  # Triton comes with torch's CUDA builds only
        importlib.import_module("torch._inductor.codegen.triton")
