"""AVP_ATTENTION's room (gpu_runner/attention.py) on the demo model's transformer, on the CPU: which attentions
get the backend, "native" as it was, and the errors that name the setting."""

from __future__ import annotations

import pytest
import torch
from diffusers.models import attention_dispatch
from diffusers.models.attention_dispatch import AttentionBackendName

from gpu_runner import attention
from gpu_runner.demo import model as demo_model
from tests.transformer_inputs import demo_transformer_inputs

TEXT_ATTENTIONS = ("attn2", "audio_attn2")


def backends(transformer: torch.nn.Module, names: tuple[str, ...]) -> set:
    """The backends set on the named attentions across every block."""
    blocks = transformer.transformer_blocks
    return {block.get_submodule(name).processor._attention_backend for block in blocks for name in names}


def step(transformer: torch.nn.Module) -> tuple[torch.Tensor, ...]:
    """One forward pass of the demo transformer: video and audio, text with a (all-ones) mask as LTX-2 gives it."""
    generator = torch.Generator().manual_seed(0)
    mask = torch.ones(2, 32, dtype=torch.int64)
    with torch.no_grad():
        return transformer(**demo_transformer_inputs(transformer.config, mask, generator))


@pytest.fixture
def transformer() -> torch.nn.Module:
    torch.manual_seed(0)
    return demo_model.transformer().eval()


def test_the_mask_free_attentions_get_the_backend_and_the_text_cross_attentions_never(transformer, monkeypatch) -> None:
    registry = attention_dispatch._AttentionBackendRegistry._backends
    flash, calls = registry[AttentionBackendName._NATIVE_FLASH], []

    def counted(*args, **kwargs):
        calls.append(kwargs.get("attn_mask"))
        return flash(*args, **kwargs)

    monkeypatch.setitem(registry, AttentionBackendName._NATIVE_FLASH, counted)
    attention.use_attention_backend(transformer, "_native_flash")
    assert backends(transformer, attention.MASK_FREE_ATTENTIONS) == {AttentionBackendName._NATIVE_FLASH}
    assert backends(transformer, TEXT_ATTENTIONS) == {None}
    # flash runs on the CPU too (torch has a CPU kernel); the masked text cross-attentions stay on native SDPA
    outputs = step(transformer)
    blocks = len(transformer.transformer_blocks)
    assert calls == [None] * blocks * len(attention.MASK_FREE_ATTENTIONS)
    assert all(torch.isfinite(output).all() for output in outputs)


def test_native_leaves_the_output_bit_identical_also_after_another_backend(transformer) -> None:
    before = step(transformer)
    attention.use_attention_backend(transformer, "_native_flash")
    attention.use_attention_backend(transformer, "native")  # a resident transformer, the setting back to native
    assert backends(transformer, attention.MASK_FREE_ATTENTIONS) == {None}
    for a, b in zip(before, step(transformer), strict=True):
        assert torch.equal(a, b)


ALLOWED = "native, _native_cudnn, _native_flash, _native_efficient"


@pytest.mark.parametrize("backend", ["flash", "sage"])  # flash needs flash-attn; sage is tried, not offered
def test_a_backend_outside_the_allowed_ones_is_refused_naming_the_setting_and_them(transformer, backend) -> None:
    refusal = f"AVP_ATTENTION='{backend}' is not one of {ALLOWED}"
    with pytest.raises(attention.AttentionBackendError, match=f"^{refusal}$"):
        attention.use_attention_backend(transformer, backend)
    assert backends(transformer, attention.MASK_FREE_ATTENTIONS) == {None}
    assert attention.unavailable_reason(backend, torch.device("cpu")) == refusal


def test_a_cuda_only_kernel_is_unavailable_on_the_cpu_and_flash_is_not() -> None:
    cpu = torch.device("cpu")
    for backend in ("_native_cudnn", "_native_efficient"):
        assert attention.unavailable_reason(backend, cpu) == f"{backend} attention runs on a CUDA GPU only"
    assert attention.unavailable_reason("_native_flash", cpu) is None
    assert attention.unavailable_reason("native", cpu) is None
