"""What a condition's latents should be: the model's own VAE encoding of its frames, as the pipelines encode them
(a still re-compressed at the conditioning CRF first; an earlier clip's frames as they are), for tests that check
the runner's latents against it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKLLTX2Video
from diffusers.pipelines.ltx2.utils import apply_image_conditioning_crf
from PIL import Image

from gpu_runner.families.ltx2.conditioning import image_crf

SAME_LATENT = 1e-4  # float32 round-off through the scheduler's steps; a different latent is ~0.1 away or more


def encoded_frames(model_dir: Path, frames: np.ndarray) -> torch.Tensor:
    """The raw (denormalised) latents of uint8 RGB frames (frames, height, width, 3): (1, channels, latent frames,
    latent height, latent width)."""
    vae = AutoencoderKLLTX2Video.from_pretrained(model_dir / "vae").eval()
    pixels = torch.from_numpy(np.ascontiguousarray(frames)).float()
    pixels = (pixels / 127.5 - 1).permute(3, 0, 1, 2)[None]  # (1, 3, frames, height, width) in [-1, 1]
    with torch.no_grad():
        return vae.encode(pixels).latent_dist.mode()


def encoded_image(model_dir: Path, image: Image.Image, version: str) -> torch.Tensor:
    """The VAE encoding of the image as a model of `version` was trained to see it (re-compressed at its CRF): one
    latent frame, (1, channels, latent height, latent width)."""
    still = apply_image_conditioning_crf(np.asarray(image), image_crf(version))
    return encoded_frames(model_dir, still[None])[:, :, 0]
