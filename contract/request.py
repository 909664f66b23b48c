"""The generation request, defined once: what a client submits, what a model's defaults are, what a job runs.

One struct serves all three. A submitted request leaves out what it wants the model to choose; a
model's defaults are a partial request of the same type; `merge` fills the first from the second,
field by field, and `violations` checks every field against its rule. So a new request field is
the field below, its rule in `RULES` and, where people should see it, the form's template.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import msgspec


class Request(msgspec.Struct, kw_only=True, frozen=True):
    """A generation request. None: the model's default (a missing seed: a random one, shown afterwards)."""

    prompt: str = ""
    negative_prompt: str | None = None
    model: str | None = None  # a model id from GET /api/models; None: the first one
    width: int | None = None
    height: int | None = None
    num_frames: int | None = None  # 8k+1
    fps: float | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    image_upload_id: str | None = None  # from POST /api/uploads: the clip's first frame is conditioned on it
    image_strength: float | None = None  # 1 keeps the image as it is; lower lets the model change it


FIELDS: tuple[str, ...] = Request.__struct_fields__
# Text fields: a form's blank string is a value here (an empty negative prompt), not "use the default".
TEXT_FIELDS = frozenset(f.name for f in msgspec.structs.fields(Request) if f.type in (str, str | None))


def merge(request: Request, defaults: Request) -> Request:
    """`request` with each field it leaves out (None) taken from `defaults`."""
    filled = {name: getattr(defaults, name) for name in FIELDS if getattr(request, name) is None}
    return msgspec.structs.replace(request, **filled)


def given(request: Request) -> dict[str, Any]:
    """The fields `request` sets, as JSON-ready values (a model's defaults as a client may submit them)."""
    return {k: v for k, v in msgspec.to_builtins(request).items() if v is not None and v != ""}


class Constraints(msgspec.Struct, frozen=True):
    """What a model accepts: the numbers every rule below is checked against."""

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


# ---- the rules: one per field that has one ---------------------------------------------

Rule = Callable[[Constraints, Request], str | None]


def _fmt(value: float) -> str:
    """Whole numbers in full (seeds are large), others short: 4294967295, 2.5, 0.1."""
    if isinstance(value, int) or (math.isfinite(value) and value.is_integer()):
        return str(int(value))
    return f"{value:g}"


def _range(value: float | None, lo: float, hi: float) -> str | None:
    if value is None:
        return None
    if not (lo <= value <= hi) or math.isnan(value):
        return f"{_fmt(value)} is outside {_fmt(lo)}..{_fmt(hi)}"
    return None


def _side(c: Constraints, value: int | None) -> str | None:
    if value is None:
        return None
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


def _text(c: Constraints, value: str | None) -> str | None:
    if value is not None and len(value) > c.max_prompt_chars:
        return f"is {len(value)} characters; the limit is {c.max_prompt_chars}"
    return None


def _prompt(c: Constraints, r: Request) -> str | None:
    if not r.prompt.strip():
        return "is empty; describe the clip you want"
    return _text(c, r.prompt)


def _frames(c: Constraints, r: Request) -> str | None:
    frames = r.num_frames
    if frames is None:
        return None
    if frames < c.min_frames:
        return f"{frames} is below the minimum {c.min_frames}"
    if frames > c.max_frames:
        return f"{frames} is above the maximum {c.max_frames}"
    offset = (frames - c.min_frames) % c.frame_step
    if offset:
        below = frames - offset
        options = [v for v in (below, below + c.frame_step) if v <= c.max_frames]
        return f"{frames} is not {c.frame_step}k+1; nearest valid: " + " or ".join(map(str, options))
    fps = r.fps
    if fps is not None and _range(fps, c.min_fps, c.max_fps) is None and frames > max_frames_for_fps(c, fps):
        seconds = (frames - 1) / fps
        return (
            f"{frames} frames at {_fmt(fps)} fps last {seconds:.1f} s, over the "
            f"{_fmt(c.max_duration_s)} s limit; at {_fmt(fps)} fps use at most {max_frames_for_fps(c, fps)}"
        )
    return None


RULES: dict[str, Rule] = {
    "prompt": _prompt,
    "negative_prompt": lambda c, r: _text(c, r.negative_prompt),
    "width": lambda c, r: _side(c, r.width),
    "height": lambda c, r: _side(c, r.height),
    "num_frames": _frames,
    "fps": lambda c, r: _range(r.fps, c.min_fps, c.max_fps),
    "steps": lambda c, r: _range(r.steps, c.min_steps, c.max_steps),
    "guidance_scale": lambda c, r: _range(r.guidance_scale, c.min_guidance, c.max_guidance),
    "seed": lambda c, r: _range(r.seed, 0, c.max_seed),
    "image_strength": lambda c, r: _range(r.image_strength, 0.0, 1.0),
}


def violations(constraints: Constraints, request: Request) -> list[tuple[str, str]]:
    """Every rule the request breaks, as (field, message) pairs in field order; empty when valid."""
    found = ((name, RULES[name](constraints, request)) for name in FIELDS if name in RULES)
    return [(name, message) for name, message in found if message]


def valid_frame_counts(c: Constraints, fps: float) -> list[int]:
    """Every frame count the model accepts at this frame rate (8k+1, in range, <= duration limit)."""
    top = min(c.max_frames, max_frames_for_fps(c, fps))
    return list(range(c.min_frames, top + 1, c.frame_step))


def max_frames_for_fps(c: Constraints, fps: float) -> int:
    limit = math.floor(c.max_duration_s * fps) + 1
    return min(c.max_frames, c.min_frames + (limit - c.min_frames) // c.frame_step * c.frame_step)
