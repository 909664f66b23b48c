"""The kernel behind the LTX-2 transformer's mask-free attentions (AVP_ATTENTION), by diffusers' backend names.

Each block has six attentions (diffusers 0.42.1, transformer_ltx2.py). Four get no mask in the pipelines the
runner drives: video and audio self-attention (`attn1`, `audio_attn1`) and the audio<->video cross-attentions
(`audio_to_video_attn`, `video_to_audio_attn`). The text cross-attentions (`attn2`, `audio_attn2`) always get the
prompt's mask, which flash refuses, so they keep diffusers' default whatever is chosen here.

diffusers' per-module mechanism carries the choice: `AttentionModuleMixin.set_attention_backend` stores the
backend on the module's processor (`_attention_backend`), and the processor hands it to `dispatch_attention_fn`.
None there ("native") is diffusers' active default: torch's SDPA, which picks its own kernel (cuDNN first in
torch 2.11 on an H100). The others, `_native_cudnn`, `_native_flash`, `_native_efficient`, pin one SDPA kernel
(an error where it refuses the inputs).

SageAttention was tried and is not offered. 1.0.6, the Triton-only release that can travel to the device, reads
keys in blocks of 64 and leaves the padded keys in the softmax: 13.8% error at 51 keys and 14.6% at 100, against
1.3% at 128 (Triton's interpreter on the CPU), and LTX-2's token counts are never multiples of 64. diffusers
0.42.1 refuses it too: its `sage` backend needs sageattention>=2.1.1, a CUDA extension built per card. An FP8
attention kernel of our own has not been written.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_dispatch import AttentionBackendName

from contract.jobdir import ATTENTION_BACKENDS

SETTING = "AVP_ATTENTION"
# The mask-free attentions of a block, by attribute name; the text cross-attentions, attn2 and audio_attn2, never
MASK_FREE_ATTENTIONS = ("attn1", "audio_attn1", "audio_to_video_attn", "video_to_audio_attn")
CUDA_ONLY = ("_native_cudnn", "_native_efficient")  # torch's CPU build has a flash kernel, neither of these


class AttentionBackendError(ValueError):
    """A backend this process cannot use; the message names the setting and the way out."""


def use_attention_backend(transformer: torch.nn.Module, backend: str) -> None:
    """Run the mask-free attentions of every block of `transformer` on `backend`; "native" sets none (diffusers'
    default again, also where an earlier job's transformer, kept resident, had another)."""
    chosen = None if backend == "native" else _usable(backend)
    for block in transformer.transformer_blocks:
        for name in MASK_FREE_ATTENTIONS:
            module = block.get_submodule(name)
            if chosen is None:
                module.processor._attention_backend = None  # what diffusers' reset_attention_backend does
            else:
                module.set_attention_backend(chosen.value)


def unavailable_reason(backend: str, device: torch.device) -> str | None:
    """Why `backend` cannot run on `device` in this process, or None where it can."""
    if backend in CUDA_ONLY and device.type != "cuda":
        return f"{backend} attention runs on a CUDA GPU only"
    try:
        _usable(backend)
    except AttentionBackendError as error:
        return str(error)
    return None


def _usable(backend: str) -> AttentionBackendName:
    """`backend` as diffusers names it. Every allowed one is torch's own SDPA, so there is no package to check; a
    kernel that refuses a job's inputs says so at the first step."""
    if backend not in ATTENTION_BACKENDS:
        raise AttentionBackendError(f"{SETTING}={backend!r} is not one of {', '.join(ATTENTION_BACKENDS)}")
    return AttentionBackendName(backend)
