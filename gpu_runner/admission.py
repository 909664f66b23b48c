"""Admission: refuse, before loading anything, a job whose predicted peak VRAM cannot fit; and the video
decode's memory budget, from what was admitted.

A job's peak is the largest of its three phases, each one model at a time (docs/architecture.md): text,
denoise and decode. The model family predicts each phase (LTX-2's: `contract.cost.predict_peak`, the one
job-cost estimate the portal also uses). The decode's tiles are planned within the larger of the other two,
so the decode does not raise the job's peak (`contract.cost.decode_budget_gib`).
"""

from __future__ import annotations

from contract.cost import PeakPrediction, decode_budget_gib
from gpu_runner.job import JobError

# A CPU job's decode budget, in RAM (a CPU runs the demo model; nothing is admitted there). By the cost model the
# demo's VAE takes 32 bytes an output voxel in float32 (measured on a CPU: ~48), so its clips at the default
# 256x160 decode untiled up to ~400 frames, and longer or larger ones in the largest tiles that fit, as on a
# GPU (its largest preset, 512x288, in whole frames ~100 at a time).
CPU_DECODE_BUDGET_GIB = 0.5


def admit(prediction: PeakPrediction, free_gib: float, size: str) -> float:
    """The video decode's budget in GiB; raise out_of_memory, with the figures, when the predicted peak exceeds
    the free VRAM."""
    if prediction.peak_gib <= free_gib:
        return decode_budget_gib(prediction, free_gib)
    raise JobError(
        "out_of_memory",
        f"This job needs about {prediction.peak_gib:.1f} GiB of GPU memory at its peak ({prediction.peak_phase}, "
        f"{size}), but only {free_gib:.1f} GiB are free. Try fewer frames or a smaller size, or stop other "
        "programs that hold GPU memory; nothing was loaded.",
    )
