"""The demo evaluation's own machinery (what it measures: tests/integration/test_demo_quality.py)."""

from __future__ import annotations

import gc
import weakref

from gpu_runner.demo import evaluate


class Node:
    """Something a reference cycle can hold and a weak reference can watch."""

    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> weakref.ref:
    first, second = Node(), Node()
    first.other, second.other = second, first
    return weakref.ref(first)


def test_a_frozen_heap_still_collects_the_cycles_made_inside_it_and_unfreezes_what_was_there():
    with evaluate.frozen_heap():
        assert gc.get_freeze_count() > 0
        inside = cycle()
        gc.collect()  # what a job's `memory.release` does
        assert inside() is None
    assert gc.get_freeze_count() == 0
