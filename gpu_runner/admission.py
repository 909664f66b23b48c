"""Admission: refuse, before loading anything, a job whose predicted peak VRAM cannot fit.

A job's peak is the largest of its three phases, each one model at a time (docs/architecture.md): text,
denoise and decode. The model family predicts each phase (LTX-2's: `contract.cost.predict_peak`, the one
job-cost estimate the portal also uses).
"""

from __future__ import annotations

from contract.cost import PeakPrediction
from gpu_runner.job import JobError


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
