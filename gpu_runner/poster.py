"""Posters: one frame of a finished clip as a small JPEG, poster.jpg beside video.mp4, for the gallery.

A job's runner keeps the frame as it passes on its way to the muxer (`PosterFrame`, handed to `mux.Mp4Writer`)
and writes the poster once video.mp4 is complete: one frame already in memory, scaled and encoded in 1-40 ms (from
the demo's 320x192 to 1920x1080, on a 2-core CPU), a small share of the MP4's own encode. Clips made
before posters existed get theirs from `python -m gpu_runner posters <jobs dir>` (`make_missing`), which the
portal runs once at start-up: it decodes the same frame of each video.mp4 with PyAV, on the CPU.

The frame is the clip's middle one: an image-to-video clip's first frame is the uploaded image itself, and a
clip's first frames are often before its motion starts, while half-way through the clip is under way, so the
still shows what the clip shows.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image

from contract import jobdir

log = logging.getLogger(__name__)

MAX_WIDTH = 640  # a gallery card's width at most, on a dense screen; a wider clip is scaled down, its aspect kept
JPEG_QUALITY = 85


def middle_frame(num_frames: int) -> int:
    """The index of the poster's frame in a clip of `num_frames` frames."""
    return num_frames // 2


def write_poster(pixels: np.ndarray, path: Path) -> None:
    """Write a (height, width, 3) uint8 RGB frame as a JPEG at `path`, scaled down to MAX_WIDTH where wider.

    Written under a temporary name in the same directory and renamed, so a reader sees the whole poster or none;
    a write that fails leaves nothing. The temporary file is never opened through a symlink.
    """
    image = Image.fromarray(np.ascontiguousarray(pixels))
    if image.width > MAX_WIDTH:
        height = max(1, round(image.height * MAX_WIDTH / image.width))
        image = image.resize((MAX_WIDTH, height), Image.Resampling.LANCZOS)
    partial = path.with_name(f".{path.name}.partial")
    try:
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o666)
        with open(descriptor, "wb") as file:
            image.save(file, format="JPEG", quality=JPEG_QUALITY)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


class PosterFrame:
    """Keeps the poster's frame of a clip of `num_frames` frames as its frames go by in chunks, and writes it."""

    def __init__(self, path: Path, num_frames: int) -> None:
        self.path = path
        self.index = middle_frame(num_frames)
        self.pixels: np.ndarray | None = None

    def see(self, frames: np.ndarray, first: int) -> None:
        """`frames` are the clip's frames from index `first` on."""
        if first <= self.index < first + len(frames):
            self.pixels = frames[self.index - first].copy()  # the frame alone: a view would keep the whole chunk

    def write(self) -> None:
        """Write the poster. One that cannot be (the disk full, say) is logged and the job goes on: its clip is
        complete, and the portal makes the missing poster at its next start."""
        if self.pixels is None:
            log.warning("no poster: the clip ended before frame %d", self.index)
            return
        try:
            write_poster(self.pixels, self.path)
        except OSError as error:
            log.warning("could not write %s (%s); the portal makes it at its next start", self.path.name, error)


def frame_of(video: Path) -> np.ndarray:
    """The poster's frame of an MP4 (the middle one), decoded as (height, width, 3) uint8 RGB."""
    import av  # FFmpeg's libraries: loaded only where a video is decoded

    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        if not stream.frames:
            raise ValueError(f"{video.name} does not say how many frames it holds")
        wanted = middle_frame(stream.frames)
        for index, frame in enumerate(container.decode(stream)):
            if index == wanted:
                return frame.to_ndarray(format="rgb24")
    raise ValueError(f"{video.name} holds fewer than the {stream.frames} frames it says")


def make_missing(jobs_dir: Path) -> tuple[int, int]:
    """Write the poster of every job directory in `jobs_dir` whose video.mp4 has none (`jobdir.jobs_wanting_posters`:
    real directories only, no symlinks followed); (made, failed). One that fails is logged and the rest go on."""
    made = failed = 0
    for job_dir in jobdir.jobs_wanting_posters(jobs_dir):
        try:
            write_poster(frame_of(job_dir / jobdir.VIDEO_FILE), job_dir / jobdir.POSTER_FILE)
        except Exception as error:  # an unreadable or truncated video, a full disk: that job stays without one
            failed += 1
            log.warning("job %s: no poster made: %s: %s", job_dir.name, type(error).__name__, error)
        else:
            made += 1
    return made, failed
