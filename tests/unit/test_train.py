"""The demo model's training script on the CPU: every stage takes real steps, resumes, and exports.

A few steps on one-clip batches: this proves the stages still fit together (the world, the mel
front end, each component's loss, the transformer's call as the pipeline makes it, the export)
so the script cannot rot unnoticed. How well training works is the quality tests' business.
"""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from diffusers import LTX2Pipeline

from gpu_runner.demo import model as demo_model
from gpu_runner.demo import train, world

# The video VAE's latent statistics from 2 clips (not 128), a 2-step teacher (not 16) for the distillation and each
# stage's default clip shape alone: what is checked is that the stages fit together, which any size shows (that
# every shape of the lists suits the model is checked on its own, below).
SMALL = ["--device", "cpu", "--batch", "1", "--pool", "2", "--stat-clips", "2", "--teacher-steps", "2", "--shapes", "1"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One tiny run of every stage, in the order train.sh runs them."""
    directory = tmp_path_factory.mktemp("run")
    for stage in train.STAGES:
        train.main([stage, "--run-dir", str(directory), "--steps", "2", *SMALL])
    return directory


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    """The run exported once; a test that changes the export works on its own copy (`copy_of`)."""
    target = tmp_path_factory.mktemp("export") / "export"
    train.main(["export", "--run-dir", str(run_dir), "--target", str(target)])
    return target


def copy_of(exported, tmp_path):
    return shutil.copytree(exported, tmp_path / "export")


def logged(run_dir, stage):
    return [json.loads(line) for line in (run_dir / f"{stage}.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("stage", train.STAGES)
def test_every_stage_logs_finite_losses_and_checkpoints_its_step(run_dir, stage):
    records = logged(run_dir, stage)
    checkpoint = torch.load(run_dir / f"{stage}.pt", weights_only=True)

    assert [record["step"] for record in records] == [1, 2]  # logged on the first step, every 50th and the last
    assert all(math.isfinite(value) for record in records for key, value in record.items() if key != "step")
    assert checkpoint["step"] == 2


def test_a_stage_run_again_resumes_where_it_stopped(run_dir, tmp_path):
    resumed = tmp_path / "run"
    resumed.mkdir()
    (resumed / "vocoder.pt").write_bytes((run_dir / "vocoder.pt").read_bytes())
    before = torch.load(resumed / "vocoder.pt", weights_only=True)

    train.main(["vocoder", "--run-dir", str(resumed), "--steps", "3", *SMALL])

    after = torch.load(resumed / "vocoder.pt", weights_only=True)
    assert after["step"] == 3  # one more step, not three from scratch
    weights_before, weights_after = before["models"]["vocoder"], after["models"]["vocoder"]
    assert any(not torch.equal(weights_before[name], weights_after[name]) for name in weights_before)


def test_the_export_is_a_pipeline_carrying_the_trained_weights_and_latent_statistics(run_dir, exported):
    pipe = LTX2Pipeline.from_pretrained(exported)
    trained = torch.load(run_dir / "video_vae.pt", weights_only=True)["models"]["vae"]
    assert torch.allclose(pipe.vae.latents_std.float(), trained["latents_std"].float(), rtol=1e-2)
    assert not torch.allclose(pipe.vae.latents_std.float(), torch.ones_like(pipe.vae.latents_std.float()))
    assert set(json.loads((exported / "training_log.json").read_text())) == set(train.STAGES)


def test_every_clip_shape_the_stages_train_on_suits_the_video_vae_and_fast_modes_half_size():
    vae = demo_model.video_vae()
    spatial, temporal = vae.spatial_compression_ratio, vae.temporal_compression_ratio
    for width, height, frames in train.SHAPES:
        assert width % spatial == height % spatial == (frames - 1) % temporal == 0, (width, height, frames)
    for width, height, frames in train.FAST_SHAPES:  # stage 1 runs at half of each side
        assert width % (2 * spatial) == height % (2 * spatial) == (frames - 1) % temporal == 0, (width, height, frames)


def test_the_training_mel_is_causal_and_reads_silence_as_its_floor():
    scenes = world.sample_scenes(1, seed=2, motion="bouncing")
    audio = world.render_audio(scenes, seconds=1.0, sample_rate=train.MEL_RATE)
    first_click = world.contact_times(scenes[0], 1.0)[0]

    mel = train.log_mel(audio)[0, 0]  # (frames, bins)
    loud = (mel.max(dim=1).values > train.LOG_MEL_FLOOR + 1).nonzero().flatten()

    assert mel.shape == (train.MEL_RATE // train.MEL_HOP, 64)
    assert train.log_mel(torch.zeros_like(audio)).eq(train.LOG_MEL_FLOOR).all()
    # frame i ends at (i + 1) hops: no frame hears the click before it happens
    assert (loud[0].item() + 1) * train.MEL_HOP / train.MEL_RATE >= first_click


def test_an_import_trains_on_from_the_exported_weights_and_skips_a_changed_architecture(run_dir, exported, tmp_path):
    exported, imported = copy_of(exported, tmp_path), tmp_path / "imported"
    config_path = exported / "vocoder" / "config.json"  # as if the vocoder's architecture had changed since
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "hidden_channels": 64}))

    train.main(["import", "--run-dir", str(imported), "--source", str(exported)])

    # every stage but the vocoder's, whose architecture changed; fast mode's parts too
    stages = ["audio_vae", "distill", "latent_upsampler", "transformer", "video_vae"]
    assert sorted(path.stem for path in imported.glob("*.pt")) == stages
    start = torch.load(imported / "transformer.pt", weights_only=True)
    trained = torch.load(run_dir / "transformer.pt", weights_only=True)["models"]["transformer"]
    assert start["step"] == 2
    assert all(torch.equal(start["models"]["transformer"][k], trained[k].bfloat16().float()) for k in trained)

    train.main(["transformer", "--run-dir", str(imported), "--steps", "3", *SMALL])

    assert [record["step"] for record in logged(imported, "transformer")] == [1, 2, 3]  # the log goes on
    assert torch.load(imported / "transformer.pt", weights_only=True)["step"] == 3


def test_an_import_refuses_a_model_whose_frozen_text_encoder_is_not_the_seeds(exported, tmp_path):
    exported = copy_of(exported, tmp_path)
    from safetensors.torch import load_file, save_file

    weights = next((exported / "text_encoder").glob("*.safetensors"))
    tensors = load_file(weights)
    name = next(key for key in tensors if "vision" not in key and tensors[key].is_floating_point())
    tensors[name] = tensors[name] + 1
    save_file(tensors, weights)

    with pytest.raises(ValueError, match="text encoder"):
        train.main(["import", "--run-dir", str(tmp_path / "imported"), "--source", str(exported)])
