"""Admission: predict a job's peak VRAM before loading anything, and refuse what cannot fit.

A job's peak is the largest of its three phases, each one model at a time (DESIGN.md):
text (the connectors resident, the encoder streamed), denoise (the transformer plus
activations that grow with the clip's tokens) and decode (the video VAE plus one tile).
The constants were measured on full-size LTX-2.0 components with random weights on an
H200 (bench/gpu_smoke.py; bench/results/); they scale with the model's files and width,
so the tiny demo is predicted tiny.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpu_runner.job import JobError
from gpu_runner.memory import LONG_CLIP_TOKENS

# Resident FP8 transformer over its bf16 weight files: 17.99 GiB measured / 35.2 GiB.
FP8_RESIDENT_RATIO = 0.511
# Denoising activations per video token at an inner width of 4096 (LTX-2), measured at 768x448:
# 49 frames (2,352 tokens) batched CFG added 0.80 GiB; 481 frames (20,496 tokens), one guidance
# row at a time with sliced feed-forwards, added 2.37 GiB.
ACTIVATION_GIB_PER_TOKEN_BATCHED = 0.80 / 2352
ACTIVATION_GIB_PER_TOKEN_ONE_ROW = 2.37 / 20496
REFERENCE_WIDTH = 4096
# The text phase beyond the connectors' weights: streamed encoder layers, hidden states, context.
TEXT_STREAMING_GIB = 3.0
# One decode tile's activations at LTX-2's VAE width (512 px spatial, 64-frame temporal tiles).
DECODE_TILE_GIB = 4.0
# Room for the CUDA context, the caching allocator's slack and what the figures above missed.
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


def predict_peak(
    *,
    transformer_file_gib: float,
    connectors_file_gib: float,
    vae_file_gib: float,
    precision: str,
    tokens: int,
    inner_width: int,
) -> PeakPrediction:
    transformer_gib = transformer_file_gib * (FP8_RESIDENT_RATIO if precision == "fp8" else 1.0)
    per_token = ACTIVATION_GIB_PER_TOKEN_BATCHED if tokens <= LONG_CLIP_TOKENS else ACTIVATION_GIB_PER_TOKEN_ONE_ROW
    width_scale = inner_width / REFERENCE_WIDTH
    return PeakPrediction(
        text_gib=connectors_file_gib + TEXT_STREAMING_GIB * width_scale,
        denoise_gib=transformer_gib + tokens * per_token * width_scale,
        decode_gib=vae_file_gib + DECODE_TILE_GIB * width_scale,
    )


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
