"""The prompt enhancer (LTX-2.5's prompt_enhancer/, opt-in per job): a short prompt rewritten as the detailed
audio-visual caption the model was trained on.

As diffusers' LTX2DFRPipeline.enhance_prompt does it for a dedicated enhancer (a Gemma-4 conditional-generation
model): the LTX-2.5 text-to-video system prompt, the user's prompt as "user prompt: ...", the chat template with
the generation prompt, left padding to a multiple of 8, greedy decoding without 5-gram repeats, at most 600 new
tokens, the answer cleaned of curly quotes and leading non-letters. It runs first in the text phase, whole on
the GPU (it generates token by token: streaming its layers would cost a full weight transfer per token), and is
freed before the text encoder loads; its memory and time are the `enhance_*` lines of contract/cost.py.

The text-to-video form only: a job with a first-frame image or keyframes is enhanced from its text alone (diffusers'
image-aware variant shows the enhancer the image through the Gemma-4 processor's vision input, which this does not
load).

Its tokenizer (with the chat template) is the one in prompt_enhancer/, else the model's processor/ (the Diffusers
layout's, which the pipeline uses for the enhancer's chat template): contract/library.py checks one is there.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.pipelines.ltx2.prompt_enhancement import _pad_inputs_for_attention_alignment, clean_response
from diffusers.pipelines.ltx2.utils import GEMMA4_PROMPT_ENHANCEMENT_CONFIG, LTX2_5_T2V_DEFAULT_SYSTEM_PROMPT
from transformers import AutoModelForImageTextToText, AutoTokenizer
from transformers.generation.streamers import BaseStreamer

from contract.cost import ENHANCE_MAX_NEW_TOKENS
from contract.library import enhancer_tokenizer_dir
from gpu_runner import memory
from gpu_runner.families.base import OnToken


class _TokenCounter(BaseStreamer):
    """Counts the tokens `generate` produces, calling `on_token` after each; what it raises (a cancellation)
    stops the generation."""

    def __init__(self, on_token: OnToken, max_new_tokens: int) -> None:
        self.on_token, self.max_new_tokens = on_token, max_new_tokens
        self.prompt_seen, self.generated = False, 0

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate hands the prompt over first
            self.prompt_seen = True
            return
        self.generated += value.numel()
        self.on_token(self.generated, self.max_new_tokens)

    def end(self) -> None:
        pass


def enhance_prompt(
    enhancer_dir: Path,
    prompt: str,
    *,
    device: torch.device,
    seed: int,
    on_token: OnToken | None = None,
    max_new_tokens: int = ENHANCE_MAX_NEW_TOKENS,  # the reference's bound (a job's: AVP_ENHANCE_MAX_TOKENS)
    dtype: torch.dtype | None = None,
) -> str:
    """`prompt` rewritten by the enhancer in `enhancer_dir` (a model's prompt_enhancer/), on `device` in `dtype`
    (default: bfloat16 on CUDA, float32 elsewhere); the enhancer is freed before this returns.

    `seed` seeds torch before generating, as diffusers does (greedy decoding draws nothing, so it only matters
    should the generation settings ever sample). `on_token(done, max_new_tokens)` follows each generated token.
    """
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(enhancer_tokenizer_dir(enhancer_dir))
    messages = [
        {"role": "system", "content": LTX2_5_T2V_DEFAULT_SYSTEM_PROMPT},
        {"role": "user", "content": f"{GEMMA4_PROMPT_ENHANCEMENT_CONFIG.user_prompt_prefix}: {prompt}"},
    ]
    template = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # The template opens with <bos> itself.
    inputs = tokenizer(template, return_tensors="pt", add_special_tokens=False)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    inputs = _pad_inputs_for_attention_alignment(inputs, pad_token_id=pad).to(device)

    enhancer = AutoModelForImageTextToText.from_pretrained(enhancer_dir, dtype=dtype).to(device).eval()
    try:
        torch.manual_seed(seed)
        streamer = None if on_token is None else _TokenCounter(on_token, max_new_tokens)
        with torch.no_grad():
            sequences = enhancer.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                streamer=streamer,
                **GEMMA4_PROMPT_ENHANCEMENT_CONFIG.generation_kwargs,
            )
    finally:
        del enhancer
        memory.release(device)
    new_tokens = sequences[0, inputs["input_ids"].shape[1] :]
    return clean_response(tokenizer.decode(new_tokens, skip_special_tokens=True)).strip()
