"""LTX-2's peak VRAM per phase, predicted from the model's files and the clip's size.

Text (the connectors resident, the encoder streamed), denoise (the transformer plus activations
that grow with the clip's tokens) and decode (the video VAE plus one tile). The constants were
measured on full-size LTX-2.0 components with random weights on an H200 (bench/gpu_smoke.py;
bench/results/); they scale with the model's files and width, so the tiny demo is predicted tiny.
"""

from __future__ import annotations

from gpu_runner.admission import PeakPrediction
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
