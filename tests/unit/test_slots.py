"""AVP_GPUS and AVP_SLOT_MEMORY_GB as slots (app/slots.py), with a stand-in for NVML's cards; the local executor's
claim (least room that holds the job, a slot claimed once, a warm runner's memory counted as its slot's room) and its
refusal of a job no slot could ever hold."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from app import slots
from app.config import Settings, SettingsError
from app.runner import LocalSlots, Warm
from app.slots import CardMemory, Slot, SlotMemory, resolve
from contract import protocol


class FakeCards:
    """A host with these cards (GiB free, GiB total), as NVML would report them."""

    def __init__(self, memory: list[tuple[float, float]]) -> None:
        self.memory_of = memory

    def count(self) -> int:
        return len(self.memory_of)

    def memory(self, card: int) -> CardMemory:
        free, total = self.memory_of[card]
        return CardMemory(free_gib=free, total_gib=total)


class NoNvml:
    def __init__(self) -> None:
        raise OSError("NVML Shared Library Not Found")


@pytest.fixture
def with_driver(monkeypatch, tmp_path):
    """An NVIDIA driver shows on this host (whatever the test machine has)."""
    marker = tmp_path / "version"
    marker.write_text("NVRM version: test\n")
    monkeypatch.setattr(slots, "GPU_DRIVER_PATHS", (str(marker),))


def names(found: tuple[tuple[Slot, ...], SlotMemory]) -> list[str]:
    return [slot.name for slot in found[0]]


def test_auto_is_one_cpu_slot_without_a_driver_and_leaves_the_runners_environment_alone(monkeypatch) -> None:
    monkeypatch.setattr(slots, "GPU_DRIVER_PATHS", ("/nonexistent/driver",))
    (slot,), memory = resolve("auto")
    assert slot == Slot("cpu0", "cpu") and slot.runner_env() == {}
    assert memory.room_gib(slot) is None and memory.total_gib(slot) is None, "today's runner: nothing checked"


def test_auto_is_every_card_or_those_cuda_visible_devices_lists(with_driver) -> None:
    cards = FakeCards([(70, 80), (10, 80), (80, 80)])
    found, memory = resolve("auto", environ={}, cards=lambda: cards)
    assert [slot.name for slot in found] == ["gpu0", "gpu1", "gpu2"]
    assert found[1].runner_env() == {"CUDA_VISIBLE_DEVICES": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert (memory.room_gib(found[1]), memory.total_gib(found[1])) == (10, 80)
    assert names(resolve("", environ={"CUDA_VISIBLE_DEVICES": "2,0"}, cards=lambda: cards)) == ["gpu2", "gpu0"]
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES='GPU-1234' is not a list of card numbers"):
        resolve("auto", environ={"CUDA_VISIBLE_DEVICES": "GPU-1234"}, cards=lambda: cards)
    # a driver whose NVML cannot be read: one runner on the card, as before slots (its runner admits its jobs)
    assert resolve("auto", environ={}, cards=NoNvml)[0] == (Slot("gpu0", "cuda"),)


def test_a_card_list_names_cards_that_exist_once_each(with_driver) -> None:
    cards = FakeCards([(80, 80), (80, 80)])
    assert names(resolve("1, 0", environ={}, cards=lambda: cards)) == ["gpu1", "gpu0"]
    for value, words in (
        ("0,2", "AVP_GPUS='0,2' names card 2, but this host has cards 0 to 1"),
        ("0,0", "names a card twice"),
        ("0;1", "must be auto, a comma-separated list of card numbers"),
        ("-1", "must be auto, a comma-separated list of card numbers"),
    ):
        with pytest.raises(ValueError, match=words.replace("(", r"\(")):
            resolve(value, environ={}, cards=lambda: cards)
    with pytest.raises(ValueError, match="cannot be read through NVML .NVML Shared Library Not Found."):
        resolve("0", environ={}, cards=NoNvml)
    with pytest.raises(ValueError, match="AVP_SLOT_MEMORY_GB is for CPU slots"):
        resolve("0", "8", environ={}, cards=lambda: cards)


def test_cpu_slots_hide_the_cards_share_the_cores_and_take_their_memory_settings() -> None:
    found, memory = resolve("cpu:4", "1.5", cpu_count=8)
    assert [slot.name for slot in found] == ["cpu0", "cpu1", "cpu2", "cpu3"]
    assert found[0].runner_env() == {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "2"}
    assert [memory.room_gib(slot) for slot in found] == [1.5] * 4
    one, _ = resolve("cpu:1", cpu_count=8)
    assert one[0].runner_env() == {"CUDA_VISIBLE_DEVICES": ""}, "one slot keeps torch's own thread count"
    assert [slot.memory_gib for slot in resolve("cpu:2", "2, 16")[0]] == [2, 16]
    assert resolve("cpu:3", cpu_count=2)[0][0].threads == 1, "more slots than cores: one thread each"
    for gpus, memory_gb in (("cpu:0", ""), ("cpu:x", ""), ("cpu:65", ""), ("cpu:2", "1,2,3"), ("cpu:2", "0")):
        with pytest.raises(ValueError):
            resolve(gpus, memory_gb)


def test_settings_refuse_bad_slot_values_at_start_naming_the_variable(tmp_path) -> None:
    with pytest.raises(SettingsError, match="AVP_GPUS='cpu:none'"):
        Settings.from_env({"AVP_DATA_DIR": str(tmp_path), "AVP_GPUS": "cpu:none"})
    settings = Settings.from_env({"AVP_DATA_DIR": str(tmp_path), "AVP_GPUS": "cpu:2", "AVP_SLOT_MEMORY_GB": "3"})
    assert [slot.memory_gib for slot in settings.slots()[0]] == [3, 3]


def test_the_executor_claims_the_free_slot_with_the_least_room_that_holds_the_job(with_driver) -> None:
    cards = FakeCards([(20, 24), (70, 80), (5, 80)])
    executor = LocalSlots(*resolve("0,1,2", environ={}, cards=lambda: cards), "python", 5)
    assert executor.unholdable(10) is None and executor.unholdable(None) is None
    assert executor.look().claim(10) == "gpu0", "gpu1 stays free for a bigger job"
    assert executor.look().claim(10) == "gpu1" and executor.free_slots == 1
    assert executor.look().claim(10) is None, "gpu2 is free but holds 5 GiB now"
    assert executor.look().claim(4) == "gpu2"
    executor.release("gpu1")
    assert executor.look().claim(None) == "gpu1", "an unknown peak: any free slot"
    states = {state.name: state for state in executor.states()}
    assert (states["gpu2"].free_gib, states["gpu2"].total_gib, states["gpu2"].card) == (5, 80, 2)

    refused = executor.unholdable(100)
    assert refused == (
        "This job needs about 100.0 GiB at its peak, more than any runner slot has (gpu0 24.0 GiB, gpu1 80.0 GiB, "
        "gpu2 80.0 GiB); use fewer frames or a smaller size."
    )


def test_a_warm_runners_gpu_memory_is_its_slots_room_for_the_next_job_and_healthz_names_its_model(
    with_driver,
) -> None:
    cards = FakeCards([(5, 24), (5, 24)])  # gpu0's 19 GiB used: 15 of them by its warm runner
    executor = LocalSlots(*resolve("0,1", environ={}, cards=lambda: cards), "python", 5, keep_warm_s=300)
    warm_child = SimpleNamespace(process=SimpleNamespace(returncode=None, pid=4321))
    resident = protocol.Resident(model="ltx-2", device_gib=15.0, rss_gib=30.0)
    executor.supervisor("gpu0")._warm = Warm(warm_child, "/models/ltx-2", resident, keep_s=300)

    assert executor.look().claim(12) == "gpu0", "its next job reuses or frees the warm runner's 15 GiB"
    executor.release("gpu0")
    states = {state.name: state for state in executor.states()}
    assert (states["gpu0"].resident_model, states["gpu0"].resident_pid) == ("ltx-2", 4321)
    assert states["gpu0"].resident_until - time.time() == pytest.approx(300, abs=5)
    assert states["gpu1"].resident_model is None and states["gpu1"].resident_until is None

    warm_child.process.returncode = 0  # it ended (its own clock): nothing is held any more
    assert executor.look().claim(12) is None
    assert executor.states()[0].resident_model is None
