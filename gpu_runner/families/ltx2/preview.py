"""Previews: every few steps, a small JPEG of the whole clip as the model currently sees it.

The picture is the clean-latent estimate, not the noisy latents: for a flow-matching Euler
step x' = x + (s' - s) v, the model's clean estimate is x0 = x' - s' v, and v follows from
two consecutive latents, so no extra model call is needed. A fixed linear projection maps
the latent channels to RGB; its colours are arbitrary, its shapes and motion are not.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from contract import jobdir, protocol

FRAMES_SHOWN = 8  # latent frames sampled across the clip, side by side
UPSCALE = 4  # pixels per latent cell in the preview


def clean_estimate(previous: torch.Tensor, latents: torch.Tensor, sigma: float, next_sigma: float) -> torch.Tensor:
    """The model's clean estimate behind an Euler step from noise level `sigma` to `next_sigma`."""
    velocity = (latents - previous) / (next_sigma - sigma)
    return latents - next_sigma * velocity


class PreviewWriter:
    def __init__(self, path_of, latent_shape: tuple[int, int, int], total_steps: int, previews: int = 6) -> None:
        self._path_of = path_of  # name -> a path confined to the job directory
        self._frames, self._height, self._width = latent_shape
        self._every = max(1, total_steps // previews)
        self._total = total_steps
        self._previous: torch.Tensor | None = None
        self._projection: torch.Tensor | None = None

    def after_step(self, sigmas: torch.Tensor, index: int, latents: torch.Tensor) -> protocol.Preview | None:
        """Called with the packed video latents after step `index`; returns an event when a preview was written."""
        previous, self._previous = self._previous, latents[:1].detach().float()
        done = index + 1
        if previous is None or (done % self._every and done != self._total):
            return None
        self._write(clean_estimate(previous, self._previous, float(sigmas[index]), float(sigmas[index + 1])))
        return protocol.Preview(file=jobdir.PREVIEW_FILE, step=done)

    def _write(self, clean: torch.Tensor) -> None:
        cells = clean.reshape(self._frames, self._height, self._width, -1).cpu()
        if self._projection is None:
            generator = torch.Generator().manual_seed(0)
            self._projection = torch.randn(cells.shape[-1], 3, generator=generator) / cells.shape[-1] ** 0.5
        shown = np.linspace(0, self._frames - 1, min(FRAMES_SHOWN, self._frames)).round().astype(int)
        rgb = (cells[shown] @ self._projection).numpy()
        low, high = np.percentile(rgb, [1, 99])
        pixels = ((rgb - low) / max(high - low, 1e-6) * 255).clip(0, 255).astype(np.uint8)
        strip = np.concatenate(list(pixels), axis=1).repeat(UPSCALE, axis=0).repeat(UPSCALE, axis=1)
        partial = self._path_of(jobdir.PREVIEW_FILE + ".partial")
        Image.fromarray(strip).save(partial, format="JPEG", quality=80)
        partial.replace(self._path_of(jobdir.PREVIEW_FILE))  # the web process never serves a half-written file
