"""A tiny audio+video world: one coloured ball or square that moves or bounces, with a matching sound.

It is small enough for a tiny model to learn and exact enough to measure: every clip is a
pure function of its `Scene`, scenes are a pure function of a seed, and the ground truth
(centre path, floor contacts) is available to check a generated clip against.

Conventions: video is (B, 3, frames, height, width) in [0, 1]; audio is (B, 2, samples) in
[-1, 1], the same signal in both channels. Frame f shows time f / fps, audio sample n plays
at n / sample_rate, and a clip lasts frames / fps seconds. Image coordinates have y down;
the floor is the bottom edge.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.12, 0.10),
    "green": (0.12, 0.80, 0.20),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.85, 0.10),
    "white": (0.95, 0.95, 0.95),
}
BACKGROUND = (0.04, 0.04, 0.05)
SHAPES = ("ball", "square")
LINEAR_MOTIONS = ("moving left", "moving right", "moving up", "moving down")
MOTIONS = (*LINEAR_MOTIONS, "bouncing")
TONES = ("high beep", "low hum", "silence")  # what a linear motion sounds like
SOUNDS = (*TONES, "clicks")  # "clicks" belongs to bouncing, and only to it

SIZE_RANGE = (0.10, 0.16)  # radius or half side, fraction of frame height
TRAVEL_RANGE = (0.35, 0.60)  # fraction of the frame's extent along the motion
PERIOD_RANGE = (0.35, 0.60)  # seconds between floor contacts
APEX_RANGE = (0.35, 0.70)  # rise above the contact position, fraction of frame height
APEX_MARGIN = 0.02  # the apex is lowered so the top stays this far (height fraction) inside
BEEP_RANGE = (860.0, 900.0)  # Hz
HUM_RANGE = (105.0, 115.0)  # Hz, the fundamental
CLICK_RING_RANGE = (2000.0, 4000.0)  # Hz, the damped sine a click is made of

TONE_AMPLITUDE = 0.3
HUM_HARMONIC = 0.25  # 2nd harmonic relative to the fundamental
CLICK_PEAK = 0.6
CLICK_DECAY_S = 0.0015  # e-folding time; 10 ms is then ~7 time constants, so nothing is cut audibly
CLICK_LENGTH_S = 0.010


@dataclass(frozen=True)
class Scene:
    """One clip's content. Positions are fractions of the free range, so any frame size keeps the object inside.

    `x`/`y`: where the centre starts, 0 = touching the left/top edge, 1 = the right/bottom edge
    (along a linear motion: within the room the travel leaves). `travel`: distance of a linear
    motion over the whole clip, fraction of the frame's width (left/right) or height (up/down).
    `period` (s), `apex` (fraction of height) and `phase` (fraction of a period; the first contact
    is at phase * period) describe bouncing. `frequency`: the beep, the hum's fundamental or the
    click's ring, in Hz. Parameters a scene does not use are 0.
    """

    colour: str
    shape: str
    motion: str
    sound: str
    size: float
    x: float
    y: float
    travel: float = 0.0
    period: float = 0.0
    apex: float = 0.0
    phase: float = 0.0
    frequency: float = 0.0


_FREQUENCIES = {"high beep": BEEP_RANGE, "low hum": HUM_RANGE, "clicks": CLICK_RING_RANGE}


def _pick(options: tuple[str, ...], fixed: str | None, u: float, what: str) -> str:
    if fixed is None:
        return options[min(int(u * len(options)), len(options) - 1)]
    if fixed not in options:
        raise ValueError(f"{what} {fixed!r} is not one of {options}")
    return fixed


def _between(bounds: tuple[float, float], u: float) -> float:
    return bounds[0] + (bounds[1] - bounds[0]) * u


def sample_scenes(
    count: int,
    seed: int,
    *,
    colour: str | None = None,
    shape: str | None = None,
    motion: str | None = None,
    sound: str | None = None,
) -> list[Scene]:
    """`count` random scenes, a pure function of the arguments; fixed fields narrow the draw.

    Every scene draws the same 12 uniforms whatever is fixed, so fixing one field does not shift
    the random stream of the others. Sound "clicks" implies bouncing and bouncing implies clicks.
    """
    if motion == "bouncing" and sound not in (None, "clicks"):
        raise ValueError(f"bouncing clips carry clicks, not {sound!r}")
    if sound == "clicks" and motion not in (None, "bouncing"):
        raise ValueError(f"clicks belong to bouncing, not {motion!r}")
    uniforms = torch.rand(count, 12, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).tolist()
    scenes = []
    for u in uniforms:
        motion_options = MOTIONS if sound is None else ("bouncing",) if sound == "clicks" else LINEAR_MOTIONS
        chosen_motion = _pick(motion_options, motion, u[2], "motion")
        bouncing = chosen_motion == "bouncing"
        chosen_sound = "clicks" if bouncing else _pick(TONES, sound, u[3], "sound")
        size = _between(SIZE_RANGE, u[4])
        highest_apex = min(APEX_RANGE[1], 1 - 2 * size - APEX_MARGIN)
        scenes.append(
            Scene(
                colour=_pick(tuple(COLOURS), colour, u[0], "colour"),
                shape=_pick(SHAPES, shape, u[1], "shape"),
                motion=chosen_motion,
                sound=chosen_sound,
                size=size,
                x=u[5],
                y=0.0 if bouncing else u[6],
                travel=0.0 if bouncing else _between(TRAVEL_RANGE, u[7]),
                period=_between(PERIOD_RANGE, u[8]) if bouncing else 0.0,
                apex=_between((APEX_RANGE[0], highest_apex), u[9]) if bouncing else 0.0,
                phase=u[10] if bouncing else 0.0,
                frequency=_between(_FREQUENCIES[chosen_sound], u[11]) if chosen_sound != "silence" else 0.0,
            )
        )
    return scenes


# Captions: "{a} {colour} {shape} {motion} {with-sound}" and friends. Each sound has phrases
# that follow a motion directly ("with clicks") and bare ones that follow a comma ("clicks").
_SOUND_AFTER_MOTION = {
    "high beep": ("with a high beep", "making a high beep"),
    "low hum": ("with a low hum", "making a low hum"),
    "silence": ("in silence",),
    "clicks": ("with clicks", "making clicks on the floor"),
}
_SOUND_BARE = {
    "high beep": ("high beep", "a high beep"),
    "low hum": ("low hum", "a low hum"),
    "silence": ("silence", "silent"),
    "clicks": ("clicks", "clicks on the floor"),
}
_TEMPLATES = (
    "a {colour} {shape} {motion} {after}",
    "a {colour} {shape} {motion}, {bare}",
    "{colour} {shape}, {motion}, {bare}",
    "the {colour} {shape} is {motion} {after}",
    "one {colour} {shape} {motion} on a dark background, {bare}",
    "{bare}: a {colour} {shape} {motion}",
)


def caption(scene: Scene, rng_or_seed: random.Random | int) -> str:
    """A paraphrase of the scene; the vocabulary's exact words always appear, so prompts stay learnable."""
    rng = rng_or_seed if isinstance(rng_or_seed, random.Random) else random.Random(rng_or_seed)
    template = rng.choice(_TEMPLATES)
    return template.format(
        colour=scene.colour,
        shape=scene.shape,
        motion=scene.motion,
        after=rng.choice(_SOUND_AFTER_MOTION[scene.sound]),
        bare=rng.choice(_SOUND_BARE[scene.sound]),
    )


def _vocabulary() -> tuple[str, ...]:
    texts = [*_TEMPLATES, *COLOURS, *SHAPES, *MOTIONS]
    texts += [phrase for phrases in (*_SOUND_AFTER_MOTION.values(), *_SOUND_BARE.values()) for phrase in phrases]
    words = {word.strip(",:") for text in texts for word in text.split() if not word.startswith("{")}
    return tuple(sorted(words - {""}))


VOCABULARY = _vocabulary()  # every word a caption can use, for a tokenizer to learn whole


def _centres(scenes: list[Scene], times: torch.Tensor, duration: float, width: int, height: int) -> torch.Tensor:
    """Object centres (B, T, 2) as (x, y) in continuous pixels: pixel i spans [i, i + 1)."""
    rows = []
    progress = times / duration
    for scene in scenes:
        r = scene.size * height
        free_x, free_y = max(width - 2 * r, 0.0), max(height - 2 * r, 0.0)
        x = torch.full_like(times, r + scene.x * free_x)
        y = torch.full_like(times, r + scene.y * free_y)
        if scene.motion == "bouncing":
            s = torch.remainder(times / scene.period - scene.phase, 1.0)
            y = height - r - scene.apex * height * 4 * s * (1 - s)
        elif scene.motion in ("moving left", "moving right"):
            travel = min(scene.travel * width, free_x)
            start = r + scene.x * (free_x - travel)
            x = start + travel * progress if scene.motion == "moving right" else width - start - travel * progress
        else:
            travel = min(scene.travel * height, free_y)
            start = r + scene.y * (free_y - travel)
            y = start + travel * progress if scene.motion == "moving down" else height - start - travel * progress
        rows.append(torch.stack([x, y], dim=-1))
    return torch.stack(rows)


def _frame_times(frames: int, fps: float) -> torch.Tensor:
    return torch.arange(frames, dtype=torch.float64) / fps


def centroids(scenes: list[Scene], frames: int, fps: float, width: int, height: int) -> torch.Tensor:
    """Ground-truth centres (B, frames, 2) as (x, y) in pixels, pixel (i, j)'s centre at (i, j) like `measure.track`."""
    return (_centres(scenes, _frame_times(frames, fps), frames / fps, width, height) - 0.5).float()


def contact_times(scene: Scene, seconds: float) -> list[float]:
    """Seconds in [0, seconds) at which the object's bottom touches the floor (none unless bouncing)."""
    if scene.motion != "bouncing":
        return []
    first = scene.phase * scene.period
    return [first + k * scene.period for k in range(math.ceil((seconds - first) / scene.period))]


def render_video(
    scenes: list[Scene], *, width: int, height: int, frames: int, fps: float, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Clips (B, 3, frames, height, width), float32 in [0, 1], with 1-pixel anti-aliased edges."""
    centres = _centres(scenes, _frame_times(frames, fps), frames / fps, width, height).float().to(device)
    reach = torch.tensor([s.size * height + 0.5 for s in scenes], device=device).view(-1, 1, 1, 1)
    ball = torch.tensor([s.shape == "ball" for s in scenes], device=device)
    colour = torch.tensor([COLOURS[s.colour] for s in scenes], device=device)
    background = torch.tensor(BACKGROUND, device=device)
    # Offsets of pixel centres from the object's centre: (B, F, 1, W) and (B, F, H, 1). Each shape
    # is computed only for its own clips (the disc's square root is the costly part).
    dx = (torch.arange(width, device=device) + 0.5).view(1, 1, 1, -1) - centres[..., 0, None, None]
    dy = (torch.arange(height, device=device) + 0.5).view(1, 1, -1, 1) - centres[..., 1, None, None]
    coverage = torch.empty(len(scenes), frames, height, width, device=device)
    coverage[ball] = reach[ball].sub(torch.sqrt(dx[ball].square() + dy[ball].square())).clamp_(0, 1)
    square = ~ball
    coverage[square] = (reach[square] - dx[square].abs()).clamp_(0, 1) * (reach[square] - dy[square].abs()).clamp_(0, 1)
    tint = (colour - background).view(-1, 3, 1, 1, 1)
    return (coverage.unsqueeze(1) * tint).add_(background.view(1, 3, 1, 1, 1))


def render_audio(
    scenes: list[Scene], *, seconds: float, sample_rate: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Soundtracks (B, 2, samples), float32 in [-1, 1]; tones at ~0.3, clicks peaking ~0.6 from each contact on."""
    samples = round(seconds * sample_rate)
    t = torch.arange(samples, device=device, dtype=torch.float64) / sample_rate
    frequency = torch.tensor([s.frequency for s in scenes], device=device, dtype=torch.float64).view(-1, 1)
    phase = 2 * math.pi * frequency * t
    beep = TONE_AMPLITUDE * torch.sin(phase)
    hum = TONE_AMPLITUDE / (1 + HUM_HARMONIC) * (torch.sin(phase) + HUM_HARMONIC * torch.sin(2 * phase))
    # Clicks: one damped sine per contact, contacts padded with NaN (which never start a click).
    contacts = [contact_times(s, seconds) for s in scenes]
    width = max((len(c) for c in contacts), default=0)
    starts = torch.tensor([c + [math.nan] * (width - len(c)) for c in contacts], device=device, dtype=torch.float64)
    since = t.view(1, 1, -1) - starts.view(len(scenes), width, 1)
    ring = torch.exp(-since / CLICK_DECAY_S) * torch.sin(2 * math.pi * frequency.unsqueeze(-1) * since)
    clicks = torch.where((since >= 0) & (since < CLICK_LENGTH_S), ring, 0.0).sum(1) * CLICK_PEAK
    kind = [SOUNDS.index(s.sound) for s in scenes]
    kind = torch.tensor(kind, device=device).view(-1, 1)
    mono = torch.where(kind == 0, beep, torch.where(kind == 1, hum, torch.where(kind == 3, clicks, 0.0)))
    return mono.float().clamp(-1, 1).unsqueeze(1).expand(-1, 2, -1).contiguous()
