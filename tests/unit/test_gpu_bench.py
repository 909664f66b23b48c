"""The GPU bench's CPU smoke: `--tiny` measures every path at the demo model's size and reports them in one table."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import diffusers
import pytest
import torch

from gpu_runner import fp8

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"
FRAMES = (9, 17)
STEP_PATHS = (
    "stock bf16",
    "stock fp8 hooks",
    "ours fp8 matmul",
    "ours fp8 matmul, fused quantisation",
    "runner job (generate)",
)
DECODE = "stock video VAE decode"


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """One `--tiny` run: the module, what it printed, the file it wrote and its table's rows by (path, frames)."""
    sys.path.insert(0, str(BENCH_DIR))
    gpu_bench = importlib.import_module("gpu_bench")
    out = tmp_path_factory.mktemp("bench") / "results" / "tiny.md"
    with pytest.MonkeyPatch.context() as patch:
        # torch.compile builds C++ for ~20 s on two CPU cores. What is smoked here is the bench around the
        # fused path (switching it on and off, timing its first step), so the quantisation runs uncompiled.
        patch.setattr(fp8, "_fused_quantise", lambda: fp8.quantise_rows)
        printed = gpu_bench.main(["--tiny", "--repeats", "2", "--out", str(out)])
    written = out.read_text()
    lines = written.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| path |"))
    end = lines.index("", start)  # the table ends at the first blank line
    columns = _cells(lines[start])
    rows = {}
    for line in lines[start + 2 : end]:  # past the header and its |---| line
        cells = dict(zip(columns, _cells(line), strict=True))
        rows[cells["path"], int(cells["frames"])] = cells
    return gpu_bench, printed, written, rows


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().removeprefix("|").removesuffix("|").split("|")]


def test_every_path_has_a_row_per_frame_count(bench) -> None:
    gpu_bench, _printed, _written, rows = bench
    assert set(rows) == {(path, frames) for path in gpu_bench.PATHS for frames in FRAMES}
    assert set(gpu_bench.PATHS) == {*STEP_PATHS, DECODE}


def test_step_rows_give_time_rate_share_and_the_30_step_estimate(bench) -> None:
    _module, _printed, _written, rows = bench
    for frames in FRAMES:
        decode_s = float(rows[DECODE, frames]["s per step (decode: per clip)"])
        for path in STEP_PATHS:
            row = rows[path, frames]
            step_s = float(row["s per step (decode: per clip)"])
            assert step_s > 0
            assert float(row["TFLOP/s"]) > 0 and float(row["% of ceiling"]) > 0
            assert row["peak VRAM GiB"] == "-"  # no VRAM on the CPU
            assert float(row["reference model, s per step"]) == pytest.approx(0.025 + 0.026 * frames, abs=1e-3)
            end_to_end = float(row["30 steps end to end, s (extrapolated)"])
            if path == "runner job (generate)":
                assert end_to_end > 30 * step_s  # its other stages on top of 30 steps
            else:
                assert end_to_end == pytest.approx(30 * step_s + decode_s, abs=0.1)


def test_our_rows_are_compared_with_both_stock_paths(bench) -> None:
    _module, _printed, _written, rows = bench
    for frames in FRAMES:
        stock_bf16 = float(rows["stock bf16", frames]["s per step (decode: per clip)"])
        stock_fp8 = float(rows["stock fp8 hooks", frames]["s per step (decode: per clip)"])
        assert rows["stock bf16", frames]["time / stock bf16"] == "-"
        assert rows["stock fp8 hooks", frames]["time / stock fp8 hooks"] == "-"
        for path in ("ours fp8 matmul", "ours fp8 matmul, fused quantisation", "runner job (generate)"):
            row = rows[path, frames]
            step_s = float(row["s per step (decode: per clip)"])
            assert float(row["time / stock bf16"]) == pytest.approx(step_s / stock_bf16, rel=0.05, abs=0.01)
            assert float(row["time / stock fp8 hooks"]) == pytest.approx(step_s / stock_fp8, rel=0.05, abs=0.01)


def test_notes_show_the_compile_cost_and_the_long_clip_set_up(bench) -> None:
    _module, _printed, _written, rows = bench
    assert "compiling" in rows["ours fp8 matmul, fused quantisation", 9]["notes"]
    # --tiny lowers the long-clip threshold so that 17 frames takes the runner's long-clip set-up.
    assert "long clip" not in rows["ours fp8 matmul", 9]["notes"]
    assert "long clip" in rows["ours fp8 matmul", 17]["notes"]
    assert "cold prompt" in rows["runner job (generate)", 9]["notes"]
    assert "cached prompt" in rows["runner job (generate)", 17]["notes"]
    assert rows[DECODE, 9]["notes"] == "untiled"
    assert fp8._quantise is fp8.quantise_rows, "the bench leaves the quantisation unfused"


def test_the_file_is_the_printed_report_under_a_header(bench) -> None:
    _module, printed, written, _rows = bench
    assert printed == written
    title = written.splitlines()[0]
    assert title.startswith("# GPU bench, ") and "CPU" in title and "RANDOM WEIGHTS" in title
    assert f"torch {torch.__version__}" in written and f"diffusers {diffusers.__version__}" in written
    assert "bf16 matmul ceiling" in written
    assert "| decode_video |" in written  # the runner jobs' stage table
