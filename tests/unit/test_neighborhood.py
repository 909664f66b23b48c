"""LTX-2.5's decoder attention through our processor: the same windows and outputs as diffusers' own, eager and
compiled (the compiled path is what production grids take)."""

import pytest
import torch
from diffusers.models.autoencoders import ltx2_diffusion_decoder as stock

from gpu_runner.families.ltx2 import neighborhood


@pytest.mark.parametrize("grid, kernel", [((5, 6, 7), (3, 5, 5)), ((2, 9, 4), (3, 3, 5)), ((4, 4, 4), (1, 3, 3))])
def test_the_window_mask_is_diffusers_window(grid, kernel):
    ours = neighborhood.window_mask(grid, kernel, torch.device("cpu"), compiled=False).to_dense()
    theirs = stock._neighborhood_block_mask(*grid, kernel, torch.device("cpu")).to_dense()
    assert torch.equal(ours, theirs)
    kernel = tuple(min(k, n) for k, n in zip(kernel, grid, strict=True))  # a window never holds fewer than its kernel
    tokens = grid[0] * grid[1] * grid[2]
    dense = neighborhood.window_mask(grid, kernel, torch.device("cpu"), compiled=False)
    counts = torch.stack([dense.mask_mod(0, 0, torch.tensor(q), torch.arange(tokens)).sum() for q in range(tokens)])
    assert torch.all(counts == kernel[0] * kernel[1] * kernel[2])


def attention_module() -> torch.nn.Module:
    torch.manual_seed(0)
    module = stock.LTX2VideoVaeNeighborhoodAttention(dim=32, kernel_size=(3, 3, 3), head_dim=16)
    return module.eval()


@pytest.mark.parametrize("compiled", [False, True])
def test_windowed_attention_matches_diffusers_processor(compiled, monkeypatch):
    if compiled:  # this small grid takes the compiled mask and kernel, as a production grid does
        monkeypatch.setattr(neighborhood, "EAGER_TOKENS", 16)
    module = attention_module()
    hidden = torch.randn(1, 4, 6, 8, 32)
    with torch.no_grad():
        expected = module(hidden)
        windowed = neighborhood.WindowedAttention()
        module.set_processor(windowed)
        assert module.build_block_mask(hidden) is None  # diffusers' stages build no dense mask for it
        got = module(hidden)
    assert windowed._mask_key[-1] is compiled
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_every_decoder_attention_shares_one_processor():
    from gpu_runner.demo import model as demo

    decoder = demo.diffusion_decoder()
    processor = neighborhood.use_windowed_attention(decoder)
    attentions = [m for m in decoder.modules() if isinstance(m, stock.LTX2VideoVaeNeighborhoodAttention)]
    assert attentions and all(m.processor is processor for m in attentions)
