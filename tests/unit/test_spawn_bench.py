"""The spawn bench's CPU smoke: `--tiny` times the real runner from spawn (or hand-over to a spare) to its first
step, cached and not, and fast jobs from the hand-over to their MP4."""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from pathlib import Path

import diffusers
import pytest
import torch

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"
RUNS = ("(a)", "(b)", "(c)", "(d)", "(e)", "(f)", "(g)", "(h)", "(i)", "(j)", "(k)")
SPARE_RUNS = RUNS[4:]
COMPILED_RUNS = RUNS[5:]  # compiled on CUDA only: on the CPU they run uncompiled, and the table says so
FAST_RUNS = ("(h)", "(i)")
SECONDS = (
    "spawn → first protocol line, s",
    "load_transformer, s",
    "first step itself, s",
    "spawn → first denoise step, s",
)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """One `--tiny` run: what it printed, the file it wrote, its table's rows by run, and its work directory."""
    sys.path.insert(0, str(BENCH_DIR))
    spawn_bench = importlib.import_module("spawn_bench")
    out = tmp_path_factory.mktemp("bench") / "results" / "spawn.md"
    workdir = tmp_path_factory.mktemp("work")
    printed = spawn_bench.main(["--tiny", "--out", str(out), "--workdir", str(workdir)])
    written = out.read_text()
    return printed, written, _table(written, 0), workdir


def _table(written: str, which: int) -> dict[str, dict[str, str]]:
    """The report's `which`th table, its rows by run and its cells by column."""
    lines = written.splitlines()
    start = [i for i, line in enumerate(lines) if line.startswith("| run |")][which]
    end = lines.index("", start)
    columns = _cells(lines[start])
    rows = {}
    for line in lines[start + 2 : end]:
        cells = dict(zip(columns, _cells(line), strict=True))
        rows[cells["run"][:3]] = cells
    return rows


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().removeprefix("|").removesuffix("|").split("|")]


def test_every_run_has_a_row_of_timings(bench) -> None:
    _printed, _written, rows, _workdir = bench
    assert tuple(rows) == RUNS
    for name, row in rows.items():
        seconds = {column: float(row[column]) for column in SECONDS}
        # A spare, handed the job, may print its first line within 5 ms of the hand-over: 0.00 in the table.
        instant = {"spawn → first protocol line, s"} if name in SPARE_RUNS else set()
        assert all(value > 0 or column in instant for column, value in seconds.items()), row
        assert seconds["spawn → first denoise step, s"] > seconds["spawn → first protocol line, s"]
        assert row["CUDA start, s"] == "-"  # no CUDA on the CPU
        assert row["load_transformer peak VRAM, GiB"] == "-"  # no VRAM on the CPU
        started = float(row["spawn → runner started, s"])
        if name in SPARE_RUNS:  # handed to a spare: it takes the job at once, its imports done before
            assert row["its torch + diffusers imports, s"] == "-"
            assert 0 <= started <= seconds["spawn → first protocol line, s"] + 0.02
            continue
        # The runner's start-up, from its own log: started, then imports, all before its first line.
        imports = float(row["its torch + diffusers imports, s"])
        assert started > 0 and imports > 0 and started + imports <= seconds["spawn → first protocol line, s"] + 0.02


def test_a_spare_runner_spares_the_job_its_imports(bench) -> None:
    _printed, written, rows, _workdir = bench
    assert rows["(e)"]["transformer from"] == "FP8 cache" and rows["(e)"]["page cache"].startswith("warm")
    spare_imports = re.search(
        r"\(e\) ran on a spare runner that had imported torch and diffusers in ([\d.]+) s", written
    )
    assert spare_imports is not None and float(spare_imports.group(1)) > 0
    first_line = {name: float(rows[name]["spawn → first protocol line, s"]) for name in ("(b)", "(e)")}
    imports = float(rows["(b)"]["its torch + diffusers imports, s"])
    assert first_line["(e)"] < first_line["(b)"] - imports / 2, "the hand-over skips the imports (b) paid"


def test_the_rows_load_the_transformer_the_way_they_say(bench) -> None:
    _printed, written, rows, _workdir = bench
    assert rows["(a)"]["transformer from"] == "bf16 read and cast, cache written"
    assert rows["(b)"]["transformer from"] == rows["(c)"]["transformer from"] == "FP8 cache"
    assert rows["(d)"]["transformer from"] == "bf16 read and cast"
    assert rows["(a)"]["page cache"].startswith("warm") and rows["(b)"]["page cache"].startswith("warm")
    assert "evicted" in rows["(c)"]["page cache"], "--tiny evicts its own files, never the machine's page cache"
    assert "weight cache: wrote" in written and "weight cache: loaded" in written  # the runner's own log lines


def test_the_file_is_the_printed_report_and_the_bench_leaves_nothing_behind(bench) -> None:
    printed, written, _rows, workdir = bench
    assert printed == written
    title = written.splitlines()[0]
    assert title.startswith("# Spawn to first denoising step, ") and "CPU" in title and "RANDOM WEIGHTS" in title
    assert f"torch {torch.__version__}" in written and f"diffusers {diffusers.__version__}" in written
    assert list(workdir.iterdir()) == []


def test_every_job_runs_in_the_mode_and_size_it_says_and_the_table_says_nothing_compiled_on_a_cpu(bench) -> None:
    _printed, written, rows, _workdir = bench
    # The model offers fast mode first now (a distilled scheduler and a latent upsampler): quality is asked outright.
    assert {name: row["job"] for name, row in rows.items()} == {
        **dict.fromkeys(RUNS[:7], "quality 9f 256x160"),
        **dict.fromkeys(FAST_RUNS, "fast 9f 256x128"),
        **dict.fromkeys(("(j)", "(k)"), "quality 17f 256x160"),  # a size never seen...
    }
    for name in ("(j)", "(k)"):  # ...after a job at another size in the same compile cache
        assert re.search(rf"{re.escape(name)} first ran a job at quality 9f 256x160 in the same compile cache", written)
    assert {name: row["blocks"] for name, row in rows.items()} == {
        **dict.fromkeys(RUNS[:5], "not compiled"),
        **dict.fromkeys(COMPILED_RUNS, "not compiled on a CPU"),
    }
    assert all(rows[name]["transformer from"] == "FP8 cache" for name in COMPILED_RUNS)


def test_a_fast_job_runs_to_its_mp4_through_both_stages(bench) -> None:
    _printed, written, _rows, _workdir = bench
    fast = _table(written, 1)
    assert tuple(fast) == FAST_RUNS
    for row in fast.values():
        to_first_step, to_result = float(row["hand-over → first step, s"]), float(row["hand-over → result (MP4), s"])
        assert 0 < to_first_step < to_result
        stages = {stage: float(row[f"{stage}, s"]) for stage in ("load_transformer", "denoise", "upsample", "refine")}
        assert all(seconds > 0 for seconds in stages.values()) and float(row["mux, s"]) >= 0
        assert sum(stages.values()) < to_result
        assert 0 < float(row["refine: start → its first step, s"]) <= stages["refine"]
        assert row["job peak VRAM, GiB"] == "-"  # no VRAM on the CPU


def test_each_runs_job_file_carries_its_compile_settings(tmp_path, demo_model_dir) -> None:
    """What the table's "blocks" column cannot show on a CPU: (j) alone asks for dynamic shapes, and the compiled
    runs, alone, name a compile cache."""
    sys.path.insert(0, str(BENCH_DIR))
    spawn_bench = importlib.import_module("spawn_bench")
    setting = spawn_bench.setting_for(argparse.Namespace(tiny=True, fast_size=None, fast_frames=None))
    for index, run in enumerate(spawn_bench.RUNS):
        clip = setting.fast if run.fast else setting.unseen if run.unseen_size else setting.quality
        spawn_bench.write_job(tmp_path / f"job-{index}", demo_model_dir, setting, clip, tmp_path / "caches", run)
        job = json.loads((tmp_path / f"job-{index}" / "job.json").read_text())
        assert job["compile_dynamic"] is run.name.startswith("(j)"), run.name
        assert (job["compile_cache_dir"] is not None) is run.compiled, run.name
        assert job["request"]["mode"] == clip.mode and job["request"]["num_frames"] == clip.frames
