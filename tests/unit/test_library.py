"""Recognising a model directory from its own config files: version, variant, optional parts, or why not."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from contract.library import (
    TEXT_ENCODER_TYPE,
    TRANSFORMER_SWITCHES,
    Recognised,
    Unrecognised,
    decoder_minimum,
    recognise,
)
from contract.models import MODEL_KINDS, Unusable, library_spec, model_id, offered_models
from contract.request import Keyframe, Request


@pytest.mark.parametrize(
    ("name", "version", "variant"),
    [
        ("2.0", "2.0", "dev"),
        ("2.3", "2.3", "dev"),
        ("2.0-distilled", "2.0", "distilled"),
        ("2.3-distilled", "2.3", "distilled"),
    ],
)
def test_the_tiny_builds_are_recognised_as_their_version_and_variant_with_their_upsampler(
    version_model_dirs, name, version, variant
):
    assert recognise(version_model_dirs[name]) == Recognised(
        family="ltx-2", version=version, variant=variant, upsampler=True
    )


def test_the_demo_model_is_an_ltx_2_0_dev_model_with_fast_modes_upsampler_and_distilled_transformer(demo_model_dir):
    recognised = recognise(demo_model_dir)
    assert recognised == Recognised(
        family="ltx-2", version="2.0", variant="dev", upsampler=True, distilled_transformer=True
    )
    assert recognised.fast_transformer == "transformer_distilled" and recognised.fast_missing() is None


def test_a_distilled_transformer_counts_only_when_laid_out_as_the_dev_one(tmp_path):
    model = write_model(tmp_path / "m", "2.0")
    distilled = model / "transformer_distilled"
    distilled.mkdir()
    (distilled / "config.json").write_text((model / "transformer" / "config.json").read_text())
    (distilled / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    assert recognise(model).distilled_transformer and recognise(model).parts == ("transformer_distilled",)

    layout = json.loads((model / "transformer" / "config.json").read_text()) | {"num_layers": 3}
    (distilled / "config.json").write_text(json.dumps(layout))
    unlike = recognise(model)
    assert not unlike.distilled_transformer and unlike.fast_transformer is None
    assert unlike.notes == (
        "transformer_distilled/ is laid out unlike transformer/ (config.json differs in num_layers), so it is left out",
    )


# Hand-written directories: the config keys recognition reads, as the full-size models have them.
def write_model(root: Path, version: str = "2.3", variant: str = "dev", **configs: dict) -> Path:
    layout_2_3 = version in ("2.3", "2.5")
    written = {
        "transformer/config.json": {"_class_name": "LTX2VideoTransformer3DModel", **TRANSFORMER_SWITCHES[version]},
        "connectors/config.json": {"_class_name": "LTX2TextConnectors", "per_modality_projections": layout_2_3},
        "vae/config.json": {
            "_class_name": "AutoencoderKLLTX2Video",
            "decoder_block_out_channels": [256, 512, 512, 1024] if layout_2_3 else [256, 512, 1024],
        },
        "audio_vae/config.json": {"_class_name": "AutoencoderKLLTX2Audio"},
        "vocoder/config.json": {"_class_name": "LTX2VocoderWithBWE" if layout_2_3 else "LTX2Vocoder"},
        "text_encoder/config.json": {"model_type": TEXT_ENCODER_TYPE[version]},
        "tokenizer/tokenizer_config.json": {},
        "scheduler/scheduler_config.json": {
            "_class_name": "FlowMatchEulerDiscreteScheduler",
            "use_dynamic_shifting": variant == "dev",
            "shift_terminal": 0.1 if variant == "dev" else None,
        },
    }
    for path, config in written.items():
        file = root / path
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(json.dumps(config | configs.get(file.parent.name, {})))
        if file.parent.name not in ("tokenizer", "scheduler"):
            (file.parent / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    return root


def reason(directory: Path) -> str:
    with pytest.raises(Unrecognised) as raised:
        recognise(directory)
    return str(raised.value)


@pytest.mark.parametrize(("version", "variant"), [("2.0", "dev"), ("2.3", "distilled")])
def test_a_config_only_directory_is_recognised_from_its_keys(tmp_path, version, variant):
    assert recognise(write_model(tmp_path / "m", version, variant)) == Recognised(
        family="ltx-2", version=version, variant=variant, upsampler=False
    )


def test_a_2_0_transformer_config_saved_before_the_switches_existed_is_2_0(tmp_path):
    model = write_model(tmp_path / "m", "2.0")
    (model / "transformer" / "config.json").write_text(json.dumps({"_class_name": "LTX2VideoTransformer3DModel"}))

    assert recognise(model).version == "2.0"


def test_a_dev_model_lists_its_distilled_lora_and_a_distilled_model_needs_none(tmp_path):
    dev = write_model(tmp_path / "dev", "2.3", "dev")
    distilled = write_model(tmp_path / "distilled", "2.3", "distilled")
    for model in (dev, distilled):
        (model / "ltx-2.3-22b-distilled-lora-384.safetensors").write_bytes(b"")
        (model / "notes.txt").write_text("")

    assert recognise(dev).distilled_lora == "ltx-2.3-22b-distilled-lora-384.safetensors"
    assert recognise(dev).parts == ("distilled_lora",)
    assert recognise(distilled).distilled_lora is None


def test_an_upsampler_counts_only_when_complete_and_a_broken_one_is_noted(version_model_dirs, tmp_path):
    model = shutil.copytree(version_model_dirs["2.3-distilled"], tmp_path / "m")
    assert recognise(model).parts == ("latent_upsampler",)

    (model / "latent_upsampler" / "diffusion_pytorch_model.safetensors").unlink()
    broken = recognise(model)
    assert not broken.upsampler
    assert broken.notes == ("latent_upsampler/ has no weights, so it is left out",)

    shutil.rmtree(model / "latent_upsampler")
    assert recognise(model) == Recognised(family="ltx-2", version="2.3", variant="distilled", upsampler=False)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda m: shutil.rmtree(m / "vocoder"), "incomplete: vocoder/ is missing"),
        (lambda m: (m / "vae" / "diffusion_pytorch_model.safetensors").unlink(), "incomplete: vae/ has no weights"),
        (lambda m: (m / "transformer" / "config.json").write_text("{"), "transformer/ has an unreadable config.json"),
        (lambda m: (m / "connectors" / "config.json").write_text("[]"), "connectors/config.json is not a JSON object"),
        (
            lambda m: (m / "scheduler" / "scheduler_config.json").unlink(),
            "incomplete: scheduler/ has no scheduler_config.json",
        ),
    ],
)
def test_an_incomplete_directory_names_the_missing_or_unreadable_file(tmp_path, damage, expected):
    model = write_model(tmp_path / "m")
    damage(model)

    assert expected in reason(model)


@pytest.mark.parametrize(
    ("configs", "expected"),
    [
        ({"transformer": {"gated_attn": True, "use_prompt_embeddings": True}}, "gated_attn=True"),
        ({"transformer": {"_class_name": "WanTransformer3DModel"}}, "transformer/config.json has _class_name"),
        ({"connectors": {"per_modality_projections": False}}, "per_modality_projections=False"),
        ({"vae": {"decoder_block_out_channels": [256, 512, 1024]}}, "VAE decoder has 4 blocks"),
        ({"vocoder": {"_class_name": "LTX2Vocoder"}}, "'LTX2VocoderWithBWE'"),
        ({"text_encoder": {"model_type": "gemma4_unified"}}, "model_type 'gemma4_unified'"),
        ({"scheduler": {"use_dynamic_shifting": True, "shift_terminal": None}}, "shift_terminal=None"),
    ],
)
def test_an_unknown_or_mixed_directory_names_the_key_and_what_it_should_be(tmp_path, configs, expected):
    assert expected in reason(write_model(tmp_path / "m", "2.3", **configs))


def test_a_file_or_a_missing_path_is_not_a_model(tmp_path):
    (tmp_path / "file").write_text("")

    assert "is not a directory" in reason(tmp_path / "file")
    assert "is not a directory" in reason(tmp_path / "nowhere")


# ---- offering: every directory of AVP_MODELS_DIR (and AVP_MODEL_DIR's) becomes a model or an Unusable ----


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("LTX-2.3 Distilled", "ltx-2.3-distilled"),
        ("ltx2_dev", "ltx2_dev"),
        ("../..", None),
        ("  Über modell!  ", "ber-modell"),
        ("___", None),
        ("x" * 100, "x" * 64),
    ],
)
def test_a_model_id_is_the_directory_name_made_safe(name, expected):
    assert model_id(name) == expected


def test_every_model_directory_is_offered_or_listed_with_its_problem(tmp_path):
    library_dir = tmp_path / "models"
    write_model(library_dir / "LTX-2.3 Distilled", "2.3", "distilled")
    write_model(library_dir / "ltx-2.0", "2.0")
    shutil.rmtree(write_model(library_dir / "half copied", "2.0") / "vae")
    write_model(library_dir / "ltx-2.3-distilled", "2.3", "distilled")  # the same id as the first
    write_model(library_dir / "demo", "2.0")  # the data dir's own demo: offered as the demo only
    write_model(library_dir / "Demo!", "2.0")  # an id the demo holds
    write_model(library_dir / ".ltx-2.0.building-7", "2.0")
    (library_dir / "demo-model-build.log").write_text("")

    offer = offered_models(library_dir / "demo", library_dir, None)

    assert list(offer.models) == ["ltx-2.3-distilled", "ltx-2.0", "demo"]
    distilled, dev = offer.models["ltx-2.3-distilled"], offer.models["ltx-2.0"]
    assert (distilled.kind, distilled.version, distilled.variant, distilled.modes) == (
        "ltx-2.3",
        "2.3",
        "distilled",
        ("quality",),
    )
    assert distilled.path == str((library_dir / "LTX-2.3 Distilled").resolve())
    assert (distilled.defaults.steps, distilled.defaults.guidance_scale) == (8, 1.0)
    assert (dev.kind, dev.version, dev.variant, dev.defaults.steps) == ("ltx-2", "2.0", "dev", 30)
    taken = "is taken by another model: rename the directory"
    assert offer.unusable == (
        Unusable(id="demo", directory="Demo!", problem=f"its model id 'demo' {taken}"),
        Unusable(id="half-copied", directory="half copied", problem="incomplete: vae/ is missing"),
        Unusable(
            id="ltx-2.3-distilled",
            directory="ltx-2.3-distilled",
            problem=f"its model id 'ltx-2.3-distilled' {taken}",
        ),
    )


def test_avp_model_dir_comes_first_once_and_an_unrecognised_one_does_not_stop_the_rest(tmp_path):
    library_dir = tmp_path / "models"
    single = write_model(library_dir / "b-model", "2.3")
    write_model(library_dir / "a-model", "2.0")

    offer = offered_models(library_dir / "demo", library_dir, single)
    # AVP_MODEL_DIR's model keeps its id from before the library, whatever its directory is called
    assert list(offer.models) == ["ltx-2", "a-model", "demo"] and offer.unusable == ()
    assert offer.models["ltx-2"].path == str(single.absolute())

    (single / "scheduler" / "scheduler_config.json").write_text(json.dumps({"use_dynamic_shifting": "maybe"}))
    offer = offered_models(library_dir / "demo", library_dir, single)
    assert list(offer.models) == ["a-model", "demo"]
    assert [(found.id, found.problem.split(" has ")[0]) for found in offer.unusable] == [
        ("ltx-2", "scheduler/scheduler_config.json")
    ]


def test_without_a_library_directory_the_demo_alone_is_offered(tmp_path):
    offer = offered_models(tmp_path / "models" / "demo", tmp_path / "models", None)

    assert list(offer.models) == ["demo"] and offer.unusable == ()


def test_the_runner_rebuilds_a_library_models_spec_from_its_kind_and_path(tmp_path):
    model = write_model(tmp_path / "models" / "My LTX", "2.3")
    offered = offered_models(tmp_path / "models" / "demo", tmp_path / "models", None).models["my-ltx"]

    rebuilt = MODEL_KINDS[offered.kind](Path(offered.path))
    assert (rebuilt.id, rebuilt.version, rebuilt.constraints) == ("my-ltx", "2.3", offered.constraints)
    assert rebuilt.path == str(model.resolve())


FAMILY_CONFIGS = Path(__file__).parents[2] / "bench" / "configs" / "ltx2-family-configs.json"
FULL_SIZE_DECODER = json.loads(FAMILY_CONFIGS.read_text())["2.5"]["diffusion_decoder"]["config"]


def write_ltx2_5(root: Path, without: tuple[str, ...] = (), upsampler: bool = False) -> Path:
    """A config-only LTX-2.5 directory as published: distilled transformer/ and scheduler, the dev transformer under
    a name of its own (the configs find it, not the name), the diffusion decoder and duration head; with `upsampler`,
    the latent upsampler fast mode needs."""
    model = write_model(root, "2.5", "distilled")
    parts = {
        "dev weights": json.loads((model / "transformer" / "config.json").read_text()),
        "diffusion_decoder": {"_class_name": "LTX2VideoDiffusionDecoderModel", **FULL_SIZE_DECODER},
        "duration_head": {"_class_name": "LTX2DurationHead"},
    }
    if upsampler:
        parts["latent_upsampler"] = {"_class_name": "LTX2LatentUpsamplerModel"}
    for name, config in parts.items():
        if name not in without:
            (model / name).mkdir()
            (model / name / "config.json").write_text(json.dumps(config))
            (model / name / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    return model


def test_an_ltx_2_5_directory_is_recognised_from_its_configs_with_its_dev_transformer_found_by_its_config(tmp_path):
    recognised = recognise(write_ltx2_5(tmp_path / "m"))

    assert recognised == Recognised(
        family="ltx-2",
        version="2.5",
        variant="distilled",
        upsampler=False,
        full_transformer="dev weights",
        diffusion_decoder=True,
        text_parts=("duration_head",),
    )
    assert (recognised.fast_transformer, recognised.quality_transformer) == ("transformer", "dev weights")
    spec = library_spec(tmp_path / "m", recognised)
    assert (spec.kind, spec.version, spec.modes) == ("ltx-2.5", "2.5", ("quality",))
    assert spec.disabled_modes == {
        "fast": "a latent_upsampler/ (the x2 spatial latent upsampler, LTX2LatentUpsamplerModel)"
    }
    assert (spec.defaults.steps, spec.defaults.guidance_scale) == (30, 4.0), "quality runs the dev transformer"


@pytest.mark.parametrize(
    ("missing", "mode", "named"),
    [("diffusion_decoder", "fast", "diffusion_decoder/"), ("dev weights", "quality", "transformer_full/")],
)
def test_an_ltx_2_5_directory_without_a_part_a_mode_needs_offers_the_other_and_a_job_for_it_is_refused(
    tmp_path, missing, mode, named
):
    model = write_ltx2_5(tmp_path / "m", without=(missing,), upsampler=True)
    spec = library_spec(model, recognise(model))

    assert mode not in spec.modes and named in spec.disabled_modes[mode]
    ((field, message),) = [v for v in spec.violations(spec.resolve(Request(prompt="a", mode=mode))) if v[0] == "mode"]
    assert named in message and f"{mode} mode needs" in message


def test_an_ltx_2_5_transformer_with_a_gemma_3_text_encoder_is_refused_naming_gemma_4(tmp_path):
    model = write_ltx2_5(tmp_path / "m")
    (model / "text_encoder" / "config.json").write_text(json.dumps({"model_type": "gemma3"}))

    assert "LTX-2.5 uses 'gemma4_unified' (Gemma-4)" in reason(model)


def test_ltx_2_5s_fast_mode_takes_an_image_keyframes_and_an_extension_as_quality_does(tmp_path):
    model = write_ltx2_5(tmp_path / "m", upsampler=True)
    spec = library_spec(model, recognise(model))
    assert spec.modes == ("fast", "quality")
    keyframes = (Keyframe(upload_id="k0", frame=0), Keyframe(upload_id="k1", frame=-1, strength=0.5))

    def problems(mode: str, num_frames: int = 25, **condition) -> dict[str, str]:
        return dict(spec.violations(spec.resolve(Request(prompt="a", mode=mode, num_frames=num_frames, **condition))))

    for condition in ({"image_upload_id": "u1"}, {"keyframes": keyframes}, {"extend_from": "j1"}):
        assert problems("fast", **condition) == problems("quality", **condition) == {}, condition
    # The slot pipeline pads its canvas past the clip: a keyframe takes the clip's frames, as on other models
    off_grid = {"keyframes": (Keyframe(upload_id="k0", frame=13),)}
    assert "nearest valid: 16" in problems("fast", **off_grid)["keyframes"]
    # 41 frames lie on a canvas of 49 (two 24-frame segments): its padding's last frame is no keyframe's
    past = {"keyframes": (Keyframe(upload_id="k0", frame=48),)}
    assert "past the clip's 41 frames; use 0..40" in problems("fast", num_frames=41, **past)["keyframes"]


def test_an_imports_temporary_directory_is_listed_unusable_never_offered(tmp_path):
    library_dir = tmp_path / "models"
    write_model(library_dir / f".importing-ltx-2-19b-dev-{os.getpid()}", "2.0")  # complete, but still being written
    write_model(library_dir / ".importing-ltx-2.3-22b-dev-999999999", "2.3")  # no such process: a stopped import

    offer = offered_models(library_dir / "demo", library_dir, None)

    assert list(offer.models) == ["demo"]
    running, stopped = offer.unusable  # by name
    assert (stopped.id, stopped.directory) == (None, ".importing-ltx-2.3-22b-dev-999999999")
    assert stopped.problem.startswith("an import of 'ltx-2.3-22b-dev' that did not finish")
    assert "delete this directory and import again" in stopped.problem
    being = f"'ltx-2-19b-dev' is being imported (avportal import-model, process {os.getpid()})"
    assert running.problem.startswith(being)


def test_ltx_2_5s_fast_mode_starts_where_its_diffusion_decoders_windows_fit(tmp_path):
    model = write_ltx2_5(tmp_path / "m", upsampler=True)
    spec = library_spec(model, recognise(model))
    # 3x7x7 windows on the latent grid: 7 cells of 32 px; 11 frames in the pixel stage's 11x11x11 windows
    assert (spec.constraints.fast_min_side, spec.constraints.fast_min_frames) == (224, 11)

    def problems(**asked) -> dict[str, str]:
        return dict(spec.violations(spec.resolve(Request(prompt="a", **asked))))

    small = problems(mode="fast", width=192, height=256, num_frames=9)
    assert small["width"].startswith("192 is below the minimum 224 in fast mode")
    assert small["num_frames"].startswith("9 is below the minimum 17 in fast mode")
    assert "height" not in small
    assert not {"width", "num_frames"} & problems(mode="fast", width=256, height=256, num_frames=17).keys()
    assert not {"width", "num_frames"} & problems(mode="quality", width=192, height=256, num_frames=9).keys()

    narrower = json.loads((model / "diffusion_decoder" / "config.json").read_text())
    narrower["decoder_stage_kernels"][0] = [3, 5, 5]  # stage 1 binds: 5 cells; stage 2 (x2) needs 7 / 2 -> 4
    narrower["decoder_stage5_kernel"] = [7, 11, 11]
    (model / "diffusion_decoder" / "config.json").write_text(json.dumps(narrower))
    assert decoder_minimum(model) == (160, 7)
