"""Model specs: what each model accepts and what it does by default.

Plain data plus the checks that follow from it, so the web process (validating a
request) and the runner (re-checking job.json) apply the same rules. Torch-free.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import msgspec

if TYPE_CHECKING:
    from gpu_runner.protocol import ResolvedRequest

Precision = Literal["fp8", "bf16", "fp32"]


class Constraints(msgspec.Struct, frozen=True):
    size_multiple: int = 32  # the video VAE compresses 32x spatially
    min_side: int = 64
    max_side: int = 2048  # RoPE covers 2048 px
    frame_step: int = 8  # the VAE compresses 8x in time, first frame causal: 8k+1 frames
    min_frames: int = 9
    max_frames: int = 481
    max_duration_s: float = 20.0  # RoPE covers ~20 s
    min_fps: float = 1.0
    max_fps: float = 60.0
    min_steps: int = 1
    max_steps: int = 100
    min_guidance: float = 1.0
    max_guidance: float = 20.0
    max_prompt_chars: int = 4000
    max_seed: int = 2**32 - 1


class Defaults(msgspec.Struct, frozen=True):
    """Named like GenerationRequest's fields, so a client can submit them as they are."""

    width: int
    height: int
    num_frames: int
    fps: float
    steps: int
    guidance_scale: float
    negative_prompt: str = ""
    image_strength: float = 1.0


class ModelSpec(msgspec.Struct, frozen=True):
    id: str
    label: str
    kind: Literal["demo", "ltx-2"]
    path: str  # absolute directory of the Diffusers-format weights
    constraints: Constraints
    defaults: Defaults
    presets: tuple[tuple[int, int], ...]  # (width, height) offered by the UI
    fps_choices: tuple[float, ...]
    precision_cuda: Precision
    note: str = ""


DEMO_NOTE = (
    "The demo model is a tiny LTX-2 trained on a synthetic world, so it runs in seconds on a CPU: "
    "one red, green, blue, yellow or white ball or square on a dark background, moving left, right, "
    "up or down, or bouncing, with a high beep, a low hum, silence or clicks. Try \"a red ball "
    "bouncing with clicks\". To generate real clips, point the portal at a Diffusers-format LTX-2 "
    "directory: AVP_MODEL_DIR=/path/to/LTX-2 make run"
)


def demo_spec(path: Path) -> ModelSpec:
    return ModelSpec(
        id="demo",
        label="Demo (tiny, trained on a synthetic world)",
        kind="demo",
        path=str(path),
        constraints=Constraints(),
        defaults=Defaults(width=256, height=160, num_frames=25, fps=24.0, steps=8, guidance_scale=3.0),
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
        defaults=Defaults(
            width=768,
            height=512,
            num_frames=121,
            fps=24.0,
            steps=30,
            guidance_scale=4.0,
            negative_prompt="worst quality, inconsistent motion, blurry, jittery, distorted",
        ),
        presets=((768, 512), (512, 768), (768, 448), (1024, 576), (1280, 704), (704, 1280), (512, 512)),
        fps_choices=(24.0, 25.0, 30.0, 48.0, 50.0),
        precision_cuda="fp8",
    )


def model_specs(demo_dir: Path, model_dir: Path | None) -> dict[str, ModelSpec]:
    """The models this installation offers, the default one first."""
    specs = [demo_spec(demo_dir)]
    if model_dir is not None:
        specs.insert(0, ltx2_spec(model_dir))
    return {spec.id: spec for spec in specs}


# ---- checks -------------------------------------------------------------------------


def _fmt(value: float) -> str:
    """Whole numbers in full (seeds are large), others short: 4294967295, 2.5, 0.1."""
    if isinstance(value, int) or (math.isfinite(value) and value.is_integer()):
        return str(int(value))
    return f"{value:g}"


def valid_frame_counts(c: Constraints, fps: float) -> list[int]:
    """Every frame count the model accepts at this frame rate (8k+1, in range, <= duration limit)."""
    top = min(c.max_frames, max_frames_for_fps(c, fps))
    return list(range(c.min_frames, top + 1, c.frame_step))


def max_frames_for_fps(c: Constraints, fps: float) -> int:
    limit = math.floor(c.max_duration_s * fps) + 1
    return min(c.max_frames, c.min_frames + (limit - c.min_frames) // c.frame_step * c.frame_step)


def _check_side(c: Constraints, name: str, value: int) -> str | None:
    m = c.size_multiple
    if value < c.min_side:
        return f"{value} is below the minimum {c.min_side}"
    if value > c.max_side:
        return f"{value} is above the maximum {c.max_side} (the longest side the model covers)"
    if value % m:
        below = value // m * m
        options = [v for v in (below, below + m) if c.min_side <= v <= c.max_side]
        return f"{value} is not a multiple of {m}; nearest valid: " + " or ".join(map(str, options))
    return None


def _check_frames(c: Constraints, frames: int, fps: float | None) -> str | None:
    if frames < c.min_frames:
        return f"{frames} is below the minimum {c.min_frames}"
    if frames > c.max_frames:
        return f"{frames} is above the maximum {c.max_frames}"
    offset = (frames - c.min_frames) % c.frame_step
    if offset:
        below = frames - offset
        options = [v for v in (below, below + c.frame_step) if v <= c.max_frames]
        return f"{frames} is not {c.frame_step}k+1; nearest valid: " + " or ".join(map(str, options))
    if fps is not None and frames > max_frames_for_fps(c, fps):
        seconds = (frames - 1) / fps
        return (
            f"{frames} frames at {_fmt(fps)} fps last {seconds:.1f} s, over the "
            f"{_fmt(c.max_duration_s)} s limit; at {_fmt(fps)} fps use at most {max_frames_for_fps(c, fps)}"
        )
    return None


def _check_range(value: float, lo: float, hi: float) -> str | None:
    if not (lo <= value <= hi) or math.isnan(value):
        return f"{_fmt(value)} is outside {_fmt(lo)}..{_fmt(hi)}"
    return None


def request_violations(spec: ModelSpec, request: ResolvedRequest) -> list[tuple[str, str]]:
    return violations(
        spec,
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        width=request.width,
        height=request.height,
        num_frames=request.num_frames,
        fps=request.fps,
        steps=request.steps,
        guidance_scale=request.guidance_scale,
        seed=request.seed,
        image_strength=request.image_strength,
    )


def violations(
    spec: ModelSpec,
    *,
    prompt: str,
    negative_prompt: str,
    width: int,
    height: int,
    num_frames: int,
    fps: float,
    steps: int,
    guidance_scale: float,
    seed: int | None,
    image_strength: float,
) -> list[tuple[str, str]]:
    """Every rule the request breaks, as (field, message) pairs; empty when valid."""
    c = spec.constraints
    errors: list[tuple[str, str]] = []

    def add(field: str, message: str | None) -> None:
        if message:
            errors.append((field, message))

    if not prompt.strip():
        add("prompt", "is empty; describe the clip you want")
    elif len(prompt) > c.max_prompt_chars:
        add("prompt", f"is {len(prompt)} characters; the limit is {c.max_prompt_chars}")
    if len(negative_prompt) > c.max_prompt_chars:
        add("negative_prompt", f"is {len(negative_prompt)} characters; the limit is {c.max_prompt_chars}")
    add("width", _check_side(c, "width", width))
    add("height", _check_side(c, "height", height))
    fps_error = _check_range(fps, c.min_fps, c.max_fps)
    add("fps", fps_error)
    add("num_frames", _check_frames(c, num_frames, None if fps_error else fps))
    add("steps", _check_range(steps, c.min_steps, c.max_steps))
    add("guidance_scale", _check_range(guidance_scale, c.min_guidance, c.max_guidance))
    if seed is not None:
        add("seed", _check_range(seed, 0, c.max_seed))
    add("image_strength", _check_range(image_strength, 0.0, 1.0))
    return errors


# Written last by `python -m gpu_runner demo-model <dir>`: its presence means the build completed.
DEMO_MANIFEST = "demo_manifest.json"
