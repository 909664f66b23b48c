"""Stage bookkeeping: announcements, memory accounting, cancellation and out-of-memory messages."""

from __future__ import annotations

import errno
import signal
import threading
import time
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from contract import jobdir, protocol
from contract.request import DenoiseStage
from gpu_runner.cancel import Cancellation, Cancelled
from gpu_runner.compiling import compiles
from gpu_runner.families.ltx2.preview import GAP, PreviewWriter, clean_estimate
from gpu_runner.job import JobError, load_job
from gpu_runner.pipeline import (
    COMPILE_NOTE,
    PreviewThread,
    StageReporter,
    Stages,
    denoise_note,
    seconds_left,
    step_reporter,
    tile_reporter,
)
from gpu_runner.preview_colours import ColourMap
from tests.runner_fixtures import write_job


def grey(channels: int) -> ColourMap:
    """A colour map that sums the channels into a grey around mid-level."""
    return ColourMap(torch.cat([torch.full((channels, 3), 10.0), torch.full((1, 3), 128.0)]))


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


@pytest.mark.parametrize(
    ("device", "cached", "note"), [("cuda", True, COMPILE_NOTE), ("cuda", False, None), ("cpu", True, None)]
)
def test_the_denoise_stage_says_its_first_step_compiles_only_when_blocks_compile(job, tmp_path, device, cached, note):
    events = []
    stages = Stages(events.append, Cancellation(), torch.device("cpu"), job, time.monotonic())
    compile_cache = tmp_path / "compiled" if cached else None

    with stages("denoise", note=denoise_note(compiles(torch.device(device), compile_cache))):
        pass

    assert events[0] == protocol.Stage(name="denoise", t=events[0].t, note=note)
    assert protocol.decode(protocol.encode(events[0])) == events[0], "the note travels on the protocol line"


def test_running_out_of_memory_names_the_stage_and_the_size(job):
    stages = Stages(lambda event: None, Cancellation(), torch.device("cpu"), job, time.monotonic())

    with pytest.raises(JobError) as raised, stages("denoise"):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    assert raised.value.code == "out_of_memory"
    assert "denoise" in raised.value.message and "320x192" in raised.value.message
    assert "25 frames" in raised.value.message and "Try" in raised.value.message


def test_a_preview_that_finds_the_disk_full_fails_the_job_as_disk_full_leaving_no_partial_preview(job, small_disk):
    disk = small_disk(4)
    stages = Stages(lambda event: None, Cancellation(), torch.device("cpu"), job, time.monotonic())
    previews = PreviewWriter(lambda name: disk.root / name, (3, 16, 16), total_steps=2, colours=grey(128), previews=2)
    sigmas = torch.tensor([1.0, 0.5, 0.0])
    disk.fill()

    # finished beside the denoiser, as in a job: the failure still surfaces inside the stage
    with pytest.raises(JobError) as raised, stages("denoise"), PreviewThread(lambda event: None) as thread:
        for index in range(2):
            work = previews.after_step(sigmas, index, torch.randn(1, 3 * 16 * 16, 128))
            if work is not None:
                thread.submit(work)

    assert raised.value.code == "disk_full"
    message = raised.value.message
    assert message.startswith("The disk ran out of space during denoise")
    assert "kept no video" in message and "AVP_KEEP_DAYS or AVP_KEEP_GB" in message
    assert sorted(path.name for path in disk.root.iterdir()) == [".filler-0"]


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
    previews = PreviewWriter(lambda name: tmp_path / name, (2, 3, 4), total_steps=4, colours=grey(8), previews=4)
    on_step_end = step_reporter(events.append, cancellation, one_stage(4), previews=previews)
    latents = {"latents": torch.randn(1, 2 * 3 * 4, 8)}

    assert on_step_end(fake_pipe(4), 0, None, latents) == {}
    cancellation.signum = signal.SIGTERM
    with pytest.raises(Cancelled):
        on_step_end(fake_pipe(4), 1, None, latents)

    steps = [e for e in events if isinstance(e, protocol.Step)]
    assert [(event.step, event.total) for event in steps] == [(1, 4), (2, 4)]
    assert steps[0].eta_s == pytest.approx(3 * steps[0].elapsed_s, abs=1e-3)


def one_stage(steps: int, first_step_compiles: bool = False) -> StageReporter:
    return StageReporter(1, [DenoiseStage("denoise", 64, 64, steps, 3.0)], first_step_compiles)


def steps_taking(seconds: list[float], first_step_compiles: bool, stage: StageReporter | None = None) -> list:
    """The step events of a run whose steps take these times, on a fake clock."""
    clock = [1000.0]
    events = []
    no_previews = SimpleNamespace(after_step=lambda *_: None)
    stage = stage or one_stage(len(seconds), first_step_compiles)
    on_step_end = step_reporter(events.append, Cancellation(), stage, no_previews, clock=lambda: clock[0])
    for index, took in enumerate(seconds):
        clock[0] += took
        on_step_end(fake_pipe(len(seconds)), index, None, {"latents": None})
    return events


def test_a_compiling_first_step_leaves_the_eta_unknown_then_out_of_the_estimate():
    steps = steps_taking([35.0] + [1.0] * 29, first_step_compiles=True)

    assert steps[0].eta_s is None and steps[0].elapsed_s == 35.0
    # From step 2 on: the later steps' mean (1 s) times the steps left, not 36 s / 2 x 28 = 504 s.
    assert [s.eta_s for s in steps[1:]] == [pytest.approx(30 - n) for n in range(2, 31)]
    assert steps[1].elapsed_s == 36.0 and steps[-1].eta_s == 0


def test_an_uncompiled_warm_up_step_stands_for_the_rest_only_until_the_second_step_ends():
    steps = steps_taking([3.7] + [1.1] * 9, first_step_compiles=False)

    assert steps[0].eta_s == pytest.approx(3.7 * 9)
    assert [s.eta_s for s in steps[1:]] == [pytest.approx(1.1 * (10 - n)) for n in range(2, 11)]


@pytest.mark.parametrize(
    ("step_times", "total", "compiled", "eta"),
    [
        ([30.0, 1.0, 3.0], 5, True, 2.0 * 2),  # the mean of the steps after the first
        ([30.0, 1.0, 3.0], 5, False, 2.0 * 2),
        ([30.0], 5, True, None),
        ([30.0], 5, False, 30.0 * 4),
        ([30.0], 1, True, 0.0),  # a one-step job is done
        ([], 5, False, None),
    ],
)
def test_the_time_left_is_the_later_steps_mean_times_the_steps_left(step_times, total, compiled, eta):
    assert seconds_left(step_times, total, compiled) == (eta if eta is None else pytest.approx(eta))


def test_fast_mode_steps_name_their_stage_and_count_the_refine_in_the_time_left():
    plan = [DenoiseStage("denoise", 160, 96, 8, 1.0), DenoiseStage("refine", 320, 192, 3, 1.0)]
    first = steps_taking([1.0] * 8, False, StageReporter(1, plan, False))
    second = steps_taking([4.0] * 3, False, StageReporter(2, plan, False))

    assert {(s.stage, s.stage_number, s.stages, s.total) for s in first} == {("denoise", 1, 2, 8)}
    assert {(s.stage, s.stage_number, s.stages, s.total) for s in second} == {("refine", 2, 2, 3)}
    # the refine's 3 steps at 4x the tokens count as 12 of stage 1's steps
    assert first[1].eta_s == pytest.approx(6 + 12) and first[-1].eta_s == pytest.approx(12)
    assert [s.eta_s for s in second] == [pytest.approx(8.0), pytest.approx(4.0), 0]


def test_previews_show_the_clean_estimate_of_every_sampled_frame_as_a_jpeg(tmp_path):
    previews = PreviewWriter(lambda name: tmp_path / name, (3, 2, 5), total_steps=4, colours=grey(8), previews=2)
    sigmas = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])
    clean, noise = torch.randn(1, 3 * 2 * 5, 8), torch.randn(1, 3 * 2 * 5, 8)
    written = []
    for index in range(4):  # exact flow-matching states x_s = (1 - s) x0 + s noise
        s = sigmas[index + 1]
        work = previews.after_step(sigmas, index, (1 - s) * clean + s * noise)
        written.append(None if work is None else work())
    assert [w.step if w else None for w in written] == [None, 2, None, 4]
    image = Image.open(tmp_path / jobdir.PREVIEW_FILE)
    assert image.format == "JPEG" and image.size == (3 * 5 * previews.upscale + 2 * GAP, 2 * previews.upscale)
    assert not list(tmp_path.glob("*.partial"))


def test_the_preview_thread_finishes_previews_off_the_caller_one_at_a_time_and_in_order():
    events, finished_on = [], []
    release = threading.Event()

    def work(step: int, wait: bool = False):
        def finish() -> protocol.Preview:
            if wait:
                assert release.wait(10)
            finished_on.append(threading.current_thread().name)
            return protocol.Preview(file=jobdir.PREVIEW_FILE, step=step)

        return finish

    with PreviewThread(events.append) as thread:
        thread.submit(work(2, wait=True))
        assert events == [], "the caller does not wait for a preview it hands over"
        release.set()
        thread.submit(work(4))  # waits for step 2's preview first
        assert [e.step for e in events] == [2]
    assert [e.step for e in events] == [2, 4], "the stage ends only once its last preview is sent"
    assert all(name.startswith("preview") for name in finished_on)


def test_a_failed_preview_raises_at_the_next_one_and_not_over_a_cancel():
    def failing():
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError), PreviewThread(lambda event: None) as thread:
        thread.submit(failing)
        thread.submit(lambda: protocol.Preview(file=None, step=2))

    with pytest.raises(Cancelled), PreviewThread(lambda event: None) as thread:
        thread.submit(failing)
        raise Cancelled(signal.SIGTERM)


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
