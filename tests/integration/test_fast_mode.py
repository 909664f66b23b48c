"""Fast mode through the real runner code: two stages, an upsample between, and exactly one transformer pass a
step (no guidance means all six scales off: left at diffusers' defaults, the audio ones would add passes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from contract import jobdir, protocol
from contract.request import FAST_STEPS
from gpu_runner import pipeline
from gpu_runner.cancel import Cancellation
from gpu_runner.families.ltx2 import Ltx2
from gpu_runner.families.ltx2.loading import DiffusersDirectory
from gpu_runner.job import load_job
from tests.runner_fixtures import read_mp4, write_job


class Counted(DiffusersDirectory):
    """The model directory, with every transformer forward counted by the rows of its batch."""

    def __init__(self, model_dir: Path) -> None:
        super().__init__(model_dir)
        self.rows: list[int] = []  # batch size of each forward, in order
        self.upsampled: list[tuple[int, ...]] = []  # shapes into and out of the upsampler

    def load_denoiser(self, *args, **kwargs):
        pipe = super().load_denoiser(*args, **kwargs)
        forward = pipe.transformer.forward

        def counted(*f_args, **f_kwargs):
            self.rows.append(f_kwargs["hidden_states"].shape[0])
            return forward(*f_args, **f_kwargs)

        pipe.transformer.forward = counted
        return pipe

    def load_upsampler(self, dtype):
        upsampler = super().load_upsampler(dtype)
        forward = upsampler.forward

        def recorded(latents):
            upsampled = forward(latents)
            self.upsampled += [tuple(latents.shape), tuple(upsampled.shape)]
            return upsampled

        upsampler.forward = recorded
        return upsampler


def run_fast(model_dir: Path, job_dir: Path, **request) -> tuple[Counted, list[protocol.Event], protocol.Result]:
    write_job(job_dir, model_dir, mode="fast", num_frames=17, **request)
    job = load_job(job_dir)
    source = Counted(job.model_dir)
    events: list[protocol.Event] = []
    result = pipeline.generate(job, events.append, Cancellation(), started=0.0, family=Ltx2(source))
    return source, events, result


@pytest.mark.parametrize("model", ["demo", "2.3-distilled"])
def test_a_fast_job_makes_one_unguided_pass_a_step_over_both_stages_and_doubles_the_stage_1_size(
    model, demo_model_dir, version_model_dirs, tmp_path
) -> None:
    model_dir = demo_model_dir if model == "demo" else version_model_dirs[model]
    source, events, result = run_fast(model_dir, tmp_path / "job", width=256, height=192)

    assert source.rows == [1] * sum(FAST_STEPS), "8 + 3 forwards of one row each"
    (frames, height, width) = (3, 192 // 32, 256 // 32)  # the clip's latents: 17 frames, 256x192
    assert source.upsampled[0][-3:] == (frames, height // 2, width // 2)
    assert source.upsampled[1][-3:] == (frames, height, width)
    stages = [e.name for e in events if isinstance(e, protocol.Stage)]
    assert stages == list(protocol.STAGES)
    assert (result.width, result.height) == (256, 192)
    video = read_mp4(tmp_path / "job" / jobdir.VIDEO_FILE)
    assert (video.width, video.height, len(video.frames)) == (256, 192, 17)


def test_a_quality_job_on_the_demo_makes_one_cfg_batch_a_step(demo_model_dir, tmp_path) -> None:
    write_job(tmp_path / "job", demo_model_dir, steps=3, num_frames=9, width=128, height=96)
    job = load_job(tmp_path / "job")
    source = Counted(job.model_dir)
    pipeline.generate(job, lambda event: None, Cancellation(), started=0.0, family=Ltx2(source))
    assert source.rows == [2, 2, 2], "negative and positive rows in one batch, nothing else"


def test_fast_mode_previews_come_from_both_stages(demo_model_dir, tmp_path) -> None:
    _, events, _ = run_fast(demo_model_dir, tmp_path / "job", width=256, height=192)
    stage_of_preview = []
    stage = None
    for event in events:
        if isinstance(event, protocol.Stage):
            stage = event.name
        elif isinstance(event, protocol.Preview):
            stage_of_preview.append(stage)
    assert {"denoise", "refine"} <= set(stage_of_preview)
