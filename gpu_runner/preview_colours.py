"""Preview colours: a per-model linear map from latent channels to RGB, learnt from the model's own decodes.

A preview shows the model's clean-latent estimate; to look like the video, each latent cell's channels go
through a map fitted by least squares against what the VAE made of the same latents: the (C + 1) x 3 matrix
(the channels and a constant 1 -> R, G, B in 0..255) that best predicts each latent cell's mean decoded colour.
The latents are those the denoiser works on (normalised, as previews see them), so the map applies to them as is.

The first job of a model with no map learns it at its video decode: the decoded frames, already on the CPU
for the muxer, are pooled into the latent grid chunk by chunk (no device memory), then fitted on the CPU.
Where maps live: `MAP_FILE` in the model's directory (one shipped with the model, as the demo's is), else
`<preview colours dir>/<key>.json` in the data dir, which names the model's id and its VAE's fingerprint,
so a different model under the same id, or the same id with another VAE, never reuses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from contract.disk import is_disk_full

log = logging.getLogger(__name__)

MAP_FILE = "preview_colours.json"  # in a model directory: the map that ships with the model
FORMAT = 1


@dataclass(frozen=True)
class ColourMap:
    matrix: torch.Tensor  # (channels + 1, 3) float32; the last row is the bias
    model: str = ""  # the model's id and its VAE's fingerprint, where the map was learnt in the data dir
    vae: str = ""
    rms_error: float | None = None  # of the fit, in 0..255 levels: how far a cell's colour is from its decode

    @property
    def channels(self) -> int:
        return self.matrix.shape[0] - 1

    def rgb(self, cells: torch.Tensor) -> torch.Tensor:
        """(..., channels) latents -> (..., 3) colours in 0..255 (clipped: the decoded range)."""
        matrix = self.matrix.to(cells.device)
        return (cells.float() @ matrix[:-1] + matrix[-1]).clamp(0, 255)

    def to_json(self) -> bytes:
        fields = {"format": FORMAT, "model": self.model, "vae": self.vae, "rms_error": self.rms_error}
        return json.dumps({**fields, "matrix": self.matrix.tolist()}, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ColourMap:
        fields = json.loads(data)
        if fields.get("format") != FORMAT:
            raise ValueError(f"format {fields.get('format')!r}, not {FORMAT}")
        matrix = torch.tensor(fields["matrix"], dtype=torch.float32)
        if matrix.ndim != 2 or matrix.shape[1] != 3 or matrix.shape[0] < 2 or not matrix.isfinite().all():
            raise ValueError(f"a matrix of shape {tuple(matrix.shape)}, not (channels + 1, 3) finite numbers")
        return cls(matrix, str(fields["model"]), str(fields["vae"]), fields.get("rms_error"))


def fit(cells: torch.Tensor, colours: torch.Tensor, weights: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """The least-squares (channels + 1, 3) map from (N, channels) latents to (N, 3) colours, each cell's squared
    error weighted by `weights` where given, and its (unweighted) RMS error."""
    cells, colours = cells.detach().float().cpu(), colours.detach().float().cpu()
    design = torch.cat([cells, torch.ones(len(cells), 1)], dim=1)
    root = torch.ones(len(cells), 1) if weights is None else weights.float().cpu().sqrt()[:, None]
    matrix = torch.linalg.lstsq(design * root, colours * root, driver="gelsd").solution
    rms = float((design @ matrix - colours).square().mean().sqrt())
    return matrix, rms


def standing_out(colours: torch.Tensor) -> torch.Tensor:
    """Weights for one clip's (N, 3) cell colours: 1 + (distance from the clip's median colour / 32)^2. Most cells
    of a clip are its ground, which a plain fit serves at the cost of what stands out from it (on the demo, a
    plain fit shifts a red object's hue by 25 degrees, this one by 15)."""
    return 1 + ((colours - colours.median(dim=0).values).norm(dim=1) / 32).square()


def latent_frame_of(pixel_frames: np.ndarray, frames_per_latent: int) -> np.ndarray:
    """The latent frame each pixel frame comes from, LTX's causal way: latent frame 0 is pixel frame 0 alone,
    latent frame i >= 1 covers pixel frames (i-1)k+1 .. ik for k frames per latent."""
    return np.where(pixel_frames == 0, 0, (pixel_frames - 1) // frames_per_latent + 1)


class CellPooler:
    """Decoded frames, chunk by chunk in order, averaged over each latent cell: over its pixels and the frames of
    its temporal group. Holds one int64 sum per cell and channel."""

    def __init__(self, grid: tuple[int, int, int], frames_per_latent: int, pixels_per_latent: int) -> None:
        self.grid, self.frames_per_latent, self.pixels_per_latent = grid, frames_per_latent, pixels_per_latent
        self.sums = np.zeros((*grid, 3), dtype=np.int64)
        self.frames = np.zeros(grid[0], dtype=np.int64)  # pixel frames seen per latent frame
        self.seen = 0

    def add(self, chunk: np.ndarray) -> None:
        """(frames, height, width, 3) uint8, the next frames of the clip."""
        _, rows, columns = self.grid
        step = self.pixels_per_latent
        latent = latent_frame_of(np.arange(self.seen, self.seen + len(chunk)), self.frames_per_latent)
        for frame, index in zip(chunk, latent, strict=True):  # frame by frame: no float copy of a whole chunk
            cells = frame.reshape(rows, step, columns, step, 3).sum(axis=(1, 3), dtype=np.int64)
            self.sums[index] += cells
            self.frames[index] += 1
        self.seen += len(chunk)

    def means(self) -> np.ndarray:
        """(F, H, W, 3) float32: each cell's mean colour; cells of latent frames no pixel frame reached are NaN."""
        pixels = self.frames[:, None, None, None] * self.pixels_per_latent**2
        with np.errstate(invalid="ignore", divide="ignore"):
            return (self.sums / pixels).astype(np.float32)


class ColourLearner:
    """Learns a model's map during its video decode: `add` each decoded chunk, then `fit`."""

    def __init__(self, cells: torch.Tensor, frames_per_latent: int, pixels_per_latent: int) -> None:
        self.cells = cells.detach().float().cpu()  # (F, H, W, C): the clip's latents as previews see them
        self.pooler = CellPooler(tuple(self.cells.shape[:3]), frames_per_latent, pixels_per_latent)

    def add(self, chunk: np.ndarray) -> None:
        self.pooler.add(chunk)

    def samples(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, C) latents, (N, 3) mean decoded colours and (N,) weights (`standing_out`) of the cells the decode
        reached."""
        colours = torch.from_numpy(self.pooler.means()).reshape(-1, 3)
        cells = self.cells.reshape(-1, self.cells.shape[-1])
        decoded = ~colours.isnan().any(dim=1)
        return cells[decoded], colours[decoded], standing_out(colours[decoded])

    def fit(self, model: str, vae: str) -> ColourMap:
        matrix, rms = fit(*self.samples())
        return ColourMap(matrix, model, vae, round(rms, 2))


class ColourStore:
    """Where one model's map is read from (its own directory first, then the data dir's) and learnt into."""

    def __init__(self, model_dir: Path, directory: Path | None, model: str, vae: str) -> None:
        self.model_dir, self.directory, self.model, self.vae = model_dir, directory, model, vae

    @property
    def path(self) -> Path | None:
        """This model's file in the data dir; its name is a digest, so no model id becomes a path."""
        if self.directory is None:
            return None
        return self.directory / f"{hashlib.sha256(self.model.encode()).hexdigest()[:32]}.json"

    def load(self) -> ColourMap | None:
        """The model's map: the one shipped in its directory, else one learnt for this very model, else None."""
        shipped = _read(self.model_dir / MAP_FILE)
        if shipped is not None:
            return shipped
        learnt = None if self.path is None else _read(self.path)
        if learnt is not None and (learnt.model, learnt.vae) != (self.model, self.vae):
            log.info("preview colours: %s was learnt for another model or VAE; learning again", self.path)
            return None
        return learnt

    def save(self, colours: ColourMap) -> None:
        """Write the map whole (a temporary file, then renamed over): a reader sees the old file, the new or none.
        A full disk keeps no map (the next job learns it again)."""
        path = self.path
        partial = path.with_name(path.name + ".partial")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial.write_bytes(colours.to_json())
            os.replace(partial, path)
        except OSError as error:
            partial.unlink(missing_ok=True)
            if not is_disk_full(error):
                raise
            log.warning("preview colours: map not kept, the disk is full (%s)", error)


def _read(path: Path) -> ColourMap | None:
    try:
        return ColourMap.from_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.warning("preview colours: ignoring %s (%s)", path, error)
        return None
