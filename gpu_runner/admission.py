"""Admission: refuse, before loading anything, a job whose predicted peak VRAM cannot fit.

A job's peak is the largest of its three phases, each one model at a time (docs/architecture.md): text,
denoise and decode. The model family predicts each phase (LTX-2's: families/ltx2/peaks.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from gpu_runner.job import JobError

# Room for the CUDA context, the caching allocator's slack and what a family's figures miss.
MARGIN_GIB = 1.0


@dataclass(frozen=True)
class PeakPrediction:
    text_gib: float
    denoise_gib: float
    decode_gib: float

    @property
    def peak_gib(self) -> float:
        return max(self.text_gib, self.denoise_gib, self.decode_gib) + MARGIN_GIB

    @property
    def peak_phase(self) -> str:
        phases = {"text encoding": self.text_gib, "denoising": self.denoise_gib, "decoding": self.decode_gib}
        return max(phases, key=phases.__getitem__)


def admit(prediction: PeakPrediction, free_gib: float, size: str) -> None:
    """Raise out_of_memory, with the figures, when the predicted peak exceeds the free VRAM."""
    if prediction.peak_gib <= free_gib:
        return
    raise JobError(
        "out_of_memory",
        f"This job needs about {prediction.peak_gib:.1f} GiB of GPU memory at its peak ({prediction.peak_phase}, "
        f"{size}), but only {free_gib:.1f} GiB are free. Try fewer frames or a smaller size, or stop other "
        "programs that hold GPU memory; nothing was loaded.",
    )
