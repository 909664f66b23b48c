"""`avportal import-model` on tiny models written in Lightricks' single-file layout (tests/single_file.py, through
the import's name table run backwards), end to end: the real command imports each version into AVP_MODELS_DIR, the
real portal offers it with where it came from, and the real runner generates with it in both modes (LTX-2.5, whose
single file is the distilled DiT alone, in fast mode through its duration head and diffusion decoder). For LTX-2.0
the imported tensors are those diffusers' own `from_single_file` reads from the same file, which checks the name
table independently of its inverse. A truncated file, another model family's file and a disk that fills mid-import
each end with a message saying so and nothing in the library.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from contract.models import offered_models
from gpu_runner import single_file_keys as keys
from gpu_runner.families.ltx2.loading import is_fp8_layer
from tests.portal import Portal, prepare_data_dir
from tests.runner_fixtures import REPO_ROOT
from tests.single_file import component_tensors, write_single_files

FP8_TOLERANCE = 0.07  # e4m3 keeps 3 mantissa bits: a relative error up to 1/16 of a weight's tensor-wide scale
COMPONENTS = ("transformer", "connectors", "vae", "audio_vae", "vocoder", "latent_upsampler")
LTX2_5_PARTS = ("diffusion_decoder", "duration_head")
LTX2_5_SIZE = 64  # the smallest fast-mode size (tests/integration/test_ltx25.py): the CPU's FlexAttention is slow


def import_model(models_dir: Path, *arguments: str | Path) -> subprocess.CompletedProcess[str]:
    """The real command, as a person runs it: `avportal import-model ...` with AVP_MODELS_DIR set."""
    env = {**os.environ, "AVP_MODELS_DIR": str(models_dir), "AVP_DATA_DIR": str(models_dir.parent / "data")}
    return subprocess.run(
        [sys.executable, "-m", "avportal", "import-model", *map(str, arguments), "--quiet"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def single_files(tmp_path_factory, version_model_dirs) -> dict[str, tuple[Path, Path, Path]]:
    """Per version: (the DiT file, the upsampler file, the model they were written from). 2.3's DiT is ComfyUI's
    scaled FP8; 2.5's (the tiny distilled 2.5 `demo-model --version 2.5` builds) carries its diffusion decoder and
    duration head."""
    root = tmp_path_factory.mktemp("single-files")
    ltx25 = root / "ltx-2.5-source"
    command = [sys.executable, "-m", "gpu_runner", "demo-model", str(ltx25), "--random", "--version", "2.5"]
    subprocess.run(command, cwd=REPO_ROOT, check=True)
    sources = {**version_model_dirs, "2.5-distilled": ltx25}
    files = {}
    for version, fp8 in (("2.0", None), ("2.3", "comfy"), ("2.5", None)):
        source = sources[f"{version}-distilled"]
        dit = root / f"ltx-{version}-tiny-distilled.safetensors"
        upsampler = root / f"ltx-{version}-upscaler.safetensors"
        write_single_files(source, dit, upsampler, fp8=fp8)
        files[version] = (dit, upsampler, source)
    return files


@pytest.fixture(scope="module")
def imported(tmp_path_factory, single_files, demo_model_dir) -> tuple[Portal, Path, dict[str, str]]:
    """Both versions imported by the real command, and a portal whose AVP_MODELS_DIR they are in."""
    library = tmp_path_factory.mktemp("imported") / "models"
    library.mkdir()
    said = {}
    for version, (dit, upsampler, source) in single_files.items():
        done = import_model(library, dit, upsampler, "--text-encoder", source)
        assert done.returncode == 0, done.stderr
        said[version] = done.stdout + done.stderr
    data_dir = prepare_data_dir(library.parent / "data", demo_model_dir)
    portal = Portal(data_dir=data_dir, env={"AVP_MODELS_DIR": str(library)}).start()
    yield portal, library, said
    portal.stop()


def test_each_version_is_offered_with_its_version_variant_modes_and_where_it_came_from(imported, single_files):
    portal, _, said = imported
    with portal.client() as c:
        listed = c.get("/api/models").json()
        page = c.get("/").text

    models = {model["id"]: model for model in listed["models"]}
    ltx23 = models["ltx-2.3-tiny-distilled"]
    assert listed["unusable"] == []
    for version in ("2.0", "2.3"):
        model = models[f"ltx-{version}-tiny-distilled"]
        assert (model["version"], model["variant"], model["modes"]) == (version, "distilled", ["fast", "quality"])
    # 2.5: the single file is the distilled DiT alone, so quality mode (the dev transformer_full/) is off
    ltx25 = models["ltx-2.5-tiny-distilled"]
    assert (ltx25["version"], ltx25["variant"], ltx25["modes"]) == ("2.5", "distilled", ["fast"])
    assert ltx25["parts"] == ["latent_upsampler", "diffusion_decoder", "duration_head"]
    assert "transformer_full/" in ltx25["disabled_modes"]["quality"]
    for version in ("2.0", "2.3", "2.5"):
        model = models[f"ltx-{version}-tiny-distilled"]
        assert model["source"].startswith(
            f"imported from ltx-{version}-tiny-distilled.safetensors, ltx-{version}-upscaler.safetensors"
        )
    # the FP8 block linears are kept as they are in the weight cache; the model directory has them upcast to the
    # precision of the file's other tensors (the tiny models are float32); the gates, no FP8 layer of ours, upcast
    kept = sum(map(is_fp8_layer, fp8_stored_linears(single_files["2.3"][2])))
    fp8 = f"transformer: {kept} FP8 tensors kept as they are in the weight cache (upcast to float32 in the model"
    assert fp8 in models["ltx-2.3-tiny-distilled"]["source"] and f", {204 - kept} upcast)" in ltx23["source"]
    assert f"FP8: {fp8}" in said["2.3"] and "FP8" not in said["2.0"]
    assert models["demo"]["source"] == ""
    # the create form's model picker says it too
    option = r'<option value="ltx-2.0-tiny-distilled"\s+(selected\s*)?title="imported from ltx-2.0-tiny-distilled\.'
    assert re.search(option, page) and "(ltx-2.0-tiny-distilled), imported</option>" in page


@pytest.mark.parametrize("version", ["2.0", "2.3", "2.5"])
def test_the_imported_tensors_are_those_of_the_model_the_file_was_written_from(imported, single_files, version):
    _, library, _ = imported
    source = single_files[version][2]
    for component in COMPONENTS + (LTX2_5_PARTS if version == "2.5" else ()):
        got = component_tensors(library / f"ltx-{version}-tiny-distilled", component)
        expected = component_tensors(source, component)
        assert got.keys() == expected.keys(), component
        fp8_stored = fp8_stored_linears(source) if version == "2.3" and component == "transformer" else ()
        for name, tensor in expected.items():
            if name.removesuffix(".weight") in fp8_stored:  # the block linears tests/single_file.py stored as FP8
                scale = tensor.abs().max()
                assert (got[name].float() - tensor).abs().max() <= FP8_TOLERANCE * scale, name
            else:
                assert torch.equal(got[name], tensor), f"{component}: {name}"


def test_for_ltx_2_0_the_import_reads_what_diffusers_own_single_file_loading_reads(imported, single_files):
    """from_single_file for the transformer and the video VAE; for the audio VAE, whose class lacks from_single_file
    in diffusers 0.42.1, the converter from_single_file would use."""
    from diffusers import AutoencoderKLLTX2Video, LTX2VideoTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_ltx2_audio_vae_to_diffusers
    from diffusers.utils import logging

    _, library, _ = imported
    dit = single_files["2.0"][0]
    model_dir = library / "ltx-2.0-tiny-distilled"
    logging.set_verbosity_error()  # each class warns of the other components' tensors in the file
    for cls, component in ((LTX2VideoTransformer3DModel, "transformer"), (AutoencoderKLLTX2Video, "vae")):
        theirs = cls.from_single_file(str(dit), config=str(model_dir), subfolder=component, local_files_only=True)
        assert_same(theirs.state_dict(), component_tensors(model_dir, component), component)
    audio = {name: tensor for name, tensor in load_file(dit).items() if name.startswith("audio_vae.")}
    assert_same(convert_ltx2_audio_vae_to_diffusers(audio), component_tensors(model_dir, "audio_vae"), "audio_vae")


def assert_same(theirs: dict[str, torch.Tensor], ours: dict[str, torch.Tensor], component: str) -> None:
    assert theirs.keys() == ours.keys(), component
    assert all(torch.equal(theirs[name], tensor) for name, tensor in ours.items()), component


@pytest.mark.parametrize("version", ["2.0", "2.3"])
@pytest.mark.parametrize("mode", ["fast", "quality"])
def test_an_imported_model_generates_through_the_real_runner_in_each_mode(imported, version, mode):
    portal, _, _ = imported
    fields = {"steps": 2} if mode == "quality" else {}
    job = portal.submit(
        prompt="a red ball",
        model=f"ltx-{version}-tiny-distilled",
        mode=mode,
        width=128,
        height=64,
        num_frames=9,
        **fields,
    )
    finished = portal.wait(job["id"], timeout=240)

    assert finished["status"] == "succeeded", finished["error"]
    assert finished["request"]["mode"] == mode
    assert (finished["result"]["width"], finished["result"]["height"]) == (128, 64)
    log = (portal.job_dir(job["id"]) / "runner.log").read_text()
    assert "newly initialized" not in log  # every weight came from the imported files
    if version == "2.3":  # LTX-2 runs FP8 (on the CPU too): the import's weight-cache entry, no cast
        assert "weight cache: loaded" in log and "weight cache: wrote" not in log


def test_an_fp8_files_weights_are_the_weight_cache_entry_the_runners_own_cast_would_write(imported, single_files):
    """The entry the import wrote for the scaled-FP8 2.3 file: its FP8 linears bit for bit with their per-tensor
    scale as every row's, and, loaded by the runner's own function, within FP8 error of the runner's own cast of
    the imported bf16 (here float32) weights, which it never reads."""
    from diffusers import LTX2VideoTransformer3DModel

    from gpu_runner import fp8
    from gpu_runner.cache_budget import GIB, Cache, CacheBudget, Limit
    from gpu_runner.families.ltx2.loading import DiffusersDirectory
    from gpu_runner.weight_cache import WeightCache

    _, library, _ = imported
    model_dir = library / "ltx-2.3-tiny-distilled"
    cache_dir = library.parent / "data" / "cache" / "weights"  # the data dir's, which the import was told of
    cache = WeightCache(cache_dir, CacheBudget([Cache(cache_dir)], Limit(GIB, "the test's budget")))
    dtype = torch.float32  # what the CPU computes an FP8 job in
    entry = load_file(cache.entry(model_dir / "transformer", dtype).path)
    single = load_file(single_files["2.3"][0])
    for layer in filter(is_fp8_layer, fp8_stored_linears(single_files["2.3"][2])):
        stored = keys.to_single_file("transformer", layer, "2.3")
        assert torch.equal(entry[f"{layer}.weight"].view(torch.uint8), single[f"{stored}.weight"].view(torch.uint8))
        rows = entry[f"{layer}.weight"].shape[0]
        assert torch.equal(entry[f"{layer}.weight_scale"], single[f"{stored}.scale_weight"].expand(rows, 1))

    reads = []
    original = LTX2VideoTransformer3DModel.from_pretrained
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LTX2VideoTransformer3DModel, "from_pretrained", lambda *args, **kwargs: reads.append(args))
        loaded = DiffusersDirectory(model_dir, cache).load_transformer(dtype, "fp8", torch.device("cpu"))
    assert reads == []  # the entry was used: nothing was read from the model directory, nothing cast

    theirs = original(model_dir, subfolder="transformer", dtype=dtype)
    fp8.store_in_fp8(theirs, is_fp8_layer)  # the runner's own cast of the imported weights
    ours = dict(loaded.named_modules())
    layers = {name: module for name, module in theirs.named_modules() if isinstance(module, fp8.FP8Linear)}
    for name, module in layers.items():
        weight = ours[name].weight.float() * ours[name].weight_scale
        reference = module.weight.float() * module.weight_scale
        assert (weight - reference).abs().max() <= FP8_TOLERANCE * reference.abs().max(), name
    for name, tensor in theirs.state_dict().items():
        if not (name.rpartition(".")[0] in layers and name.endswith(("weight", "weight_scale"))):
            assert torch.equal(loaded.state_dict()[name], tensor), name  # the rest as the runner loads it


def fp8_stored_linears(model_dir: Path) -> list[str]:
    """The transformer's layers tests/single_file.py stores as ComfyUI's scaled FP8 (Diffusers names)."""
    tensors = component_tensors(model_dir, "transformer")
    weights = {name: tensor for name, tensor in tensors.items() if name.endswith(".weight") and tensor.ndim == 2}
    return [name.removesuffix(".weight") for name in weights if name.startswith("transformer_blocks.")]


def test_an_imported_ltx_2_5_model_generates_in_fast_mode_through_its_duration_head_and_diffusion_decoder(imported):
    portal, _, _ = imported
    job = portal.submit(
        prompt="a red ball", model="ltx-2.5-tiny-distilled", width=LTX2_5_SIZE, height=LTX2_5_SIZE, num_frames="auto"
    )
    finished = portal.wait(job["id"], timeout=300)

    assert finished["status"] == "succeeded", finished["error"]
    assert finished["request"]["mode"] == "fast"
    assert finished["num_frames_requested"] == "auto" and finished["request"]["num_frames"] == 9  # the head's pick
    assert (finished["result"]["width"], finished["result"]["height"]) == (LTX2_5_SIZE, LTX2_5_SIZE)
    log = (portal.job_dir(job["id"]) / "runner.log").read_text()
    assert "newly initialized" not in log


def nothing_listed(models_dir: Path) -> None:
    assert list(models_dir.iterdir()) == []  # not even a hidden half-written directory
    offer = offered_models(Path("/nonexistent-demo"), models_dir, None)
    assert offer.unusable == () and list(offer.models) == ["demo"]


def test_a_truncated_file_is_refused_saying_so_and_nothing_is_listed(tmp_path, single_files):
    dit, upsampler, source = single_files["2.0"]
    cut = tmp_path / "ltx-2-19b-dev.safetensors"
    cut.write_bytes(dit.read_bytes()[: dit.stat().st_size // 2])
    (tmp_path / "models").mkdir()

    done = import_model(tmp_path / "models", cut, "--text-encoder", source)

    assert done.returncode == 2
    assert "ltx-2-19b-dev.safetensors is truncated" in done.stderr and "download it again" in done.stderr
    assert "nothing was added to the library" in done.stderr
    nothing_listed(tmp_path / "models")


def test_a_file_of_another_model_family_is_refused_naming_what_it_holds(tmp_path):
    flux = tmp_path / "flux1-dev.safetensors"
    tensors = {"model.diffusion_model.double_blocks.0.img_attn.qkv.weight": torch.zeros(4, 4)}
    save_file(tensors | {"vae.decoder.conv_in.weight": torch.zeros(2, 2)}, str(flux))
    (tmp_path / "models").mkdir()

    done = import_model(tmp_path / "models", flux, "--variant", "dev")

    assert done.returncode == 2
    assert "flux1-dev.safetensors is not an LTX-2 single file" in done.stderr
    assert "model.diffusion_model.double_blocks.0.img_attn.qkv.weight" in done.stderr
    nothing_listed(tmp_path / "models")


def test_a_disk_that_fills_mid_import_ends_saying_so_and_nothing_is_listed(tmp_path, small_disk, single_files):
    dit, upsampler, source = single_files["2.0"]
    disk = small_disk(16)  # the tiny 2.0 model takes about 54 MB: the transformer alone does not fit
    models_dir = disk.root / "models"
    models_dir.mkdir()

    done = import_model(models_dir, dit, upsampler, "--text-encoder", source)

    assert done.returncode == 3, done.stderr
    assert f"the disk of {models_dir} is full" in done.stderr and "free space and import again" in done.stderr
    nothing_listed(models_dir)
    assert disk.free_bytes() > 15 * 2**20  # what it had written is gone


def test_an_import_lacking_the_tokenizer_is_listed_unusable_with_its_reason_and_source(tmp_path, single_files):
    dit, upsampler, source = single_files["2.3"]
    models_dir = tmp_path / "models"
    models_dir.mkdir()

    lora = tmp_path / "ltx-2.3-22b-distilled-lora-384.safetensors"  # a dev model's distilled LoRA comes along
    save_file({"diffusion_model.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(2, 192)}, str(lora))

    # a Gemma folder without its tokenizer files: the weights import, the model cannot be used
    text_encoder = source / "text_encoder"
    done = import_model(
        models_dir, dit, upsampler, lora, "--text-encoder", text_encoder, "--name", "no-tokenizer", "--variant", "dev"
    )

    assert done.returncode == 0, done.stderr
    assert (models_dir / "no-tokenizer" / lora.name).read_bytes() == lora.read_bytes()
    assert "cannot be used yet: it lacks tokenizer/ has no tokenizer_config.json" in done.stderr
    offer = offered_models(Path("/nonexistent-demo"), models_dir, None)
    (unusable,) = offer.unusable
    assert (unusable.id, unusable.problem) == ("no-tokenizer", "incomplete: tokenizer/ has no tokenizer_config.json")
    assert unusable.source.startswith("imported from ltx-2.3-tiny-distilled.safetensors")
    assert list(offer.models) == ["demo"]
