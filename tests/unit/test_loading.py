"""place_denoiser's choices that do not need a GPU to check (the compiled path is measured by bench/gpu_bench.py)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import torch

from gpu_runner import demo_model
from gpu_runner.loading import place_denoiser


def test_blocks_are_compiled_only_on_a_cuda_gpu(tmp_path, monkeypatch):
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    transformer = demo_model.transformer()
    pipe = SimpleNamespace(transformer=transformer, set_progress_bar_config=lambda **_: None)

    place_denoiser(pipe, torch.device("cpu"), tokens=160, compile_cache=tmp_path / "compiled")

    # torch.compile on a module sets its compiled call; on the CPU the runner leaves every block as it was
    assert all(block._compiled_call_impl is None for block in transformer.transformer_blocks)
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ and "TRITON_CACHE_DIR" not in os.environ
