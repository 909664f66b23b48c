"""The FP8 weight cache: the first FP8 load writes it, later loads skip the bf16 weights, damage falls back."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import LTX2VideoTransformer3DModel
from safetensors.torch import load_file, save_file

from gpu_runner.cache_budget import GIB, Cache, CacheBudget, Limit
from gpu_runner.families.ltx2.loading import DiffusersDirectory
from gpu_runner.fp8 import FP8_DTYPE, FP8Linear
from gpu_runner.weight_cache import WeightCache
from tests.runner_fixtures import scramble_keeping_size_and_time

CPU = torch.device("cpu")
DTYPE = torch.bfloat16  # what a GPU job computes in; the CPU runs it too, slowly, at the demo's size


def weight_cache(directory: Path, limit_bytes: int = GIB) -> WeightCache:
    """A weight cache alone under a budget (a GiB: far more than the demo's entries, unless a test says less)."""
    return WeightCache(directory, CacheBudget([Cache(directory)], Limit(limit_bytes, "the test's budget")))


@pytest.fixture
def model_dir(demo_model_dir: Path, tmp_path: Path) -> Path:
    """A copy of the demo model, so a test may damage its files."""
    return Path(shutil.copytree(demo_model_dir, tmp_path / "model"))


@pytest.fixture
def source(model_dir: Path, tmp_path: Path) -> DiffusersDirectory:
    return DiffusersDirectory(model_dir, weight_cache(tmp_path / "weights"))


@pytest.fixture
def original_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every read of a transformer's original weights (from_pretrained), by model directory."""
    reads: list[str] = []
    from_pretrained = LTX2VideoTransformer3DModel.from_pretrained.__func__

    def counted(cls, path, *args, **kwargs):
        reads.append(str(path))
        return from_pretrained(cls, path, *args, **kwargs)

    monkeypatch.setattr(LTX2VideoTransformer3DModel, "from_pretrained", classmethod(counted))
    return reads


def entries(source: DiffusersDirectory) -> list[Path]:
    return sorted(source.weight_cache.directory.iterdir())


def tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors, copied: a model loaded on the CPU may share memory with the file it came from."""
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def assert_same_bits(model: torch.nn.Module, reference: dict[str, torch.Tensor]) -> None:
    """The model holds the reference's tensors: names, dtypes, devices, shapes and every bit."""
    ours = model.state_dict()
    assert ours.keys() == reference.keys()
    for name, tensor in ours.items():
        assert (tensor.dtype, tensor.device) == (reference[name].dtype, reference[name].device), name
        assert torch.equal(tensor.view(torch.uint8), reference[name].view(torch.uint8)), name


def transformer_weights(model_dir: Path) -> Path:
    (weights,) = (model_dir / "transformer").glob("*.safetensors")
    return weights


def test_fp8_storage_lays_out_a_weightless_model_without_giving_it_storage(source: DiffusersDirectory) -> None:
    skeleton = source.fp8_skeleton(DTYPE)

    assert all(tensor.is_meta for tensor in skeleton.state_dict().values())
    layers = [m for m in skeleton.modules() if isinstance(m, FP8Linear)]
    assert layers and all(layer.weight.dtype == FP8_DTYPE for layer in layers)
    assert all(layer.weight_scale.dtype == torch.float32 for layer in layers)
    assert all(layer.weight_scale.shape == (layer.out_features, 1) for layer in layers)
    assert all(layer.bias.dtype == DTYPE for layer in layers if layer.bias is not None)


def test_the_first_fp8_load_writes_the_cache_and_the_next_never_reads_the_original_weights(
    source: DiffusersDirectory, model_dir: Path, original_reads: list[str]
) -> None:
    first = source.load_transformer(DTYPE, "fp8", CPU)
    assert len(original_reads) == 1 and len(entries(source)) == 1
    reference, layout = tensors(first), [type(m) for m in first.modules()]
    del first

    scramble_keeping_size_and_time(transformer_weights(model_dir))  # reading it now would fail or differ
    cached = source.load_transformer(DTYPE, "fp8", CPU)

    assert len(original_reads) == 1, "the original weights were read again"
    assert_same_bits(cached, reference)
    assert [type(m) for m in cached.modules()] == layout and not cached.training


@pytest.mark.parametrize("damage", ["truncated", "a tensor missing", "a tensor in another dtype"])
def test_a_damaged_entry_falls_back_to_the_original_weights_and_is_written_again(
    source: DiffusersDirectory, original_reads: list[str], damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    reference = tensors(source.load_transformer(DTYPE, "fp8", CPU))
    (entry,) = entries(source)
    whole = load_file(entry)
    if damage == "truncated":
        with entry.open("r+b") as file:
            file.truncate(entry.stat().st_size // 2)
    else:
        name = next(name for name, tensor in whole.items() if tensor.dtype == FP8_DTYPE)
        if damage == "a tensor missing":
            del whole[name]
        else:
            whole[name] = whole[name].to(DTYPE)
        save_file(whole, entry)

    with caplog.at_level(logging.WARNING, logger="gpu_runner.weight_cache"):
        fallback = source.load_transformer(DTYPE, "fp8", CPU)
    assert len(original_reads) == 2 and "unusable" in caplog.text
    assert_same_bits(fallback, reference)

    assert entries(source) == [entry]
    assert_same_bits(source.load_transformer(DTYPE, "fp8", CPU), reference)
    assert len(original_reads) == 2, "the rewritten entry serves the next load"


def test_a_changed_model_or_dtype_gets_its_own_entry_which_replaces_the_old_one(
    source: DiffusersDirectory, model_dir: Path, original_reads: list[str]
) -> None:
    source.load_transformer(DTYPE, "fp8", CPU)
    (old,) = entries(source)

    weights = transformer_weights(model_dir)
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # replaced in place
    source.load_transformer(DTYPE, "fp8", CPU)
    (new,) = entries(source)
    assert new != old and len(original_reads) == 2

    source.load_transformer(torch.float32, "fp8", CPU)
    (float32,) = entries(source)
    assert float32 not in (old, new) and len(original_reads) == 3


def test_other_precisions_and_sources_without_a_cache_leave_it_alone(
    source: DiffusersDirectory, model_dir: Path
) -> None:
    transformer = source.load_transformer(DTYPE, "bf16", CPU)
    assert not source.weight_cache.directory.exists()
    assert not any(isinstance(m, FP8Linear) for m in transformer.modules())

    uncached = DiffusersDirectory(model_dir).load_transformer(DTYPE, "fp8", CPU)
    assert any(isinstance(m, FP8Linear) for m in uncached.modules())
    assert not source.weight_cache.directory.exists()


def test_a_cache_that_cannot_be_written_never_fails_the_load(
    model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    source = DiffusersDirectory(model_dir, weight_cache(blocked / "weights"))

    with caplog.at_level(logging.WARNING, logger="gpu_runner.weight_cache"):
        transformer = source.load_transformer(DTYPE, "fp8", CPU)
    assert any(isinstance(m, FP8Linear) for m in transformer.modules())
    assert "could not write" in caplog.text


def test_a_second_model_makes_room_by_removing_the_least_recently_used_models_entry(
    source: DiffusersDirectory, model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source.load_transformer(DTYPE, "fp8", CPU)
    (first,) = entries(source)
    size = first.stat().st_size
    other_model = Path(shutil.copytree(model_dir, tmp_path / "other-model"))  # a model library's second model
    library = DiffusersDirectory(other_model, weight_cache(source.weight_cache.directory, limit_bytes=size * 3 // 2))

    with caplog.at_level(logging.INFO, logger="gpu_runner.cache_budget"):
        library.load_transformer(DTYPE, "fp8", CPU)
    (second,) = entries(source)
    assert second != first and f"removed {first}" in caplog.text


def test_an_entry_larger_than_the_budget_is_not_written_and_the_load_goes_on(
    source: DiffusersDirectory, model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source.load_transformer(DTYPE, "fp8", CPU)
    (entry,) = entries(source)
    small = DiffusersDirectory(model_dir, weight_cache(tmp_path / "small", limit_bytes=entry.stat().st_size // 2))

    with caplog.at_level(logging.INFO, logger="gpu_runner.cache_budget"):
        transformer = small.load_transformer(DTYPE, "fp8", CPU)
    assert any(isinstance(m, FP8Linear) for m in transformer.modules())
    assert not (tmp_path / "small").exists() and "not writing" in caplog.text


def test_the_chunked_reader_gives_safetensors_tensors_bit_for_bit_across_chunk_edges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gpu_runner import weight_cache

    torch.manual_seed(0)
    stored = {
        "odd_fp8": torch.randn(3, 5).to(FP8_DTYPE),  # 15 bytes
        "scale": torch.rand(7, 1),
        "bias": torch.randn(11, dtype=torch.bfloat16),
        "steps": torch.arange(4),
        "empty": torch.zeros(0, 3),
        "flag": torch.tensor([True, False, True]),
    }
    path = tmp_path / "mixed.safetensors"
    save_file(stored, path)
    monkeypatch.setattr(weight_cache, "READ_CHUNK", 7)  # chunks cut through tensors
    monkeypatch.setattr(weight_cache, "READERS", 3)

    read = weight_cache._read(path, *weight_cache._layout(path), CPU)

    reference = load_file(path)
    assert read.keys() == reference.keys()
    for name, tensor in read.items():
        assert (tensor.dtype, tensor.shape) == (reference[name].dtype, reference[name].shape), name
        assert torch.equal(tensor.view(torch.uint8), reference[name].view(torch.uint8)), name


def _with_header(path: Path, header: object) -> Path:
    """The same tensor bytes behind another header."""
    import json as json_module

    raw = path.read_bytes()
    data = raw[8 + int.from_bytes(raw[:8], "little") :]
    text = json_module.dumps(header).encode()
    damaged = path.with_name("damaged.safetensors")
    damaged.write_bytes(len(text).to_bytes(8, "little") + text + data)
    return damaged


@pytest.mark.parametrize(
    "header",
    [
        ["not", "an", "object"],
        {"w": {"dtype": "F32", "shape": [3, 3], "data_offsets": [0, 16]}},  # 9 floats in 16 bytes
        {"w": {"dtype": "Q4", "shape": [4], "data_offsets": [0, 16]}},  # no such dtype
        {"w": {"dtype": "F32", "shape": "four", "data_offsets": [0, 16]}},
        {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 4096]}},  # past the end of the file
        {"w": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]}},  # not aligned to its dtype
    ],
)
def test_a_header_that_does_not_hold_together_is_refused_before_any_read(tmp_path: Path, header: object) -> None:
    from gpu_runner import weight_cache

    path = tmp_path / "good.safetensors"
    save_file({"w": torch.arange(4, dtype=torch.float32)}, path)
    assert weight_cache._layout(path)[1]["w"][1] == (4,)
    with pytest.raises(ValueError):
        weight_cache._layout(_with_header(path, header))


def test_a_file_cut_short_after_its_header_was_read_fails_the_read(tmp_path: Path, monkeypatch) -> None:
    from gpu_runner import weight_cache

    path = tmp_path / "cut.safetensors"
    save_file({"a": torch.zeros(64), "b": torch.ones(64)}, path)
    monkeypatch.setattr(weight_cache, "READ_CHUNK", 64)
    layout = weight_cache._layout(path)
    with path.open("r+b") as file:
        file.truncate(path.stat().st_size - 100)
    with pytest.raises(OSError, match="ends before"):
        weight_cache._read(path, *layout, CPU)
