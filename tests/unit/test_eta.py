"""Queue places and times: the forecast over the executor's slots, a running job's time left, what the API and
pages show; the store's queue order, pause and idempotency keys; the Prefer header."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from app import store as store_module
from app.places import Place, places
from app.progress import JobProgress
from app.routes.api import wait_preference
from app.schemas import InvalidRequest
from app.store import JobRow, JobUpdate, QueueSnapshot, Store
from contract import cost
from contract.request import Request
from tests.job_history import job_row

# Demo runs this portal made on a 2-core CPU (bench/eta_bench.py --record): 3 learning runs, then 5 of other
# sizes, frames and steps queued at once, oldest first.
RECORDED = Path(__file__).resolve().parents[1] / "data" / "demo_cpu_runs.json"


class Recorded(msgspec.Struct):
    model: cost.ModelSize
    runs: list[cost.PastRun]


ESTIMATE = cost.Estimate(
    duration_s=30.0, denoise_s=20.0, decode_s=6.0, peak_gib=1.0, disk_bytes=1, device="cpu", past_runs=3
)


def job(job_id: str, status: str = "queued", *, started_at: float | None = None, **progress: object) -> JobRow:
    return job_row(
        job_id,
        status,
        seq=0,
        request=Request(prompt=job_id),
        progress=JobProgress(**progress),
        attempts=0,
        started_at=started_at,
        estimate=ESTIMATE,
    )


def test_recorded_runs_are_predicted_from_the_runs_before_them_with_a_median_error_within_30_percent() -> None:
    """As the portal predicts a queued job: from the model's runs that had ended (newest first), for sizes,
    frames and steps none of them had. The misses are the fixed part (spawning, loading), which varies run to
    run by seconds on a shared CPU."""
    recorded = msgspec.json.decode(RECORDED.read_bytes(), type=Recorded)
    errors = []
    for n in range(3, len(recorded.runs)):
        run, before = recorded.runs[n], recorded.runs[:n][::-1]
        guess = cost.estimate(recorded.model, "demo", run.request, device="cpu", precision="bf16", runs=before)
        assert guess.past_runs == n
        errors.append(abs(guess.duration_s - run.held_s) / run.held_s)
    assert len(errors) == 5 and sorted(errors)[2] <= 0.30, errors  # the median
    assert max(errors) <= 0.45, errors


def free_in(*seconds: float | None) -> list[cost.SlotTime]:
    """Slots of pace 1 that free in these many seconds."""
    return [cost.SlotTime(s) for s in seconds]


def test_one_slot_runs_the_queue_one_after_another_from_when_the_running_job_ends() -> None:
    assert cost.forecast_queue(free_in(10.0), [5.0, 7.0]) == [(10.0, 15.0), (15.0, 22.0)]
    assert cost.forecast_queue(free_in(0.0), [5.0, 7.0]) == [(0.0, 5.0), (5.0, 12.0)], "an idle worker starts now"


def test_two_slots_start_each_job_on_the_slot_that_frees_first() -> None:
    assert cost.forecast_queue(free_in(10.0, 0.0), [5.0, 7.0, 1.0]) == [(0.0, 5.0), (5.0, 12.0), (10.0, 11.0)]


def test_a_time_nobody_knows_makes_the_times_after_it_on_that_slot_unknown() -> None:
    assert cost.forecast_queue(free_in(None), [5.0]) == [(None, None)]
    assert cost.forecast_queue(free_in(2.0), [None, 4.0]) == [(2.0, None), (None, None)]
    assert cost.forecast_queue(free_in(2.0, 0.0), [None, 4.0]) == [(0.0, None), (2.0, 6.0)], "the other slot goes on"


def test_a_job_takes_the_pace_of_the_slot_that_frees_first_and_of_two_free_ones_the_faster() -> None:
    card, cpu = cost.SlotTime(10.0, pace=1.0), cost.SlotTime(0.0, pace=20.0)
    # the CPU slot is free now: the first job starts there at once and takes 20 times its estimate; the second
    # waits for the card
    assert cost.forecast_queue([card, cpu], [5.0, 5.0]) == [(0.0, 100.0), (10.0, 15.0)]
    both_free = [cost.SlotTime(0.0, pace=20.0), cost.SlotTime(0.0, pace=0.5)]
    assert cost.forecast_queue(both_free, [8.0, 8.0]) == [(0.0, 4.0), (0.0, 160.0)]


def test_a_slots_pace_is_the_median_of_its_newest_runs_held_over_estimated() -> None:
    assert cost.pace([]) == 1.0, "as estimated before it has run anything"
    assert cost.pace([2.0, 3.0, 40.0]) == 3.0
    assert cost.pace([1.0] * cost.PACE_RUNS + [50.0] * 5) == 1.0, "its newest runs only"
    slow = cost.paced(ESTIMATE, 2.0)
    assert (slow.duration_s, slow.denoise_s, slow.decode_s, slow.peak_gib) == (60.0, 40.0, 12.0, ESTIMATE.peak_gib)


def test_the_store_reads_each_slots_pace_from_its_succeeded_jobs(tmp_path: Path, monkeypatch) -> None:
    store = Store(tmp_path / "portal.db")
    clock = [1_000_000.0]
    monkeypatch.setattr(store_module.time, "time", lambda: clock[0])
    try:
        for job_id, slot, held in (("a", "cpu0", 600.0), ("b", "gpu0", 30.0), ("c", "gpu0", 45.0), ("d", None, 9.0)):
            store.create_job(job_id, Request(prompt=job_id), {"type": "queued"}, 10, ESTIMATE)
            if slot is not None:
                store.record(job_id, {"type": "running"}, JobUpdate(status="running", start_attempt=True, slot=slot))
            clock[0] += held
            store.record(job_id, {"type": "succeeded"}, JobUpdate(status="succeeded"))
        assert store.slot_paces() == {"cpu0": 20.0, "gpu0": 1.25}, "ESTIMATE says 30 s"
        assert store.queue_snapshot().slot_paces == store.slot_paces()
    finally:
        store.close()


def test_a_running_job_has_its_steps_left_and_the_decode_while_it_denoises_else_what_its_estimate_leaves() -> None:
    assert cost.seconds_left(ESTIMATE, elapsed_s=12.0, denoise_left_s=4.0) == 10.0
    assert cost.seconds_left(ESTIMATE, elapsed_s=12.0, denoise_left_s=None) == 18.0
    assert cost.seconds_left(ESTIMATE, elapsed_s=45.0, denoise_left_s=None) == 0.0, "late: any moment now"
    older = msgspec.structs.replace(ESTIMATE, decode_s=None)  # an estimate stored before decode_s was kept
    assert cost.seconds_left(older, elapsed_s=12.0, denoise_left_s=4.0) == 18.0
    assert cost.seconds_left(None, elapsed_s=12.0, denoise_left_s=4.0) == 4.0
    assert cost.seconds_left(None, elapsed_s=12.0, denoise_left_s=None) is None


def test_places_count_from_the_running_jobs_progress_and_a_paused_queue_has_positions_but_no_times() -> None:
    now = 1000.0
    running = job("r", "running", started_at=now - 12.0, stage="denoise", eta_s=4.0)
    snapshot = QueueSnapshot(paused=False, running=[running], queued=[job("a"), job("b")])
    found = places(snapshot, slots=("cpu0",), now=now)
    assert found["r"] == Place(position=None, starts_at=None, finishes_at=now + 10.0)
    assert found["a"] == Place(position=1, starts_at=now + 10.0, finishes_at=now + 40.0)
    assert (found["b"].position, found["b"].eta_start_s(now), found["b"].eta_finish_s(now)) == (2, 40.0, 70.0)
    assert found["b"].eta_start_s(now + 50.0) == 0.0, "an overdue start is now, never in the past"

    decoding = job("r", "running", started_at=now - 12.0, stage="decode_video", eta_s=0.0)
    by_estimate = places(QueueSnapshot(False, [decoding], []), ("cpu0",), now)
    assert by_estimate["r"].finishes_at == now + 18.0, "by the estimate"

    paused = places(msgspec.structs.replace(snapshot, paused=True), slots=("cpu0",), now=now)
    assert [(paused[i].position, paused[i].starts_at, paused[i].finishes_at) for i in "ab"] == [
        (1, None, None),
        (2, None, None),
    ]
    assert paused["r"].finishes_at == now + 10.0, "what runs goes on"


def test_places_lay_the_queue_on_the_slot_each_job_will_likely_take_at_that_slots_pace() -> None:
    now = 1000.0
    denoising = job("r", "running", started_at=now - 12.0, stage="denoise", eta_s=4.0)
    running = msgspec.structs.replace(denoising, slot="gpu0")
    paces = {"gpu0": 1.0, "cpu0": 20.0}  # the CPU slot's jobs took 20 times their (the card's) estimates
    snapshot = QueueSnapshot(False, [running], [job("a"), job("b")], slot_paces=paces)
    found = places(snapshot, slots=("gpu0", "cpu0"), now=now)
    assert found["a"] == Place(position=1, starts_at=now, finishes_at=now + 600.0), "the free CPU slot takes it"
    assert found["b"] == Place(position=2, starts_at=now + 10.0, finishes_at=now + 40.0), "the card, once r ends"
    alike = places(msgspec.structs.replace(snapshot, slot_paces={}), slots=("gpu0", "cpu0"), now=now)
    assert alike["a"].finishes_at == now + 30.0, "slots that have run nothing are taken at their estimates"

    starting = msgspec.structs.replace(running, slot="cpu0", progress=JobProgress(stage="load"))
    slow_start = places(QueueSnapshot(False, [starting], [], slot_paces=paces), ("gpu0", "cpu0"), now)
    assert slow_start["r"].finishes_at == now + 600.0 - 12.0, "a running job's estimate at its slot's pace"


def test_the_store_orders_the_queue_by_moves_to_the_front_then_submission_and_keeps_the_pause(tmp_path: Path) -> None:
    path = tmp_path / "portal.db"
    store = Store(path)
    for job_id in "abcd":
        store.create_job(job_id, Request(prompt=job_id), {"type": "queued"}, max_queued=10)
    assert store.prioritize("c") and store.prioritize("d") and store.prioritize("c")
    assert [j.id for j in store.queue_snapshot().queued] == ["c", "d", "a", "b"]
    assert store.next_queued() == "c"
    assert not store.prioritize("nope")
    store.set_paused(True)
    store.close()

    again = Store(path)
    try:
        snapshot = again.queue_snapshot()
        assert snapshot.paused and [j.id for j in snapshot.queued] == ["c", "d", "a", "b"]
        again.set_paused(False)
        assert not again.paused()
    finally:
        again.close()


def test_an_idempotency_key_is_kept_a_day_with_its_job_and_forgotten_after(tmp_path: Path, monkeypatch) -> None:
    store = Store(tmp_path / "portal.db")
    clock = [1_000_000.0]
    monkeypatch.setattr(store_module.time, "time", lambda: clock[0])
    try:
        store.create_job("a", Request(prompt="a"), {"type": "queued"}, 10, idempotency=("key", "hash-a"))
        assert store.idempotent_job("key") == ("a", "hash-a")
        clock[0] += store_module.IDEMPOTENCY_KEEP_S + 1
        assert store.idempotent_job("key") is None, "expired"
        store.create_job("b", Request(prompt="b"), {"type": "queued"}, 10, idempotency=("key", "hash-b"))
        assert store.idempotent_job("key") == ("b", "hash-b"), "the expired key was pruned, the new one kept"
        store.delete_job("b")
        assert store.idempotent_job("key") is None, "a deleted job's key goes with it"
    finally:
        store.close()


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("", None),
        ("wait=5", 5),
        ("respond-async, wait=60", 60),
        ('WAIT="0"', 0),
        ("handling=strict", None),
    ],
)
def test_prefer_wait_is_read_among_other_preferences(header: str | None, seconds: int | None) -> None:
    assert wait_preference(header) == seconds


@pytest.mark.parametrize("header", ["wait=61", "wait=100000", "wait=soon", "wait=-1", "wait=", "wait=1.5", "wait=٣"])
def test_a_wait_past_a_minute_or_not_whole_seconds_is_refused_naming_the_header(header: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        wait_preference(header)
    assert [error.field for error in refused.value.errors] == ["Prefer"]
