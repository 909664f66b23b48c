"""The demo world: deterministic clips with exact ground truth, and measurements that recover it from the clips.

The measurements must also survive what a small model's clips look like (blur, noise), so
each is checked on degraded clips too.
"""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch
import torch.nn.functional as F

from gpu_runner.demo import measure
from gpu_runner.demo.world import (
    BACKGROUND,
    BEEP_RANGE,
    CLICK_LENGTH_S,
    COLOURS,
    HUM_RANGE,
    LINEAR_MOTIONS,
    MOTIONS,
    SIZE_RANGE,
    TONES,
    VOCABULARY,
    caption,
    centroids,
    contact_times,
    render_audio,
    render_video,
    sample_scenes,
)

WIDTH, HEIGHT, FPS, RATE = 128, 80, 24, 16000
FRAMES = 25  # linear motions
BOUNCE_FRAMES = 49  # two seconds: at least three contacts


def seconds(frames):
    return frames / FPS


def blur(video, sigma=2.0):
    """Separable Gaussian blur of a (3, F, H, W) clip: a generated object's soft edges."""
    taps = torch.arange(-4, 5, dtype=torch.float32)
    kernel = torch.exp(-(taps**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    frames = F.pad(video.transpose(0, 1), (4, 4, 4, 4), mode="replicate")
    frames = F.conv2d(frames, kernel.view(1, 1, 1, 9).expand(3, 1, 1, 9), groups=3)
    frames = F.conv2d(frames, kernel.view(1, 1, 9, 1).expand(3, 1, 9, 1), groups=3)
    return frames.transpose(0, 1)


def degraded(clips, audio, seed):
    """The clips blurred with noise (std 0.05) added, the audio with noise (std 0.02) added."""
    generator = torch.Generator().manual_seed(seed)
    videos = torch.stack([blur(clip) for clip in clips])
    videos = (videos + 0.05 * torch.randn(videos.shape, generator=generator)).clamp(0, 1)
    return videos, audio + 0.02 * torch.randn(audio.shape, generator=generator)


class Clips:
    def __init__(self, scenes, frames):
        self.scenes, self.frames = scenes, frames
        self.video = render_video(scenes, width=WIDTH, height=HEIGHT, frames=frames, fps=FPS)
        self.audio = render_audio(scenes, seconds=seconds(frames), sample_rate=RATE)
        self.noisy_video, self.noisy_audio = degraded(self.video, self.audio, seed=len(scenes))

    def pick(self, noisy):
        video, audio = (self.noisy_video, self.noisy_audio) if noisy else (self.video, self.audio)
        return zip(self.scenes, video, audio, strict=True)


@pytest.fixture(scope="module")
def linear():
    """Every colour with every linear motion, the three tones in turn."""
    scenes = [
        sample_scenes(1, 100 + i, colour=colour, motion=motion, sound=TONES[i % 3])[0]
        for i, (colour, motion) in enumerate(itertools.product(COLOURS, LINEAR_MOTIONS))
    ]
    return Clips(scenes, FRAMES)


@pytest.fixture(scope="module")
def bouncing():
    return Clips(sample_scenes(20, 5, motion="bouncing"), BOUNCE_FRAMES)


# The world.


def test_a_seed_fixes_the_scenes_and_their_clips_and_another_seed_changes_them():
    def clips(seed):
        scenes = sample_scenes(6, seed)
        video = render_video(scenes, width=64, height=48, frames=9, fps=FPS)
        return scenes, video, render_audio(scenes, seconds=0.5, sample_rate=RATE)

    first, again, other = clips(1), clips(1), clips(2)

    assert first[0] == again[0] and first[0] != other[0]
    assert torch.equal(first[1], again[1]) and torch.equal(first[2], again[2])
    assert not torch.equal(first[1], other[1])


def test_fixed_fields_narrow_the_draw_and_contradictions_are_refused():
    assert {(s.colour, s.shape) for s in sample_scenes(10, 0, colour="red", shape="square")} == {("red", "square")}
    assert {s.motion for s in sample_scenes(10, 0, sound="clicks")} == {"bouncing"}
    assert {s.sound for s in sample_scenes(10, 0, motion="bouncing")} == {"clicks"}
    assert {s.motion for s in sample_scenes(30, 0, sound="low hum")} == set(LINEAR_MOTIONS)
    assert {s.motion for s in sample_scenes(60, 0)} == set(MOTIONS)
    for bad in ({"motion": "bouncing", "sound": "low hum"}, {"sound": "clicks", "motion": "moving up"}):
        with pytest.raises(ValueError):
            sample_scenes(1, 0, **bad)
    with pytest.raises(ValueError, match="purple"):
        sample_scenes(1, 0, colour="purple")


def test_clips_have_the_documented_shapes_and_ranges_on_a_plain_dark_background(linear):
    video, audio = linear.video, linear.audio

    assert video.shape == (20, 3, FRAMES, HEIGHT, WIDTH) and video.dtype == torch.float32
    assert video.min() >= 0 and video.max() <= 1
    assert audio.shape == (20, 2, round(seconds(FRAMES) * RATE)) and audio.dtype == torch.float32
    assert audio.abs().max() <= 1 and torch.equal(audio[:, 0], audio[:, 1])
    background = video.flatten(2).median(dim=2).values
    assert torch.allclose(background, torch.tensor(BACKGROUND).expand(20, 3))


def test_the_object_shows_its_colour_at_its_centre(linear, bouncing):
    for clips in (linear, bouncing):
        centres = centroids(clips.scenes, clips.frames, FPS, WIDTH, HEIGHT).round().long()
        for scene, clip, centre in zip(clips.scenes, clips.video, centres, strict=True):
            x, y = centre[0].tolist()
            assert clip[:, 0, y, x].tolist() == pytest.approx(COLOURS[scene.colour])


@pytest.mark.parametrize(("width", "height"), [(256, 160), (96, 96), (160, 256)])
def test_the_object_stays_inside_the_frame_at_any_aspect(width, height):
    scenes = sample_scenes(200, 9)
    path = centroids(scenes, 49, FPS, width, height)
    radius = torch.tensor([s.size * height for s in scenes]).view(-1, 1)
    tolerance = 1e-3

    assert all(SIZE_RANGE[0] <= s.size <= SIZE_RANGE[1] for s in scenes)
    assert (path[..., 0] - radius >= -0.5 - tolerance).all()
    assert (path[..., 0] + radius <= width - 0.5 + tolerance).all()
    assert (path[..., 1] - radius >= -0.5 - tolerance).all()
    assert (path[..., 1] + radius <= height - 0.5 + tolerance).all()


def test_linear_motions_travel_the_named_way_by_the_sampled_distance(linear):
    path = centroids(linear.scenes, FRAMES, FPS, WIDTH, HEIGHT)
    for scene, centres in zip(linear.scenes, path, strict=True):
        net = centres[-1] - centres[0]
        axis, sign = {"left": (0, -1), "right": (0, 1), "up": (1, -1), "down": (1, 1)}[scene.motion.split()[1]]
        extent = (WIDTH, HEIGHT)[axis]
        assert sign * net[axis] == pytest.approx(scene.travel * extent * (FRAMES - 1) / FRAMES, rel=1e-4)
        assert (centres[:, 1 - axis] == centres[0, 1 - axis]).all()


def test_bouncing_touches_the_floor_at_the_contact_times_and_nowhere_else(bouncing):
    # At a tenth of a millisecond's resolution the lowest points are the contacts, with the bottom on the floor.
    for scene in bouncing.scenes:
        duration = seconds(BOUNCE_FRAMES)
        times = contact_times(scene, duration)
        assert len(times) >= 3 and all(0 <= t < duration for t in times)
        assert times[0] < scene.period
        assert all(b - a == pytest.approx(scene.period) for a, b in itertools.pairwise(times))
        fine = centroids([scene], round(duration * 10000), 10000, WIDTH, HEIGHT)[0, :, 1]
        bottom = fine + scene.size * HEIGHT + 0.5
        lowest = ((fine[1:-1] >= fine[:-2]) & (fine[1:-1] > fine[2:])).nonzero().flatten() + 1
        assert (lowest / 10000).tolist() == pytest.approx([t for t in times if t > 1e-4], abs=1.01e-4)
        assert bottom.max() == pytest.approx(HEIGHT, abs=0.1)
        assert fine.min() - scene.size * HEIGHT + 0.5 > 0  # the apex keeps the top inside


def test_the_frame_nearest_each_contact_is_the_lowest(bouncing):
    path = centroids(bouncing.scenes, BOUNCE_FRAMES, FPS, WIDTH, HEIGHT)[..., 1]
    for scene, y in zip(bouncing.scenes, path, strict=True):
        frames = [round(t * FPS) for t in contact_times(scene, seconds(BOUNCE_FRAMES))]
        lowest = [i for i in range(1, BOUNCE_FRAMES - 1) if y[i] > y[i - 1] and y[i] > y[i + 1]]
        assert lowest == [f for f in frames if 0 < f < BOUNCE_FRAMES - 1]


def test_tones_sit_in_their_bands_and_silence_is_exact_zeros(linear):
    for scene, _, audio in linear.pick(noisy=False):
        if scene.sound == "silence":
            assert not audio.any()
            continue
        spectrum = torch.fft.rfft(audio[0, :RATE]).abs()  # one second: 1 Hz bins
        peak = int(spectrum.argmax())
        band = BEEP_RANGE if scene.sound == "high beep" else HUM_RANGE
        assert band[0] - 1 <= peak <= band[1] + 1 and abs(peak - scene.frequency) <= 1
        if scene.sound == "low hum":
            assert spectrum[2 * peak - 2 : 2 * peak + 3].max() < 0.5 * spectrum[peak]
        assert 0.25 < audio.abs().max() <= 0.3


def test_clicks_start_exactly_at_each_contact_and_are_all_a_bouncing_clip_sounds(bouncing):
    for scene, _, audio in bouncing.pick(noisy=False):
        signal = audio[0]
        quiet = torch.ones_like(signal, dtype=torch.bool)
        for t in contact_times(scene, seconds(BOUNCE_FRAMES)):
            start = math.ceil(t * RATE)
            quiet[start : start + round(CLICK_LENGTH_S * RATE)] = False
            assert 0.45 < signal[start : start + RATE // 1000].abs().max() <= 0.6
            assert not signal[max(start - 20, 0) : start].any()
        assert not signal[quiet].any()


def test_captions_use_the_vocabulary_words_and_paraphrase():
    exact = {
        "high beep": ("high beep",),
        "low hum": ("low hum",),
        "silence": ("silence", "silent"),
        "clicks": ("clicks",),
    }
    captions = set()
    for i, scene in enumerate(sample_scenes(40, 3)):
        text = caption(scene, i)
        assert text == caption(scene, random.Random(i))
        assert f"{scene.colour} {scene.shape}" in text and scene.motion in text
        assert any(words in text for words in exact[scene.sound])
        assert set(text.replace(",", " ").replace(":", " ").split()) <= set(VOCABULARY)
        captions.add(text.replace(scene.colour, "C").replace(scene.shape, "S").replace(scene.motion, "M"))
    assert len(captions) >= 10


# The measurements.


@pytest.mark.parametrize("noisy", [False, True], ids=["clean", "degraded"])
def test_object_colour_recovers_the_scene_colour(linear, bouncing, noisy):
    for clips in (linear, bouncing):
        for scene, video, _ in clips.pick(noisy):
            assert measure.object_colour(video) == scene.colour, measure.object_hsv(video)


@pytest.mark.parametrize("noisy", [False, True], ids=["clean", "degraded"])
def test_track_and_direction_follow_linear_motion_and_find_no_floor_contacts(linear, noisy):
    truth = centroids(linear.scenes, FRAMES, FPS, WIDTH, HEIGHT)
    for (scene, video, _), centres in zip(linear.pick(noisy), truth, strict=True):
        assert (measure.track(video) - centres).abs().max() < (1.0 if noisy else 0.5)  # a mask's centroid
        assert measure.direction(video) == scene.motion.split()[1]
        assert measure.floor_contacts(video, FPS) == []


@pytest.mark.parametrize("noisy", [False, True], ids=["clean", "degraded"])
def test_floor_contacts_are_within_a_frame_of_the_true_contacts(bouncing, noisy):
    for scene, video, _ in bouncing.pick(noisy):
        truth = [t * FPS for t in contact_times(scene, seconds(BOUNCE_FRAMES))]
        found = measure.floor_contacts(video, FPS)
        assert all(any(abs(f - t) <= 1 for t in truth) for f in found), (found, truth)
        # Contacts in the first or last frame cannot be told from a path that starts or ends low.
        assert all(any(abs(f - t) <= 1 for f in found) for t in truth if 1 <= round(t) <= BOUNCE_FRAMES - 2)


def test_an_empty_clip_has_no_object_track_or_colour():
    video = torch.tensor(BACKGROUND).view(3, 1, 1, 1).expand(3, 9, 32, 48)
    assert measure.object_colour(video) is None and measure.direction(video) is None
    assert measure.track(video).isnan().all() and measure.floor_contacts(video, FPS) == []


def test_the_runners_uint8_frames_measure_like_the_float_clip(linear):
    scene, video = linear.scenes[0], linear.video[0]
    frames = (video.permute(1, 2, 3, 0) * 255).round().to(torch.uint8)
    converted = measure.video_from_frames(frames)
    assert converted.shape == video.shape and (converted - video).abs().max() <= 0.5 / 255 + 1e-6
    assert measure.object_colour(converted) == scene.colour
    assert measure.direction(converted) == scene.motion.split()[1]


@pytest.mark.parametrize("noisy", [False, True], ids=["clean", "degraded"])
def test_dominant_frequency_and_level_tell_beep_hum_and_silence(linear, noisy):
    tone_levels, silence_levels = [], []
    for scene, _, audio in linear.pick(noisy):
        level = measure.level_db(audio)
        if scene.sound == "silence":
            silence_levels.append(level)
            continue
        tone_levels.append(level)
        frequency = measure.dominant_frequency(audio, RATE)
        band = BEEP_RANGE if scene.sound == "high beep" else HUM_RANGE
        assert band[0] - 0.5 <= frequency <= band[1] + 0.5 and frequency == pytest.approx(scene.frequency, abs=0.5)
    assert all(-16 < level < -13 for level in tone_levels)  # 0.3 sine: -13.5 dBFS
    if noisy:
        assert max(silence_levels) < min(tone_levels) - 15
    else:
        assert silence_levels == [measure.SILENCE_DB] * len(silence_levels)
        assert measure.dominant_frequency(torch.zeros(2, RATE), RATE) == 0.0


@pytest.mark.parametrize("noisy", [False, True], ids=["clean", "degraded"])
def test_onsets_are_the_clicks_within_a_frame_and_steady_sound_has_none(linear, bouncing, noisy):
    for _, _, audio in linear.pick(noisy):
        assert measure.onsets(audio, RATE) == []
    duration = seconds(BOUNCE_FRAMES)
    for scene, _, audio in bouncing.pick(noisy):
        truth = contact_times(scene, duration)
        found = measure.onsets(audio, RATE)
        assert all(any(abs(f - t) <= 1 / FPS for t in truth) for f in found), (found, truth)
        # A click in the first 10 ms has no quiet window before it to rise from.
        assert all(any(abs(f - t) <= 1 / FPS for f in found) for t in truth if t >= 0.01)


@pytest.mark.parametrize("noisy", [False, True], ids=["clean", "degraded"])
def test_sync_fraction_is_one_for_the_world_and_falls_when_sound_and_picture_drift(bouncing, noisy):
    for scene, video, audio in bouncing.pick(noisy):
        truth = contact_times(scene, seconds(BOUNCE_FRAMES))
        frames = [round(t * FPS) for t in truth]
        assert measure.sync_fraction(frames, truth, FPS) == 1.0
        assert measure.sync_fraction([f + 4 for f in frames], truth, FPS) == 0.0  # half the shortest period
        contacts, clicks = measure.floor_contacts(video, FPS), measure.onsets(audio, RATE)
        assert measure.sync_fraction(contacts, clicks, FPS, frames=BOUNCE_FRAMES) == 1.0


def test_sync_fraction_counts_missing_and_extra_clicks_against_sync():
    assert measure.sync_fraction([10, 20], [10 / FPS, 20 / FPS + 1.5 / FPS], FPS) == 1.0
    assert measure.sync_fraction([10, 20], [10 / FPS], FPS) == 0.5
    assert measure.sync_fraction([10], [10 / FPS, 0.9], FPS) == 0.5
    assert measure.sync_fraction([10, 20], [10 / FPS, 0.1], FPS) == pytest.approx(1 / 3)
    assert measure.sync_fraction([10], [10 / FPS, 10.5 / FPS], FPS) == 0.5  # one onset matches one contact
    assert measure.sync_fraction([], [], FPS) == 0.0
    # A click in the first or last frame's span may belong to a contact the video cannot show.
    assert measure.sync_fraction([10], [0.02, 10 / FPS, 0.99], FPS, frames=25) == 1.0
    assert measure.sync_fraction([10], [10 / FPS, 0.9], FPS, frames=25) == 0.5
