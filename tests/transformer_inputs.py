"""One forward pass's inputs for the demo model's transformer (gpu_runner/demo/model.py), batch of two: a 2x3x4 video
grid, 5 audio frames, 32 text tokens per modality with the text mask given."""

from __future__ import annotations

import torch


def demo_transformer_inputs(
    config, text_mask: torch.Tensor, generator: torch.Generator | None = None
) -> dict[str, object]:
    def noise(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    return dict(
        hidden_states=noise(2, 24, config.in_channels),
        audio_hidden_states=noise(2, 5, config.audio_in_channels),
        encoder_hidden_states=noise(2, 32, config.caption_channels),
        audio_encoder_hidden_states=noise(2, 32, config.caption_channels),
        encoder_attention_mask=text_mask,
        audio_encoder_attention_mask=text_mask,
        timestep=torch.full((2,), 500.0),
        num_frames=2,
        height=3,
        width=4,
        audio_num_frames=5,
        return_dict=False,
    )
