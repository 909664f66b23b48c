"""The attention bench's CPU smoke: `--tiny` times every AVP_ATTENTION backend this CPU can run at the demo model's
heads and says why it skips the others."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"
ATTENTIONS = ("video self (attn1)", "audio self (audio_attn1)", "audio to video", "video to audio")


def bench():
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    return importlib.import_module("attention_bench")


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> dict[tuple[str, str, str], dict[str, str]]:
    out = tmp_path_factory.mktemp("attention") / "attention.md"
    printed = bench().main(["--tiny", "--repeats", "1", "--frames", "9", "--sageattention", "--out", str(out)])
    assert printed == out.read_text()
    lines = [line for line in printed.splitlines() if line.startswith("| ") and not line.startswith("| attention")]
    table = [dict(zip(bench().COLUMNS, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines]
    return {(row["attention"], row["frames"], row["backend"]): row for row in table}


def test_every_mask_free_attention_has_a_row_per_backend(rows) -> None:
    backends = ("native", "_native_cudnn", "_native_flash", "_native_efficient", bench().SAGEATTENTION)
    assert set(rows) == {(attention, "9", backend) for attention in ATTENTIONS for backend in backends}


def test_the_backends_the_cpu_runs_are_timed_and_match_float32_attention(rows) -> None:
    for attention in ATTENTIONS:
        for backend in ("native", "_native_flash"):
            row = rows[attention, "9", backend]
            assert float(row["ms per call"]) > 0 and row["notes"] == ""
            assert 0 < float(row["rel. error"]) < 0.01  # bf16 rounding


def test_the_others_say_why_they_were_skipped(rows) -> None:
    for attention in ATTENTIONS:
        for backend in ("_native_cudnn", "_native_efficient"):
            row = rows[attention, "9", backend]
            assert row["notes"] == f"skipped: {backend} attention runs on a CUDA GPU only"
            assert row["ms per call"] == row["rel. error"] == "-"
        assert rows[attention, "9", bench().SAGEATTENTION]["notes"].startswith("skipped: ")
