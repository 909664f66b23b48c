"""The model-family seam: every contract kind has a family, and `generate` runs any family's stages."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import msgspec
import numpy as np
import pytest
import torch

from contract import cost, jobdir, protocol
from contract.cost import PeakPrediction
from contract.models import MODEL_KINDS, demo_spec
from contract.request import FAST_STEPS, Request, denoise_stages
from gpu_runner import families, lora, pipeline
from gpu_runner.cancel import Cancellation
from gpu_runner.job import Job, JobError
from gpu_runner.preview_colours import ColourLearner
from tests.runner_fixtures import DEMO_REQUEST, NO_CACHES, read_mp4


def test_every_contract_model_kind_has_a_family():
    assert set(families.FAMILIES) == set(MODEL_KINDS)


class Fake(families.Family):
    """A family with nothing of LTX-2 in it: a context of one tensor, grey frames and silence."""

    modes = frozenset({"text"})

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def revision(self) -> str:
        return "fake"

    def sequence_length(self) -> int:
        return 4

    def predict_peak(self, precision, request) -> PeakPrediction:
        return PeakPrediction(0.0, 0.0, 0.0)

    def load_text_side(self, dtype, device):
        self.calls.append("load_text_side")
        return "encoder"

    def encode(self, text, request, device, dtype):
        self.calls.append(f"encode {text}")
        return {"context": torch.zeros(2, 4)}

    def load_denoiser(self, job, context, device, dtype, precision):
        self.calls.append(f"load_denoiser {sorted(context)}")
        return SimpleNamespace(scheduler=SimpleNamespace(sigmas=torch.linspace(1, 0, 101)))

    def latent_revision(self) -> str:
        return "fake"

    def previews(self, job, stage, colours):
        return SimpleNamespace(after_step=lambda *_: None)

    def colour_learner(self, decoders, latents):
        return ColourLearner(latents[..., None].float(), frames_per_latent=1, pixels_per_latent=1)

    def denoise(self, denoiser, job, stage, on_step_end, start=None):
        for index in range(stage.steps):
            on_step_end(denoiser, index, None, {"latents": None})
        return torch.zeros(job.request.num_frames, stage.height, stage.width), torch.zeros(1)  # "latents": the frames

    def upsample(self, denoiser, latents, device):
        self.calls.append("upsample")
        return latents.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)

    def decoders(self, denoiser):
        return {}

    def decode_audio(self, decoders, latents, device):
        self.calls.append("decode_audio")
        return np.zeros((2, 16000), dtype=np.float32), 16000

    def decode_video(self, decoders, latents, device, on_tile, budget_gib):
        self.calls.append("decode_video")
        yield np.full((*latents.shape, 3), 128, dtype=np.uint8)
        on_tile(1, 1)


def fake_job(directory: Path, **request: object) -> Job:
    spec = msgspec.structs.replace(demo_spec(directory), kind="fake")
    made = jobdir.job_file(directory.name, Request(**{**DEMO_REQUEST, **request}), spec, NO_CACHES)
    return Job(directory=directory, file=made, spec=spec, model_dir=directory)


def test_a_family_registered_for_a_new_kind_runs_through_the_stage_skeleton(tmp_path, monkeypatch):
    calls: list[str] = []
    family = Fake(calls)
    monkeypatch.setitem(families.FAMILIES, "fake", lambda model_dir, weight_cache: family)
    job = fake_job(tmp_path, num_frames=9, steps=2)
    events: list[protocol.Event] = []

    result = pipeline.generate(job, events.append, Cancellation(), started=0.0)

    assert calls == ["load_text_side", "encode encoder", "load_denoiser ['context']", "decode_audio", "decode_video"]
    assert [e.name for e in events if isinstance(e, protocol.Stage)] == list(protocol.stages_of("quality"))
    assert [e.step for e in events if isinstance(e, protocol.Step)] == [1, 2]
    assert result.frames == 9 and (tmp_path / jobdir.VIDEO_FILE).is_file()


def test_a_fast_job_denoises_at_half_size_upsamples_then_refines_at_full_size(tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setitem(families.FAMILIES, "fake", lambda model_dir, weight_cache: Fake(calls))
    job = fake_job(tmp_path, num_frames=9, mode="fast", steps=None, guidance_scale=None)
    events: list[protocol.Event] = []

    result = pipeline.generate(job, events.append, Cancellation(), started=0.0)

    assert [e.name for e in events if isinstance(e, protocol.Stage)] == list(protocol.STAGES)
    assert "upsample" in calls
    steps = [(e.stage, e.stage_number, e.stages, e.step, e.total) for e in events if isinstance(e, protocol.Step)]
    assert steps == [("denoise", 1, 2, n, 8) for n in range(1, 9)] + [("refine", 2, 2, n, 3) for n in range(1, 4)]
    assert (result.width, result.height) == (job.request.width, job.request.height)
    assert read_mp4(tmp_path / jobdir.VIDEO_FILE).width == job.request.width  # 2x stage 1's frames


def test_a_family_refuses_a_mode_it_does_not_have(tmp_path, monkeypatch):
    monkeypatch.setitem(families.FAMILIES, "fake", lambda model_dir, weight_cache: Fake([]))
    job = fake_job(tmp_path)
    job = Job(job.directory, msgspec.structs.replace(job.file, image_file="image.png"), job.spec, job.model_dir)
    with pytest.raises(JobError, match="does not generate video from an image"):
        pipeline.generate(job, lambda event: None, Cancellation(), started=0.0)


def test_fast_modes_stages_take_diffusers_distilled_sigma_lists_as_the_contract_counts_them():
    from gpu_runner.families.ltx2 import FAST_SIGMAS

    fast = Request(prompt="a red ball", mode="fast", width=320, height=192, num_frames=9)
    assert list(FAST_SIGMAS) == [stage.name for stage in denoise_stages(fast)]
    assert tuple(len(sigmas) for sigmas in FAST_SIGMAS.values()) == FAST_STEPS


def test_a_family_with_no_preview_colours_learns_them_from_its_decode_into_the_data_dir(tmp_path, monkeypatch):
    monkeypatch.setitem(families.FAMILIES, "fake", lambda model_dir, weight_cache: Fake([]))
    job = fake_job(tmp_path, num_frames=9, steps=2)
    learning = msgspec.structs.replace(job.file, preview_colours_dir=str(tmp_path / "colours"))
    job = Job(job.directory, learning, job.spec, job.model_dir)

    pipeline.generate(job, lambda event: None, Cancellation(), started=0.0)

    learnt = pipeline.colour_store_for(job, Fake([])).load()
    assert learnt is not None and learnt.model == job.spec.id
    # the fake's frames are mid-grey whatever its (all-zero) latents: the bias carries it all
    assert torch.allclose(learnt.rgb(torch.zeros(1, 1)), torch.full((1, 3), 128.0), atol=0.1)


def test_admission_counts_the_jobs_loras_and_a_fast_jobs_distilled_lora_from_the_model_not_its_directory(tmp_path):
    """The distilled LoRA comes from the family's source (what will load it), so a model with no directory on disk
    (random weights in a bench) is admitted too, as it was not when admission read the directory again."""
    from gpu_runner.families.ltx2 import Ltx2

    own, distilled = tmp_path / "own.safetensors", tmp_path / "distilled.safetensors"
    own.write_bytes(b"x" * 3 * 2**20)
    distilled.write_bytes(b"x" * 2**20)
    entries = [SimpleNamespace(path=str(own), scale=0.5), SimpleNamespace(path=str(tmp_path / "off"), scale=0.0)]

    def job(mode: str) -> SimpleNamespace:
        return SimpleNamespace(file=SimpleNamespace(loras=entries), request=SimpleNamespace(mode=mode))

    with_lora = Ltx2(SimpleNamespace(fast_lora=lambda: distilled))
    assert with_lora.lora_files(job("fast")) == [own, distilled]
    assert with_lora.lora_files(job("quality")) == [own]
    assert Ltx2(SimpleNamespace()).lora_files(job("fast")) == [own], "a source with no distilled LoRA adds none"
    assert lora.files_gib(with_lora.lora_files(job("fast"))) == pytest.approx(4 / 1024)


@pytest.mark.parametrize(("frames", "token_frames"), [(9, 33), (121, 161), (481, 601)])
def test_ltx_2_5s_fast_mode_plans_for_its_padded_canvas_and_keyframe_slots(frames, token_frames):
    """9 frames pad to a 24-frame segment (4 latent frames) with 1 slot; 121 fill 5 segments with 5 slots."""
    assert cost.slot_canvas_frames(frames) == token_frames


def test_the_planned_slot_canvas_is_the_one_diffusers_lays_out_for_every_clip_length():
    from diffusers.pipelines.ltx2.dfr_layout import resolve_canvas

    for frames in range(9, 1001, 8):
        canvas, _, positions = resolve_canvas(frames)
        latent_frames = (canvas - 1) // 8 + 1 + len(positions)
        assert cost.slot_canvas_frames(frames) == (latent_frames - 1) * 8 + 1, frames
