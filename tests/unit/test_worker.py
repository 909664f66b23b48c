"""The worker against an executor with two slots: jobs start in queue order, two at once, the third waits; per-slot
admission (a job no free slot can hold waits, passed a bounded number of times; one no slot could ever hold fails).

The executor here is a fake that runs nothing (the local one, real runner processes, is covered by the
integration tests); the store, journal and broker are the real ones.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from app import queue
from app.broker import Broker
from app.config import Settings
from app.executor import EventSink, Outcome, PlaceSink
from app.journal import Journal
from app.page_feed import PageFeed
from app.queue import Worker
from app.runner import LocalSlots
from app.slots import Slot, SlotMemory
from app.store import Store
from app.web import build_templates
from contract import protocol
from contract.cost import Estimate
from contract.request import Request


class TwoSlots:
    """An executor with two slots, s0 and s1, whose jobs end when the test says so; each slot holds a job whose peak
    fits its `rooms` entry now (None: anything), and could ever hold one that fits its `totals` entry."""

    capacity = 2
    slot_names = ("s0", "s1")
    cpu_only = True

    def __init__(self, rooms: tuple[float | None, float | None] = (None, None), total: float | None = None) -> None:
        self.rooms = dict(zip(("s0", "s1"), rooms, strict=True))
        self.totals = dict.fromkeys(self.rooms, total)
        self.claimed: dict[str, str | None] = {}
        self.slot_of: dict[str, str] = {}
        self.started: list[str] = []
        self.finish: dict[str, anyio.Event] = {}
        self.cancelled: set[str] = set()
        self.calls: list[str] = []  # start and close, in order

    @property
    def free_slots(self) -> int:
        return len(self.rooms) - len(self.claimed)

    def unholdable(self, need: float | None) -> str | None:
        if need is None or any(total is None or need <= total for total in self.totals.values()):
            return None
        return f"needs {need} GiB, more than any slot has"

    def look(self) -> TwoSlots:
        return self

    def claim(self, need: float | None) -> str | None:
        for name, room in self.rooms.items():
            if name not in self.claimed and (need is None or room is None or need <= room):
                self.claimed[name] = None
                return name
        return None

    def release(self, slot: str) -> None:
        self.claimed.pop(slot, None)

    def states(self) -> list:
        return []

    async def start(self) -> None:
        self.calls.append("start")

    async def run(
        self, job_id: str, job_dir: Path, on_event: EventSink, slot: str, on_placed: PlaceSink | None = None
    ) -> Outcome:
        assert self.claimed[slot] is None, "a job runs on a slot claimed for it"
        self.claimed[slot] = job_id
        self.slot_of[job_id] = slot
        self.started.append(job_id)
        self.finish[job_id] = anyio.Event()
        await on_event(protocol.Stage(name="denoise", t=0.0))
        await self.finish[job_id].wait()
        return Outcome("cancelled", "cancelled", "Cancelled.") if job_id in self.cancelled else Outcome("succeeded")

    def cancel(self, job_id: str) -> bool:
        if job_id not in self.finish or self.finish[job_id].is_set():
            return False
        self.cancelled.add(job_id)
        self.finish[job_id].set()
        return True

    async def close(self) -> None:
        self.calls.append("close")


async def until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(5):
        while not condition():
            await anyio.sleep(0.01)


def with_worker(
    tmp_path: Path,
    scenario: Callable[[Worker, TwoSlots, Store], Awaitable[None]],
    *,
    paused: bool = False,
    executor: TwoSlots | None = None,
    peaks: dict[str, float] | None = None,
) -> TwoSlots:
    """Run `scenario` beside a worker over TwoSlots with jobs a, b and c queued in that order (and the queue
    `paused`; with `peaks`, those jobs in that order, each with that predicted peak), then stop the worker as the
    portal's lifespan does (by cancelling it); the executor, for what it was asked."""
    store = Store(tmp_path / "portal.db")
    executor = executor or TwoSlots()
    settings, broker = Settings(data_dir=tmp_path), Broker()
    journal = Journal(store, broker, PageFeed(broker, build_templates(settings), settings), slots=executor.slot_names)
    worker = Worker(store, journal, executor, tmp_path / "jobs", "python")

    async def main() -> None:
        for job_id, peak in (peaks or dict.fromkeys("abc")).items():
            estimate = None if peak is None else peak_estimate(peak)
            await store.call(store.create_job, job_id, Request(prompt=job_id), {"type": "queued"}, 10, estimate)
            worker.wake()
        await worker.set_paused(paused)
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run, None)
            await scenario(worker, executor, store)
            tg.cancel_scope.cancel()
        assert (worker.alive, worker.state, worker.running_jobs) == (False, "stopped", [])

    try:
        anyio.run(main)
    finally:
        store.close()
    return executor


def peak_estimate(peak_gib: float) -> Estimate:
    return Estimate(duration_s=10, denoise_s=5, peak_gib=peak_gib, disk_bytes=1, device="cpu", past_runs=0)


def statuses(store: Store, ids: str = "abc") -> dict[str, str]:
    return {job_id: store.get_job(job_id).status for job_id in ids}


def test_two_jobs_run_at_once_in_queue_order_and_the_third_waits_for_a_slot(tmp_path: Path) -> None:
    async def scenario(worker: Worker, executor: TwoSlots, store: Store) -> None:
        await until(lambda: len(executor.started) == 2)
        await anyio.sleep(0.1)  # room for a wrong third start to show
        assert executor.started == ["a", "b"]
        assert statuses(store) == {"a": "running", "b": "running", "c": "queued"}
        assert (worker.running_jobs, worker.current_job, worker.slots, worker.state) == (["a", "b"], "a", 2, "running")
        assert store.get_job("a").progress.stage == "denoise", "the executor's events reach the journal"
        assert (store.get_job("a").slot, store.get_job("b").slot, store.get_job("c").slot) == ("s0", "s1", None)

        executor.finish["b"].set()
        await until(lambda: executor.started == ["a", "b", "c"])
        assert store.get_job("b").status == "succeeded" and worker.running_jobs == ["a", "c"]

        executor.finish["a"].set()
        executor.finish["c"].set()
        await until(lambda: worker.state == "idle")
        assert statuses(store) == {"a": "succeeded", "b": "succeeded", "c": "succeeded"}
        assert worker.current_job is None

    executor = with_worker(tmp_path, scenario)
    assert executor.calls == ["start", "close"]


def test_a_paused_queue_starts_nothing_and_a_job_moved_to_the_front_starts_first(tmp_path: Path) -> None:
    async def scenario(worker: Worker, executor: TwoSlots, store: Store) -> None:
        await anyio.sleep(0.1)  # room for a wrong start to show
        assert executor.started == [] and statuses(store) == {"a": "queued", "b": "queued", "c": "queued"}
        assert await store.call(store.prioritize, "c")
        await worker.set_paused(False)
        await until(lambda: len(executor.started) == 2)
        assert executor.started == ["c", "a"]

        await worker.set_paused(True)
        executor.finish["c"].set()  # a slot frees while paused
        await until(lambda: statuses(store)["c"] == "succeeded")
        await anyio.sleep(0.1)
        assert executor.started == ["c", "a"] and statuses(store)["b"] == "queued", "paused: b waits"
        assert await store.call(store.paused), "kept in the store, for a restart"

        await worker.set_paused(False)
        await until(lambda: executor.started == ["c", "a", "b"])
        assert not await store.call(store.prioritize, "b"), "a running job has no place to move to"
        executor.finish["a"].set()
        executor.finish["b"].set()
        await until(lambda: worker.state == "idle")

    with_worker(tmp_path, scenario, paused=True)


def test_a_cancel_goes_to_the_executor_and_a_shutdown_interrupts_what_runs(tmp_path: Path) -> None:
    async def scenario(worker: Worker, executor: TwoSlots, store: Store) -> None:
        await until(lambda: len(executor.started) == 2)
        assert not worker.cancel("c"), "c waits for a slot: the executor runs no such job"
        assert worker.cancel("a")
        await until(lambda: executor.started == ["a", "b", "c"])
        assert store.get_job("a").status == "cancelled"
        assert statuses(store) == {"a": "cancelled", "b": "running", "c": "running"}

    executor = with_worker(tmp_path, scenario)
    assert executor.calls == ["start", "close"]
    store = Store(tmp_path / "portal.db")
    try:
        assert statuses(store) == {"a": "cancelled", "b": "interrupted", "c": "interrupted"}
    finally:
        store.close()


def test_on_a_full_disk_the_worker_waits_to_record_and_goes_on_once_space_returns(small_disk, monkeypatch) -> None:
    monkeypatch.setattr(queue, "DISK_RETRY_S", 0.05)
    disk = small_disk(8)

    async def scenario(worker: Worker, executor: TwoSlots, store: Store) -> None:
        disk.fill()  # before the worker's first write: a cannot be marked running
        await until(lambda: worker.state == queue.WAITING_FOR_DISK)
        assert worker.alive and executor.started == [] and statuses(store)["a"] == "queued"

        disk.unfill()
        await until(lambda: executor.started == ["a", "b"] and store.get_job("b").progress.stage == "denoise")
        assert worker.state == "running"

        disk.fill()
        executor.finish["a"].set()  # its outcome cannot be stored: it holds its slot, c waits
        await until(lambda: worker.state == queue.WAITING_FOR_DISK)
        await anyio.sleep(0.2)
        assert executor.started == ["a", "b"] and statuses(store)["a"] == "running"

        disk.unfill()
        await until(lambda: executor.started == ["a", "b", "c"])
        executor.finish["b"].set()
        executor.finish["c"].set()
        await until(lambda: worker.state == "idle")
        assert statuses(store) == {"a": "succeeded", "b": "succeeded", "c": "succeeded"}

    with_worker(disk.root, scenario)


def test_jobs_behind_one_no_free_slot_can_hold_pass_it_a_bounded_number_of_times(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(queue, "ROOM_POLL_S", 0.05)
    executor = TwoSlots(rooms=(1, 1), total=10)  # another program holds most of both cards
    assert queue.MAX_PASSES == 3

    async def scenario(worker: Worker, executor: TwoSlots, store: Store) -> None:
        await until(lambda: executor.started == ["b", "c"])
        assert worker.waiting_for_room == ["a"] and statuses(store, "a") == {"a": "queued"}
        executor.finish["b"].set()
        await until(lambda: executor.started == ["b", "c", "d"])  # a passed a third time
        executor.finish["c"].set()
        await until(lambda: statuses(store, "c") == {"c": "succeeded"})
        await anyio.sleep(0.2)  # room for a wrong fourth pass to show
        assert executor.started == ["b", "c", "d"] and statuses(store, "ae") == {"a": "queued", "e": "queued"}
        assert worker.waiting_for_room == ["a"], "e waits behind a, which was passed often enough"

        executor.rooms["s1"] = 8  # the other program let go of c's card: a starts there, found by the poll
        await until(lambda: executor.started == ["b", "c", "d", "a"])
        assert executor.slot_of["a"] == "s1" and worker.waiting_for_room == []
        executor.finish["d"].set()
        await until(lambda: executor.started == ["b", "c", "d", "a", "e"])
        executor.finish["a"].set()
        executor.finish["e"].set()
        await until(lambda: worker.state == "idle")
        assert set(statuses(store, "abcde").values()) == {"succeeded"}

    with_worker(tmp_path, scenario, executor=executor, peaks={"a": 5, "b": 0.5, "c": 0.5, "d": 0.5, "e": 0.5})


def test_a_job_no_slot_could_ever_hold_fails_at_once_and_the_jobs_behind_it_run(tmp_path: Path) -> None:
    async def scenario(worker: Worker, executor: TwoSlots, store: Store) -> None:
        await until(lambda: executor.started == ["b", "c"])
        failed = store.get_job("a")
        assert failed.status == "failed" and failed.slot is None
        assert failed.error == {"code": "out_of_memory", "message": "needs 50.0 GiB, more than any slot has"}
        executor.finish["b"].set()
        executor.finish["c"].set()
        await until(lambda: worker.state == "idle")

    with_worker(tmp_path, scenario, executor=TwoSlots(total=10), peaks={"a": 50, "b": 1, "c": 1})


class LosesItsMachine(TwoSlots):
    """Job a's machine goes away each time it runs (as a Ray node does): its run ends `interrupted`."""

    async def run(
        self, job_id: str, job_dir: Path, on_event: EventSink, slot: str, on_placed: PlaceSink | None = None
    ) -> Outcome:
        if job_id != "a":
            return await super().run(job_id, job_dir, on_event, slot)
        self.claimed[slot] = job_id
        self.started.append(job_id)
        await on_event(protocol.Stage(name="denoise", t=0.0))
        return Outcome("interrupted", "node_lost", "The Ray node 10.0.0.7 went away while this job ran.")


def test_a_job_whose_machine_goes_away_is_queued_again_once_then_fails_naming_it(tmp_path: Path) -> None:
    async def scenario(worker: Worker, executor: TwoSlots, store: Store) -> None:
        await until(lambda: store.get_job("a").status == "failed")
        assert executor.started.count("a") == 2, "run once more, then not again"
        job = store.get_job("a")
        assert job.attempts == 2 and job.error["code"] == "internal"
        assert job.error["message"] == (
            "The Ray node 10.0.0.7 went away while this job ran. It was interrupted 2 times and not retried again; "
            "submit it again."
        )
        types = [event.type for event in store.events_after("a", 0)]
        assert types.count("interrupted") == 2 and types.count("running") == 2 and types[-1] == "failed"
        await until(lambda: {"b", "c"} <= set(executor.started))  # c takes a's slot once a has failed
        for job_id in "bc":
            executor.finish[job_id].set()
        await until(lambda: statuses(store) == {"a": "failed", "b": "succeeded", "c": "succeeded"})

    with_worker(tmp_path, scenario, executor=LosesItsMachine())


class CountingMemory(SlotMemory):
    """Slots with 1 GiB free of 10, counting each read of a slot's room and total (NVML's, for a card)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: Counter[tuple[str, str]] = Counter()

    def room_gib(self, slot: Slot) -> float | None:
        self.reads["room", slot.name] += 1
        return 1.0

    def total_gib(self, slot: Slot) -> float | None:
        self.reads["total", slot.name] += 1
        return 10.0


class WaitingLocalSlots(LocalSlots):
    """The local executor, counting its looks; it starts no spare (no job it is given fits, so none runs)."""

    looks = 0

    async def start(self) -> None:
        pass

    def look(self):
        self.looks += 1
        return super().look()


def test_a_pass_through_the_queue_reads_each_slots_memory_once_however_many_jobs_wait(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(queue, "ROOM_POLL_S", 0.02)
    memory = CountingMemory()
    executor = WaitingLocalSlots((Slot("cpu0", "cpu"), Slot("cpu1", "cpu")), memory, "python", 5)

    async def scenario(worker: Worker, executor: WaitingLocalSlots, store: Store) -> None:
        await until(lambda: worker.waiting_for_room == ["a", "b", "c", "d"] and executor.looks >= 3)
        assert set(memory.reads) == {("room", "cpu0"), ("room", "cpu1"), ("total", "cpu0"), ("total", "cpu1")}
        assert set(memory.reads.values()) == {executor.looks}, "each figure once a pass, not once a queued job"

    with_worker(tmp_path, scenario, executor=executor, peaks=dict.fromkeys("abcd", 5.0))


class NamesItsNodes(TwoSlots):
    """Slots that are no place (as Ray's): a job learns its node and card once it runs."""

    async def run(
        self, job_id: str, job_dir: Path, on_event: EventSink, slot: str, on_placed: PlaceSink | None = None
    ) -> Outcome:
        assert on_placed is not None, "the worker asks where its jobs run"
        await on_placed(f"10.0.0.{7 + len(self.started)}:gpu1")
        return await super().run(job_id, job_dir, on_event, slot)


def test_a_job_shows_the_node_and_card_it_runs_on_once_its_executor_knows_them(tmp_path: Path) -> None:
    async def scenario(worker: Worker, executor: TwoSlots, store: Store) -> None:
        await until(lambda: executor.started == ["a", "b"])
        assert (store.get_job("a").slot, store.get_job("b").slot) == ("10.0.0.7:gpu1", "10.0.0.8:gpu1")
        executor.finish["a"].set()
        await until(lambda: statuses(store, "a") == {"a": "succeeded"})
        assert store.get_job("a").slot == "10.0.0.7:gpu1", "it keeps naming where it ran"
        assert store.set_slot("a", "elsewhere") is False, "a finished job's place no longer moves"
        for job_id in "bc":
            await until(lambda job_id=job_id: job_id in executor.finish)
            executor.finish[job_id].set()
        await until(lambda: worker.state == "idle")

    with_worker(tmp_path, scenario, executor=NamesItsNodes(), peaks={"a": None, "b": None, "c": None})
