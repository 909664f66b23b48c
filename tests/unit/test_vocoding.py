"""The vocoder's waveform has no burst at the clip's ends, and keeps its length and timing."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers.pipelines.ltx2 import LTX2Vocoder, LTX2VocoderWithBWE

from gpu_runner.families.ltx2.vocoding import samples_per_frame, vocode

SILENCE_LOG_MEL = math.log(1e-5)  # the demo's audio VAE gives -11.5 for silence
FRAMES = 101  # 1.01 s of mel frames: the demo's clip of 25 frames at 24 fps
EDGE_S = 0.02


@pytest.fixture(scope="module")
def vocoder(demo_model_dir):
    return LTX2Vocoder.from_pretrained(demo_model_dir / "vocoder", low_cpu_mem_usage=False).eval()


def near_silence() -> torch.Tensor:
    """A mel spectrogram at the demo's silence level, a little noisy, as its audio VAE decodes a silent clip."""
    noise = torch.randn(1, 2, FRAMES, 64, generator=torch.Generator().manual_seed(0))
    return SILENCE_LOG_MEL + 0.1 * noise


def test_a_near_silent_clip_has_no_burst_at_its_ends_and_keeps_its_length_and_timing(vocoder):
    mel = near_silence()
    with torch.no_grad():
        waveform, plain = vocode(vocoder, mel), vocoder(mel)

    edge = round(EDGE_S * vocoder.config.output_sampling_rate)
    middle_peak = waveform[..., edge:-edge].abs().max()
    # Unpadded, the vocoder wrote 0.05 into the first 20 ms and 0.13 into the last (a peak of 0.003 between).
    assert waveform[..., :edge].abs().max() <= 1.5 * middle_peak
    assert waveform[..., -edge:].abs().max() <= 1.5 * middle_peak
    # As long as before, and away from the ends sample for sample the same: the sound stays where the video
    # expects it.
    assert waveform.shape == plain.shape == (1, 2, FRAMES * vocoder.total_upsample_factor)
    middle = slice(12 * vocoder.total_upsample_factor, -12 * vocoder.total_upsample_factor)
    torch.testing.assert_close(waveform[..., middle], plain[..., middle])


def test_ltx_2_3s_bandwidth_extended_vocoder_keeps_the_clips_length_at_48_khz(version_model_dirs):
    vocoder = LTX2VocoderWithBWE.from_pretrained(version_model_dirs["2.3"] / "vocoder", low_cpu_mem_usage=False)
    mel = near_silence()

    with torch.no_grad():
        waveform = vocode(vocoder.eval(), mel)

    # 100 mel frames a second: 160 samples each at 16 kHz, extended to 48 kHz
    assert vocoder.config.output_sampling_rate == 48000 and samples_per_frame(vocoder) == 480
    assert waveform.shape == (1, 2, FRAMES * 480)
