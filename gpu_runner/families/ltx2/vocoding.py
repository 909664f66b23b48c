"""The waveform from the audio VAE's mel spectrogram, with no burst at either end of the clip.

The vocoder's convolutions pad their input with zeros. In a log-mel spectrogram zero is not silence but
about the loudest value there is (the demo's silence is -11.5), so, run as it comes, the vocoder hears a loud
sound just past each end and writes a burst into the clip's first and last few milliseconds: on a near-silent
demo clip a peak of 0.13 in its last 3 ms and 0.06 in its first, against an RMS of 0.003. Here it hears the
clip's own edge frames continued instead, and the samples made for them are cut off again, so the waveform
keeps its length (the mel frames times the vocoder's upsampling) and its time alignment with the video.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Mel frames repeated beyond each end: more than the vocoder's convolutions reach (measured: LTX-2's vocoder,
# resnet kernels 3, 7, 11, reaches 11.6 frames; the demo's, kernel 3 alone, 6).
EDGE_FRAMES = 16


def vocode(vocoder: torch.nn.Module, mel: torch.Tensor) -> torch.Tensor:
    """The vocoder's (batch, channels, samples) waveform for a (batch, channels, frames, mel bins) spectrogram."""
    continued = F.pad(mel, (0, 0, EDGE_FRAMES, EDGE_FRAMES), mode="replicate")
    edge_samples = EDGE_FRAMES * samples_per_frame(vocoder)
    return vocoder(continued)[..., edge_samples:-edge_samples]


def samples_per_frame(vocoder: torch.nn.Module) -> int:
    """Waveform samples per mel frame: the upsampling, times the rate change of LTX-2.3's bandwidth extension,
    which wraps a 2.0-style vocoder (16 kHz) and extends its output to 48 kHz."""
    inner = getattr(vocoder, "vocoder", vocoder)
    output_rate = vocoder.config["output_sampling_rate"]
    return inner.total_upsample_factor * output_rate // vocoder.config.get("input_sampling_rate", output_rate)
