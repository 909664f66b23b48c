"""Stage bookkeeping: announcements, memory accounting, cancellation and out-of-memory messages."""

from __future__ import annotations

import signal
import time
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from gpu_runner import protocol
from gpu_runner.cancel import Cancellation, Cancelled
from gpu_runner.job import JobError, load_job
from gpu_runner.pipeline import Stages, step_reporter, tile_reporter
from gpu_runner.preview import UPSCALE, PreviewWriter, clean_estimate
from tests.runner_fixtures import write_job


@pytest.fixture
def job(tmp_path, demo_model_dir):
    write_job(tmp_path / "job", demo_model_dir)
    return load_job(tmp_path / "job")


def test_a_stage_is_announced_timed_and_accounted(job):
    events = []
    stages = Stages(events.append, Cancellation(), torch.device("cpu"), job, time.monotonic())

    with stages("decode_video"):
        pass

    assert [type(event) for event in events] == [protocol.Stage, protocol.Memory]
    assert events[0].name == events[1].stage == "decode_video"
    assert "RSS" in events[1].note
    assert set(stages.timings) == {"decode_video"}


def test_running_out_of_memory_names_the_stage_and_the_size(job):
    stages = Stages(lambda event: None, Cancellation(), torch.device("cpu"), job, time.monotonic())

    with pytest.raises(JobError) as raised, stages("denoise"):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    assert raised.value.code == "out_of_memory"
    assert "denoise" in raised.value.message and "256x160" in raised.value.message
    assert "25 frames" in raised.value.message and "Try" in raised.value.message


def test_a_cancelled_job_enters_no_further_stage(job):
    events = []
    cancellation = Cancellation()
    cancellation.signum = signal.SIGTERM
    stages = Stages(events.append, cancellation, torch.device("cpu"), job, time.monotonic())

    with pytest.raises(Cancelled), stages("mux"):
        pytest.fail("the stage body must not run")

    assert events == []


def fake_pipe(total: int):
    return SimpleNamespace(scheduler=SimpleNamespace(sigmas=torch.linspace(1, 0, total + 1)))


def test_the_step_callback_reports_then_stops_a_cancelled_run(tmp_path):
    events = []
    cancellation = Cancellation()
    previews = PreviewWriter(lambda name: tmp_path / name, (2, 3, 4), total_steps=4, previews=4)
    on_step_end = step_reporter(events.append, cancellation, total=4, previews=previews)
    latents = {"latents": torch.randn(1, 2 * 3 * 4, 8)}

    assert on_step_end(fake_pipe(4), 0, None, latents) == {}
    cancellation.signum = signal.SIGTERM
    with pytest.raises(Cancelled):
        on_step_end(fake_pipe(4), 1, None, latents)

    steps = [e for e in events if isinstance(e, protocol.Step)]
    assert [(event.step, event.total) for event in steps] == [(1, 4), (2, 4)]
    assert steps[0].eta_s == pytest.approx(3 * steps[0].elapsed_s, abs=1e-3)


def test_previews_show_the_clean_estimate_of_every_sampled_frame_as_a_jpeg(tmp_path):
    previews = PreviewWriter(lambda name: tmp_path / name, (3, 2, 5), total_steps=4, previews=2)
    sigmas = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])
    clean, noise = torch.randn(1, 3 * 2 * 5, 8), torch.randn(1, 3 * 2 * 5, 8)
    written = []
    for index in range(4):  # exact flow-matching states x_s = (1 - s) x0 + s noise
        s = sigmas[index + 1]
        written.append(previews.after_step(sigmas, index, (1 - s) * clean + s * noise))
    assert [w.step if w else None for w in written] == [None, 2, None, 4]
    image = Image.open(tmp_path / protocol.PREVIEW_FILE)
    assert image.format == "JPEG" and image.size == (3 * 5 * UPSCALE, 2 * UPSCALE)
    assert not list(tmp_path.glob("*.partial"))


def test_the_clean_estimate_of_an_euler_step_is_the_sample_it_aims_at():
    clean, noise = torch.randn(4, 8), torch.randn(4, 8)
    before, after = 0.2 * clean + 0.8 * noise, 0.7 * clean + 0.3 * noise  # noise levels 0.8, then 0.3
    assert torch.allclose(clean_estimate(before, after, 0.8, 0.3), clean, atol=1e-5)


def test_the_tile_callback_reports_then_stops_a_cancelled_decode():
    events = []
    cancellation = Cancellation()
    on_tile = tile_reporter(events.append, cancellation)

    on_tile(1, 3)
    cancellation.signum = signal.SIGTERM
    with pytest.raises(Cancelled):
        on_tile(2, 3)

    assert events == [protocol.Tile(done=1, total=3), protocol.Tile(done=2, total=3)]


@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_is_recorded_and_maps_to_its_exit_code(signum, exit_code):
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    cancellation = Cancellation()
    try:
        cancellation.install()
        cancellation.check()  # nothing yet
        signal.raise_signal(signum)
        with pytest.raises(Cancelled) as raised:
            cancellation.check()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)

    assert raised.value.exit_code == exit_code
