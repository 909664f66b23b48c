"""Model specs and the registry of model kinds: what each model accepts and what it does by default.

Plain data plus the checks that follow from it, so the web process (validating a request) and
the runner (re-checking job.json) apply the same rules. Torch-free.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import msgspec

from contract.request import Constraints, Request, merge, violations

Precision = Literal["fp8", "bf16", "fp32"]
ModelKind = Literal["demo", "ltx-2"]


class ModelSpec(msgspec.Struct, frozen=True):
    id: str
    label: str
    kind: ModelKind
    path: str  # absolute directory of the Diffusers-format weights
    constraints: Constraints
    defaults: Request  # a partial request: what a submitted request leaves out
    presets: tuple[tuple[int, int], ...]  # (width, height) offered by the UI
    fps_choices: tuple[float, ...]
    precision_cuda: Precision
    note: str = ""

    def resolve(self, request: Request, seed: int | None = None) -> Request:
        """`request` with this model's defaults filled in and a seed chosen (`seed`, else a random one)."""
        resolved = merge(msgspec.structs.replace(request, model=self.id), self.defaults)
        if resolved.seed is None:
            chosen = secrets.randbelow(self.constraints.max_seed + 1) if seed is None else seed
            resolved = msgspec.structs.replace(resolved, seed=chosen)
        return resolved

    def violations(self, request: Request) -> list[tuple[str, str]]:
        """Every rule a resolved request breaks, a field the model needs left unset included."""
        unset = [
            (name, "is missing")
            for name in Request.__struct_fields__
            if getattr(request, name) is None and (getattr(self.defaults, name) is not None or name == "seed")
        ]
        return unset + violations(self.constraints, request)


DEMO_NOTE = (
    "The demo model is a tiny LTX-2 trained on a synthetic world, so it runs in seconds on a CPU: "
    "one red, green, blue, yellow or white ball or square on a dark background, moving left, right, "
    'up or down, or bouncing, with a high beep, a low hum, silence or clicks. Try "a red ball '
    'bouncing with clicks". To generate real clips, point the portal at a Diffusers-format LTX-2 '
    "directory: AVP_MODEL_DIR=/path/to/LTX-2 make run"
)


def demo_spec(path: Path) -> ModelSpec:
    return ModelSpec(
        id="demo",
        label="Demo (tiny, trained on a synthetic world)",
        kind="demo",
        path=str(path),
        constraints=Constraints(),
        defaults=Request(
            negative_prompt="",
            width=256,
            height=160,
            num_frames=25,
            fps=24.0,
            steps=8,
            guidance_scale=3.0,
            image_strength=1.0,
        ),
        presets=((256, 160), (160, 256), (224, 224), (320, 192), (512, 288)),
        fps_choices=(24.0, 25.0, 30.0),
        precision_cuda="bf16",
        note=DEMO_NOTE,
    )


def ltx2_spec(path: Path) -> ModelSpec:
    return ModelSpec(
        id="ltx-2",
        label="LTX-2 (" + path.name + ")",
        kind="ltx-2",
        path=str(path),
        constraints=Constraints(),
        defaults=Request(
            width=768,
            height=512,
            num_frames=121,
            fps=24.0,
            steps=30,
            guidance_scale=4.0,
            negative_prompt="worst quality, inconsistent motion, blurry, jittery, distorted",
            image_strength=1.0,
        ),
        presets=((768, 512), (512, 768), (768, 448), (1024, 576), (1280, 704), (704, 1280), (512, 512)),
        fps_choices=(24.0, 25.0, 30.0, 48.0, 50.0),
        precision_cuda="fp8",
    )


# The registry of model kinds: a kind names how to build the spec of a model directory.
MODEL_KINDS: dict[str, Callable[[Path], ModelSpec]] = {"demo": demo_spec, "ltx-2": ltx2_spec}


def model_specs(demo_dir: Path, model_dir: Path | None) -> dict[str, ModelSpec]:
    """The models this installation offers, the default one first."""
    specs = [demo_spec(demo_dir)]
    if model_dir is not None:
        specs.insert(0, ltx2_spec(model_dir))
    return {spec.id: spec for spec in specs}


# Written last by `python -m gpu_runner demo-model <dir>`: its presence means the build completed.
DEMO_MANIFEST = "demo_manifest.json"
