"""place_denoiser's choices that do not need a GPU to check (the compiled path is measured by bench/gpu_bench.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import msgspec
import pytest
import torch
from diffusers import AutoencoderKLLTX2Audio
from diffusers.models.attention_dispatch import AttentionBackendName
from diffusers.pipelines.ltx2 import LTX2Vocoder, LTX2VocoderWithBWE
from safetensors.torch import load_file

from gpu_runner import families, pipeline
from gpu_runner.cancel import Cancellation
from gpu_runner.compiling import compiles
from gpu_runner.demo import model as demo_model
from gpu_runner.families import ltx2
from gpu_runner.families.ltx2 import loading
from gpu_runner.families.ltx2.loading import DiffusersDirectory, place_denoiser
from gpu_runner.job import Job, load_job
from tests.runner_fixtures import write_job
from tests.unit.test_families import fake_job
from tests.unit.test_guidance import denoiser


def test_blocks_are_compiled_only_on_a_cuda_gpu(tmp_path, monkeypatch):
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    transformer = demo_model.transformer()
    pipe = SimpleNamespace(transformer=transformer, set_progress_bar_config=lambda **_: None)

    place_denoiser(pipe, torch.device("cpu"), tokens=160, compile_cache=tmp_path / "compiled")

    # torch.compile on a module sets its compiled call; on the CPU the runner leaves every block as it was
    assert all(block._compiled_call_impl is None for block in transformer.transformer_blocks)
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ and "TRITON_CACHE_DIR" not in os.environ


def test_blocks_compile_on_a_cuda_gpu_with_a_compile_cache_and_nowhere_else(tmp_path):
    assert compiles(torch.device("cuda"), tmp_path / "compiled")
    assert compiles(torch.device("cuda", 1), tmp_path / "compiled")
    assert not compiles(torch.device("cuda"), None)  # AVP_COMPILE=off
    assert not compiles(torch.device("cpu"), tmp_path / "compiled")
    assert not compiles(torch.device("cpu"), None)


def test_a_spare_pays_the_compilers_imports_ahead_only_with_a_torch_that_can_compile():
    # A fresh interpreter: this one may have imported Inductor for another test already.
    probe = "import sys; from gpu_runner.compiling import import_compiler; import_compiler(); "
    probe += "print('torch._inductor.compile_fx' in sys.modules)"
    repo_root = Path(__file__).resolve().parents[2]
    printed = subprocess.run([sys.executable, "-c", probe], cwd=repo_root, capture_output=True, text=True, check=True)
    assert printed.stdout.strip() == str(torch.backends.cuda.is_built())


def test_place_denoiser_compiles_exactly_when_compiles_says_so(tmp_path, monkeypatch):
    # The pipeline announces the compile by the same function, so the announcement cannot disagree.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    monkeypatch.setattr(loading, "compiles", lambda device, compile_cache: True)
    transformer = demo_model.transformer()
    pipe = SimpleNamespace(transformer=transformer, set_progress_bar_config=lambda **_: None)

    # config.patch, not monkeypatch: pytest 9 undoes a module attribute it did not find in __dict__ by deleting
    # it, and a deleted torch config entry stays hidden (AttributeError) for every later test in the process.
    with torch._dynamo.config.patch(recompile_limit=torch._dynamo.config.recompile_limit):
        place_denoiser(pipe, torch.device("cpu"), tokens=160, compile_cache=tmp_path / "compiled")

    assert all(block._compiled_call_impl is not None for block in transformer.transformer_blocks)


def test_the_attention_backend_is_set_on_a_cuda_gpu_only(monkeypatch):
    """AVP_ATTENTION on the mask-free attentions where the job runs on CUDA (here a stand-in: this torch has none);
    a CPU job keeps torch's own choice, even for a backend it could not run."""
    transformer = demo_model.transformer()
    pipe = SimpleNamespace(transformer=transformer, set_progress_bar_config=lambda **_: None)
    place_denoiser(pipe, torch.device("cpu"), tokens=160, attention="_native_cudnn")
    attn1 = [block.attn1.processor for block in transformer.transformer_blocks]
    assert {processor._attention_backend for processor in attn1} == {None}

    monkeypatch.setattr(loading.fp8, "fp8_matmul_available", lambda device: False)
    monkeypatch.setattr(transformer, "to", lambda device: transformer)
    place_denoiser(pipe, torch.device("cuda"), tokens=160, attention="_native_cudnn")
    assert {processor._attention_backend for processor in attn1} == {AttentionBackendName._NATIVE_CUDNN}
    assert {block.attn2.processor._attention_backend for block in transformer.transformer_blocks} == {None}


@pytest.mark.parametrize(("compile_dynamic", "dynamic"), [(False, None), (True, True)])
def test_place_denoiser_compiles_with_dynamic_shapes_only_when_the_job_says_so(
    tmp_path, monkeypatch, compile_dynamic, dynamic
):
    # AVP_COMPILE=dynamic: one graph for every clip size; on: torch.compile's default (static shapes until one
    # changes). Compiling happens on CUDA alone, so the transformer's compile call is recorded, not run.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    monkeypatch.setattr(loading, "compiles", lambda device, compile_cache: True)
    transformer = demo_model.transformer()
    calls = []
    transformer.compile_repeated_blocks = lambda *args, **kwargs: calls.append((args, kwargs))
    pipe = SimpleNamespace(transformer=transformer, set_progress_bar_config=lambda **_: None)

    with torch._dynamo.config.patch(recompile_limit=torch._dynamo.config.recompile_limit):
        place_denoiser(pipe, torch.device("cpu"), 160, tmp_path / "compiled", compile_dynamic=compile_dynamic)

    assert calls == [((), {"dynamic": dynamic})]


def test_a_job_files_compile_settings_reach_place_denoiser(demo_model_dir, tmp_path, monkeypatch):
    # AVP_COMPILE travels in job.json (RunnerOptions): the family hands its compile cache and dynamic shapes on.
    handed = []

    def recording(pipe, device, tokens, compile_cache=None, **settings):
        handed.append((compile_cache, settings["compile_dynamic"]))
        place_denoiser(pipe, device, tokens, compile_cache, **settings)

    monkeypatch.setattr(ltx2, "place_denoiser", recording)
    compiled = tmp_path / "compiled"
    compile_settings = {"compile_cache_dir": str(compiled), "compile_dynamic": True}
    write_job(tmp_path / "job", demo_model_dir, steps=2, num_frames=9, **compile_settings)

    result = pipeline.generate(load_job(tmp_path / "job"), lambda event: None, Cancellation(), started=0.0)

    assert handed == [(compiled, True)] and result.frames == 9


@pytest.mark.parametrize(("version", "vocoder_class"), [("2.0", LTX2Vocoder), ("2.3", LTX2VocoderWithBWE)])
def test_the_denoiser_has_the_vocoder_of_its_directorys_version_with_every_weight_loaded(
    version_model_dirs, version, vocoder_class
):
    directory = version_model_dirs[version]

    vocoder = denoiser(directory).vocoder

    assert type(vocoder) is vocoder_class and DiffusersDirectory(directory).is_ltx2_0() is (version == "2.0")
    stored = load_file(directory / "vocoder" / "diffusion_pytorch_model.safetensors")
    loaded = vocoder.state_dict()
    assert stored.keys() <= loaded.keys()
    assert all(torch.equal(loaded[name], tensor) for name, tensor in stored.items())


def test_decoders_load_in_the_dtype_asked_whatever_their_files_hold(version_model_dirs, tmp_path):
    # An audio VAE stored as a bf16 pipeline writes it: bf16 weights, float32 latent statistics (its first entries)
    directory = tmp_path / "model"
    shutil.copytree(version_model_dirs["2.0"], directory)
    stored = AutoencoderKLLTX2Audio.from_pretrained(directory, subfolder="audio_vae")
    for parameter in stored.parameters():
        parameter.data = parameter.data.to(torch.bfloat16)
    stored.save_pretrained(directory / "audio_vae")

    pipe = denoiser(directory)

    assert {parameter.dtype for parameter in pipe.audio_vae.parameters()} == {torch.float32}


class _Vae(torch.nn.Linear):
    """A stand-in VAE: diffusers' models say where they are by `device`."""

    def __init__(self) -> None:
        super().__init__(4, 4)

    @property
    def device(self) -> torch.device:
        return self.weight.device


class _Preparing:
    """A pipeline's prepare_latents that notes where the VAE is when it encodes, and may fail."""

    def prepare_latents(self, fail: bool = False):
        self.vae_while_encoding = self.vae.device
        if fail:
            raise RuntimeError("an encode that broke")
        return "latents"


@pytest.mark.parametrize("pipeline", [loading.ConditionedDenoisingPipeline, loading.SlotDenoisingPipeline])
def test_a_conditioned_pipeline_holds_the_vae_on_the_gpu_only_while_it_encodes(pipeline):
    # The mixin both conditioned pipelines take, over a stand-in for diffusers' prepare_latents; the meta device
    # stands in for the GPU (this torch has none).
    (mixin,) = [base for base in pipeline.__mro__ if base.__name__ == "_EncodesOnTheTransformersDevice"]
    pipe = type("Pipe", (mixin, _Preparing), {})()
    pipe.vae, pipe.transformer = _Vae(), SimpleNamespace(device=torch.device("meta"))
    weight = pipe.vae.weight.data_ptr()

    assert pipe.prepare_latents() == "latents"
    assert pipe.vae_while_encoding == torch.device("meta")
    assert pipe.vae.device == torch.device("cpu"), "back on the CPU before the denoising loop"
    assert pipe.vae.weight.data_ptr() == weight, "its own weights again, not a copy back"
    with pytest.raises(RuntimeError):
        pipe.prepare_latents(fail=True)
    assert pipe.vae.device == torch.device("cpu")


def test_a_jobs_resident_keys_read_each_fingerprint_once_and_the_next_job_reads_them_again(
    demo_model_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """The loading stages' notes and their loaders ask for the same keys: the files are statted once a job. A warm
    runner's next job builds its own directory (`families.family_for`), so a model changed on disk loads again."""
    model = tmp_path / "model"
    shutil.copytree(demo_model_dir, model)  # its transformer's files are touched below
    reads: list[tuple[str, ...]] = []
    fingerprint = loading.model_revision

    def counted(model_dir: Path, files: tuple[str, ...], **options) -> str:
        reads.append(files)
        return fingerprint(model_dir, files, **options)

    monkeypatch.setattr(loading, "model_revision", counted)
    made = fake_job(tmp_path / "job", num_frames=9, steps=2)
    job = Job(made.directory, made.file, msgspec.structs.replace(made.spec, kind="demo"), model)
    cpu = torch.device("cpu")

    def keys(family: families.Family) -> tuple[tuple, ...]:
        stages = ("load_text_encoder", "load_transformer")
        return tuple(key for stage in stages for key in family.resident_keys(job, stage, torch.float32, "fp32", cpu))

    family = families.family_for(job, None)
    noted = keys(family)
    assert keys(family) == noted and family.source.text_key(torch.float32, cpu) == noted[0], "the loaders' keys"
    assert len(reads) == len(set(reads)) == len(noted), "each component's files statted once"

    weights = next(path for path in (model / "transformer").iterdir() if path.suffix == ".safetensors")
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert keys(family) == noted, "within one job, the key its note gave"
    changed = keys(families.family_for(job, None))
    for before, after in zip(noted, changed, strict=True):
        assert (after != before) == (before[0] == "transformer"), f"the next job's {before[0]} key"
