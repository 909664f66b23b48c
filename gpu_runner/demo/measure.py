"""Measurements on one clip that tell whether a generated clip follows its prompt.

They read only pixels and samples, so they judge a model's output and the world's ground
truth alike, and they are tolerant of what a small model does: soft edges, noise, a blurry
object. Video is (3, frames, height, width) float in [0, 1] (`video_from_frames` converts the
runner's uint8 (frames, height, width, 3)); audio is (channels, samples) in [-1, 1]. Pixel
(i, j) has its centre at x = i, y = j, y down, as `world.centroids` reports.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gpu_runner.demo.world import COLOURS

OBJECT_THRESHOLD = 0.2  # max channel difference from the background, after a 3x3 mean (noise 0.05 -> ~0.017)
WHITE_SATURATION = 0.35  # below this, with value above WHITE_VALUE, the object is white
WHITE_VALUE = 0.6
MIN_DISPLACEMENT = 0.1  # net travel, fraction of the frame's extent, before a direction is reported
CONTACT_TOLERANCE = 0.35  # a contact lies within this fraction of the track's vertical range of its lowest point
MIN_BOUNCE_RANGE = 0.1  # vertical range (fraction of height) below which nothing bounces
MIN_CONTACT_GAP_S = 0.15  # closer lowest points are one contact (a noisy track can split one)
LOWEST_FREQUENCY = 40.0  # Hz; DC and rumble are not a sound's pitch
SILENCE_DB = -120.0  # level_db's floor, for exact zeros
ONSET_WINDOW_S = 0.005  # energy window and the lag the rise is measured over
ONSET_RISE_DB = 9.0  # energy rise that makes an onset
ONSET_FLOOR_DB = -60.0  # windows quieter than this (dBFS) start nothing
REFRACTORY_S = 0.06  # one onset at most per this span


def video_from_frames(frames: torch.Tensor) -> torch.Tensor:
    """The runner's decoded uint8 frames (F, H, W, 3) as a (3, F, H, W) float clip in [0, 1]."""
    return frames.permute(3, 0, 1, 2).float() / 255


def object_mask(video: torch.Tensor) -> torch.Tensor:
    """(F, H, W) bool: pixels whose 3x3 mean differs from the clip's median colour by > OBJECT_THRESHOLD in a channel.

    The object covers a few percent of the frame, so the median is the background; the 3x3 mean
    keeps pixel noise from passing the threshold.
    """
    background = video.flatten(1).median(dim=1).values.view(3, 1, 1, 1)
    smooth = F.avg_pool3d(video[None], (1, 3, 3), stride=1, padding=(0, 1, 1), count_include_pad=False)[0]
    return (smooth - background).abs().amax(0) > OBJECT_THRESHOLD


def _hsv(red: float, green: float, blue: float) -> tuple[float, float, float]:
    high, low = max(red, green, blue), min(red, green, blue)
    spread = high - low
    if spread == 0:
        hue = 0.0
    elif high == red:
        hue = 60 * ((green - blue) / spread % 6)
    elif high == green:
        hue = 60 * ((blue - red) / spread + 2)
    else:
        hue = 60 * ((red - green) / spread + 4)
    return hue, spread / high if high else 0.0, high


def object_hsv(video: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[float, float, float] | None:
    """Hue (degrees), saturation and value of the object's mean colour over the clip; None with no object.
    `mask`: the clip's `object_mask`, where the caller has it already (each costs a median over the clip)."""
    mask = object_mask(video) if mask is None else mask
    if not mask.any():
        return None
    return _hsv(*video[:, mask].mean(1).tolist())


_REFERENCE_HUES = {name: _hsv(*rgb)[0] for name, rgb in COLOURS.items() if name != "white"}


def object_colour(video: torch.Tensor, mask: torch.Tensor | None = None) -> str | None:
    """The colour word nearest the object's mean hue (white when pale and bright); None with no object."""
    hsv = object_hsv(video, mask)
    if hsv is None:
        return None
    hue, saturation, value = hsv
    if saturation < WHITE_SATURATION and value > WHITE_VALUE:
        return "white"
    return min(_REFERENCE_HUES, key=lambda name: abs((hue - _REFERENCE_HUES[name] + 180) % 360 - 180))


def track(video: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(F, 2) centroid (x, y) of the object's pixels per frame; NaN where a frame has none."""
    mask = (object_mask(video) if mask is None else mask).float()
    _, height, width = mask.shape
    count = mask.sum((1, 2))
    x = (mask.sum(1) * torch.arange(width, device=mask.device)).sum(1) / count
    y = (mask.sum(2) * torch.arange(height, device=mask.device)).sum(1) / count
    return torch.stack([x, y], dim=1)  # 0 / 0 = NaN where count is 0


def direction(video: torch.Tensor, path: torch.Tensor | None = None) -> str | None:
    """Which way the object travels (left, right, up, down), or None if under MIN_DISPLACEMENT of the extent.

    The travel is a least-squares line through the track rather than first-to-last frame, so a
    wobbly or briefly lost object still reads; the larger of the two axes (as fractions of the
    frame) wins. A bouncing object can read as up or down: floor_contacts tells bouncing apart.
    `path`: the clip's `track`, where the caller has it already.
    """
    path = track(video) if path is None else path
    _, _, height, width = video.shape
    valid = ~path.isnan().any(1)
    if valid.sum() < 2:
        return None
    t = torch.arange(len(path), dtype=torch.float32, device=path.device)[valid]
    t = t - t.mean()
    points = path[valid] - path[valid].mean(0)
    slope = (t[:, None] * points).sum(0) / (t * t).sum()
    travel = slope * (len(path) - 1) / torch.tensor([width, height], device=path.device)
    axis = int(travel.abs().argmax())
    if travel[axis].abs() < MIN_DISPLACEMENT:
        return None
    return (("left", "right"), ("up", "down"))[axis][int(travel[axis] > 0)]


def floor_contacts(video: torch.Tensor, fps: float, path: torch.Tensor | None = None) -> list[int]:
    """Frames where the object is at a lowest point of its path near the clip's lowest point: floor contacts.

    Frames within CONTACT_TOLERANCE of the vertical range from the lowest y form runs; each run's
    lowest frame is a contact unless it is the clip's first or last frame (a path that merely
    starts or ends low, like "moving down", has no contact). Nothing bounces when the range is
    below MIN_BOUNCE_RANGE of the height; contacts closer than MIN_CONTACT_GAP_S merge. `path`: as `direction`'s.
    """
    y = (track(video) if path is None else path)[:, 1]
    height = video.shape[2]
    valid = ~y.isnan()
    if valid.sum() < 3:
        return []
    lowest, highest = y[valid].max().item(), y[valid].min().item()
    if lowest - highest < MIN_BOUNCE_RANGE * height:
        return []
    near = (valid & (y >= lowest - CONTACT_TOLERANCE * (lowest - highest))).tolist()
    contacts: list[int] = []
    frame = 0
    while frame < len(near):
        if not near[frame]:
            frame += 1
            continue
        end = frame
        while end + 1 < len(near) and near[end + 1]:
            end += 1
        bottom = frame + int(y[frame : end + 1].argmax())
        if 0 < bottom < len(near) - 1:
            if contacts and (bottom - contacts[-1]) / fps < MIN_CONTACT_GAP_S:
                if y[bottom] > y[contacts[-1]]:
                    contacts[-1] = bottom
            else:
                contacts.append(bottom)
        frame = end + 1
    return contacts


def _mono(audio: torch.Tensor) -> torch.Tensor:
    return audio.double().mean(0) if audio.dim() == 2 else audio.double()


def dominant_frequency(audio: torch.Tensor, rate: int) -> float:
    """The strongest frequency above LOWEST_FREQUENCY (Hz): Hann-windowed FFT, 4x zero-padded, peak interpolated.

    Returns 0.0 for silence.
    """
    mono = _mono(audio)
    size = 1 << math.ceil(math.log2(4 * len(mono)))
    spectrum = torch.fft.rfft(mono * torch.hann_window(len(mono), dtype=mono.dtype, device=mono.device), n=size).abs()
    first = math.ceil(LOWEST_FREQUENCY * size / rate)
    if spectrum[first:].max() == 0:
        return 0.0
    peak = first + int(spectrum[first:].argmax())
    offset = 0.0
    if first < peak < len(spectrum) - 1:
        # Parabola through the log magnitudes of the peak and its neighbours (Gaussian interpolation).
        left, centre, right = spectrum[peak - 1 : peak + 2].clamp_min(1e-30).log().tolist()
        curvature = left - 2 * centre + right
        offset = 0.5 * (left - right) / curvature if curvature else 0.0
    return (peak + offset) * rate / size


def level_db(audio: torch.Tensor) -> float:
    """RMS level in dBFS (a full-scale square wave is 0 dB), floored at SILENCE_DB so silence is finite."""
    rms = _mono(audio).square().mean().sqrt().item()
    return max(20 * math.log10(rms) if rms > 0 else SILENCE_DB, SILENCE_DB)


def onsets(audio: torch.Tensor, rate: int) -> list[float]:
    """Seconds at which the sound's energy jumps: clicks, not steady tones.

    Energy in ONSET_WINDOW_S windows every millisecond; a window starts an onset when it is at
    least ONSET_RISE_DB louder than the window one window-length earlier and louder than ONSET_FLOOR_DB.
    The steepest rise within the next window marks the time; then REFRACTORY_S passes before
    the next onset. The clip's start is never an onset (there is nothing before it).
    """
    mono = _mono(audio)
    hop, window = max(1, round(rate / 1000)), max(1, round(ONSET_WINDOW_S * rate))
    if len(mono) < 2 * window:
        return []
    energy = mono.square().unfold(0, window, hop).mean(1)
    level = 10 * torch.log10(energy.clamp_min(1e-14))
    lag = max(1, window // hop)
    rise = torch.full_like(level, -math.inf)
    rise[lag:] = level[lag:] - level[:-lag]
    starts = ((rise >= ONSET_RISE_DB) & (level > ONSET_FLOOR_DB)).nonzero().flatten().tolist()
    times: list[float] = []
    for start in starts:
        if times and start * hop / rate < times[-1] + REFRACTORY_S:
            continue
        steepest = start + int(rise[start : start + lag + 1].argmax())
        times.append(steepest * hop / rate)
    return times


def sync_fraction(
    contact_frames: list[int],
    onset_times: list[float],
    fps: float,
    tolerance_frames: float = 2,
    frames: int | None = None,
) -> float:
    """Matched contact/onset pairs (each used once, within tolerance_frames) over contacts plus unmatched onsets.

    Intersection over union: missing clicks and clicks without a contact both cost, and with
    neither there is nothing in sync, so 0.0. Given the clip's length in `frames`, an unmatched
    onset in the first or last frame's span (before 1 / fps or after (frames - 2) / fps) is not
    counted, because `floor_contacts` cannot see a contact there.
    """
    unused = sorted(onset_times)
    matched = 0
    for frame in sorted(contact_frames):
        time = frame / fps
        nearest = min(unused, key=lambda onset: abs(onset - time), default=None)
        if nearest is not None and abs(nearest - time) <= tolerance_frames / fps:
            unused.remove(nearest)
            matched += 1
    if frames is not None:
        unused = [onset for onset in unused if 1 / fps <= onset <= (frames - 2) / fps]
    total = len(contact_frames) + len(unused)
    return matched / total if total else 0.0
