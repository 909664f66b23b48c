"""The duration head (LTX-2.5): the clip's length, predicted from the prompt, for `num_frames: "auto"`.

diffusers' LTX2DurationHead reads the text connectors' outputs (the context the denoiser attends to, so it runs
after the text phase or a prompt-cache hit, with nothing else loaded) and predicts the shot's natural duration in
seconds (trained on log-seconds; its forward exponentiates). Its own `predict_num_frames` turns seconds into a
frame count at the clip's frame rate: rounded, clamped to the bounds, then floored onto the VAE's causal grid
(k * 8 + 1 frames), snapped up a step where flooring fell below the minimum. We give it the model's limits in
frames (contract.request: at least `min_frames`, at most the longest clip at this frame rate, both on the grid),
so its answer is always a frame count the request rules accept. It is tiny (~2M parameters): fp32, no budget of
its own.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.pipelines.ltx2 import LTX2DurationHead


def load_duration_head(directory: Path, device: torch.device) -> LTX2DurationHead:
    """The head in `directory` (a model's duration_head/), in float32 on `device`."""
    head = LTX2DurationHead.from_pretrained(directory, dtype=torch.float32, low_cpu_mem_usage=False)
    return head.to(device).eval()


@torch.no_grad()
def predict_num_frames(
    duration_head: LTX2DurationHead,
    video_prompt_embeds: torch.Tensor,
    audio_prompt_embeds: torch.Tensor,
    *,
    frame_rate: float,
    min_frames: int,
    max_frames: int,
    frame_step: int = 8,
) -> int:
    """The clip's frame count for one prompt: the head's predicted duration at `frame_rate`, kept within
    [`min_frames`, `max_frames`] and on the `frame_step`k+1 grid (both bounds are grid points, so the answer is).

    `video_prompt_embeds` and `audio_prompt_embeds` are the connectors' outputs for that prompt alone (batch 1:
    the positive row of a job's context, not the negative prompt's). No attention mask: the connectors replace
    padding with learnt registers and mark every position valid, so the head attends to all of them (diffusers
    passes none either).
    """
    if video_prompt_embeds.shape[0] != 1 or audio_prompt_embeds.shape[0] != 1:
        raise ValueError("predict_num_frames takes one prompt's embeddings (batch 1)")
    if (min_frames - 1) % frame_step or (max_frames - 1) % frame_step or min_frames > max_frames:
        raise ValueError(f"frame bounds {min_frames}..{max_frames} are not {frame_step}k+1 and ordered")
    device = duration_head.device
    # Bounds in seconds that convert back to exactly these frame counts (diffusers rounds seconds x fps).
    return duration_head.predict_num_frames(
        video_prompt_embeds.to(device),
        audio_prompt_embeds.to(device),
        frame_rate=frame_rate,
        temporal_compression_ratio=frame_step,
        min_seconds=min_frames / frame_rate,
        max_seconds=max_frames / frame_rate,
    )
