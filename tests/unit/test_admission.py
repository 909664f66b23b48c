"""Admission: a job's peak is predicted from its model and size, and one that cannot fit is refused before loading."""

from __future__ import annotations

import pytest

from contract.cost import (
    MARGIN_GIB,
    MIN_DECODE_BUDGET_GIB,
    VaeDecoder,
    decode_budget_gib,
    decode_peak_gib,
    plan_decode_tiles,
    predict_peak,
)
from gpu_runner.admission import admit
from gpu_runner.job import JobError

# LTX-2.0 at full size: 35.2 GiB of bf16 transformer files, 2.67 GiB of connectors, a 256-wide VAE decoder.
LTX2 = dict(transformer_file_gib=35.2, connectors_file_gib=2.67, vae_file_gib=2.0, inner_width=4096, vae_width=256)


def clip(frames: int, width: int = 768, height: int = 448) -> dict:
    """predict_peak's clip arguments: the transformer's tokens and the latent shape they come from."""
    latents = ((frames - 1) // 8 + 1, height // 32, width // 32)
    return {"tokens": latents[0] * latents[1] * latents[2], "latents": latents}


def test_the_prediction_matches_the_measured_denoise_peaks_of_ltx2() -> None:
    # Measured on an H200 with random weights (bench/gpu_smoke.py): 18.79 and 20.36 GiB.
    short = predict_peak(**LTX2, precision="fp8", **clip(49))
    long = predict_peak(**LTX2, precision="fp8", **clip(481))
    assert short.denoise_gib == pytest.approx(18.79, abs=0.3)
    assert long.denoise_gib == pytest.approx(20.36, abs=0.3)


def test_bf16_needs_about_twice_the_transformer_and_long_clips_more_than_short() -> None:
    fp8 = predict_peak(**LTX2, precision="fp8", **clip(121))
    bf16 = predict_peak(**LTX2, precision="bf16", **clip(121))
    assert bf16.denoise_gib - fp8.denoise_gib == pytest.approx(35.2 * (1 - 0.511), abs=0.01)
    assert predict_peak(**LTX2, precision="fp8", **clip(481)).peak_gib > fp8.peak_gib


def test_a_job_that_cannot_fit_is_refused_with_the_figures() -> None:
    prediction = predict_peak(**LTX2, precision="fp8", **clip(481))
    admit(prediction, free_gib=prediction.peak_gib + 0.1, size="768x448, 481 frames")
    with pytest.raises(JobError) as refused:
        admit(prediction, free_gib=12.0, size="768x448, 481 frames")
    assert refused.value.code == "out_of_memory"
    message = refused.value.message
    assert f"{prediction.peak_gib:.1f} GiB" in message and "12.0 GiB are free" in message
    assert "768x448, 481 frames" in message and "denoising" in message and "nothing was loaded" in message


def test_the_tiny_demo_is_predicted_tiny() -> None:
    demo = predict_peak(
        transformer_file_gib=0.001,
        connectors_file_gib=0.001,
        vae_file_gib=0.001,
        inner_width=32,
        vae_width=32,
        precision="bf16",
        **clip(481, 256, 160),
    )
    # Its peak is its decode, within the least budget a decode gets.
    assert demo.peak_phase == "decoding" and demo.peak_gib <= MARGIN_GIB + MIN_DECODE_BUDGET_GIB


@pytest.mark.parametrize("frames", [49, 121, 481])
@pytest.mark.parametrize("precision", ["fp8", "bf16"])
def test_the_decode_is_planned_within_the_jobs_peak_so_the_peak_does_not_grow(frames, precision) -> None:
    prediction = predict_peak(**LTX2, precision=precision, **clip(frames))
    budget = max(prediction.text_gib, prediction.denoise_gib)

    assert prediction.decode_gib <= budget and prediction.peak_phase != "decoding"
    # The decode is predicted as the plan admission's budget gives (the runner decodes with that plan).
    latents = clip(frames)["latents"]
    vae = VaeDecoder(weights_gib=LTX2["vae_file_gib"], width=256, element_bytes=2)
    tiles = plan_decode_tiles(latents, vae, admit(prediction, free_gib=80.0, size="768x448"))
    assert prediction.decode_gib == decode_peak_gib(latents, tiles, vae)


def test_the_decode_budget_is_the_jobs_peak_before_it_capped_by_the_free_vram() -> None:
    prediction = predict_peak(**LTX2, precision="fp8", **clip(481))
    roomy = admit(prediction, free_gib=80.0, size="768x448, 481 frames")
    tight = admit(prediction, free_gib=prediction.peak_gib, size="768x448, 481 frames")

    assert roomy == max(prediction.text_gib, prediction.denoise_gib)
    assert tight <= prediction.peak_gib - MARGIN_GIB
    assert decode_budget_gib(prediction.text_gib, prediction.denoise_gib, free_gib=10.0) == 10.0 - MARGIN_GIB


def test_a_tiny_models_decode_gets_the_least_budget_and_is_predicted_by_it() -> None:
    # The demo on a GPU holds a few MiB before its decode: its decode still gets MIN_DECODE_BUDGET_GIB, so its
    # default clips decode untiled rather than in the smallest tiles.
    tiny = dict(transformer_file_gib=0.01, connectors_file_gib=0.001, vae_file_gib=0.008, inner_width=32, vae_width=32)
    prediction = predict_peak(**tiny, precision="bf16", **clip(121, 256, 160))
    budget = admit(prediction, free_gib=80.0, size="256x160")

    assert max(prediction.text_gib, prediction.denoise_gib) < budget == MIN_DECODE_BUDGET_GIB
    vae = VaeDecoder(weights_gib=0.008, width=32, element_bytes=2)
    tiles = plan_decode_tiles(clip(121, 256, 160)["latents"], vae, budget)
    assert tiles.tile_frames >= 121 and tiles.tile_pixels >= 256
    assert prediction.decode_gib == decode_peak_gib(clip(121, 256, 160)["latents"], tiles, vae) <= budget
