"""The MP4 writer: exact frames and rate, audio as long as the video, interleaved, moov first."""

from __future__ import annotations

import itertools
from fractions import Fraction

import av
import numpy as np
import pytest

from contract.disk import is_disk_full
from gpu_runner import mux
from tests.runner_fixtures import read_mp4

SAMPLE_RATE = 24000
ONE_AAC_FRAME_S = mux.AAC_FRAME_SAMPLES / SAMPLE_RATE


def moving_gradient(num_frames: int, height: int, width: int) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width]
    frames = [(xs + ys + 8 * index) % 256 for index in range(num_frames)]
    return np.stack([np.stack([f, f[::-1], 255 - f], axis=-1) for f in frames]).astype(np.uint8)


def is_nearest_its_own(decoded: list[np.ndarray], frames: np.ndarray, index: int) -> bool:
    """Whether decoded frame `index` differs less from sent frame `index` than from the sent frames beside it."""
    beside = [i for i in (index - 1, index + 1) if 0 <= i < len(frames)]
    errors = {i: np.abs(decoded[index].astype(int) - frames[i]).mean() for i in [index, *beside]}
    return all(errors[index] < errors[i] for i in beside)


def write_clip(path, frames: np.ndarray, fps: float, audio: np.ndarray, chunk_frames: int = 8, poster=None) -> None:
    """Hand `frames` to the writer in chunks, as the tiled decoder does."""
    with mux.Mp4Writer(path, fps, audio, SAMPLE_RATE, poster=poster) as writer:
        for start in range(0, len(frames), chunk_frames):
            writer.add_frames(frames[start : start + chunk_frames])
        writer.finish()


def tone(seconds: float, channels: int = 2) -> np.ndarray:
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return np.tile(0.3 * np.sin(2 * np.pi * 440 * t), (channels, 1)).astype(np.float32)


@pytest.mark.parametrize("fps", [24.0, 25.0, 30000 / 1001])
def test_video_has_exactly_the_given_frames_size_and_rate(tmp_path, fps):
    path = tmp_path / "video.mp4"
    write_clip(path, moving_gradient(33, 160, 256), fps, tone(33 / fps))

    clip = read_mp4(path)
    assert (clip.video_codec, clip.width, clip.height, len(clip.frames)) == ("h264", 256, 160, 33)
    assert clip.frame_rate == Fraction(fps).limit_denominator(1001)
    assert clip.video_duration_s == pytest.approx(33 / fps, abs=1e-3)


def test_ntsc_rates_are_kept_as_exact_fractions():
    assert mux.exact_frame_rate(30000 / 1001) == Fraction(30000, 1001)
    assert mux.exact_frame_rate(24.0) == 24


@pytest.mark.parametrize("audio_seconds", [0.4, 25 / 24, 3.0], ids=["short", "exact", "long"])
def test_audio_is_trimmed_or_padded_to_the_video_duration(tmp_path, audio_seconds):
    path = tmp_path / "video.mp4"
    write_clip(path, moving_gradient(25, 64, 96), 24.0, tone(audio_seconds))

    clip = read_mp4(path)
    assert (clip.audio_codec, clip.sample_rate, clip.audio_channels) == ("aac", SAMPLE_RATE, 2)
    assert abs(clip.audio_duration_s - 25 / 24) <= ONE_AAC_FRAME_S


def test_mono_audio_stays_mono(tmp_path):
    path = tmp_path / "video.mp4"
    write_clip(path, moving_gradient(9, 64, 64), 24.0, tone(1.0, channels=1))

    assert read_mp4(path).audio_channels == 1


def test_moov_atom_comes_before_the_media_data(tmp_path):
    path = tmp_path / "video.mp4"
    write_clip(path, moving_gradient(25, 64, 96), 24.0, tone(1.0))

    data = path.read_bytes()
    assert 0 < data.index(b"moov") < data.index(b"mdat")


def test_audio_and_video_packets_alternate_in_time_order(tmp_path):
    path = tmp_path / "video.mp4"
    write_clip(path, moving_gradient(97, 64, 64), 24.0, tone(97 / 24))

    with av.open(str(path)) as container:
        # By byte position: the demuxer hands packets out in time order whatever the layout.
        placed = sorted((packet.pos, packet.stream.type) for packet in container.demux() if packet.size)
    order = [kind for _, kind in placed]
    # Neither stream runs ahead of the other: no second (24 packets) of one kind alone.
    longest_run = max(len(list(run)) for _, run in itertools.groupby(order))
    assert longest_run < 24


def test_the_file_appears_only_when_complete(tmp_path, monkeypatch):
    path = tmp_path / "video.mp4"
    real_video_frame = mux._video_frame

    def failing_video_frame(pixels, index, rate):
        if index == 10:
            raise RuntimeError("encoder died")
        return real_video_frame(pixels, index, rate)

    monkeypatch.setattr(mux, "_video_frame", failing_video_frame)
    with pytest.raises(RuntimeError, match="encoder died"):
        write_clip(path, moving_gradient(25, 64, 96), 24.0, tone(1.0))

    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("chunk_frames", [1, 7, 41, 97])
def test_chunks_of_any_size_give_every_frame_and_audio_as_long_as_the_video(tmp_path, chunk_frames):
    path = tmp_path / "video.mp4"
    frames = moving_gradient(97, 64, 64)
    write_clip(path, frames, 30000 / 1001, tone(5.0), chunk_frames=chunk_frames)

    clip = read_mp4(path)
    assert len(clip.frames) == 97
    assert abs(clip.audio_duration_s - 97 * 1001 / 30000) <= ONE_AAC_FRAME_S
    # Lossy, but each decoded frame is nearer the frame handed over at its index than its neighbours.
    assert all(is_nearest_its_own(clip.frames, frames, index) for index in range(97))


def test_leaving_the_writer_without_finishing_leaves_no_file(tmp_path):
    path = tmp_path / "video.mp4"
    with mux.Mp4Writer(path, 24.0, tone(1.0), SAMPLE_RATE) as writer:
        writer.add_frames(moving_gradient(9, 64, 64))

    assert list(tmp_path.iterdir()) == []


def test_a_disk_that_fills_mid_write_raises_its_error_and_leaves_no_partial_file(small_disk):
    disk = small_disk(8)
    disk.fill(leave=256 * 1024)  # room for the start of the clip, not for all of it
    noise = np.random.default_rng(0).integers(0, 256, (49, 160, 256, 3), dtype=np.uint8)  # megabytes at CRF 18

    with pytest.raises(OSError) as failed:
        write_clip(disk.root / "video.mp4", noise, 24.0, tone(2.0))

    assert is_disk_full(failed.value)
    assert sorted(path.name for path in disk.root.iterdir()) == [".filler-0"], "no video, no partial file"
    assert disk.free_bytes() == 256 * 1024, "the partial file's space is given back"


def test_non_finite_audio_samples_become_silence_so_the_encoder_accepts_them():
    from gpu_runner.mux import playable

    audio = np.array([[0.5, np.nan, np.inf, -np.inf, 2.0, -0.25]], dtype=np.float32)
    assert playable(audio).tolist() == [[0.5, 0.0, 0.0, 0.0, 1.0, -0.25]]


def decoded_audio(path) -> np.ndarray:
    """The MP4's soundtrack as (channels, samples) float, as a player hears it."""
    with av.open(str(path)) as container:
        return np.concatenate([frame.to_ndarray() for frame in container.decode(audio=0)], axis=1)


def test_a_soundtrack_shorter_than_the_video_fades_out_instead_of_stopping_with_a_click(tmp_path):
    # A loud tone that stops a little before the video ends, as the model's audio does (~30 ms short).
    path = tmp_path / "video.mp4"
    loud = tone(2.0) / 0.3 * 0.9
    write_clip(path, moving_gradient(25, 64, 96), 24.0, loud[:, : round((25 / 24 - 0.03) * SAMPLE_RATE)])

    audio = decoded_audio(path)[0]
    steepest_in_the_tone = np.abs(np.diff(audio[SAMPLE_RATE // 4 : SAMPLE_RATE // 2])).max()  # 440 Hz at 0.9
    end = round((25 / 24 - 0.03) * SAMPLE_RATE)
    around_the_end = np.abs(np.diff(audio[end - 480 : end + 480]))  # 20 ms each side
    # An abrupt stop is a step of up to 0.9 between two samples (a click); the tone's own steepest is ~0.1.
    assert around_the_end.max() <= 1.2 * steepest_in_the_tone, (around_the_end.max(), steepest_in_the_tone)
    assert np.abs(audio[end + 240 : end + 480]).max() < 0.01, "silence after it"
