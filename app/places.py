"""Where each unfinished job stands: its place in the queue and when it should start and finish.

Built on the one job-cost estimate (contract/cost.py): a queued job's estimate (re-learned from the runs that
ended since it was submitted, `Jobs.reestimate_queued`) is its duration; a running job's time left comes from
its progress (`cost.seconds_left`). `cost.forecast_queue` lays the queued jobs on the executor's slots.
Times are kept as clock times, so a place computed a moment ago still says "in N seconds" correctly.
"""

from __future__ import annotations

import time

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


def seconds_left(job: JobRow, now: float) -> float | None:
    """A running job's time left: the runner's measure while it denoises, else what its estimate leaves."""
    progress = job.progress
    denoising = progress.stage in protocol.DENOISING and progress.eta_s is not None
    elapsed = now - (job.started_at or now)
    return cost.seconds_left(job.estimate, elapsed, progress.eta_s if denoising else None)


def running_place(job: JobRow, now: float) -> Place:
    left = seconds_left(job, now)
    return Place(position=None, starts_at=None, finishes_at=None if left is None else now + left)


def places(snapshot: QueueSnapshot, slots: int, now: float | None = None) -> dict[str, Place]:
    """Every running and queued job's place, by id. While the queue is paused, a queued job has its position but
    no times: it starts only when somebody resumes the queue."""
    now = time.time() if now is None else now
    running = {job.id: running_place(job, now) for job in snapshot.running}
    if snapshot.paused:
        forecast = [(None, None)] * len(snapshot.queued)
    else:
        left = [None if p.finishes_at is None else p.finishes_at - now for p in running.values()]
        durations = [None if job.estimate is None else job.estimate.duration_s for job in snapshot.queued]
        forecast = cost.forecast_queue(left, durations, slots)
    queued = {
        job.id: Place(
            position=position,
            starts_at=None if start is None else now + start,
            finishes_at=None if finish is None else now + finish,
        )
        for position, (job, (start, finish)) in enumerate(zip(snapshot.queued, forecast, strict=True), start=1)
    }
    return {**running, **queued}
