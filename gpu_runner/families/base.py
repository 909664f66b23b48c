"""The interface a model family implements (see gpu_runner/families/__init__.py)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from contract.cost import PeakPrediction
from contract.request import DenoiseStage, Request
from gpu_runner.job import Job, JobError
from gpu_runner.preview_colours import ColourLearner, ColourMap

Context = dict[str, torch.Tensor]  # a prompt's encoding: what the prompt cache keeps
Latents = tuple[torch.Tensor, torch.Tensor]  # (video, audio) latents of one clip
OnStepEnd = Callable  # diffusers' callback_on_step_end: (pipe, step index, timestep, tensors) -> dict
OnTile = Callable[[int, int], None]  # (tiles done, tiles in the plan)
OnToken = Callable[[int, int], None]  # (tokens the prompt enhancer wrote so far, the most it may write)


class Family(ABC):
    """One model family, bound to one model. Text side and denoiser are opaque to the pipeline."""

    modes: frozenset[str]  # "text" (text-to-video) and/or "image" (image-to-video)

    @abstractmethod
    def revision(self) -> str:
        """What identifies the weights, for the prompt cache's key."""

    @abstractmethod
    def sequence_length(self) -> int:
        """Tokens per prompt, for the prompt cache's key."""

    @abstractmethod
    def predict_peak(self, precision: str, request: Request) -> PeakPrediction:
        """The job's peak VRAM per phase, from the model's files and the clip's size."""

    @abstractmethod
    def load_text_side(self, dtype: torch.dtype, device: torch.device) -> object:
        """What encodes a prompt; the pipeline frees it before the denoiser loads."""

    @abstractmethod
    def encode(self, text: object, request: Request, device: torch.device, dtype: torch.dtype) -> Context:
        """The prompt and negative prompt encoded: all the denoiser needs of the text side."""

    # ---- LTX-2.5's optional text-side parts (issue 16, points 4-5); a family whose models have none keeps these

    def enhance_prompt(self, job: Job, device: torch.device, on_token: OnToken) -> str:
        """The job's prompt rewritten by the model's prompt enhancer (enhance_prompt: true), which is freed before
        this returns; `on_token(done, most)` follows each token it writes."""
        raise JobError("invalid_input", f"model {job.spec.id!r} has no prompt enhancer")

    def predict_num_frames(self, job: Job, context: Context, device: torch.device) -> int:
        """The clip's length in frames as the model's duration head picks it from the prompt's `context`
        (num_frames "auto"), within the model's limits at the job's frame rate."""
        raise JobError("invalid_input", f"model {job.spec.id!r} has no duration head")

    @abstractmethod
    def load_denoiser(
        self, job: Job, context: Context, device: torch.device, dtype: torch.dtype, precision: str
    ) -> object:
        """The denoiser placed on `device` (compiled where `compiling.compiles` says), decoders on the CPU."""

    @abstractmethod
    def latent_revision(self) -> str:
        """What identifies the latent space (the VAE's files), for the key of the model's preview colours."""

    @abstractmethod
    def previews(self, job: Job, stage: DenoiseStage, colours: ColourMap | None) -> object:
        """What `pipeline.step_reporter` asks for a preview after each step of `stage`:
        `after_step(sigmas, index, latents)`, colouring with `colours` (None: the model has none yet)."""

    @abstractmethod
    def colour_learner(self, decoders: object, latents: torch.Tensor) -> ColourLearner:
        """What learns the model's preview colours from the decode of `latents` (called before `decode_video`):
        the latents as previews see them, and how many frames and pixels a latent cell decodes to."""

    @abstractmethod
    def denoise(
        self, denoiser: object, job: Job, stage: DenoiseStage, on_step_end: OnStepEnd, start: Latents | None = None
    ) -> Latents:
        """Video and audio latents after one denoising stage (contract.request.denoise_stages), its guidance the
        family's own: from noise, or from `start` (the previous stage's, upsampled)."""

    def upsample(self, denoiser: object, latents: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Video latents at twice the height and width, for fast mode's refine stage."""
        raise JobError("invalid_input", "this model family has no fast mode")

    @abstractmethod
    def decoders(self, denoiser: object) -> object:
        """What outlives the denoiser: the pipeline drops the denoiser and keeps these for decoding."""

    @abstractmethod
    def decode_audio(self, decoders: object, latents: torch.Tensor, device: torch.device) -> tuple[np.ndarray, int]:
        """The waveform (channels, samples) and its sample rate; the audio decoders are freed after."""

    @abstractmethod
    def decode_video(
        self, decoders: object, latents: torch.Tensor, device: torch.device, on_tile: OnTile, budget_gib: float
    ) -> Iterator[np.ndarray]:
        """Chunks of (frames, height, width, 3) uint8 RGB, in order, as they are decoded, holding at most about
        `budget_gib` of device memory (the decoder's weights included) where the clip allows."""

    def joined_audio(self, denoiser: object, audio_latents: torch.Tensor) -> torch.Tensor:
        """The whole clip's audio latents: an extension's joined to the earlier clip's (a family that extends
        says how); by default the new ones as they are."""
        return audio_latents

    def resident_keys(
        self, job: Job, stage: str, dtype: torch.dtype, precision: str, device: torch.device
    ) -> tuple[tuple, ...]:
        """Warm mode: the keys (gpu_runner/resident.py) of everything the loading stage `stage` ("load_text_encoder",
        "load_transformer") takes from the runner's store; empty where it loads anything afresh. A family that keeps
        nothing resident, by default."""
        return ()

    def lora_files(self, job: Job) -> list[Path]:
        """The LoRA files the job's transformer will hold beside it (admission adds their bytes to its peak):
        the job's own, by default; a family with a distilled LoRA for fast mode adds it."""
        return [Path(entry.path) for entry in job.file.loras if entry.scale]

    def check_mode(self, job: Job) -> None:
        """Refuse a job this family cannot run (an image condition where it has no image-to-video)."""
        file = job.file
        conditioned = file.image_file is not None or file.keyframe_files or file.source_video_file is not None
        mode, what = ("image", "an image, keyframes or an earlier clip") if conditioned else ("text", "text alone")
        if mode not in self.modes:
            raise JobError("invalid_input", f"model {job.spec.id!r} does not generate video from {what}")
