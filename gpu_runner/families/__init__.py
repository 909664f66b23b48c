"""Model families: what one kind of model knows, behind the few calls `pipeline.generate` makes.

The pipeline owns the stage skeleton, the caches and the muxing; a family owns its components,
how it encodes a prompt, guides and denoises, decodes, tiles, and predicts its memory. A family
instance is bound to one model's weights (a source). Adding a family: implement `Family` in a
package here and map its contract `ModelSpec.kind`s to it in `FAMILIES`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

# base first: the families import it while this package is still initialising.
from gpu_runner.families.base import Context, Family, OnStepEnd, OnTile
from gpu_runner.families.ltx2 import Ltx2
from gpu_runner.families.ltx2.loading import DiffusersDirectory
from gpu_runner.job import Job
from gpu_runner.weight_cache import WeightCache

__all__ = ["FAMILIES", "Context", "Family", "OnStepEnd", "OnTile", "family_for"]


def _ltx2(model_dir: Path, weight_cache: WeightCache | None) -> Family:
    return Ltx2(DiffusersDirectory(model_dir, weight_cache))


# Contract model kind -> the family that runs it, given the model's directory and the weight cache.
# The demo is LTX-2 at a tiny size: the same family.
FAMILIES: dict[str, Callable[[Path, WeightCache | None], Family]] = {
    "demo": _ltx2,
    "ltx-2": _ltx2,
    "ltx-2.3": _ltx2,
    "ltx-2.5": _ltx2,
}


def family_for(job: Job, weight_cache: WeightCache | None) -> Family:
    return FAMILIES[job.spec.kind](job.model_dir, weight_cache)
