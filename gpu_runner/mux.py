"""Write the MP4: H.264 video and AAC audio, interleaved, moov atom first.

Why not `diffusers.utils.encode_video`: it truncates fractional frame rates to integers
and appends all audio after the video. Here the frame rate is an exact fraction, the
audio lasts exactly as long as the video, and packets alternate in time order so a
browser can play the file while it downloads. Frames arrive in chunks while the video is
still being decoded, so the whole clip is never held in memory.
"""

from __future__ import annotations

import contextlib
import logging
import os
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import av  # imported where a clip is muxed: PyAV loads FFmpeg (~0.1 s), needed only at a job's end

    from gpu_runner.poster import PosterFrame

log = logging.getLogger(__name__)

AAC_FRAME_SAMPLES = 1024
DEFAULT_CRF = 18  # visually near-lossless; the clips are short, so size matters little
# x264's veryfast: about 4x medium's speed (x264's default) for a file of the same size at this CRF
# (bench/encode_bench.py). The encode runs inside the decode_video stage, and at medium it took most of a fast
# 481-frame job's 20 s on an H100 box (bench/results/2026-12-06-h100-two-stage.md).
DEFAULT_PRESET = "veryfast"
FADE_OUT_S = 0.005  # the soundtrack's last 5 ms fade to silence (see faded_out)


def exact_frame_rate(fps: float) -> Fraction:
    """The nearest fraction with a denominator up to 1001: 24.0 -> 24, 30000/1001 as a float -> 30000/1001."""
    return Fraction(fps).limit_denominator(1001)


def fit_audio(audio: np.ndarray, num_samples: int) -> np.ndarray:
    """Trim or zero-pad (channels, samples) audio to exactly `num_samples`."""
    if audio.shape[1] >= num_samples:
        return audio[:, :num_samples]
    return np.pad(audio, ((0, 0), (0, num_samples - audio.shape[1])))


def faded_out(audio: np.ndarray, samples: int) -> np.ndarray:
    """`audio` with its last `samples` samples faded to silence along a half cosine.

    The model's soundtrack ends a few tens of milliseconds before the video and is padded with
    silence: a loud one would stop mid-wave, a step that plays as a click.
    """
    samples = min(samples, audio.shape[1])
    if samples:
        audio = audio.copy()
        audio[:, -samples:] *= (0.5 + 0.5 * np.cos(np.linspace(0.0, np.pi, samples))).astype(audio.dtype)
    return audio


def playable(audio: np.ndarray) -> np.ndarray:
    """Float PCM the AAC encoder accepts: finite and within [-1, 1].

    FFmpeg's AAC encoder refuses a frame holding NaN or infinity (EINVAL) and would fail the
    whole job over a few bad samples (a diverged vocoder, as the random-weight demo's can at
    one step); those samples become silence instead, and the runner's log says so.
    """
    finite = np.isfinite(audio)
    if not finite.all():
        log.warning("the soundtrack had %d non-finite samples; they are written as silence", (~finite).sum())
    return np.clip(np.where(finite, audio, 0.0), -1.0, 1.0).astype(np.float32)


class Mp4Writer:
    """Writes `video.mp4` from frames handed over in chunks as they are decoded; the audio is known up front.

    Frames are (count, height, width, 3) uint8 RGB; the audio is (channels, samples) float in
    [-1, 1], trimmed or zero-padded to the video's duration. Each AAC frame is muxed as soon
    as the video reaches its end, so memory holds no more than the encoders' look-ahead.
    Use it as a context manager: the file appears at `path` only when `finish()` completes
    (it is written under a temporary name in the same directory and renamed); leaving the
    block otherwise removes the partial file. With a `poster`, it sees every frame and its
    poster is written once the MP4 is in place.
    """

    def __init__(
        self,
        path: Path,
        fps: float,
        audio: np.ndarray,
        sample_rate: int,
        *,
        crf: int = DEFAULT_CRF,
        preset: str = DEFAULT_PRESET,
        poster: PosterFrame | None = None,
        metadata: dict[str, str] | None = None,
    ):
        self.path = path
        self.metadata = metadata or {}  # container tags, e.g. the job's provenance under "comment"
        self.partial = path.with_name(f".{path.name}.partial")
        self.rate = exact_frame_rate(fps)
        self.audio = faded_out(playable(audio), round(FADE_OUT_S * sample_rate))
        self.sample_rate = sample_rate
        self.layout = {1: "mono", 2: "stereo"}[audio.shape[0]]
        self.crf = crf
        self.preset = preset
        self.poster = poster
        self.frames_written = 0
        self.samples_written = 0
        self._container: av.container.OutputContainer | None = None

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, *_exception) -> None:
        if self._container is not None:  # not finished: close what is open and leave nothing behind
            # Closing writes the trailer, which fails again on a full disk: the error that ended the block is
            # the one to report, and the partial file goes either way.
            with contextlib.suppress(Exception):
                self._container.close()
        self.partial.unlink(missing_ok=True)

    def add_frames(self, frames: np.ndarray) -> None:
        if self._container is None:
            self._open(width=frames.shape[2], height=frames.shape[1])
        if self.poster is not None:
            self.poster.see(frames, self.frames_written)
        for pixels in frames:
            self._mux(self._video, _video_frame(pixels, self.frames_written, self.rate))
            self.frames_written += 1
            self._mux_audio(until=self._samples_for(self.frames_written), whole_frames_only=True)

    def finish(self) -> None:
        """Mux the audio's tail, flush the encoders, move the finished file into place, then write the poster."""
        if self._container is None:
            raise ValueError("an MP4 needs at least one frame")
        self._mux_audio(until=self._samples_for(self.frames_written), whole_frames_only=False)
        for stream in (self._video, self._sound):
            self._mux(stream, None)  # flush the encoder
        self._container.close()  # writes the moov atom at the front (faststart)
        self._container = None
        os.replace(self.partial, self.path)
        if self.poster is not None:
            self.poster.write()

    def _open(self, width: int, height: int) -> None:
        import av

        self._container = av.open(str(self.partial), mode="w", format="mp4", options={"movflags": "+faststart"})
        self._container.metadata.update(self.metadata)
        self._video = self._container.add_stream("libx264", rate=self.rate)
        self._video.width, self._video.height, self._video.pix_fmt = width, height, "yuv420p"
        self._video.options = {"crf": str(self.crf), "preset": self.preset}
        self._video.codec_context.thread_type = "FRAME"
        self._sound = self._container.add_stream("aac", rate=self.sample_rate, layout=self.layout)

    def _samples_for(self, num_frames: int) -> int:
        """Audio samples lasting as long as `num_frames` video frames."""
        return round(Fraction(num_frames) / self.rate * self.sample_rate)

    def _mux_audio(self, until: int, whole_frames_only: bool) -> None:
        """Mux AAC frames up to sample `until`; the last one may be short only when the video is complete."""
        while self.samples_written < until:
            end = min(self.samples_written + AAC_FRAME_SAMPLES, until)
            if whole_frames_only and end - self.samples_written < AAC_FRAME_SAMPLES:
                return
            samples = fit_audio(self.audio[:, self.samples_written : end], end - self.samples_written)
            self._mux(self._sound, _audio_frame(samples, self.samples_written, self.sample_rate, self.layout))
            self.samples_written = end

    def _mux(self, stream, frame) -> None:
        self._container.mux(stream.encode(frame))


def _video_frame(pixels: np.ndarray, index: int, rate: Fraction) -> av.VideoFrame:
    import av

    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
    frame.pts, frame.time_base = index, 1 / rate
    return frame


def _audio_frame(samples: np.ndarray, start: int, sample_rate: int, layout: str) -> av.AudioFrame:
    import av

    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="fltp", layout=layout)
    frame.sample_rate, frame.pts, frame.time_base = sample_rate, start, Fraction(1, sample_rate)
    return frame
