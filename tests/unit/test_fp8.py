"""FP8 storage: exactly the transformer blocks' attention and feed-forward linears, close to the original."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import LTX2VideoTransformer3DModel
from torch import nn

from gpu_runner.families.ltx2.loading import is_fp8_layer
from gpu_runner.fp8 import FP8_DTYPE, FP8Linear, store_in_fp8

# One matmul with per-row e4m3 weights: e4m3 keeps 3 mantissa bits (relative step 2^-3 at worst,
# ~2^-4 on average, halved by rounding); over a dot product of independent rounding errors the
# output's relative error is about that per-weight error, ~3%. 6% leaves room for unlucky draws.
MATMUL_RELATIVE_ERROR = 0.06
# A whole random-weight forward stacks ~2 blocks of such matmuls with norms between them.
FORWARD_RELATIVE_ERROR = 0.10


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    return ((approx - exact).norm() / exact.norm()).item()


def transformer_inputs(cfg, batch: int) -> dict:
    """A small random input for one transformer forward: 2x3x4 video cells, 5 audio frames, 6 text tokens."""
    torch.manual_seed(1)
    frames, height, width, audio_frames, tokens = 2, 3, 4, 5, 6
    return dict(
        hidden_states=torch.randn(batch, frames * height * width, cfg.in_channels),
        audio_hidden_states=torch.randn(batch, audio_frames, cfg.audio_in_channels),
        encoder_hidden_states=torch.randn(batch, tokens, cfg.caption_channels),
        audio_encoder_hidden_states=torch.randn(batch, tokens, cfg.caption_channels),
        encoder_attention_mask=torch.ones(batch, tokens),
        timestep=torch.full((batch,), 500.0),
        num_frames=frames,
        height=height,
        width=width,
        audio_num_frames=audio_frames,
        return_dict=False,
    )


@pytest.mark.parametrize(
    ("name", "selected"),
    [
        ("transformer_blocks.0.attn1.to_q", True),
        ("transformer_blocks.12.audio_to_video_attn.to_out.0", True),
        ("transformer_blocks.3.ff.net.0.proj", True),
        ("transformer_blocks.3.audio_ff.net.2", True),
        ("transformer_blocks.3.attn1.norm_q", False),
        ("proj_in", False),
        ("time_embed.linear", False),
        ("transformer_blocks.0.attn1.to_out.1", False),
        ("caption_projection.linear_1", False),
    ],
)
def test_the_selection_is_the_block_attention_and_feed_forward_linears(name: str, selected: bool) -> None:
    assert is_fp8_layer(name) is selected


def test_an_fp8_linear_stores_float8_and_stays_close(tmp_path) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(256, 128)
    nn.init.normal_(linear.weight, std=0.02)
    x = torch.randn(64, 256)
    fp8 = FP8Linear(linear)
    assert fp8.weight.dtype == FP8_DTYPE and fp8.weight_scale.shape == (128, 1)
    assert relative_error(fp8(x), linear(x)) < MATMUL_RELATIVE_ERROR


def test_the_demo_transformer_stores_only_the_selected_layers_in_fp8(demo_model_dir) -> None:
    model = LTX2VideoTransformer3DModel.from_pretrained(demo_model_dir, subfolder="transformer")
    original = copy.deepcopy(model)
    replaced = store_in_fp8(model, is_fp8_layer)
    fp8_names = {n for n, m in model.named_modules() if isinstance(m, FP8Linear)}
    linear_names = {n for n, m in original.named_modules() if isinstance(m, nn.Linear)}
    assert replaced == len(fp8_names) > 0
    assert fp8_names == {n for n in linear_names if is_fp8_layer(n)}
    float8_params = {n for n, p in model.named_parameters() if p.dtype == FP8_DTYPE}
    assert float8_params == {f"{n}.weight" for n in fp8_names}, "nothing else is stored in float8"

    inputs = transformer_inputs(model.config, batch=1)
    with torch.no_grad():
        exact_video, exact_audio = original(**inputs)
        fp8_video, fp8_audio = model(**inputs)
    assert relative_error(fp8_video, exact_video) < FORWARD_RELATIVE_ERROR
    assert relative_error(fp8_audio, exact_audio) < FORWARD_RELATIVE_ERROR


def test_a_chunked_feed_forward_gives_the_same_output_as_the_whole(demo_model_dir) -> None:
    from gpu_runner.memory import ChunkedFeedForward

    model = LTX2VideoTransformer3DModel.from_pretrained(demo_model_dir, subfolder="transformer")
    feed_forward = model.transformer_blocks[0].ff
    hidden = torch.randn(2, 37, model.config.num_attention_heads * model.config.attention_head_dim)
    with torch.no_grad():
        assert torch.allclose(ChunkedFeedForward(feed_forward, 8)(hidden), feed_forward(hidden), atol=1e-6)


def test_a_long_clip_runs_its_guidance_batch_one_row_at_a_time_with_the_same_output(demo_model_dir) -> None:
    from gpu_runner.memory import ChunkedFeedForward, fit_long_clips

    model = LTX2VideoTransformer3DModel.from_pretrained(demo_model_dir, subfolder="transformer")
    inputs = transformer_inputs(model.config, batch=2)
    with torch.no_grad():
        whole = model(**inputs)
        fit_long_clips(model, tokens=inputs["hidden_states"].shape[1], long_clip=8)
        assert isinstance(model.transformer_blocks[0].ff, ChunkedFeedForward)
        split = model(**inputs)
    for a, b in zip(whole, split, strict=True):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)


def test_the_connectors_give_the_same_context_one_prompt_at_a_time(demo_model_dir) -> None:
    from diffusers.pipelines.ltx2 import LTX2TextConnectors

    connectors = LTX2TextConnectors.from_pretrained(demo_model_dir, subfolder="connectors")
    torch.manual_seed(3)
    width = connectors.config.caption_channels * connectors.config.text_proj_in_factor
    embeds = torch.randn(2, 32, width)  # a multiple of the demo connectors' 32 registers
    mask = torch.ones(2, 32, dtype=torch.long)
    mask[0, :5] = 0  # left padding on the shorter prompt
    with torch.no_grad():
        batched = connectors(embeds, mask, padding_side="left")
        rows = [connectors(embeds[i : i + 1], mask[i : i + 1], padding_side="left") for i in range(2)]
    for whole, parts in zip(batched, zip(*rows, strict=True), strict=True):
        assert torch.allclose(whole, torch.cat(parts), atol=1e-5)


def test_fp8_matmuls_quantise_activations_per_token_and_stay_close_for_any_row_count() -> None:
    from gpu_runner.fp8 import use_fp8_matmul

    torch.manual_seed(4)
    linear = nn.Linear(64, 32)
    nn.init.normal_(linear.weight, std=0.02)
    layer = FP8Linear(linear)
    assert use_fp8_matmul(nn.Sequential(layer)) == 1 and layer.fp8_matmul
    x = torch.randn(3, 7, 64, dtype=torch.bfloat16)  # 21 rows: not a multiple of 16, so they are padded
    out = layer(x)
    exact = linear.to(torch.bfloat16)(x)
    assert out.shape == (3, 7, 32) and out.dtype == torch.bfloat16
    # Activations and weights both in e4m3: about twice the weight-only error of one matmul.
    assert relative_error(out.float(), exact.float()) < 2 * MATMUL_RELATIVE_ERROR


@pytest.mark.parametrize(
    ("enabled", "rows", "min_rows", "fp8_matmul"),
    [
        (True, 1, 0, True),  # threshold 0: every GEMM in FP8
        (True, 511, 512, False),
        (True, 512, 512, True),
        (False, 10_000, 0, False),  # never where FP8 matmuls are off (no FP8 tensor cores)
    ],
)
def test_fp8_matmuls_take_only_gemms_of_at_least_the_threshold_rows(
    enabled: bool, rows: int, min_rows: int, fp8_matmul: bool
) -> None:
    from gpu_runner.fp8 import takes_fp8_matmul

    assert takes_fp8_matmul(enabled, rows, min_rows) is fp8_matmul


def test_a_gemm_below_the_threshold_takes_the_upcast_path_and_gives_its_result(monkeypatch) -> None:
    from gpu_runner import fp8

    torch.manual_seed(5)
    linear = nn.Linear(64, 32)
    nn.init.normal_(linear.weight, std=0.02)
    upcast, fast = FP8Linear(linear), FP8Linear(linear)
    fast.fp8_matmul = True
    scaled_linear, scaled_calls = fp8._scaled_linear, []
    monkeypatch.setattr(fp8, "_scaled_linear", lambda x, *rest: scaled_calls.append(x.shape) or scaled_linear(x, *rest))
    monkeypatch.setattr(fp8, "FP8_MATMUL_MIN_ROWS", 16)
    small = torch.randn(3, 5, 64, dtype=torch.bfloat16)  # 15 rows: below 16
    assert torch.equal(fast(small), upcast(small)) and not scaled_calls
    big = torch.randn(2, 8, 64, dtype=torch.bfloat16)  # 16 rows: on the FP8 path
    fast(big)
    assert scaled_calls == [big.shape]
