"""The generation request, defined once: what a client submits, what a model's defaults are, what a job runs.

One struct serves all three. A submitted request leaves out what it wants the model to choose; a
model's defaults are a partial request of the same type; `merge` fills the first from the second,
field by field, and `violations` checks every field against its rule. So a new request field is
the field below, its rule in `RULES` and, where people should see it, the form's template.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import msgspec

# ---- LoRAs (issue 17): a job's choice of LoRAs from GET /api/loras ----------------------------
MAX_LORAS = 4  # contract/loras.py's; kept here so the rules need no file access
LORA_SCALES = (-2.0, 2.0)
LORA_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


class LoraChoice(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One LoRA of a job: its name in GET /api/loras and how strongly it applies (1: as trained; 0: not at all)."""

    name: str
    scale: float = 1.0


# ---- end LoRAs ------------------------------------------------------------------------------


class Keyframe(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """One image the clip passes through: an upload, the output frame it stands at (0 the first, -1 the last), and
    how strictly (1 keeps it as it is; lower lets the model change it)."""

    upload_id: str
    frame: int
    strength: float = 1.0


class Request(msgspec.Struct, kw_only=True, frozen=True):
    """A generation request. None: the model's default (a missing seed: a random one, shown afterwards)."""

    prompt: str = ""
    negative_prompt: str | None = None
    model: str | None = None  # a model id from GET /api/models; None: the first one
    mode: str | None = None  # "fast" or "quality" (MODES); None: the model's default
    width: int | None = None
    height: int | None = None
    num_frames: int | Literal["auto"] | None = None  # 8k+1; AUTO: the model's duration head picks it (LTX-2.5)
    fps: float | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    image_upload_id: str | None = None  # from POST /api/uploads: the clip's first frame is conditioned on it
    image_strength: float | None = None  # 1 keeps the image as it is; lower lets the model change it
    # ---- keyframes (issue 17, point 1): images at chosen output frames; first + last frame is the common case
    keyframes: tuple[Keyframe, ...] | None = None
    # ---- extend (issue 17, point 2): a finished job's id; this job continues its clip from its last frames
    extend_from: str | None = None
    # LoRAs (issue 17): up to MAX_LORAS from GET /api/loras, applied to the transformer at their scales
    loras: tuple[LoraChoice, ...] | None = None
    # ---- LTX-2.5 (issue 16, point 5): the model's prompt enhancer rewrites the prompt before it is encoded
    enhance_prompt: bool | None = None  # None: no


# num_frames' "let the model choose" (issue 16, point 4): the runner's duration head picks the length from the prompt,
# within the model's limits; until then admission, the ETA and the disk check plan for the longest clip (`planned`).
AUTO = "auto"


FIELDS: tuple[str, ...] = Request.__struct_fields__
# "fast": the distilled two-stage path (half size, x2 latent upsample, a short refine at full size, no guidance);
# "quality": one guided stage at full size with the steps and guidance asked for.
MODES = ("fast", "quality")
# What fast mode fixes, so a request must leave it out.
FAST_FIXED = ("steps", "guidance_scale")
# Fast mode's schedule: diffusers' DISTILLED_SIGMA_VALUES at half size, then STAGE_2_DISTILLED_SIGMA_VALUES at full
# size (the runner takes diffusers' lists; a unit test keeps these lengths equal to theirs).
FAST_STEPS = (8, 3)
# Text fields: a form's blank string is a value here (an empty negative prompt), not "use the default".
TEXT_FIELDS = frozenset(
    f.name for f in msgspec.structs.fields(Request) if f.type in (str, str | None) and f.name != "extend_from"
)


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
    fast_size_multiple: int = 64  # fast mode's first stage runs at half size, which must stay on that grid
    min_side: int = 64
    # Fast mode's own floors, where its decoder needs more (LTX-2.5's diffusion decoder: library.decoder_minimum)
    fast_min_side: int = 64
    fast_min_frames: int = 9
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


def _side(c: Constraints, r: Request, value: int | None) -> str | None:
    if value is None:
        return None
    fast = r.mode == "fast"
    m = c.fast_size_multiple if fast else c.size_multiple
    lowest = max(c.min_side, c.fast_min_side) if fast else c.min_side
    if value < lowest:
        return f"{value} is below the minimum {lowest}" + _fast_floor_why(c, lowest, c.min_side)
    if value > c.max_side:
        return f"{value} is above the maximum {c.max_side} (the longest side the model covers)"
    if value % m:
        below = value // m * m
        options = [v for v in (below, below + m) if lowest <= v <= c.max_side]
        why = " (fast mode makes its first stage at half size, on the VAE's 32-pixel grid)" if fast else ""
        return f"{value} is not a multiple of {m}{why}; nearest valid: " + " or ".join(map(str, options))
    return None


def _fast_floor_why(c: Constraints, floor: int, general: int) -> str:
    if floor == general:
        return ""
    return (
        " in fast mode (this model's diffusion decoder attends in windows that must fit the clip; "
        "quality mode goes lower)"
    )


def shortest_clip(c: Constraints, r: Request) -> int:
    """The fewest frames a request of this mode may ask for (8k+1 like every count)."""
    floor = max(c.min_frames, c.fast_min_frames) if r.mode == "fast" else c.min_frames
    return c.min_frames + -(-(floor - c.min_frames) // c.frame_step) * c.frame_step


def _mode(c: Constraints, r: Request) -> str | None:
    if r.mode is not None and r.mode not in MODES:
        return f"{r.mode!r} is not a mode; choose " + " or ".join(map(repr, MODES))
    return None


def _fixed_in_fast_mode(r: Request, value: float | None) -> str | None:
    if r.mode == "fast" and value is not None:
        return (
            f"is fixed in fast mode ({FAST_STEPS[0]} steps at half size, then {FAST_STEPS[1]} at full size, no "
            "guidance); leave it out, or choose mode quality to set it"
        )
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
    if frames is None or frames == AUTO:  # whether the model has a duration head is its spec's check
        return None
    lowest = shortest_clip(c, r)
    if frames < lowest:
        return f"{frames} is below the minimum {lowest}" + _fast_floor_why(c, lowest, c.min_frames)
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


# ---- keyframes: the pipeline places a condition at a latent frame; the web page and the API speak in output frames

MAX_KEYFRAMES = 8


def latent_frames(c: Constraints, num_frames: int) -> int:
    """Latent frames of a clip: the first output frame alone (the causal VAE), then one per `frame_step` frames."""
    return (num_frames - 1) // c.frame_step + 1


def keyframe_frames(c: Constraints, num_frames: int) -> list[int]:
    """The output frames a keyframe may stand at: 0, and the last frame of each later latent frame (8, 16, ...,
    num_frames - 1), so each is one latent frame and the clip's last frame is one of them."""
    return [0, *range(c.frame_step, num_frames, c.frame_step)]


def keyframe_latent_index(c: Constraints, num_frames: int, frame: int) -> int:
    """The latent index (diffusers' LTX2VideoCondition.index) of a valid keyframe frame; -1 is the last frame.
    Latent frame k >= 1 holds output frames 8k-7..8k, so frame f is in latent (f - 1) // 8 + 1."""
    if frame < 0:
        frame += num_frames
    return 0 if frame == 0 else (frame - 1) // c.frame_step + 1


def keyframes_least_frames(c: Constraints, r: Request) -> int:
    """The shortest clip that holds a request's keyframes apart: one past its latest keyframe counted from the start,
    and with a last-frame keyframe (-1), a latent frame more, so the last frame's is the clip's own. A clip whose
    length the model picks (num_frames "auto") is no shorter: the duration head's lower bound."""
    keyframes = r.keyframes or ()
    latest = max((keyframe.frame for keyframe in keyframes if keyframe.frame >= 0), default=0) + 1
    return latest + c.frame_step if any(keyframe.frame < 0 for keyframe in keyframes) else latest


def _keyframes(c: Constraints, r: Request) -> str | None:
    keyframes = r.keyframes
    if not keyframes:
        return None
    if len(keyframes) > MAX_KEYFRAMES:
        return f"has {len(keyframes)} keyframes; the limit is {MAX_KEYFRAMES}"
    if r.extend_from is not None:
        return "cannot be combined with extend_from (an extension starts from the earlier clip's last frames)"
    auto = r.num_frames == AUTO
    if auto:  # the length is the duration head's, at most the longest clip at the request's frame rate
        if r.fps is None or _range(r.fps, c.min_fps, c.max_fps) is not None:
            return None  # fps' own rule speaks
        frames = max_frames_for_fps(c, r.fps)
    elif r.num_frames is None or _frames(c, r) is not None:
        return None  # num_frames' own rule speaks
    else:
        frames = r.num_frames
    valid = keyframe_frames(c, frames)
    taken: dict[int, int] = {}
    for i, keyframe in enumerate(keyframes):
        where = f"keyframes[{i}]"
        frame = keyframe.frame
        if auto and frame < -1:
            return (
                f"{where}.frame {frame} counts from the end of a clip whose length the model picks "
                f'(num_frames "{AUTO}"); only -1, the last frame, can: give the others from the start'
            )
        if not -frames <= frame < frames:
            return _past_the_clip(where, frame, frames, auto)
        absolute = frame + frames if frame < 0 else frame
        if absolute not in valid:
            nearest = min(valid, key=lambda v: (abs(v - absolute), v))
            return (
                f"{where}.frame {frame} is not on a latent frame (a keyframe stands at 0 or a multiple of "
                f"{c.frame_step}, the last frame {frames - 1} included); nearest valid: {nearest}"
            )
        strength = _range(keyframe.strength, 0.0, 1.0)
        if strength:
            return f"{where}.strength {strength}"
        # The last frame of a length still to be picked stands apart from every frame counted from the start
        latent = -1 if auto and frame < 0 else keyframe_latent_index(c, frames, frame)
        if latent in taken:
            at = frame if latent < 0 else absolute
            return f"{where} and keyframes[{taken[latent]}] both stand at frame {at}; keep one image per frame"
        taken[latent] = i
        if latent == 0 and r.image_upload_id is not None:
            return f"{where} stands at frame 0, which image_upload_id already sets; keep one of them"
    if auto and keyframes_least_frames(c, r) > frames:  # a -1 keyframe needs a latent frame after the latest
        i = max(range(len(keyframes)), key=lambda i: keyframes[i].frame)
        return (
            f"keyframes[{i}].frame {keyframes[i].frame} leaves no latent frame after it for the last-frame keyframe "
            f"(-1) within the longest clip the model makes at this frame rate ({frames} frames); use "
            f"{frames - 1 - c.frame_step} or less, or choose num_frames"
        )
    return None


def _past_the_clip(where: str, frame: int, frames: int, auto: bool) -> str:
    if auto:
        return (
            f"{where}.frame {frame} is past the longest clip the model makes at this frame rate ({frames} frames: "
            f'num_frames "{AUTO}" picks no longer); use 0..{frames - 1}, or -1 for the last frame of the length '
            "it picks"
        )
    return f"{where}.frame {frame} is past the clip's {frames} frames; use 0..{frames - 1}, or -1 for the last frame"


# ---- extend: the new part starts from the earlier clip's last frames

EXTEND_OVERLAP = 9  # the earlier clip's last frames (two latent frames) that condition the new part's first ones


def _extend_from(c: Constraints, r: Request) -> str | None:
    if r.extend_from is None:
        return None
    if r.image_upload_id is not None:
        return "cannot be combined with image_upload_id (an extension starts from the earlier clip's last frames)"
    least = EXTEND_OVERLAP + c.frame_step
    if r.num_frames == AUTO:
        return f'cannot be combined with num_frames "{AUTO}"; choose num_frames (at least {least})'
    if r.num_frames is not None and r.num_frames < least:
        return (
            f"needs num_frames of at least {least}: the new part's first {EXTEND_OVERLAP} frames are the earlier "
            f"clip's last ones"
        )


def _loras(c: Constraints, r: Request) -> str | None:
    """The LoRAs' number, names and scales; whether each exists and fits the model is the library's check
    (contract/loras.py), made where the files are."""
    if not r.loras:
        return None
    if len(r.loras) > MAX_LORAS:
        return f"{len(r.loras)} LoRAs given; at most {MAX_LORAS} per job"
    seen: set[str] = set()
    for index, lora in enumerate(r.loras):
        where = f"loras[{index}]"
        if not LORA_NAME.fullmatch(lora.name):
            return (
                f"{where}.name {lora.name[:80]!r} is not a LoRA name: a name from GET /api/loras (letters, digits, "
                "'.', '_', '+', '-'; no path)"
            )
        if lora.name in seen:
            return f"{where}.name {lora.name!r} is given twice; give each LoRA once"
        seen.add(lora.name)
        if problem := _range(lora.scale, *LORA_SCALES):
            return f"{where}.scale {problem}"
    return None


RULES: dict[str, Rule] = {
    "prompt": _prompt,
    "negative_prompt": lambda c, r: _text(c, r.negative_prompt),
    "mode": _mode,
    "width": lambda c, r: _side(c, r, r.width),
    "height": lambda c, r: _side(c, r, r.height),
    "num_frames": _frames,
    "fps": lambda c, r: _range(r.fps, c.min_fps, c.max_fps),
    "steps": lambda c, r: _fixed_in_fast_mode(r, r.steps) or _range(r.steps, c.min_steps, c.max_steps),
    "guidance_scale": lambda c, r: (
        _fixed_in_fast_mode(r, r.guidance_scale) or _range(r.guidance_scale, c.min_guidance, c.max_guidance)
    ),
    "seed": lambda c, r: _range(r.seed, 0, c.max_seed),
    "image_strength": lambda c, r: _range(r.image_strength, 0.0, 1.0),
    "keyframes": _keyframes,
    "extend_from": _extend_from,
    "loras": _loras,
}


def violations(constraints: Constraints, request: Request) -> list[tuple[str, str]]:
    """Every rule the request breaks, as (field, message) pairs in field order; empty when valid."""
    found = ((name, RULES[name](constraints, request)) for name in FIELDS if name in RULES)
    return [(name, message) for name, message in found if message]


def valid_frame_counts(c: Constraints, fps: float) -> list[int]:
    """Every frame count the model accepts at this frame rate (8k+1, in range, <= duration limit)."""
    top = min(c.max_frames, max_frames_for_fps(c, fps))
    return list(range(c.min_frames, top + 1, c.frame_step))


def planned(c: Constraints, r: Request) -> Request:
    """A resolved request as admission, the ETA and the disk check plan it: num_frames AUTO as the longest clip the
    model makes at the request's frame rate (the length is known only once the runner's duration head chose it)."""
    if r.num_frames != AUTO:
        return r
    return msgspec.structs.replace(r, num_frames=max_frames_for_fps(c, r.fps))


def max_frames_for_fps(c: Constraints, fps: float) -> int:
    limit = math.floor(c.max_duration_s * fps) + 1
    return min(c.max_frames, c.min_frames + (limit - c.min_frames) // c.frame_step * c.frame_step)


class DenoiseStage(NamedTuple):
    """One denoising stage of a job: where it runs, at what size, how many steps, with what guidance."""

    name: str  # its protocol stage: "denoise", then "refine" in fast mode
    width: int
    height: int
    steps: int
    guidance_scale: float  # 1: no guidance, one transformer pass a step


def denoise_stages(request: Request) -> tuple[DenoiseStage, ...]:
    """The denoising stages a resolved request runs: fast mode's two, or quality's one."""
    if request.mode == "fast":
        return (
            DenoiseStage("denoise", request.width // 2, request.height // 2, FAST_STEPS[0], 1.0),
            DenoiseStage("refine", request.width, request.height, FAST_STEPS[1], 1.0),
        )
    return (DenoiseStage("denoise", request.width, request.height, request.steps, request.guidance_scale),)
