"""Where each unfinished job stands: its place in the queue and when it should start and finish.

Built on the one job-cost estimate (contract/cost.py): a queued job's estimate (re-learned from the runs that
ended since it was submitted, `Jobs.reestimate_queued`) is its duration; a running job's time left comes from
its progress (`cost.seconds_left`). `cost.forecast_queue` lays the queued jobs on the executor's slots, side by
side, each job on the slot that frees first; slots differ in pace (`cost.pace`: how long a slot's newest jobs took
against their estimates, `Store.slot_paces`), so a job that a slow slot (a CPU slot beside a card, an older card)
will likely take is forecast at that slot's pace, and so is a running job's time left where it comes from the
estimate. A Ray job's slot names its node, not a `rayN` slot: Ray slots all run at pace 1.
Times are kept as clock times, so a place computed a moment ago still says "in N seconds" correctly.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import msgspec

from app.store import JobRow, QueueSnapshot
from contract import cost, protocol


class Place(msgspec.Struct, frozen=True):
    position: int | None  # in the queue, 1 = next; None when not queued
    starts_at: float | None  # clock time; None when started, paused or unknown
    finishes_at: float | None  # clock time; None when unknown

    def eta_start_s(self, now: float) -> float | None:
        return _from_now(self.starts_at, now)

    def eta_finish_s(self, now: float) -> float | None:
        return _from_now(self.finishes_at, now)


def _from_now(at: float | None, now: float) -> float | None:
    return None if at is None else round(max(at - now, 0.0), 1)


def seconds_left(job: JobRow, now: float, pace: float = 1.0) -> float | None:
    """A running job's time left: the runner's measure while it denoises, else what its estimate (at its slot's
    `pace`) leaves."""
    progress = job.progress
    denoising = progress.stage in protocol.DENOISING and progress.eta_s is not None
    elapsed = now - (job.started_at or now)
    return cost.seconds_left(cost.paced(job.estimate, pace), elapsed, progress.eta_s if denoising else None)


def running_place(job: JobRow, now: float, pace: float = 1.0) -> Place:
    left = seconds_left(job, now, pace)
    return Place(position=None, starts_at=None, finishes_at=None if left is None else now + left)


def places(snapshot: QueueSnapshot, slots: Sequence[str], now: float | None = None) -> dict[str, Place]:
    """Every running and queued job's place, by id, over the executor's `slots` (their names). While the queue is
    paused, a queued job has its position but no times: it starts only when somebody resumes the queue."""
    now = time.time() if now is None else now
    paces = snapshot.slot_paces
    running = {job.id: running_place(job, now, paces.get(job.slot or "", 1.0)) for job in snapshot.running}
    if snapshot.paused:
        forecast = [(None, None)] * len(snapshot.queued)
    else:
        durations = [None if job.estimate is None else job.estimate.duration_s for job in snapshot.queued]
        forecast = cost.forecast_queue(_slot_times(snapshot, running, slots, now), durations)
    queued = {
        job.id: Place(
            position=position,
            starts_at=None if start is None else now + start,
            finishes_at=None if finish is None else now + finish,
        )
        for position, (job, (start, finish)) in enumerate(zip(snapshot.queued, forecast, strict=True), start=1)
    }
    return {**running, **queued}


def _slot_times(
    snapshot: QueueSnapshot, running: dict[str, Place], slots: Sequence[str], now: float
) -> list[cost.SlotTime]:
    """Each slot's time until it frees (its running job's time left; 0 when free) and pace. A running job whose
    slot the executor does not name (a Ray job names its node) holds the first slot no running job names."""
    frees_in: dict[str, float | None] = dict.fromkeys(slots, 0.0)
    elsewhere = []
    for job in snapshot.running:
        finishes_at = running[job.id].finishes_at
        left = None if finishes_at is None else finishes_at - now
        if job.slot in frees_in:
            frees_in[job.slot] = left
        else:
            elsewhere.append(left)
    named = {job.slot for job in snapshot.running}
    for name, left in zip((name for name in slots if name not in named), elsewhere, strict=False):
        frees_in[name] = left
    return [cost.SlotTime(frees_in[name], snapshot.slot_paces.get(name, 1.0)) for name in slots]
