"""LTX-2.5's optional text-side parts at a tiny size with random weights: a duration head and a prompt enhancer,
built from the same diffusers and transformers classes as the full-size ones (bench/configs/), for CPU tests of
the plumbing (`num_frames: "auto"`, `enhance_prompt: true`). Random weights prove the plumbing only: the head's
durations and the enhancer's words mean nothing.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from contract.library import DURATION_HEAD, PROMPT_ENHANCER

SEED = 0
# A Gemma-style chat template: the enhancer's tokenizer must have one (the real one ships Gemma-4's).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<start_of_turn>{{ message['role'] }}\n"
    "{{ message['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def duration_head(video_width: int, audio_width: int, seconds: float | None = None):
    """An LTX2DurationHead reading connector outputs of these widths (the model's cross-attention widths); with
    `seconds`, one that predicts that duration for every prompt (its output layer a constant log-duration), so a
    CPU test knows the length it will get and keeps it short."""
    from diffusers.pipelines.ltx2 import LTX2DurationHead

    torch.manual_seed(SEED)
    head = LTX2DurationHead(
        video_cross_attention_dim=video_width,
        audio_cross_attention_dim=audio_width,
        pooler_hidden_dim=16,
        num_queries=1,
        num_pooler_heads=2,
        mlp_hidden_dim=16,
    )
    if seconds is not None:
        with torch.no_grad():
            head.mlp_out.weight.zero_()
            head.mlp_out.bias.fill_(math.log(seconds))
    return head.eval()


def prompt_enhancer(vocab_size: int):
    """A Gemma-4 conditional-generation model (the class diffusers' LTX-2.5 pipeline takes as its enhancer) with
    two text layers, one sliding and one global, and a one-layer vision tower."""
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration

    text = {
        "vocab_size": vocab_size,
        "vocab_size_per_layer_input": vocab_size,
        "hidden_size": 32,
        "hidden_size_per_layer_input": 0,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "layer_types": ["sliding_attention", "full_attention"],
        "sliding_window": 16,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "global_head_dim": 16,
        "max_position_embeddings": 2048,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "bos_token_id": 2,
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "head_dim": 16,
    }
    config = Gemma4Config(text_config=text, vision_config=vision, audio_config=None)
    torch.manual_seed(SEED)
    return Gemma4ForConditionalGeneration(config).eval()


def write_text_extras(
    model_dir: Path, tokenizer, video_width: int, audio_width: int, seconds: float | None = None
) -> None:
    """duration_head/ (`duration_head`'s) and prompt_enhancer/ (the enhancer with `tokenizer`, given a chat
    template) in `model_dir`."""
    duration_head(video_width, audio_width, seconds).save_pretrained(model_dir / DURATION_HEAD)
    enhancer_dir = model_dir / PROMPT_ENHANCER
    prompt_enhancer(len(tokenizer)).save_pretrained(enhancer_dir)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(enhancer_dir)
