"""The runner slots of this host (AVP_GPUS): one per CUDA card, or CPU slots, and what each can hold right now.

A slot runs one job at a time in its own runner process (and keeps its own spare runner): a card's slot
sees only its card (`CUDA_VISIBLE_DEVICES`), so two jobs never share a card's memory. Which slot takes a
job is admission per slot (`Admission` in app/queue.py): a card holds a job when its predicted peak fits
in what the card has free at that moment, read through NVML (`nvidia-ml-py`: torch-free, so the web process
may; imported only where a card slot exists, so a CPU install never needs it); a CPU slot holds a job when
the peak fits its memory setting (AVP_SLOT_MEMORY_GB; unset: not checked), so the CPU tests exercise the
same admission.

`AVP_GPUS`:
- `auto` (the default): every CUDA card NVML sees (those of the portal's own CUDA_VISIBLE_DEVICES where it is
  a list of card numbers), or one CPU slot where there is no NVIDIA driver: today's single runner.
- `0,2`: those cards, by NVML's numbers (nvidia-smi's; their runners get CUDA_DEVICE_ORDER=PCI_BUS_ID so CUDA
  numbers them the same way).
- `cpu:N`: N CPU slots (tests, small demos): their runners see no card, and when there are several each gets
  its share of the cores as torch threads (OMP_NUM_THREADS), so slots do not fight over them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

import msgspec

from contract.cost import GPU_DRIVER_PATHS

MAX_CPU_SLOTS = 64


class Slot(msgspec.Struct, frozen=True):
    name: str  # "gpu0" (its card's number), "cpu1": what job JSON's `slot` says
    device: Literal["cuda", "cpu"]
    card: int | None = None  # the card's NVML number; None: a CPU slot, or the one card of an unread driver
    memory_gib: float | None = None  # a CPU slot's memory setting (AVP_SLOT_MEMORY_GB); None: not checked
    threads: int | None = None  # a CPU slot's torch threads where several share the cores; None: torch's default
    hidden_cards: bool = False  # its runner sees no card (an explicit CPU slot, on whatever host)

    def runner_env(self) -> dict[str, str]:
        """What its runners' environment adds: its card, or no card, and its threads."""
        env: dict[str, str] = {}
        if self.card is not None:
            env |= {"CUDA_VISIBLE_DEVICES": str(self.card), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
        if self.hidden_cards:
            env["CUDA_VISIBLE_DEVICES"] = ""
        if self.threads is not None:
            env["OMP_NUM_THREADS"] = str(self.threads)
        return env


class CardMemory(msgspec.Struct, frozen=True):
    free_gib: float
    total_gib: float


class Cards:
    """NVML's view of the host's cards, opened on first use (nvidia-ml-py is imported only then)."""

    def __init__(self) -> None:
        self._nvml = None

    def _open(self):
        if self._nvml is None:
            import pynvml  # nvidia-ml-py: ctypes over the driver's libnvidia-ml, no torch

            pynvml.nvmlInit()
            self._nvml = pynvml
        return self._nvml

    def count(self) -> int:
        return self._open().nvmlDeviceGetCount()

    def memory(self, card: int) -> CardMemory:
        nvml = self._open()
        info = nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(card))
        return CardMemory(free_gib=info.free / 2**30, total_gib=info.total / 2**30)


class SlotMemory:
    """What a slot can hold: its card's free and total memory now (NVML), or a CPU slot's setting."""

    def __init__(self, cards: Cards | None = None) -> None:
        self._cards = cards

    def room_gib(self, slot: Slot) -> float | None:
        """GiB a job may take on `slot` now; None where nothing is checked."""
        if slot.card is not None and self._cards is not None:
            return self._cards.memory(slot.card).free_gib
        return slot.memory_gib

    def total_gib(self, slot: Slot) -> float | None:
        """The most a job could ever take on `slot`; None where nothing is checked."""
        if slot.card is not None and self._cards is not None:
            return self._cards.memory(slot.card).total_gib
        return slot.memory_gib


def resolve(
    gpus: str,
    slot_memory: str = "",
    environ: Mapping[str, str] | None = None,
    cards: Callable[[], Cards] = Cards,
    cpu_count: int | None = None,
) -> tuple[tuple[Slot, ...], SlotMemory]:
    """AVP_GPUS and AVP_SLOT_MEMORY_GB as the host's slots and how to read their memory; a ValueError naming the
    variable and the fix for a value that cannot be used (a card that does not exist among them)."""
    environ = os.environ if environ is None else environ
    choice = gpus.strip().lower() or "auto"
    if choice.startswith("cpu:"):
        count = _cpu_slot_count(choice)
        memory = _slot_memory(slot_memory, count)
        threads = None if count == 1 else max(1, (cpu_count or os.cpu_count() or 1) // count)
        slots = tuple(
            Slot(f"cpu{i}", "cpu", memory_gib=memory[i], threads=threads, hidden_cards=True) for i in range(count)
        )
        return slots, SlotMemory()
    if choice == "auto" and not any(Path(path).exists() for path in GPU_DRIVER_PATHS):
        return (Slot("cpu0", "cpu", memory_gib=_slot_memory(slot_memory, 1)[0]),), SlotMemory()
    if slot_memory.strip():
        raise ValueError(
            "AVP_SLOT_MEMORY_GB is for CPU slots (AVP_GPUS=cpu:N); a card's free memory is read from the card. "
            "Unset it, or choose CPU slots"
        )
    wanted = None if choice == "auto" else _card_numbers(choice)
    try:
        reader = cards()
        count = reader.count()
    except Exception as exc:  # no driver library, no permission, a driver/library mismatch: NVML says which
        if wanted is None:  # auto on a host whose cards NVML cannot read: one runner, as before slots
            return (Slot("gpu0", "cuda"),), SlotMemory()
        raise ValueError(
            f"AVP_GPUS={gpus.strip()!r} names cards, but their memory cannot be read through NVML ({exc}); "
            "check the NVIDIA driver (nvidia-smi), or set AVP_GPUS=auto"
        ) from None
    if wanted is None:
        wanted = _visible_cards(environ.get("CUDA_VISIBLE_DEVICES"), count)
    missing = [card for card in wanted if card >= count]
    if missing:
        have = f"cards 0 to {count - 1}" if count > 1 else "card 0" if count == 1 else "no card"
        raise ValueError(
            f"AVP_GPUS={gpus.strip()!r} names card {missing[0]}, but this host has {have} (nvidia-smi lists them); "
            "name cards that exist, or set AVP_GPUS=auto"
        )
    if not wanted:
        return (Slot("cpu0", "cpu"),), SlotMemory()  # a driver but no card: the CPU, as before slots
    return tuple(Slot(f"gpu{card}", "cuda", card=card) for card in wanted), SlotMemory(reader)


def _cpu_slot_count(choice: str) -> int:
    raw = choice.removeprefix("cpu:")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_CPU_SLOTS:
        raise ValueError(
            f"AVP_GPUS={choice!r}: cpu:N takes a whole number of CPU slots from 1 to {MAX_CPU_SLOTS}, e.g. cpu:2"
        )
    return int(raw)


def _card_numbers(choice: str) -> list[int]:
    parts = [part.strip() for part in choice.split(",")]
    if not all(part.isdigit() for part in parts):
        raise ValueError(
            f"AVP_GPUS={choice!r} must be auto, a comma-separated list of card numbers as nvidia-smi shows them "
            "(0,2), or cpu:N for N CPU slots"
        )
    numbers = [int(part) for part in parts]
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"AVP_GPUS={choice!r} names a card twice; a card has one slot")
    return numbers


def _visible_cards(visible: str | None, count: int) -> list[int]:
    """`auto`'s cards: those of the portal's own CUDA_VISIBLE_DEVICES where it lists card numbers, else all."""
    if visible is None:
        return list(range(count))
    parts = [part.strip() for part in visible.split(",") if part.strip()]
    if all(part.isdigit() for part in parts):
        return [int(part) for part in parts]
    raise ValueError(
        f"CUDA_VISIBLE_DEVICES={visible!r} is not a list of card numbers, so AVP_GPUS=auto cannot tell which cards "
        "are meant; set AVP_GPUS to the cards' numbers (0,2), as nvidia-smi shows them"
    )


def _slot_memory(raw: str, count: int) -> list[float | None]:
    """AVP_SLOT_MEMORY_GB for `count` CPU slots: one figure for every slot, or one per slot, comma-separated."""
    parts = [part.strip() for part in raw.split(",")] if raw.strip() else []
    if not parts:
        return [None] * count
    try:
        figures = [float(part) for part in parts]
    except ValueError:
        figures = []
    if not figures or not all(0 < figure < math.inf for figure in figures) or len(figures) not in (1, count):
        raise ValueError(
            f"AVP_SLOT_MEMORY_GB={raw.strip()!r} must be GiB above 0, one figure for every CPU slot or one per slot "
            f"({count} here), comma-separated, e.g. 8 or 2,16"
        )
    return figures * count if len(figures) == 1 else figures
