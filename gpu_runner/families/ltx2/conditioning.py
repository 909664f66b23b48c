"""Conditions of the denoising pipeline: a first-frame image, keyframes, and an extension's earlier clip.

A text-only job runs diffusers' LTX2Pipeline; a job with any condition runs LTX2ConditionPipeline
(families/ltx2/loading.py picks it), the same components with per-condition strengths. LTX-2.5's fast mode runs its
keyframe-slot pipeline either way (slots.py), which takes the same conditions:

- `image_upload_id`: the normalised image at latent index 0 (replaces the first latent frame's tokens);
  `image_strength` maps onto the condition's strength directly.
- `keyframes`: each normalised image at its latent index (contract/request.py converts output frames: frame 0
  is index 0, frame f > 0 is in latent frame (f - 1) // 8 + 1). Index 0 replaces the first latent tokens; a later
  index is appended as keyframe tokens with their own positions, at that latent frame's last output frame, 8k
  (loading.py's `keyframe_frame` moves diffusers' first-frame placement there in both pipelines). Fast mode passes
  the same full-size images to both stages: diffusers resizes a condition to the stage's size, so stage 1 gets
  them at half size and the refine at full size.
- `extend_from`: the earlier clip's last EXTEND_OVERLAP frames as one video condition at index 0 (strength 1), so
  the new part's first frames are those frames; its audio latents over the same span are held to the earlier
  clip's (`AudioHold`): diffusers' conditions are video-only. LTX-2.5's fast mode holds them in stage 1 alone: its
  refine keeps stage 1's audio whole.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers.pipelines.ltx2.pipeline_ltx2_condition import LTX2VideoCondition
from diffusers.pipelines.ltx2.utils import DEFAULT_IMAGE_CRF, LTX2_5_IMAGE_CRF
from PIL import Image
from safetensors.torch import load_file

from contract.request import EXTEND_OVERLAP, keyframe_latent_index
from gpu_runner.extension import AUDIO_LATENTS_KEY, source_frames
from gpu_runner.job import Job, JobError


def image_crf(version: str) -> int:
    """The H.264 CRF a still is re-compressed at before it conditions a model of `version`: the compression it was
    trained against (CRF 33 up to LTX-2.3, 18 for LTX-2.5). diffusers picks it from the text encoder, which is freed
    before denoising here, so it is passed explicitly."""
    return LTX2_5_IMAGE_CRF if version == "2.5" else DEFAULT_IMAGE_CRF


def is_conditioned(job: Job) -> bool:
    """Whether the job needs the condition pipeline."""
    file = job.file
    return file.image_file is not None or bool(file.keyframe_files) or file.source_video_file is not None


def _image(job: Job, name: str, what: str) -> Image.Image:
    request = job.request
    try:
        with Image.open(job.path(name), formats=["PNG"]) as image:
            frame = image.convert("RGB")
    except OSError as error:
        raise JobError("invalid_input", f"{what} is not a readable PNG: {error}") from None
    if frame.size != (request.width, request.height):
        # The web process fits the image to the job's size; anything else was not made by it.
        raise JobError("invalid_input", f"{what} is {frame.width}x{frame.height}, not the job's size")
    return frame


def image_conditions(job: Job) -> dict:
    """The pipeline's `conditions` argument, nothing for a job without any."""
    request = job.request
    constraints = job.spec.constraints
    conditions = []
    crf = image_crf(job.spec.version)
    if job.file.image_file is not None:
        frame = _image(job, job.file.image_file, "image_file")
        conditions.append(LTX2VideoCondition(frames=frame, index=0, strength=request.image_strength, crf=crf))
    keyframes = request.keyframes or ()
    if len(job.file.keyframe_files) != len(keyframes):
        raise JobError("invalid_input", "keyframe_files does not hold one image per keyframe")
    for i, (keyframe, name) in enumerate(zip(keyframes, job.file.keyframe_files, strict=True)):
        frame = _image(job, name, f"keyframe_files[{i}]")
        index = keyframe_latent_index(constraints, request.num_frames, keyframe.frame)
        conditions.append(LTX2VideoCondition(frames=frame, index=index, strength=keyframe.strength, crf=crf))
    if job.file.source_video_file is not None:
        frames, _ = last_frames(job, EXTEND_OVERLAP)
        conditions.append(LTX2VideoCondition(frames=frames, index=0, strength=1.0, crf=0))
    return {"conditions": conditions} if conditions else {}


def audio_hold(job: Job, audio_latents_per_second: float) -> AudioHold | None:
    """An extension's hold of its first audio latents to the earlier clip's last ones; None for another job."""
    if job.file.source_video_file is None:
        return None
    _, source_frame_count = last_frames(job, EXTEND_OVERLAP)
    source = source_audio_latents(job)
    start = overlap_start(job.request.fps, source_frame_count, source.shape[2], audio_latents_per_second)
    return AudioHold(source[:, :, start:], source[:, :, :start], job.request.seed)


def last_frames(job: Job, count: int) -> tuple[np.ndarray, int]:
    """The earlier clip's last `count` frames, (count, height, width, 3) uint8, at the job's size; and how many
    frames it has."""
    kept: list[np.ndarray] = []
    seen = 0
    for frame in source_frames(job):
        kept = [*kept[-(count - 1) :], frame] if count > 1 else [frame]
        seen += 1
    request = job.request
    if len(kept) < count or kept[0].shape[:2] != (request.height, request.width):
        raise JobError("invalid_input", f"source_video_file is not a clip of {count}+ frames at the job's size")
    return np.stack(kept), seen


def source_audio_latents(job: Job) -> torch.Tensor:
    """The earlier clip's audio latents, (1, channels, length, mel bins), as its denoiser left them."""
    try:
        return load_file(job.path(job.file.source_audio_latents_file))[AUDIO_LATENTS_KEY]
    except (OSError, KeyError, ValueError) as error:
        raise JobError("invalid_input", f"source_audio_latents_file is not readable: {error}") from None


def overlap_start(fps: float, source_frames: int, source_latents: int, audio_latents_per_second: float) -> int:
    """Where, in the earlier clip's audio latents, the new part's first latent falls: the latent nearest the
    time of the earlier clip's first overlapping frame (source_frames - EXTEND_OVERLAP), so the new part's audio
    lines up with its video within half a latent (20 ms for LTX-2's 25 latents a second)."""
    start = round((source_frames - EXTEND_OVERLAP) / fps * audio_latents_per_second)
    return min(max(start, 0), source_latents - 1)


class AudioHold:
    """Holds the new part's first audio latents to the earlier clip's over the overlap, re-imposed after every
    step like a condition: the held tokens are set to the clean latents noised to the step's sigma
    ((1 - sigma) * x0 + sigma * noise, one fixed noise drawn from the job's seed), so the model sees them at the
    noise level of everything else and denoises the rest to fit, and after the last step (sigma 0) they are
    exactly the earlier clip's. Works in the pipeline's packed, normalised audio space."""

    def __init__(self, held: torch.Tensor, before: torch.Tensor, seed: int) -> None:
        self.held = held  # (1, channels, length, mel bins), denormalised, as the pipeline outputs them
        self.before = before  # the earlier clip's audio latents before the overlap: the joined clip's start
        self.seed = seed

    def joined(self, new: torch.Tensor) -> torch.Tensor:
        """The joined clip's audio latents: the earlier clip's up to the overlap, then the new part's (whose first
        ones are the earlier clip's last), decoded in one piece so the seam is inside one continuous decode."""
        return torch.cat([self.before.to(new.device, new.dtype), new], dim=2)

    def packed(self, pipe) -> torch.Tensor:
        audio_vae = pipe.audio_vae
        packed = pipe._pack_audio_latents(self.held.float())
        return pipe._normalize_audio_latents(packed, audio_vae.latents_mean, audio_vae.latents_std)

    def wrap(self, on_step_end):
        """The step callback with the hold applied first (it needs the pipeline to hand it its audio latents)."""
        clean = None
        noise = None

        def holding(pipe, index: int, timestep, tensors: dict) -> dict:
            nonlocal clean, noise
            audio = tensors["audio_latents"]
            if clean is None:
                clean = self.packed(pipe).to(audio.device, audio.dtype)[:, : audio.shape[1]]
                generator = torch.Generator("cpu").manual_seed(self.seed)
                noise = torch.randn(clean.shape, generator=generator, dtype=torch.float32).to(audio.device, audio.dtype)
            sigma = float(pipe.scheduler.sigmas[index + 1])
            length = clean.shape[1]
            audio[:, :length] = (1 - sigma) * clean + sigma * noise  # in place: the pipeline keeps this tensor
            return on_step_end(pipe, index, timestep, tensors)

        return holding
