"""The GPU bench's CPU smoke: `--tiny` measures (or profiles) every path at the demo model's size, in one table."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import diffusers
import pytest
import torch

from gpu_runner import fp8
from gpu_runner.demo import model as demo_model
from tests.transformer_inputs import demo_transformer_inputs

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"
FRAMES = (9, 17)
STOCK_PATHS = ("stock bf16", "stock bf16, cuDNN attention", "stock fp8 hooks")
OUR_PATHS = (
    "ours fp8 matmul",
    "ours fp8 matmul, fused quantisation",
    "ours fp8 matmul, cuDNN attention",
    "ours fp8 matmul, text masks dropped",
    "ours fp8 matmul, cuDNN attention, text masks dropped",
    "ours fp8 matmul, FP8 from 512 rows",
    "ours fp8 matmul, FP8 from 2048 rows",
    "ours fp8 matmul, FP8 from 4096 rows",
    "ours fp8 matmul, compiled blocks",
    "ours fp8 matmul, compiled blocks, STG pass from its block (the runner's path)",
    "ours fp8 matmul, compiled blocks, _native_flash on the mask-free attentions",  # torch has a CPU flash kernel
)
# AVP_ATTENTION's backends that run on a CUDA GPU only: a row each saying so, no time
CUDA_ONLY_PATHS = tuple(
    f"ours fp8 matmul, compiled blocks, {backend} on the mask-free attentions"
    for backend in ("_native_cudnn", "_native_efficient")
)
RUNNER = "runner job (generate)"
STEP_PATHS = (*STOCK_PATHS, *OUR_PATHS, RUNNER)
DECODE = "stock video VAE decode"
STEP_S = "s per step (decode: per clip)"


@pytest.fixture(scope="module")
def gpu_bench():
    sys.path.insert(0, str(BENCH_DIR))
    return importlib.import_module("gpu_bench")


def run(gpu_bench, out: Path, *args: str) -> tuple[str, str]:
    """One `--tiny` run with the given options: what it printed and the file it wrote."""
    with pytest.MonkeyPatch.context() as patch:
        # torch.compile builds C++ for ~20 s a graph on two CPU cores. What is smoked here is the bench around
        # the compiled paths (switching them on and off, timing their first step), so nothing is compiled.
        patch.setattr(fp8, "_fused_quantise", lambda: fp8.quantise_rows)
        patch.setattr(gpu_bench, "compile_block", lambda block: block)
        printed = gpu_bench.main(["--tiny", "--out", str(out), *args])
    return printed, out.read_text()


def table_rows(written: str) -> list[dict[str, str]]:
    """The rows of the report's table (timings or profile), cell by column name."""
    lines = written.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| path |"))
    end = lines.index("", start)  # the table ends at the first blank line
    columns = _cells(lines[start])
    return [dict(zip(columns, _cells(line), strict=True)) for line in lines[start + 2 : end]]  # past the |---| line


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().removeprefix("|").removesuffix("|").split("|")]


@pytest.fixture(scope="module")
def bench(gpu_bench, tmp_path_factory):
    """One `--tiny` run of every path: what it printed, the file it wrote and its table's rows by (path, frames)."""
    printed, written = run(gpu_bench, tmp_path_factory.mktemp("bench") / "results" / "tiny.md", "--repeats", "1")
    rows = {(row["path"], int(row["frames"])): row for row in table_rows(written)}
    return printed, written, rows


def test_every_path_has_a_row_per_frame_count_and_none_failed(bench) -> None:
    _printed, written, rows = bench
    assert set(rows) == {(path, frames) for path in (*STEP_PATHS, *CUDA_ONLY_PATHS, DECODE) for frames in FRAMES}
    assert "FAILED" not in written


def test_a_backend_this_process_cannot_run_gets_a_row_saying_why_and_no_time(bench) -> None:
    _printed, written, rows = bench
    for path in CUDA_ONLY_PATHS:
        for frames in FRAMES:
            row = rows[path, frames]
            assert row["notes"].startswith("skipped: ") and "runs on a CUDA GPU only" in row["notes"]
            assert {row[column] for column in row if column not in ("path", "frames", "notes")} == {"-"}
            assert f"- SKIPPED: {path}, {frames} frames: " in written


def test_step_rows_give_time_rate_share_and_the_30_step_estimate(bench) -> None:
    _printed, _written, rows = bench
    for frames in FRAMES:
        decode_s = float(rows[DECODE, frames][STEP_S])
        for path in STEP_PATHS:
            row = rows[path, frames]
            step_s = float(row[STEP_S])
            assert step_s > 0
            assert float(row["TFLOP/s"]) > 0 and float(row["% of ceiling"]) > 0
            assert row["peak VRAM GiB"] == "-"  # no VRAM on the CPU
            assert float(row["reference model, s per step"]) == pytest.approx(0.025 + 0.026 * frames, abs=1e-3)
            end_to_end = float(row["30 steps end to end, s (extrapolated)"])
            if path == RUNNER:
                assert end_to_end > 30 * step_s  # its other stages on top of 30 steps
            else:
                assert end_to_end == pytest.approx(30 * step_s + decode_s, abs=0.1)


def test_every_step_row_is_compared_with_stock_bf16_and_ours_with_the_fp8_hooks_too(bench) -> None:
    _printed, _written, rows = bench
    for frames in FRAMES:
        stock_bf16 = float(rows["stock bf16", frames][STEP_S])
        stock_fp8 = float(rows["stock fp8 hooks", frames][STEP_S])
        assert rows["stock bf16", frames]["time / stock bf16"] == "-"
        for path in STEP_PATHS[1:]:
            row = rows[path, frames]
            step_s = float(row[STEP_S])
            assert float(row["time / stock bf16"]) == pytest.approx(step_s / stock_bf16, rel=0.05, abs=0.01)
            if path in STOCK_PATHS:
                assert row["time / stock fp8 hooks"] == "-"
            else:
                assert float(row["time / stock fp8 hooks"]) == pytest.approx(step_s / stock_fp8, rel=0.05, abs=0.01)


def test_latents_are_compared_with_the_base_path_and_kernel_only_changes_match_it(bench) -> None:
    _printed, _written, rows = bench
    diff = "latents vs base path, rel. diff"
    for frames in FRAMES:
        for base in ("stock bf16", "ours fp8 matmul", RUNNER, DECODE):
            assert rows[base, frames][diff] == "-"
        # An attention backend is compared with ours-compiled; on a CPU flash is what native picks, so no change.
        flash = rows["ours fp8 matmul, compiled blocks, _native_flash on the mask-free attentions", frames]
        assert float(flash[diff]) == 0
        # Every path against stock bf16 too: the same for a kernel choice of its, FP8 rounding for ours.
        versus_stock = "latents vs stock bf16, rel. diff"
        assert rows["stock bf16", frames][versus_stock] == "-"
        assert float(rows["stock bf16, cuDNN attention", frames][versus_stock]) == 0
        assert float(flash[versus_stock]) == float(rows["ours fp8 matmul, compiled blocks", frames][versus_stock]) > 0
        # On a CPU these choose the same kernels (or none is compiled), so the latents are the same.
        kernel_choices = ("cuDNN attention", "text masks dropped", "cuDNN attention, text masks dropped")
        for path in ["stock bf16, cuDNN attention"] + [f"ours fp8 matmul, {choice}" for choice in kernel_choices]:
            assert float(rows[path, frames][diff]) == 0
        # The hooks store weights in FP8; upcast GEMMs skip the activations' quantisation.
        for path in ("stock fp8 hooks", "ours fp8 matmul, FP8 from 4096 rows"):
            assert 0 < float(rows[path, frames][diff]) < 0.1


def test_notes_show_the_compile_cost_and_the_long_clip_set_up(bench) -> None:
    _printed, _written, rows = bench
    for path in OUR_PATHS[1:]:
        if "fused" in path or "compiled" in path:
            assert "compiling" in rows[path, 9]["notes"]
    # --tiny lowers the long-clip threshold so that 17 frames takes the runner's long-clip set-up too.
    assert "long clip" not in rows["ours fp8 matmul", 9]["notes"]
    for path in OUR_PATHS:
        assert "long clip" in rows[path, 17]["notes"]
    assert "cold prompt" in rows[RUNNER, 9]["notes"]
    assert "cached prompt" in rows[RUNNER, 17]["notes"]
    assert rows[DECODE, 9]["notes"] == "untiled"


def test_the_paths_leave_the_runtime_as_they_found_it(bench, gpu_bench) -> None:
    assert fp8._quantise is fp8.quantise_rows, "the bench leaves the quantisation unfused"
    assert fp8.FP8_MATMUL_MIN_ROWS == 0
    assert gpu_bench.sdpa_priority()[0] == "FLASH_ATTENTION", "cuDNN attention preferred only around its paths"


def test_the_file_is_the_printed_report_under_a_header(bench) -> None:
    printed, written, _rows = bench
    assert printed == written
    title = written.splitlines()[0]
    assert title.startswith("# GPU bench, ") and "CPU" in title and "RANDOM WEIGHTS" in title
    assert f"torch {torch.__version__}" in written and f"diffusers {diffusers.__version__}" in written
    assert "bf16 matmul ceiling" in written
    assert "| decode_video |" in written  # the runner jobs' stage table


def test_frames_and_paths_pick_what_is_measured(gpu_bench, tmp_path) -> None:
    options = ["--repeats", "1", "--frames", "9", "--paths", "ours", "ours-min-rows", "--fp8-min-rows", "64"]
    _printed, written = run(gpu_bench, tmp_path / "some.md", *options)
    rows = table_rows(written)
    assert [(row["path"], row["frames"]) for row in rows] == [
        ("ours fp8 matmul", "9"),
        ("ours fp8 matmul, FP8 from 64 rows", "9"),
    ]
    assert rows[1]["time / stock bf16"] == "-"  # no stock bf16 row measured to compare with
    assert "| decode_video |" not in written  # no runner job


def test_a_profile_breaks_one_step_of_each_path_down_by_kernel_category(gpu_bench, tmp_path) -> None:
    _printed, written = run(gpu_bench, tmp_path / "profile.md", "--profile", "9", "--paths", "stock-bf16", "ours")
    assert written.startswith("# GPU profile, ")
    rows = table_rows(written)
    assert [(row["path"], row["frames"]) for row in rows] == [("stock bf16", "9"), ("ours fp8 matmul", "9")]
    for row in rows:
        wall_s, kernel_s = float(row["step wall s"]), float(row["kernel s"])
        assert 0 < float(row["CPU issued it in, s"]) <= wall_s and kernel_s > 0 and int(row["kernels"]) > 0
        by_category = [float(row[f"{name} s (%)"].split()[0]) for name in gpu_bench.CATEGORIES]
        assert sum(by_category) == pytest.approx(kernel_s, abs=0.005)
    ours = rows[1]
    for name in ("FP8 GEMM", "activation quantisation"):  # on a CPU too: aten::_scaled_mm, aten::amax, ...
        assert float(ours[f"{name} s (%)"].split()[0]) > 0
    assert float(rows[0]["FP8 GEMM s (%)"].split()[0]) == 0
    assert "stock bf16, 9 frames, top 12 kernels by time:" in written
    assert "ours fp8 matmul, 9 frames, top 12 kernels by time:" in written


@pytest.mark.parametrize(
    ("kernel", "expected"),
    [
        (
            "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4, cutlass::bfloat16_t>>",
            "attention",
        ),
        (
            "fmha_cutlassF_bf16_aligned_64x128_rf_sm80(PyTorchMemEffAttention::AttentionKernel<...>::Params)",
            "attention",
        ),
        ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x128", "attention"),
        (
            "void at::native::vectorized_elementwise_kernel<4, at::native::ConvertToFloat8E4M3fnOp<c10::BFloat16>>",
            "activation quantisation",
        ),
        (
            "void at::native::reduce_kernel<512, 1, ReduceOp<c10::BFloat16, at::native::MaxNanFunctor<float>>>",
            "activation quantisation",
        ),
        ("triton_red_fused__to_copy_abs_amax_clamp_div_0", "activation quantisation"),
        (
            "void cutlass::device_kernel<enable_3x_kernel_for_sm9x<cutlass::gemm::kernel::GemmUniversal<"
            "cute::tuple<int, int, int>, cutlass::gemm::collective::CollectiveMma<cutlass::float_e4m3_t>>>>",
            "FP8 GEMM",
        ),
        ("sm90_xmma_gemm_e4m3e4m3_bf16f32_f32_tn_n_tilesize128x128x128", "FP8 GEMM"),
        ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64_warpgroupsize2x1x1", "bf16 GEMM"),
        ("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NTT", "bf16 GEMM"),
        ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16>>", "other"),
        ("aten::_scaled_mm", "FP8 GEMM"),
        ("aten::addmm", "bf16 GEMM"),
        ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
        ("aten::amax", "activation quantisation"),
        ("aten::add", "other"),
    ],
)
def test_kernels_are_told_apart_by_name(gpu_bench, kernel: str, expected: str) -> None:
    assert gpu_bench.category(kernel) == expected


def test_dropping_the_all_ones_text_masks_leaves_the_transformer_output_as_it_was(gpu_bench) -> None:
    torch.manual_seed(0)
    connectors = demo_model.connectors().eval()
    width = connectors.config.caption_channels * connectors.config.text_proj_in_factor
    prompt_mask = torch.ones(2, 32, dtype=torch.int64)
    prompt_mask[0, :20] = 0  # a short prompt, left-padded
    transformer = demo_model.transformer().eval()
    config = transformer.config
    with torch.no_grad():
        _video, _audio, mask = connectors(torch.randn(2, 32, width), prompt_mask, padding_side="left")
        assert torch.equal(mask, torch.ones_like(mask)), "the registers fill the padding: every token is attended"
        inputs = demo_transformer_inputs(config, mask)
        masked = transformer(**inputs)
        with gpu_bench.text_masks_dropped(transformer):
            unmasked = transformer(**inputs)
    for a, b in zip(masked, unmasked, strict=True):
        assert torch.equal(a, b)
