"""The kernel behind the LTX-2 transformer's mask-free attentions (AVP_ATTENTION), by diffusers' backend names.

Each block has six attentions (diffusers 0.42.1, transformer_ltx2.py). Four get no mask in the pipelines the
runner drives: video and audio self-attention (`attn1`, `audio_attn1`) and the audio<->video cross-attentions
(`audio_to_video_attn`, `video_to_audio_attn`). The text cross-attentions (`attn2`, `audio_attn2`) always get the
prompt's mask, which flash and sage refuse, so they keep diffusers' default whatever is chosen here.

diffusers' per-module mechanism carries the choice: `AttentionModuleMixin.set_attention_backend` stores the
backend on the module's processor (`_attention_backend`), and the processor hands it to `dispatch_attention_fn`.
None there ("native") is diffusers' active default: torch's SDPA, which picks its own kernel (cuDNN first in
torch 2.11 on an H100). The others: `_native_cudnn`, `_native_flash`, `_native_efficient` pin one SDPA kernel
(an error where it refuses the inputs); `sage` is SageAttention's 8-bit attention (below).

SageAttention: diffusers' own `sage` backend needs `sageattention>=2.1.1`, whose CUDA extension must be built
for the card, and runs it where it is installed. Elsewhere `sage` is SageAttention 1.0.6's Triton kernels, kept in
gpu_runner/sage_triton.py with their softmax fixed (1.0.6 itself, which diffusers refuses anyway, leaves the keys
past a sequence's end in the softmax: 14% off on 51 random keys, as many as LTX-2's audio tokens at 49 frames).
They run through a torch custom op of ours, registered as diffusers' `sage` backend: opaque to torch.compile, so a
compiled block keeps one graph around it instead of Dynamo tracing into the kernels' Python launches. It needs
Triton, which torch's CUDA builds bring; nothing else to install.
"""

from __future__ import annotations

import importlib

import torch
from diffusers.models import attention_dispatch
from diffusers.models.attention_dispatch import AttentionBackendName

from contract.jobdir import ATTENTION_BACKENDS

SETTING = "AVP_ATTENTION"
# The mask-free attentions of a block, by attribute name; the text cross-attentions, attn2 and audio_attn2, never
MASK_FREE_ATTENTIONS = ("attn1", "audio_attn1", "audio_to_video_attn", "video_to_audio_attn")
CUDA_ONLY = ("sage", "_native_cudnn", "_native_efficient")  # torch's CPU build has a flash kernel, none of these
SAGE_KERNELS = "gpu_runner.sage_triton"


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
    """`backend` as diffusers names it, once this process can run it (sage: its Triton kernels registered)."""
    if backend not in ATTENTION_BACKENDS:
        raise AttentionBackendError(f"{SETTING}={backend!r} is not one of {', '.join(ATTENTION_BACKENDS)}")
    name = AttentionBackendName(backend)
    if name == AttentionBackendName.SAGE and not attention_dispatch._CAN_USE_SAGE_ATTN:
        _bridge_sage()
    else:
        try:
            attention_dispatch._check_attention_backend_requirements(name)
        except RuntimeError as error:
            raise AttentionBackendError(f"{SETTING}={backend}: {error}") from None
    return name


def _bridge_sage() -> None:
    """diffusers' `sage` backend through our Triton kernels (gpu_runner/sage_triton.py, `sage_attention`)."""
    try:
        importlib.import_module(SAGE_KERNELS)
    except ImportError as error:
        raise AttentionBackendError(
            f"{SETTING}=sage needs Triton where the runner's Python imports it ({error}); torch's CUDA builds bring "
            f"it. Install torch with CUDA there, or set {SETTING}=native"
        ) from None
    register = attention_dispatch._AttentionBackendRegistry.register
    register(AttentionBackendName.SAGE, constraints=[attention_dispatch._check_device_cuda])(_sage_backend)


def _sage_backend(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """diffusers' calling convention, (batch, tokens, heads, head dim) in and out; no mask, never causal."""
    if attn_mask is not None or is_causal:
        raise ValueError(f"{SETTING}=sage takes no attention mask (it is set on the mask-free attentions only)")
    return sage_attention(query, key, value, scale)


@torch.library.custom_op("avportal::sage_attention", mutates_args=())
def sage_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float | None) -> torch.Tensor:
    """The Triton kernels on (batch, tokens, heads, head dim) tensors; imported at the call, so that this module
    imports without Triton (a CPU build of torch)."""
    return importlib.import_module(SAGE_KERNELS).sage_attention(query, key, value, scale)


@sage_attention.register_fake
def _(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float | None) -> torch.Tensor:
    return torch.empty_like(query, memory_format=torch.contiguous_format)  # the kernels' output: query's shape, dtype
