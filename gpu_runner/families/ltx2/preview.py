"""Previews: every few steps, a small JPEG of frames across the clip as the model currently sees it.

The picture is the clean-latent estimate, not the noisy latents: for a flow-matching Euler
step x' = x + (s' - s) v, the model's clean estimate is x0 = x' - s' v, and v follows from
two consecutive latents, so no extra model call is needed. The model's colour map (gpu_runner/preview_colours.py,
fitted to its own decodes) turns each latent cell into the colour the VAE would give it, so the strip looks like
the clip. A model with no map yet gets no picture: an event says so, and its first clip teaches the map.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from contract import jobdir, protocol
from gpu_runner.preview_colours import ColourMap

FRAMES_SHOWN = 8  # latent frames sampled across the clip, side by side
STRIP_WIDTH = 1280  # about the widest a page shows the strip: pixels enough not to be blown up blocky
UPSCALE_LIMITS = (2, 32)  # pixels per latent cell, at most as many as the cell decodes to
GAP = 2  # dark pixels between frames
NO_COLOURS = "No colour preview yet: this model's first clip teaches the portal its colours."

# What is left of a preview once its frames are picked: colouring, the JPEG, the rename; it returns the event to
# send once the file is in place. pipeline.PreviewThread runs it beside the denoiser, which goes on meanwhile.
PreviewWork = Callable[[], protocol.Preview]


def clean_estimate(previous: torch.Tensor, latents: torch.Tensor, sigma: float, next_sigma: float) -> torch.Tensor:
    """The model's clean estimate behind an Euler step from noise level `sigma` to `next_sigma`."""
    velocity = (latents - previous) / (next_sigma - sigma)
    return latents - next_sigma * velocity


def upscale_for(frames: int, width: int) -> int:
    """Pixels per latent cell for a strip of `frames` frames `width` cells wide."""
    low, high = UPSCALE_LIMITS
    return int(np.clip(STRIP_WIDTH // max(frames * width, 1), low, high))


class PreviewWriter:
    def __init__(
        self,
        path_of,
        latent_shape: tuple[int, int, int],
        total_steps: int,
        colours: ColourMap | None,
        previews: int = 6,
    ) -> None:
        self._path_of = path_of  # name -> a path confined to the job directory
        self._frames, self._height, self._width = latent_shape
        self._every = max(1, total_steps // previews)
        self._total = total_steps
        self._colours = colours
        self._previous: torch.Tensor | None = None
        self._told = False  # that there are no colours, once per stage
        # Whole latent frames are sliced out before anything is copied: the preview holds a few frames' cells.
        shown = np.linspace(0, self._frames - 1, min(FRAMES_SHOWN, self._frames)).round().astype(np.int64)
        self._shown = torch.from_numpy(shown)
        self.upscale = upscale_for(len(self._shown), self._width)

    def after_step(self, sigmas: torch.Tensor, index: int, latents: torch.Tensor) -> PreviewWork | None:
        """Called with the packed video latents after step `index`; returns the rest of the work when a preview
        is due (its event says the picture is written or, the first time, that none can be: no colour map).

        Only the shown frames are sliced out here (kernels queued, no wait for the device); the work left holds
        those few frames and nothing else of the step."""
        done = index + 1
        due = done % self._every == 0 or done == self._total
        if self._colours is None:
            if not due or self._told:
                return None
            self._told = True
            note = protocol.Preview(file=None, step=done, note=NO_COLOURS)
            return lambda: note
        # The clip's own tokens come first; keyframe tokens (appended by the condition pipeline) are left out.
        tokens = self._frames * self._height * self._width
        frames = latents[:1, :tokens].detach().reshape(self._frames, self._height * self._width, -1)
        cells = frames.index_select(0, self._shown.to(frames.device))
        previous, current = self._previous, cells.float()
        self._previous = current
        if previous is None or not due:
            return None
        sigma, next_sigma = float(sigmas[index]), float(sigmas[index + 1])

        def write() -> protocol.Preview:
            self._write(clean_estimate(previous, current, sigma, next_sigma))
            return protocol.Preview(file=jobdir.PREVIEW_FILE, step=done)

        return write

    def _write(self, clean: torch.Tensor) -> None:
        rgb = self._colours.rgb(clean).reshape(len(self._shown), self._height, self._width, 3)
        pixels = rgb.round().to(torch.uint8).cpu().numpy()
        size = (self._width * self.upscale, self._height * self.upscale)
        # Smoothly upscaled, as the decoder's pixels blend between cells; frames kept apart by a gap.
        strip = Image.new("RGB", (len(pixels) * (size[0] + GAP) - GAP, size[1]), (16, 16, 16))
        for number, frame in enumerate(pixels):
            strip.paste(Image.fromarray(frame).resize(size, Image.Resampling.BILINEAR), (number * (size[0] + GAP), 0))
        partial = self._path_of(jobdir.PREVIEW_FILE + ".partial")
        strip.save(partial, format="JPEG", quality=85)
        partial.replace(self._path_of(jobdir.PREVIEW_FILE))  # the web process never serves a half-written file
