"""The text side of a job: prompt -> the context the denoiser attends to, then nothing left behind.

The text encoder (a 12B Gemma-3 at full size) streams its layers through the GPU, one block
group at a time, so this phase never sets the job's peak. The connectors (1.4-3.2B) run
here too, after the encoder, so that neither sits beside the transformer while it
denoises: the pipeline receives their outputs through `PrecomputedConnectors`.
"""

from __future__ import annotations

import torch
from diffusers import LTX2Pipeline
from torch import nn

MAX_PROMPT_TOKENS = 1024  # LTX-2's prompt length; a tokenizer may declare a shorter one


def prepare_text_encoder(text_encoder: nn.Module, device: torch.device) -> nn.Module:
    """Gemma-3's language model alone, placed for encoding.

    The pipeline reads only the encoder's hidden states, so the vision tower and the
    262k-word output head never need to run. On CUDA the weights stay on the CPU and
    stream through the GPU one layer (leaf module) at a time (diffusers group offloading,
    on a copy stream so transfers overlap compute); leaf level, not block level, so the
    2 GB embedding table leaves the GPU as soon as it has been used.
    """
    language_model = getattr(getattr(text_encoder, "model", None), "language_model", text_encoder)
    if device.type != "cuda":
        return language_model.to(device)
    from diffusers.hooks import apply_group_offloading

    apply_group_offloading(
        language_model,
        onload_device=device,
        offload_device=torch.device("cpu"),
        offload_type="leaf_level",
        use_stream=True,
    )
    return language_model


def encode(
    text: LTX2Pipeline, prompt: str, negative_prompt: str, max_tokens: int, device: torch.device, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """The connectors' outputs for the [negative, positive] pair: what the denoiser needs, nothing more."""
    embeds, mask, negative_embeds, negative_mask = text.encode_prompt(
        prompt=prompt,
        negative_prompt=negative_prompt,
        do_classifier_free_guidance=True,
        max_sequence_length=max_tokens,
        device=device,
        dtype=dtype,
    )
    text.connectors.to(device)
    # One prompt at a time: the connectors widen 49 stacked hidden states (188,160 features a
    # token at full size) in float32, and each sequence is processed on its own anyway.
    rows = [
        text.connectors(row_embeds, row_mask, padding_side=text.tokenizer.padding_side)
        for row_embeds, row_mask in ((negative_embeds, negative_mask), (embeds, mask))
    ]
    video, audio, context_mask = (torch.cat(parts) for parts in zip(*rows, strict=True))
    return {"video": video, "audio": audio, "mask": context_mask}


class PrecomputedConnectors(nn.Module):
    """Stands in for the pipeline's connectors: hands back what `encode` computed earlier.

    The pipeline passes [negative, positive] when it guides with CFG and the positive
    prompt alone when it does not (guidance 1.0); either way the matching rows come back.
    """

    def __init__(self, context: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.context = context

    # The pipeline's `.to()` and device lookup read these from every component.
    @property
    def dtype(self) -> torch.dtype:
        return self.context["video"].dtype

    @property
    def device(self) -> torch.device:
        return self.context["video"].device

    def forward(self, prompt_embeds: torch.Tensor, _mask: torch.Tensor, padding_side: str = "left"):
        rows = slice(None) if prompt_embeds.shape[0] == 2 else slice(1, 2)
        return self.context["video"][rows], self.context["audio"][rows], self.context["mask"][rows]

    def placeholder_embeds(self) -> dict[str, torch.Tensor]:
        """What the pipeline's call needs instead of real prompt embeddings (it only reads their dtype)."""
        video = self.context["video"]
        embeds = video.new_zeros(1, 1, 1)
        mask = self.context["mask"].new_ones(1, 1)
        return {
            "prompt_embeds": embeds,
            "prompt_attention_mask": mask,
            "negative_prompt_embeds": embeds,
            "negative_prompt_attention_mask": mask,
        }
