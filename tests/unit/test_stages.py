"""Stage bookkeeping: announcements, memory accounting, cancellation and out-of-memory messages."""

from __future__ import annotations

import signal
import time

import pytest
import torch

from gpu_runner import protocol
from gpu_runner.cancel import Cancellation, Cancelled
from gpu_runner.job import JobError, load_job
from gpu_runner.pipeline import Stages, step_reporter, tile_reporter
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


def test_the_step_callback_reports_then_stops_a_cancelled_run():
    events = []
    cancellation = Cancellation()
    on_step_end = step_reporter(events.append, cancellation, total=4)

    assert on_step_end(None, 0, None, {}) == {}
    cancellation.signum = signal.SIGTERM
    with pytest.raises(Cancelled):
        on_step_end(None, 1, None, {})

    assert [(event.step, event.total) for event in events] == [(1, 4), (2, 4)]
    assert events[0].eta_s == pytest.approx(3 * events[0].elapsed_s, abs=1e-3)


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
