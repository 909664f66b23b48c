"""The runner's memory discipline on the demo: one big model at a time, prompts encoded and FP8 cast once, FP8 close."""

from __future__ import annotations

import shutil
import weakref

import numpy as np

from contract import protocol
from gpu_runner import pipeline
from gpu_runner.cancel import Cancellation
from gpu_runner.families.ltx2 import Ltx2
from gpu_runner.families.ltx2.loading import DiffusersDirectory
from gpu_runner.job import load_job
from tests.runner_fixtures import read_mp4, run_job, scramble_keeping_size_and_time, write_job

# Mean absolute difference of decoded pixels between an FP8-stored and a full-precision run of
# the same seed, as a fraction of the full scale (255). FP8 storage perturbs every step's
# prediction by a few percent (tests/unit/test_fp8.py); over 8 steps and a random-weight VAE the
# pictures drift but stay the same clip: measured 2.1% (PSNR 31 dB) for seed 5 here; 5% is the bound.
FP8_MEAN_PIXEL_ERROR = 0.05


def stages_of(events) -> list[str]:
    return [e.name for e in events if isinstance(e, protocol.Stage)]


def test_a_repeated_prompt_skips_the_text_encoder_and_gives_the_same_bytes(demo_model_dir, tmp_path) -> None:
    cache = tmp_path / "prompt-cache"
    first, second, other = tmp_path / "first", tmp_path / "second", tmp_path / "other"
    for job_dir in (first, second):
        # 256 px wide: the MP4 bytes of one seed differ run to run at 320 px (an open defect, see the README)
        write_job(job_dir, demo_model_dir, prompt_cache_dir=str(cache), seed=11, width=256, height=160)
    write_job(other, demo_model_dir, prompt_cache_dir=str(cache), seed=11, negative_prompt="blurry")

    code, cold, _ = run_job(first)
    assert code == 0 and "load_text_encoder" in stages_of(cold)
    assert len(list(cache.glob("*.safetensors"))) == 1
    code, warm, _ = run_job(second)
    assert code == 0
    assert "load_text_encoder" not in stages_of(warm) and "free_text_encoder" not in stages_of(warm)
    assert (first / "video.mp4").read_bytes() == (second / "video.mp4").read_bytes()

    code, changed, _ = run_job(other)
    assert code == 0 and "load_text_encoder" in stages_of(changed), "another negative prompt is another key"
    assert len(list(cache.glob("*.safetensors"))) == 2


def prompt_cache(directory, cap_bytes: int):
    from gpu_runner.cache_budget import GIB, Cache, CacheBudget, Limit
    from gpu_runner.prompt_cache import PromptCache

    cap = Limit(cap_bytes, "AVP_PROMPT_CACHE_MB")
    return PromptCache(directory, CacheBudget([Cache(directory, cap=cap)], Limit(GIB, "AVP_CACHE_GB")))


def test_the_prompt_cache_stays_within_its_size_by_dropping_the_least_recently_used(tmp_path) -> None:
    import torch

    entry = {"video": torch.zeros(1000)}  # ~4 KB on disk
    cache = prompt_cache(tmp_path, cap_bytes=10_000)
    cache.put("a", entry)
    cache.put("b", entry)
    assert cache.get("a") is not None  # "a" is now the most recently used
    cache.put("c", entry)
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None


def test_a_torn_prompt_cache_entry_is_a_miss_not_a_crash(tmp_path) -> None:
    import torch

    cache = prompt_cache(tmp_path, cap_bytes=10**6)
    cache.put("a", {"video": torch.zeros(1000)})
    entry = tmp_path / "a.safetensors"
    with entry.open("r+b") as file:
        file.truncate(entry.stat().st_size - 10)  # a crash mid-write, or a damaged disk
    assert cache.get("a") is None


def test_the_text_encoder_is_collected_before_the_transformer_loads_and_the_transformer_before_decoding(
    demo_model_dir, tmp_path
) -> None:
    write_job(tmp_path / "job", demo_model_dir, steps=2)
    job = load_job(tmp_path / "job")
    refs: dict[str, weakref.ref] = {}
    checked: list[str] = []

    class Watched(DiffusersDirectory):
        def load_text_side(self, *args):
            text = super().load_text_side(*args)
            refs["text_encoder"], refs["connectors"] = weakref.ref(text.text_encoder), weakref.ref(text.connectors)
            return text

        def load_denoiser(self, *args, **kwargs):
            pipe = super().load_denoiser(*args, **kwargs)
            refs["transformer"] = weakref.ref(pipe.transformer)
            return pipe

    def emit(event: protocol.Event) -> None:
        if isinstance(event, protocol.Stage) and event.name == "load_transformer":
            assert refs["text_encoder"]() is None and refs["connectors"]() is None, "text side still alive"
            checked.append(event.name)
        if isinstance(event, protocol.Stage) and event.name == "decode_audio":  # the first decode
            assert refs["transformer"]() is None, "transformer still alive at decode"
            checked.append(event.name)

    pipeline.generate(job, emit, Cancellation(), started=0.0, family=Ltx2(Watched(job.model_dir)))
    assert checked == ["load_transformer", "decode_audio"]


def test_fp8_storage_and_full_precision_runs_of_one_seed_stay_close(demo_model_dir, tmp_path) -> None:
    for name, precision in (("fp8", "fp8"), ("full", "fp32")):
        write_job(tmp_path / name, demo_model_dir, precision=precision, seed=5)
        code, _, stderr = run_job(tmp_path / name)
        assert code == 0, stderr
    fp8_frames = np.stack(read_mp4(tmp_path / "fp8" / "video.mp4").frames).astype(float)
    full_frames = np.stack(read_mp4(tmp_path / "full" / "video.mp4").frames).astype(float)
    mean_error = np.abs(fp8_frames - full_frames).mean() / 255
    assert 0 < mean_error < FP8_MEAN_PIXEL_ERROR, mean_error


def test_a_job_with_a_cached_fp8_transformer_never_reads_its_weights_and_gives_the_same_frames(
    demo_model_dir, tmp_path
) -> None:
    model = shutil.copytree(demo_model_dir, tmp_path / "model")
    cache = tmp_path / "weights"
    jobs = {"uncached": None, "writes": str(cache), "reads": str(cache)}
    for name, weight_cache_dir in jobs.items():
        write_job(tmp_path / name, model, precision="fp8", seed=7, steps=3, weight_cache_dir=weight_cache_dir)

    for name in ("uncached", "writes"):
        code, _, stderr = run_job(tmp_path / name)
        assert code == 0, stderr
    assert len(list(cache.glob("*.safetensors"))) == 1
    (weights,) = (model / "transformer").glob("*.safetensors")
    scramble_keeping_size_and_time(weights)  # a job that read the bf16 transformer now would fail
    code, _, stderr = run_job(tmp_path / "reads")
    assert code == 0, stderr

    frames = {name: read_mp4(tmp_path / name / "video.mp4").frames for name in jobs}
    for name in ("writes", "reads"):
        assert len(frames[name]) == len(frames["uncached"])
        assert all(np.array_equal(a, b) for a, b in zip(frames[name], frames["uncached"], strict=True)), name
