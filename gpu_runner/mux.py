"""Write the MP4: H.264 video and AAC audio, interleaved, moov atom first.

Why not `diffusers.utils.encode_video`: it truncates fractional frame rates to integers
and appends all audio after the video. Here the frame rate is an exact fraction, the
audio lasts exactly as long as the video, and packets alternate in time order so a
browser can play the file while it downloads.
"""

from __future__ import annotations

import heapq
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

AAC_FRAME_SAMPLES = 1024
DEFAULT_CRF = 18  # visually near-lossless; the clips are short, so size matters little


def exact_frame_rate(fps: float) -> Fraction:
    """The nearest fraction with a denominator up to 1001: 24.0 -> 24, 30000/1001 as a float -> 30000/1001."""
    return Fraction(fps).limit_denominator(1001)


def fit_audio(audio: np.ndarray, num_samples: int) -> np.ndarray:
    """Trim or zero-pad (channels, samples) audio to exactly `num_samples`."""
    if audio.shape[1] >= num_samples:
        return audio[:, :num_samples]
    return np.pad(audio, ((0, 0), (0, num_samples - audio.shape[1])))


def write_mp4(
    path: Path,
    frames: np.ndarray,
    fps: float,
    audio: np.ndarray,
    sample_rate: int,
    *,
    crf: int = DEFAULT_CRF,
) -> None:
    """Write `frames` (F, H, W, 3 uint8 RGB) and `audio` ((channels, samples) float in [-1, 1]).

    The file appears at `path` only when complete: it is written under a temporary name
    in the same directory and renamed.
    """
    num_frames, height, width, _ = frames.shape
    rate = exact_frame_rate(fps)
    num_samples = round(Fraction(num_frames) / rate * sample_rate)
    audio = np.ascontiguousarray(np.clip(fit_audio(audio, num_samples), -1.0, 1.0), dtype=np.float32)
    layout = {1: "mono", 2: "stereo"}[audio.shape[0]]

    partial = path.with_name(f".{path.name}.partial")
    try:
        with av.open(str(partial), mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
            video = container.add_stream("libx264", rate=rate)
            video.width, video.height, video.pix_fmt = width, height, "yuv420p"
            video.options = {"crf": str(crf)}
            sound = container.add_stream("aac", rate=sample_rate, layout=layout)

            video_frames = (_video_frame(frames[index], index, rate) for index in range(num_frames))
            audio_frames = (
                _audio_frame(audio[:, start : start + AAC_FRAME_SAMPLES], start, sample_rate, layout)
                for start in range(0, num_samples, AAC_FRAME_SAMPLES)
            )
            for stream, frame in _in_time_order((video, video_frames), (sound, audio_frames)):
                container.mux(stream.encode(frame))
            for stream in (video, sound):
                container.mux(stream.encode(None))  # flush the encoders
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _video_frame(pixels: np.ndarray, index: int, rate: Fraction) -> av.VideoFrame:
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
    frame.pts, frame.time_base = index, 1 / rate
    return frame


def _audio_frame(samples: np.ndarray, start: int, sample_rate: int, layout: str) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="fltp", layout=layout)
    frame.sample_rate, frame.pts, frame.time_base = sample_rate, start, Fraction(1, sample_rate)
    return frame


def _in_time_order(*tracks):
    """Merge (stream, frames) tracks into one sequence of (stream, frame) by presentation time."""
    timed = [_timed(stream, frames) for stream, frames in tracks]
    for _, stream, frame in heapq.merge(*timed, key=lambda item: item[0]):
        yield stream, frame


def _timed(stream, frames):
    for frame in frames:
        yield frame.pts * frame.time_base, stream, frame
