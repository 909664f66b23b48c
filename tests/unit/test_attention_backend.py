"""AVP_ATTENTION's room (gpu_runner/attention.py) on the demo model's transformer, on the CPU: which attentions
get the backend, "native" as it was, the errors that name the setting, and the sage backend's custom op around a
stand-in for its Triton kernels (gpu_runner/sage_triton.py needs Triton and a GPU)."""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F
from diffusers.models import attention_dispatch
from diffusers.models.attention_dispatch import AttentionBackendName

from gpu_runner import attention
from gpu_runner.demo import model as demo_model

TEXT_ATTENTIONS = ("attn2", "audio_attn2")


def backends(transformer: torch.nn.Module, names: tuple[str, ...]) -> set:
    """The backends set on the named attentions across every block."""
    blocks = transformer.transformer_blocks
    return {block.get_submodule(name).processor._attention_backend for block in blocks for name in names}


def step(transformer: torch.nn.Module) -> tuple[torch.Tensor, ...]:
    """One forward pass of the demo transformer: video and audio, text with a (all-ones) mask as LTX-2 gives it."""
    config = transformer.config
    generator = torch.Generator().manual_seed(0)
    mask = torch.ones(2, 32, dtype=torch.int64)
    with torch.no_grad():
        return transformer(
            hidden_states=torch.randn(2, 24, config.in_channels, generator=generator),
            audio_hidden_states=torch.randn(2, 5, config.audio_in_channels, generator=generator),
            encoder_hidden_states=torch.randn(2, 32, config.caption_channels, generator=generator),
            audio_encoder_hidden_states=torch.randn(2, 32, config.caption_channels, generator=generator),
            encoder_attention_mask=mask,
            audio_encoder_attention_mask=mask,
            timestep=torch.full((2,), 500.0),
            num_frames=2,
            height=3,
            width=4,
            audio_num_frames=5,
            return_dict=False,
        )


@pytest.fixture
def transformer() -> torch.nn.Module:
    torch.manual_seed(0)
    return demo_model.transformer().eval()


def test_the_mask_free_attentions_get_the_backend_and_the_text_cross_attentions_never(transformer) -> None:
    attention.use_attention_backend(transformer, "_native_flash")
    assert backends(transformer, attention.MASK_FREE_ATTENTIONS) == {AttentionBackendName._NATIVE_FLASH}
    assert backends(transformer, TEXT_ATTENTIONS) == {None}
    # flash runs on the CPU too (torch has a CPU kernel), masks stay on the text cross-attentions' native SDPA
    assert all(torch.isfinite(output).all() for output in step(transformer))


def test_native_leaves_the_output_bit_identical_also_after_another_backend(transformer) -> None:
    before = step(transformer)
    attention.use_attention_backend(transformer, "native")
    assert backends(transformer, attention.MASK_FREE_ATTENTIONS + TEXT_ATTENTIONS) == {None}
    for a, b in zip(before, step(transformer), strict=True):
        assert torch.equal(a, b)
    attention.use_attention_backend(transformer, "_native_flash")
    attention.use_attention_backend(transformer, "native")  # a resident transformer, the setting back to native
    assert backends(transformer, attention.MASK_FREE_ATTENTIONS) == {None}
    for a, b in zip(before, step(transformer), strict=True):
        assert torch.equal(a, b)


def test_a_backend_that_does_not_exist_is_refused_naming_the_setting(transformer) -> None:
    with pytest.raises(attention.AttentionBackendError, match=r"AVP_ATTENTION='flash' is not one of native, sage"):
        attention.use_attention_backend(transformer, "flash")  # diffusers has it, but it needs flash-attn
    assert backends(transformer, attention.MASK_FREE_ATTENTIONS) == {None}


def test_sage_without_triton_is_refused_naming_the_setting_and_what_is_missing(transformer, monkeypatch) -> None:
    monkeypatch.setattr(attention_dispatch, "_CAN_USE_SAGE_ATTN", False)  # no sageattention>=2.1.1 either
    monkeypatch.delitem(sys.modules, attention.SAGE_KERNELS, raising=False)
    monkeypatch.setitem(sys.modules, "triton", None)  # not importable, as with a CPU build of torch
    with pytest.raises(attention.AttentionBackendError, match=r"AVP_ATTENTION=sage needs Triton"):
        attention.use_attention_backend(transformer, "sage")
    assert backends(transformer, attention.MASK_FREE_ATTENTIONS) == {None}
    assert "needs Triton" in attention.unavailable_reason("sage", torch.device("cuda"))
    assert attention.unavailable_reason("sage", torch.device("cpu")) == "sage attention runs on a CUDA GPU only"
    assert attention.unavailable_reason("_native_flash", torch.device("cpu")) is None


@pytest.fixture
def stand_in_sage(monkeypatch) -> list[dict]:
    """Exact attention in place of the sage kernels (gpu_runner/sage_triton.py's `sage_attention`), the calls it
    got; diffusers' registry as it was afterwards (the bridge replaces its `sage` entry)."""
    calls = []

    def sage_attention(query, key, value, scale):
        calls.append({"shape": tuple(query.shape), "scale": scale})
        query, key, value = (x.transpose(1, 2) for x in (query, key, value))  # (batch, heads, tokens, dim)
        return F.scaled_dot_product_attention(query, key, value, scale=scale).transpose(1, 2)

    kernels = types.SimpleNamespace(sage_attention=sage_attention)
    monkeypatch.setitem(sys.modules, attention.SAGE_KERNELS, kernels)
    monkeypatch.setattr(attention_dispatch, "_CAN_USE_SAGE_ATTN", False)  # no sageattention>=2.1.1
    registry = attention_dispatch._AttentionBackendRegistry
    for table in (registry._backends, registry._constraints, registry._supported_arg_names):
        monkeypatch.setitem(table, AttentionBackendName.SAGE, table[AttentionBackendName.SAGE])
    return calls


def test_sage_runs_the_kernels_on_the_mask_free_attentions_in_diffusers_layout(transformer, stand_in_sage) -> None:
    before = step(transformer)
    attention.use_attention_backend(transformer, "sage")
    assert backends(transformer, attention.MASK_FREE_ATTENTIONS) == {AttentionBackendName.SAGE}
    assert backends(transformer, TEXT_ATTENTIONS) == {None}
    after = step(transformer)
    blocks = len(transformer.transformer_blocks)
    assert len(stand_in_sage) == blocks * len(attention.MASK_FREE_ATTENTIONS)  # never the masked text attentions
    heads = transformer.config.num_attention_heads
    assert {(call["shape"][2], call["scale"]) for call in stand_in_sage} == {(heads, None)}
    for a, b in zip(before, after, strict=True):
        torch.testing.assert_close(a, b)  # exact attention in (batch, tokens, heads, dim): the output as native's


def test_the_sage_op_is_a_clean_custom_op_for_torch_compile(stand_in_sage) -> None:
    """Its fake (meta) output matches the real one and it changes none of its inputs: what torch.compile needs to
    keep one graph around it."""
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(2, 24, 6, 32, generator=generator) for _ in range(3))
    torch.library.opcheck(attention.sage_attention, (query, key, value, None))


def test_an_attention_on_sage_compiles_as_one_graph(transformer, stand_in_sage) -> None:
    """fullgraph: Dynamo takes the op whole, no graph break around it (it would raise), as a compiled block needs."""
    attention.use_attention_backend(transformer, "sage")
    attn1 = transformer.transformer_blocks[0].attn1
    hidden_states = torch.randn(2, 24, transformer.config.num_attention_heads * transformer.config.attention_head_dim)
    with torch.no_grad():
        eager = attn1(hidden_states)
        compiled = torch.compile(attn1, backend="aot_eager", fullgraph=True)(hidden_states)
    torch.testing.assert_close(compiled, eager)
    assert len(stand_in_sage) == 2  # the compiled call ran the op too
