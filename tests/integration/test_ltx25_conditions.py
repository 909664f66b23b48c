"""LTX-2.5's fast mode with conditions, through the runner's own stages on the tiny random 2.5 model (`demo-model
--random --version 2.5`): a first-frame image with a last-frame keyframe, then an extension of that clip.

Random weights prove the plumbing only: the clip is noise, and nothing here says the model follows an image. What is
checked is what the plumbing must do whatever the weights: each stage of the keyframe-slot pipeline gets the
conditions at its own size (stage 1 at half size, the refine at full size), the first-frame image's tokens held at
its strength and the keyframe's appended at the last frame with its strength; the latents handed to the diffusion
decoder begin with the VAE encoding of the image (strength 1 keeps it exactly); an extension's first two latent
frames are the encoding of the earlier clip's last 9 frames, and its sound starts with the earlier clip's audio
latents.
"""

from __future__ import annotations

import dataclasses
import shutil
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from contract import jobdir, protocol
from contract.request import EXTEND_OVERLAP
from gpu_runner import pipeline
from gpu_runner.cancel import Cancellation
from gpu_runner.extension import AUDIO_LATENTS_KEY
from gpu_runner.families.ltx2 import Ltx2
from gpu_runner.families.ltx2.loading import SlotDenoisingPipeline
from gpu_runner.job import load_job
from tests import upload_corpus as corpus
from tests.runner_fixtures import read_mp4, write_job
from tests.vae_encoding import SAME_LATENT, encoded_frames, encoded_image

SIZE = 64  # the tiny model's fast floor (its diffusion decoder's windows fit one latent cell); 224 at full size
FRAMES = 9  # two latent frames: the image at frame 0, the keyframe at frame 8, the last
EXTENDED = EXTEND_OVERLAP + 8  # an extension's shortest new part
LAST_STRENGTH = 0.8
FAST_STAGES = ["load_text_encoder", "encode_prompt", "free_text_encoder", "load_transformer", "denoise", "upsample"]
FAST_STAGES += ["refine", "free_transformer", "decode_audio", "decode_video", "mux"]


@dataclasses.dataclass
class Caught:
    """What the runner's stages did: the slot pipeline's laid-out sequence per stage, the latents the diffusion
    decoder got, and the events."""

    stages: list[dict] = dataclasses.field(default_factory=list)
    decoded: torch.Tensor | None = None
    events: list = dataclasses.field(default_factory=list)

    def stage_names(self) -> list[str]:
        return [event.name for event in self.events if isinstance(event, protocol.Stage)]


def run_caught(job_dir, model_dir) -> Caught:
    caught = Caught()
    prepare, decode = SlotDenoisingPipeline.prepare_latents, Ltx2.diffusion_decode

    def preparing(pipe, **kwargs):
        laid_out = prepare(pipe, **kwargs)
        _, mask, clean, coords, _, slot_tokens = laid_out
        cells = (kwargs["height"] // 32, kwargs["width"] // 32)  # the VAE's spatial compression
        base = ((kwargs["num_frames"] - 1) // 8 + 1) * cells[0] * cells[1]
        statistics = (pipe.vae.latents_mean, pipe.vae.latents_std)  # how the pipeline normalises latents
        caught.stages.append(
            {"cells": cells, "base": base, "mask": mask, "clean": clean, "coords": coords, "slots": slot_tokens}
            | {"statistics": statistics}
        )
        return laid_out

    def decoding(family, decoders, latents, *args):
        caught.decoded = latents.detach().clone()
        return decode(family, decoders, latents, *args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SlotDenoisingPipeline, "prepare_latents", preparing)
        patch.setattr(Ltx2, "diffusion_decode", decoding)
        pipeline.generate(load_job(job_dir), caught.events.append, Cancellation(), time.monotonic())
    return caught


def last_keyframe_image() -> Image.Image:
    return corpus.photo(SIZE, SIZE).transpose(Image.Transpose.ROTATE_180)


def fast_job(job_dir, model_dir, **fields) -> None:
    base = {"model_kind": "ltx-2.5", "model": "ltx-2.5", "mode": "fast", "negative_prompt": ""}
    write_job(job_dir, model_dir, **base, width=SIZE, height=SIZE, seed=3, **fields)


@pytest.fixture(scope="module")
def conditioned(ltx25_model_dir, tmp_path_factory):
    """A fast job with a first-frame image (strength 1) and a keyframe at the last frame (LAST_STRENGTH)."""
    job_dir = tmp_path_factory.mktemp("ltx25-conditioned")
    keyframes = [{"upload_id": "b" * 32, "frame": -1, "strength": LAST_STRENGTH}]
    fields = {"image_upload_id": "a" * 32, "image_strength": 1.0, "image_file": "image.png"}
    fast_job(job_dir, ltx25_model_dir, num_frames=FRAMES, keyframes=keyframes, keyframe_files=["k.png"], **fields)
    corpus.photo(SIZE, SIZE).save(job_dir / "image.png")
    last_keyframe_image().save(job_dir / "k.png")
    return job_dir, run_caught(job_dir, ltx25_model_dir)


def test_a_fast_job_with_an_image_and_a_keyframe_runs_every_stage_into_a_clip(conditioned):
    job_dir, caught = conditioned
    assert caught.stage_names() == FAST_STAGES
    clip = read_mp4(job_dir / jobdir.VIDEO_FILE)
    assert (clip.width, clip.height, len(clip.frames)) == (SIZE, SIZE, FRAMES)


def test_the_latents_decoded_begin_with_the_encoded_image(conditioned, ltx25_model_dir):
    _, caught = conditioned
    expected = encoded_image(ltx25_model_dir, corpus.photo(SIZE, SIZE), "2.5")
    assert (caught.decoded[:, :, 0] - expected).abs().max() < SAME_LATENT
    assert (caught.decoded[:, :, 1] - expected).abs().max() > 100 * SAME_LATENT, "the image is the first frame's alone"


def test_both_stages_hold_the_image_and_append_the_last_keyframe_at_its_frame_and_strength(
    conditioned, ltx25_model_dir
):
    _, caught = conditioned
    half, full = caught.stages
    assert (half["cells"], full["cells"]) == ((1, 1), (2, 2)), "stage 1 at half size, the refine at full size"
    for stage in (half, full):
        first = stage["cells"][0] * stage["cells"][1]
        assert torch.all(stage["mask"][0, :first] == 1.0), "the image's tokens held at image_strength 1"
        assert torch.all(stage["mask"][0, first : stage["base"]] == 0.0), "the rest of the clip is generated"
        keyframe = slice(stage["base"], stage["slots"].start)
        assert keyframe.stop - keyframe.start == first, "one latent frame of keyframe tokens"
        assert torch.allclose(stage["mask"][0, keyframe], torch.tensor(LAST_STRENGTH))
        times = stage["coords"][0, 0, keyframe]  # (tokens, [start, end)) in seconds
        assert torch.allclose(times, torch.tensor([FRAMES - 1, FRAMES]) / 24.0), "at the last frame, one frame long"
    # At full size the keyframe's tokens are its image's encoding, normalised as the pipeline holds latents
    raw = encoded_image(ltx25_model_dir, last_keyframe_image(), "2.5")
    mean, std = (value.view(1, -1, 1, 1) for value in full["statistics"])
    expected = ((raw - mean) / std).flatten(2).transpose(1, 2)[0]
    assert (full["clean"][0, full["base"] : full["slots"].start] - expected).abs().max() < SAME_LATENT


@pytest.fixture(scope="module")
def extended(conditioned, ltx25_model_dir, tmp_path_factory):
    """A fast job extending the conditioned job's clip, as the web process lays its directory out."""
    source_dir, _ = conditioned
    job_dir = tmp_path_factory.mktemp("ltx25-extended")
    fields = {"source_video_file": jobdir.SOURCE_VIDEO_FILE}
    fields["source_audio_latents_file"] = jobdir.SOURCE_AUDIO_LATENTS_FILE
    fast_job(job_dir, ltx25_model_dir, num_frames=EXTENDED, extend_from="c" * 32, **fields)
    shutil.copy(source_dir / jobdir.VIDEO_FILE, job_dir / jobdir.SOURCE_VIDEO_FILE)
    shutil.copy(source_dir / jobdir.AUDIO_LATENTS_FILE, job_dir / jobdir.SOURCE_AUDIO_LATENTS_FILE)
    return source_dir, job_dir, run_caught(job_dir, ltx25_model_dir)


def test_an_extension_starts_from_the_earlier_clips_last_frames_and_sound(extended, ltx25_model_dir):
    source_dir, job_dir, caught = extended
    assert caught.stage_names() == FAST_STAGES
    earlier = read_mp4(source_dir / jobdir.VIDEO_FILE).frames
    joined = read_mp4(job_dir / jobdir.VIDEO_FILE).frames
    assert len(joined) == len(earlier) + EXTENDED - EXTEND_OVERLAP

    overlap = encoded_frames(ltx25_model_dir, np.stack(earlier[-EXTEND_OVERLAP:]))  # two latent frames
    assert (caught.decoded[:, :, :2] - overlap).abs().max() < SAME_LATENT
    earlier_sound = load_file(source_dir / jobdir.AUDIO_LATENTS_FILE)[AUDIO_LATENTS_KEY]
    joined_sound = load_file(job_dir / jobdir.AUDIO_LATENTS_FILE)[AUDIO_LATENTS_KEY]
    assert joined_sound.shape[2] > earlier_sound.shape[2]
    assert (joined_sound[:, :, : earlier_sound.shape[2]] - earlier_sound).abs().max() < SAME_LATENT
