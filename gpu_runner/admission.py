"""Admission: refuse, before loading anything, a job whose predicted peak VRAM cannot fit; and the video
decode's memory budget, from what was admitted.

A job's peak is the largest of its three phases, each one model at a time (docs/architecture.md): text,
denoise and decode. The model family predicts each phase (LTX-2's: `contract.cost.predict_peak`, the one
job-cost estimate the portal also uses). The decode's tiles are planned within the larger of the other two,
so the decode does not raise the job's peak (`contract.cost.decode_budget_gib`).
"""

from __future__ import annotations

from contract.cost import MIN_DECODE_BUDGET_GIB, PeakPrediction, decode_budget_gib
from gpu_runner.job import JobError

# A CPU job's decode budget, in RAM: nothing is admitted there, so the least any decode gets.
CPU_DECODE_BUDGET_GIB = MIN_DECODE_BUDGET_GIB


def admit(prediction: PeakPrediction, free_gib: float, size: str) -> float:
    """The video decode's budget in GiB; raise out_of_memory, with the figures, when the predicted peak exceeds
    the free VRAM."""
    if prediction.peak_gib <= free_gib:
        return decode_budget_gib(prediction.text_gib, prediction.denoise_gib, free_gib)
    raise JobError(
        "out_of_memory",
        f"This job needs about {prediction.peak_gib:.1f} GiB of GPU memory at its peak ({prediction.peak_phase}, "
        f"{size}), but only {free_gib:.1f} GiB are free. Try fewer frames or a smaller size, or stop other "
        "programs that hold GPU memory; nothing was loaded.",
    )
