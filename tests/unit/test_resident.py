"""Warm mode's pieces: AVP_KEEP_WARM_S at start-up, the runner's store of resident components
(gpu_runner/resident.py), a resident transformer's per-job wrappers undone, and how a `resident` line ends a job."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
import torch
from torch import nn

from app.config import Settings, SettingsError
from app.progress import JobProgress
from app.runner import Transcript, classify
from contract import protocol
from contract.jobdir import JobLora
from gpu_runner import families, memory, pipeline
from gpu_runner.__main__ import keep_warm_s
from gpu_runner.cancel import Cancellation
from gpu_runner.families.ltx2 import Ltx2
from gpu_runner.families.ltx2.guidance import share_stg_prefix
from gpu_runner.families.ltx2.loading import DiffusersDirectory, without_job_wrappers
from gpu_runner.job import Job
from gpu_runner.resident import Resident, modules_of
from tests.unit.test_families import Fake, fake_job
from tests.unit.test_memory import Transformer


@pytest.mark.parametrize("raw", ["soon", "-5", "nan", "inf", "2", "0.5"])
def test_a_bad_keep_warm_setting_is_refused_at_start_naming_the_variable_and_the_fix(tmp_path, raw) -> None:
    with pytest.raises(SettingsError, match=r"AVP_KEEP_WARM_S=.*(0 or unset for off)") as refused:
        Settings.from_env({"AVP_DATA_DIR": str(tmp_path), "AVP_KEEP_WARM_S": raw})
    assert repr(raw) in str(refused.value)


def test_warm_mode_is_off_unless_asked_for(tmp_path) -> None:
    assert Settings.from_env({"AVP_DATA_DIR": str(tmp_path)}).keep_warm_s == 0
    assert Settings.from_env({"AVP_DATA_DIR": str(tmp_path), "AVP_KEEP_WARM_S": " 300 "}).keep_warm_s == 300


def test_the_runner_reads_its_keep_warm_time_from_its_environment(monkeypatch) -> None:
    for raw, seconds in (("300", 300), ("0", 0), ("", 0), ("junk", 0), ("-1", 0)):
        monkeypatch.setenv("AVP_KEEP_WARM_S", raw)
        assert keep_warm_s() == seconds, raw


class Loads:
    """A loader that counts its loads and gives a new module each time."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> nn.Module:
        self.count += 1
        return nn.Linear(2, 2)


def test_off_every_load_loads_and_nothing_is_held() -> None:
    resident, loads = Resident(), Loads()
    first, second = resident.load(("vae", "/m", "r1"), loads), resident.load(("vae", "/m", "r1"), loads)
    assert loads.count == 2 and first is not second
    assert not resident.holds((("vae", "/m", "r1"),))


def test_on_a_component_loads_once_per_key_and_another_version_replaces_it() -> None:
    resident, loads = Resident(), Loads()
    resident.enabled = True
    first = resident.load(("vae", "/m", "r1"), loads)
    assert resident.load(("vae", "/m", "r1"), loads) is first and loads.count == 1
    assert resident.holds((("vae", "/m", "r1"),))
    assert not resident.holds((("vae", "/m", "r1"), ("vocoder", "/m", "r1"))), "every key, or it is not resident"
    changed = resident.load(("vae", "/m", "r2"), loads)  # its files changed on disk
    assert changed is not first and loads.count == 2
    assert resident.load(("vae", "/m", "r2"), loads) is changed
    assert resident.load(("vae", "/m", "r1"), loads) is not first, "the older version was dropped"
    resident.drop("vae")
    assert not resident.holds((("vae", "/m", "r2"),))


def test_park_leaves_cpu_modules_where_they_are_and_reaches_a_pipelines_components() -> None:
    resident = Resident()
    resident.enabled = True
    module = resident.load(("vocoder", "/m", "r"), lambda: nn.Linear(2, 2))
    weight = module.weight
    resident.park()
    assert module.weight is weight and module.weight.device.type == "cpu"
    pipeline = type("Pipe", (), {"components": {"vae": module, "scheduler": object(), "name": "x"}})()
    assert modules_of(pipeline) == [module]


def test_a_resident_transformer_sheds_the_last_jobs_wrappers() -> None:
    transformer = Transformer()
    feed_forwards = [(block.ff, block.audio_ff) for block in transformer.transformer_blocks]
    memory.fit_long_clips(transformer, tokens=100, long_clip=10)  # a long clip's job wrapped it, as its family does
    share_stg_prefix(transformer, [1])
    assert isinstance(transformer.transformer_blocks[0].ff, memory.ChunkedFeedForward)
    assert "forward" in transformer.__dict__

    assert without_job_wrappers(transformer) is transformer
    assert [(block.ff, block.audio_ff) for block in transformer.transformer_blocks] == feed_forwards
    assert "forward" not in transformer.__dict__
    (out,) = transformer(hidden_states=torch.ones(2, 1, 4), return_dict=False)
    assert transformer.batches == [2] and torch.equal(out, torch.full((2, 1, 4), 2.0))


A_RESULT = protocol.Result("video.mp4", 9, 24.0, 64, 64, 24000, 0.375, None, {})


def test_a_job_with_a_result_succeeded_however_its_runner_ended_after_it() -> None:
    done = Transcript()
    done.read(protocol.encode(A_RESULT))
    done.read(protocol.encode(protocol.Resident(model="demo", device_gib=None, rss_gib=0.6)))
    assert done.resident is not None
    assert classify(None, False, done).status == "succeeded", "the runner lives on: no exit code"

    done_then_cancelled = Transcript()
    done_then_cancelled.read(protocol.encode(A_RESULT))
    cancelled = classify(-15, True, done_then_cancelled)  # the cancel came as the portal recorded the result
    assert cancelled.status == "succeeded", "its video is complete and stored"

    no_result = Transcript()
    no_result.read(protocol.encode(protocol.Resident(model="demo", device_gib=None, rss_gib=0.6)))
    assert classify(None, False, no_result).status == "failed"


def progress_through(*stages: tuple[str, str | None]) -> JobProgress:
    progress = JobProgress()
    for name, note in stages:
        progress = progress.apply(protocol.Stage(name=name, t=0.0, note=note)) or progress
    return progress


def test_a_job_is_marked_resident_only_where_every_loading_stage_found_its_weights_resident() -> None:
    resident = protocol.WEIGHTS_RESIDENT
    both = progress_through(("load_text_encoder", resident), ("encode_prompt", None), ("load_transformer", resident))
    assert both.weights_resident
    after = both.apply(protocol.Stage(name="denoise", t=0.0, note=None))
    assert after.weights_resident and after.stage_note is None, "it stays marked after the loading stages"
    cached_prompt = progress_through(("encode_prompt", None), ("load_transformer", resident))
    assert cached_prompt.weights_resident, "a prompt from the cache loads no text side"
    text_only = progress_through(("load_text_encoder", resident), ("load_transformer", None))  # a LoRA job, say
    assert not text_only.weights_resident
    transformer_only = progress_through(("load_text_encoder", None), ("load_transformer", resident))
    assert not transformer_only.weights_resident
    assert not progress_through(("load_transformer", "other")).weights_resident


def warm_generate(tmp_path: Path, monkeypatch, family: Fake, park=None) -> list[str]:
    """Run a fake family's job in warm mode; what it did, with the store's parking and the allocator's releases."""
    monkeypatch.setitem(families.FAMILIES, "fake", lambda model_dir, weight_cache: family)
    monkeypatch.setattr(pipeline.RESIDENT, "enabled", True)
    monkeypatch.setattr(pipeline.RESIDENT, "park", park or (lambda: family.calls.append("park")))
    monkeypatch.setattr(pipeline.memory, "release", lambda device: family.calls.append("release"))
    pipeline.generate(fake_job(tmp_path, num_frames=9, steps=2), lambda event: None, Cancellation(), started=0.0)
    return family.calls


def test_a_warm_job_parks_what_each_stage_frees_and_ends_with_the_allocators_cache_given_back(
    tmp_path, monkeypatch
) -> None:
    """The text side, the transformer and the audio decoders leave the card where a runner without warm mode frees
    them, so that the next stage finds the room admission predicted; after the video decode, everything."""
    calls = warm_generate(tmp_path, monkeypatch, Fake([]))
    freed = ["park", "release"]
    expected = ["load_text_side", "encode encoder", *freed, "load_denoiser ['context']", *freed]
    assert calls == [*expected, "decode_audio", *freed, "decode_video", *freed]


class FailingDecode(Fake):
    def decode_video(self, decoders, latents, device, on_tile, budget_gib):
        self.calls.append("decode_video")
        raise ValueError("the decode failed")


def test_a_failed_warm_job_leaves_its_weights_where_they_are_and_keeps_its_own_error(tmp_path, monkeypatch) -> None:
    family = FailingDecode([])

    def park() -> None:
        family.calls.append("park")
        if "decode_video" in family.calls:
            raise RuntimeError("parking failed")  # it must not be tried, nor replace the job's error

    with pytest.raises(ValueError, match="the decode failed"):
        warm_generate(tmp_path, monkeypatch, family, park=park)
    assert family.calls[-1] == "decode_video", "the runner exits after a failed job: nothing is parked for later"


@pytest.mark.parametrize(("keep", "code", "model"), [("", 0, "demo"), ("300", 3, "demo"), ("300", 0, None)])
def test_a_runner_not_staying_warm_ends_without_importing_torch(keep, code, model) -> None:
    """Warm mode off, a failed job, or no model read: `_stay_warm` hands the exit code back at once (a job refused
    before its runner imported torch must not wait for that import to exit)."""
    check = (
        "import sys; from pathlib import Path; from gpu_runner.__main__ import _stay_warm; "
        f"code = _stay_warm({code}, {model!r}, Path('.'), print); print(code, 'torch' in sys.modules)"
    )
    env = {**os.environ, "AVP_KEEP_WARM_S": keep}
    ran = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=env, timeout=120)
    assert ran.stdout.split() == [str(code), "False"], ran.stderr


def test_a_loading_stage_claims_resident_weights_only_where_its_loaders_exact_keys_are_held(
    ltx25_model_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """LTX-2.5 has two transformers (transformer/ for fast mode, transformer_full/ for quality): a quality job after a
    fast one loads its own, and a job with a LoRA loads a fresh one; neither may say its weights are resident."""
    family = Ltx2(DiffusersDirectory(ltx25_model_dir))
    store = Resident()
    store.enabled = True
    monkeypatch.setattr(pipeline, "RESIDENT", store)
    cpu, dtype = torch.device("cpu"), torch.float32
    fast = fake_job(tmp_path, num_frames=9, mode="fast", steps=None, guidance_scale=None)
    quality = fake_job(tmp_path, num_frames=9, steps=2)
    lora_file = JobLora(name="style", scale=1.0, path=str(tmp_path / "style.safetensors"), sha256="0" * 64)
    with_lora = Job(fast.directory, msgspec.structs.replace(fast.file, loras=(lora_file,)), fast.spec, fast.model_dir)

    def note(job: Job, stage: str = "load_transformer") -> str | None:
        return pipeline.resident_note(family, job, stage, dtype, "bf16", cpu)

    assert note(fast) is None, "nothing is held yet"
    for key in family.resident_keys(fast, "load_transformer", dtype, "bf16", cpu):  # a fast job loaded these
        store.load(key, object)
    assert note(fast) == protocol.WEIGHTS_RESIDENT
    assert note(quality) is None, "quality mode's transformer_full/ was never loaded"
    assert note(with_lora) is None, "a LoRA job's transformer loads afresh"
    assert note(fast, "load_text_encoder") is None, "the text side was not loaded"
    assert pipeline.resident_note(family, fast, "load_transformer", torch.bfloat16, "bf16", cpu) is None, "dtype"
