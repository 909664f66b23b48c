"""Extending a clip (issue 17, point 2): what the staged generation does beyond denoising.

Every job keeps its audio latents (jobdir.AUDIO_LATENTS_FILE) when its clip is written, so a later job can extend
it. An extension's job directory holds copies of the earlier clip and its audio latents (the web process put them
there); its family conditions the new part on the clip's last EXTEND_OVERLAP frames and holds the new part's first
audio latents to the earlier ones (families/ltx2/conditioning.py). The joined clip is written here: the earlier
clip's frames, then the new part's after the overlap; its soundtrack is decoded from the joined latents in one
piece, so there is no splice in the audio at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import torch
from safetensors.torch import save_file

from contract.request import EXTEND_OVERLAP
from gpu_runner.job import Job, JobError

AUDIO_LATENTS_KEY = "audio_latents"


def source_frames(job: Job) -> Iterator[np.ndarray]:
    """The earlier clip's frames, (height, width, 3) uint8 RGB each, in order."""
    try:
        with av.open(str(job.path(job.file.source_video_file))) as container:
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="rgb24")
    except av.error.FFmpegError as error:
        raise JobError("invalid_input", f"source_video_file is not a readable clip: {error}") from None


def joined_frames(job: Job, new_chunks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """Chunks of the clip to write: for an extension, the earlier clip's frames, then the new part's after its
    first EXTEND_OVERLAP; for any other job, the chunks as given.

    Over the overlap the new part's first frames show the earlier clip's last ones through one more VAE round
    trip (a level or so off in the demo's colours, its object's edges redrawn), so those frames are dissolved
    from the earlier clip's into the new part's, 1/(overlap+1) a frame, and the seam is no step: same content
    on both sides, nothing ghosts. The sound needs none of this (its latents are joined, `joined_audio`)."""
    if job.file.source_video_file is None:
        yield from new_chunks
        return
    tail: list[np.ndarray] = []
    for frame in source_frames(job):
        tail.append(frame)
        if len(tail) > EXTEND_OVERLAP:
            yield tail.pop(0)[None]
    blended = 0
    # One fixed dither pattern: a level's difference between the two (the background's) moves a tenth of the
    # pixels a frame instead of flipping the whole frame at once where the weight passes one half.
    dither = np.random.default_rng(0).random(tail[0].shape, dtype=np.float32) - 0.5
    for chunk in new_chunks:
        start = min(EXTEND_OVERLAP - blended, len(chunk))
        for i in range(start):
            weight = (blended + 1) / (EXTEND_OVERLAP + 1)
            mixed = (1 - weight) * tail[blended].astype(np.float32) + weight * chunk[i].astype(np.float32)
            yield np.clip(np.floor(mixed + 0.5 + dither), 0, 255).astype(np.uint8)[None]
            blended += 1
        if start < len(chunk):
            yield chunk[start:]


def joined_frame_count(job: Job, source_count: int | None) -> int:
    request = job.request
    if job.file.source_video_file is None or source_count is None:
        return request.num_frames
    return source_count + request.num_frames - EXTEND_OVERLAP


def source_frame_count(job: Job) -> int | None:
    """How many frames the earlier clip has (None for a job that extends nothing)."""
    if job.file.source_video_file is None:
        return None
    try:
        with av.open(str(job.path(job.file.source_video_file))) as container:
            return sum(1 for _ in container.decode(video=0))
    except av.error.FFmpegError as error:
        raise JobError("invalid_input", f"source_video_file is not a readable clip: {error}") from None


def keep_audio_latents(path: Path, latents: torch.Tensor) -> None:
    """Write the clip's audio latents (for a later extension) under a temporary name, renamed when whole."""
    partial = path.with_name("." + path.name + ".partial")
    try:
        save_file({AUDIO_LATENTS_KEY: latents.detach().float().cpu().contiguous()}, str(partial))
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
