"""The demo model: LTX-2's architecture and compression at a tiny size, installed atomically."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKLLTX2Video, LTX2Pipeline
from diffusers.pipelines.ltx2 import LTX2LatentUpsamplerModel

from contract import models as specs
from gpu_runner.demo.model import TRAINED_WEIGHTS, build_demo_model, is_complete


def file_digests(directory):
    return {
        path.relative_to(directory): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize(("frames", "height", "width"), [(9, 64, 96), (25, 160, 256)])
def test_video_vae_compresses_32x_in_space_and_8x_in_time_after_a_causal_first_frame(
    demo_model_dir, frames, height, width
):
    vae = AutoencoderKLLTX2Video.from_pretrained(demo_model_dir / "vae")
    video = torch.rand(1, 3, frames, height, width) * 2 - 1

    with torch.no_grad():
        latents = vae.encode(video).latent_dist.mode()
        decoded = vae.decode(latents).sample

    assert latents.shape[2:] == ((frames - 1) // 8 + 1, height // 32, width // 32)
    assert decoded.shape == video.shape
    assert (vae.spatial_compression_ratio, vae.temporal_compression_ratio) == (32, 8)


def test_the_directory_loads_as_an_ltx2_pipeline_whose_parts_fit_together(demo_model_dir):
    pipe = LTX2Pipeline.from_pretrained(demo_model_dir)

    assert pipe.text_encoder.config.text_config.hidden_size == pipe.connectors.config.caption_channels
    assert pipe.connectors.config.caption_channels == pipe.transformer.config.caption_channels
    assert pipe.transformer.config.in_channels == pipe.vae.config.latent_channels
    # The vocoder turns 16 kHz mel frames (hop 160) into 24 kHz audio, as LTX-2.0's does.
    mel_frames_per_second = pipe.audio_vae.config.sample_rate / pipe.audio_vae.config.mel_hop_length
    assert pipe.vocoder.config.output_sampling_rate == 24000
    assert mel_frames_per_second * pipe.vocoder.total_upsample_factor == 24000
    assert pipe.tokenizer("a dog runs").input_ids[0] == pipe.tokenizer.bos_token_id


def test_the_shipped_demo_model_is_small_enough_for_the_repository(demo_model_dir):
    size = sum(path.stat().st_size for path in TRAINED_WEIGHTS.rglob("*") if path.is_file())
    assert size < 41 * 1024**2  # 40 MiB of model, and its LoRA (loras/demo-huge.safetensors, 0.47 MB)
    assert (TRAINED_WEIGHTS / "MODEL_CARD.md").is_file()
    assert json.loads((demo_model_dir / specs.DEMO_MANIFEST).read_text())["weights"] == "trained"


def test_the_demo_has_fast_modes_upsampler_and_a_distilled_transformer_of_its_own(demo_model_dir):
    upsampler = LTX2LatentUpsamplerModel.from_pretrained(demo_model_dir / "latent_upsampler")
    stage_1 = torch.randn(1, 32, 4, 3, 5, dtype=upsampler.dtype)  # a 320x192x25 job's stage 1, at 160x96
    with torch.no_grad():
        assert upsampler(stage_1).shape == (1, 32, 4, 6, 10)

    transformer = demo_model_dir / "transformer"
    distilled = demo_model_dir / "transformer_distilled"
    config = json.loads((transformer / "config.json").read_text())
    assert strip_versions(json.loads((distilled / "config.json").read_text())) == strip_versions(config)
    weights = "diffusion_pytorch_model.safetensors"
    assert file_digests(distilled)[Path(weights)] != file_digests(transformer)[Path(weights)]
    shipped = [TRAINED_WEIGHTS / part / weights for part in ("latent_upsampler", "transformer_distilled")]
    assert sum(path.stat().st_size for path in shipped) < 15 * 1000**2


def test_random_weights_stay_available_with_the_same_architecture(tmp_path, demo_model_dir):
    random_dir = build_demo_model(tmp_path / "random", "random")

    assert is_complete(random_dir, "random") and not is_complete(random_dir, "trained")
    fast_mode = ("latent_upsampler", "transformer_distilled")
    for component in ("transformer", "vae", "audio_vae", "vocoder", "connectors", *fast_mode):
        trained_config = json.loads((demo_model_dir / component / "config.json").read_text())
        random_config = json.loads((random_dir / component / "config.json").read_text())
        assert strip_versions(random_config) == strip_versions(trained_config), component
    trained = AutoencoderKLLTX2Video.from_pretrained(demo_model_dir / "vae").decoder.conv_out.conv.weight
    random = AutoencoderKLLTX2Video.from_pretrained(random_dir / "vae").decoder.conv_out.conv.weight
    assert not torch.allclose(trained.float(), random.float())


def strip_versions(config: dict) -> dict:
    return {key: value for key, value in config.items() if not key.startswith("_")}


def test_a_build_is_reproducible_reused_and_leaves_nothing_behind(tmp_path, demo_model_dir):
    target = tmp_path / "demo"
    build_demo_model(target)
    manifest_written = (target / specs.DEMO_MANIFEST).stat().st_mtime_ns

    build_demo_model(target)

    assert is_complete(target)
    assert (target / specs.DEMO_MANIFEST).stat().st_mtime_ns == manifest_written
    assert [path.name for path in tmp_path.iterdir()] == ["demo"]
    assert file_digests(target) == file_digests(demo_model_dir)


def test_an_incomplete_directory_is_replaced_by_a_complete_build(tmp_path):
    target = tmp_path / "demo"
    (target / "transformer").mkdir(parents=True)
    (target / "transformer" / "config.json").write_text("{")  # a crash's leftovers, no manifest

    assert not is_complete(target)
    build_demo_model(target)

    assert is_complete(target)
    assert (target / "transformer" / "config.json").read_text().startswith("{\n")
    assert [path.name for path in tmp_path.iterdir()] == ["demo"]


@pytest.mark.parametrize("version", ["2.0", "2.3"])
def test_a_version_build_loads_as_an_ltx2_pipeline_of_that_versions_layout_with_a_x2_upsampler(
    version_model_dirs, version
):
    pipe = LTX2Pipeline.from_pretrained(version_model_dirs[version])
    upsampler = LTX2LatentUpsamplerModel.from_pretrained(version_model_dirs[version] / "latent_upsampler")

    layout_2_3 = version == "2.3"
    transformer = pipe.transformer.config
    assert (transformer.gated_attn, transformer.cross_attn_mod, transformer.perturbed_attn) == (layout_2_3,) * 3
    assert transformer.use_prompt_embeddings is not layout_2_3
    assert pipe.connectors.config.per_modality_projections is layout_2_3
    assert type(pipe.vocoder).__name__ == ("LTX2VocoderWithBWE" if layout_2_3 else "LTX2Vocoder")
    assert len(pipe.vae.config.decoder_block_out_channels) == (4 if layout_2_3 else 3)
    latents = torch.randn(1, pipe.vae.config.latent_channels, 2, 3, 4)
    with torch.no_grad():
        assert pipe.vae.decode(latents).sample.shape == (1, 3, 9, 96, 128)  # 32x in space, 8x in time after one
        assert upsampler(latents).shape == (1, latents.shape[1], 2, 6, 8)
    assert pipe.scheduler.config.use_dynamic_shifting and pipe.scheduler.config.shift_terminal == 0.1


@pytest.mark.parametrize("version", ["2.0", "2.3"])
def test_a_distilled_build_has_the_distilled_scheduler_and_is_a_build_of_its_own(version_model_dirs, version):
    distilled = version_model_dirs[f"{version}-distilled"]
    scheduler = json.loads((distilled / "scheduler" / "scheduler_config.json").read_text())

    assert (scheduler["use_dynamic_shifting"], scheduler["shift_terminal"]) == (False, None)
    assert is_complete(distilled, "random", version, "distilled")
    assert not is_complete(distilled, "random", version, "dev") and not is_complete(distilled, "random")
