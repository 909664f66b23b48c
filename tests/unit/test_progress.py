"""A job's progress struct: what each runner event does to it, its percentage bands, its stored JSON."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import msgspec
import pytest

from app.broker import Broker
from app.config import Settings
from app.journal import Journal
from app.page_feed import ROWS_TOPIC, PageFeed, panel_topic
from app.progress import DENOISE_END, DENOISE_START, JobProgress, decode_progress
from app.store import Store
from app.web import build_templates
from contract import protocol
from contract.request import Request
from tests.runner_fixtures import A_RESULT


def test_progress_moves_forward_through_the_stages_and_steps() -> None:
    progress = JobProgress()
    seen = []
    for event in [
        protocol.Stage(name="load_text_encoder", t=0),
        protocol.Stage(name="denoise", t=1),
        protocol.Step(step=5, total=10, elapsed_s=1, eta_s=1),
        protocol.Step(step=10, total=10, elapsed_s=2, eta_s=0),
        protocol.Stage(name="decode_video", t=3),
        protocol.Stage(name="mux", t=4),
        A_RESULT,
    ]:
        progress = progress.apply(event) or progress
        seen.append(progress.percent)
    assert seen == sorted(seen) and seen[-1] == 100.0
    assert progress.stage == "mux" and (progress.step, progress.total) == (10, 10)


def test_the_stages_before_denoising_share_the_first_band_and_those_after_it_the_last() -> None:
    before = protocol.STAGES[: protocol.STAGES.index("denoise")]
    after = protocol.STAGES[protocol.STAGES.index("refine") + 1 :]
    start = [JobProgress().apply(protocol.Stage(name=name, t=0)).percent for name in before]
    end = [JobProgress().apply(protocol.Stage(name=name, t=0)).percent for name in after]
    assert start == sorted(start) and start[0] > 0 and start[-1] < DENOISE_START
    assert end == sorted(end) and end[0] == DENOISE_END and end[-1] < 100
    for denoising in protocol.DENOISING:
        entering = JobProgress(percent=30.0).apply(protocol.Stage(name=denoising, t=0))
        assert entering.percent == 30.0, "denoising's own steps move the percentage"


def test_fast_mode_stages_share_the_middle_band_and_say_which_stage_the_steps_are_in() -> None:
    progress = JobProgress()
    seen = []
    for stage, number, total in (("denoise", 1, 8), ("refine", 2, 3)):
        for step in range(1, total + 1):
            event = protocol.Step(
                step=step, total=total, elapsed_s=1, eta_s=1, stage=stage, stage_number=number, stages=2
            )
            progress = progress.apply(event)
            seen.append(progress.percent)
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    assert seen[7] == (DENOISE_START + DENOISE_END) / 2 and seen[-1] == DENOISE_END
    assert (progress.denoise_stage, progress.denoise_stages, progress.step, progress.total) == (2, 2, 3, 3)


@pytest.mark.parametrize(("step", "percent"), [(0, DENOISE_START), (15, 47.5), (30, DENOISE_END)])
def test_denoising_steps_fill_the_middle_band(step: int, percent: float) -> None:
    progress = JobProgress().apply(protocol.Step(step=step, total=30, elapsed_s=1, eta_s=12.34))
    assert progress.percent == percent and (progress.step, progress.total, progress.eta_s) == (step, 30, 12.3)


def test_previews_tiles_and_the_result_each_change_their_part_only() -> None:
    running = JobProgress(stage="decode_video", percent=93.3, eta_s=4.0)
    changed = msgspec.structs.replace
    assert running.apply(protocol.Preview(file="preview.jpg", step=12)) == changed(running, preview_step=12)
    assert running.apply(protocol.Tile(done=2, total=6)) == changed(running, tiles_done=2, tiles_total=6)
    assert running.apply(A_RESULT) == changed(running, percent=100.0, eta_s=0.0)


def test_a_preview_with_no_picture_keeps_its_note_until_a_picture_comes() -> None:
    no_colours = protocol.Preview(file=None, step=2, note="No colour preview yet")
    told = JobProgress().apply(no_colours)
    assert (told.preview_step, told.preview_note) == (0, "No colour preview yet"), "no picture to point at"
    shown = told.apply(protocol.Preview(file="preview.jpg", step=4))
    assert (shown.preview_step, shown.preview_note) == (4, None)


@pytest.mark.parametrize(
    "event",
    [protocol.Memory(stage="mux", device="cpu"), protocol.Error(code="internal", message="bad tensor")],
)
def test_memory_and_error_events_leave_progress_unchanged(event: protocol.Event) -> None:
    assert JobProgress(stage="mux", percent=95.0).apply(event) is None


def test_the_stage_note_lasts_while_its_stage_does_and_an_eta_stays_unknown_until_known() -> None:
    note = "The first step compiles GPU kernels for this clip size."
    progress = JobProgress()
    assert progress.stage_note is None and progress.eta_s is None
    progress = progress.apply(protocol.Stage(name="denoise", t=20, note=note))
    assert progress.stage_note == note
    progress = progress.apply(protocol.Step(step=1, total=30, elapsed_s=35, eta_s=None))
    assert progress.eta_s is None and progress.stage_note == note
    progress = progress.apply(protocol.Step(step=2, total=30, elapsed_s=36, eta_s=28.04))
    assert progress.eta_s == 28.0 and progress.stage_note == note
    progress = progress.apply(protocol.Stage(name="free_transformer", t=60))
    assert progress.stage_note is None, "a stage's note goes with it"


def test_a_row_stored_before_the_struct_still_decodes_and_encodes_with_its_keys() -> None:
    # As the portal wrote `jobs.progress` with json.dumps of a dict.
    old = {
        "stage": "denoise",
        "stage_note": None,
        "step": 7,
        "total": 30,
        "percent": 24.8,
        "eta_s": 11.5,
        "tiles_done": 0,
        "tiles_total": 0,
        "preview_step": 6,
    }
    progress = decode_progress(json.dumps(old))
    assert (progress.stage, progress.step, progress.percent, progress.preview_step) == ("denoise", 7, 24.8, 6)
    # the keys it had, and those added since at their defaults (one denoising stage, as every job had then)
    added = {
        "denoise_stage": 1,
        "denoise_stages": 1,
        "preview_note": None,
        "tokens_done": 0,
        "tokens_total": 0,
        "weights_resident": False,
        "weights_loaded": False,
    }
    assert json.loads(msgspec.json.encode(progress)) == {**old, **added}
    assert decode_progress("{}") == JobProgress(), "the column's default"


@pytest.mark.parametrize(("percent", "shown"), [(0.0, 0), (2.4, 2), (2.5, 3), (99.5, 100)])
def test_a_job_list_shows_whole_percent_rounded_half_up(percent: float, shown: int) -> None:
    assert JobProgress(percent=percent).whole_percent == shown


def test_progress_reaches_a_page_only_while_one_shows_the_job(tmp_path: Path) -> None:
    """With no page open a step is stored and streamed to the API; with a job page and a job list open
    it is rendered and pushed to both, even when the row looks the same as at the last unwatched step."""
    store, broker, settings = Store(tmp_path / "portal.db"), Broker(), Settings(data_dir=tmp_path)
    pages = PageFeed(broker, build_templates(settings), settings)
    journal = Journal(store, broker, pages, slots=("cpu0",))
    step = protocol.Step(step=1, total=10, elapsed_s=1, eta_s=9)

    async def scenario() -> None:
        await store.call(store.create_job, "j", Request(prompt="p"), {"type": "queued"}, 10)
        with broker.subscribe(ROWS_TOPIC) as rows:
            progress = await journal.runner_event("j", step, JobProgress())
            assert "job-" in (await rows.receive()).message.encode().decode()
        with broker.subscribe("j") as api:
            progress = await journal.runner_event("j", step, progress)
            assert (await api.receive())["type"] == "step"
            assert not pages.watching("j")
        with broker.subscribe(ROWS_TOPIC) as rows, broker.subscribe(panel_topic("j")) as panel:
            assert pages.watching("j")
            await journal.runner_event("j", step, progress)
            assert "job-" in (await rows.receive()).message.encode().decode()
            assert (await panel.receive()).event_id == 4

    async def main() -> None:
        with anyio.fail_after(5):  # a push that never comes fails instead of hanging
            await scenario()

    try:
        anyio.run(main)
    finally:
        store.close()
