"""`memory.fit_long_clips` undone (`unfit_long_clips`): what a warm runner's resident transformer sheds between jobs;
`memory.lent_to`: a module on another device for a while."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch import nn

from gpu_runner import memory
from gpu_runner.memory import ChunkedFeedForward, fit_long_clips, unfit_long_clips


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ff = nn.Linear(4, 4)
        self.audio_ff = nn.Linear(4, 4)


class Transformer(nn.Module):
    """Two blocks with LTX-2's feed-forward names; its forward records the batch each call gets."""

    def __init__(self) -> None:
        super().__init__()
        self.transformer_blocks = nn.ModuleList([Block(), Block()])
        self.batches: list[int] = []

    def forward(self, hidden_states: torch.Tensor, return_dict: bool = True):
        self.batches.append(hidden_states.shape[0])
        return (hidden_states * 2,)


def feed_forwards(transformer: Transformer) -> list[tuple[nn.Module, nn.Module]]:
    return [(block.ff, block.audio_ff) for block in transformer.transformer_blocks]


def test_unfitting_gives_back_the_blocks_own_feed_forwards_and_the_class_forward_however_often_it_was_fitted() -> None:
    transformer = Transformer()
    own = feed_forwards(transformer)
    fit_long_clips(transformer, tokens=100, long_clip=10)
    fit_long_clips(transformer, tokens=100, long_clip=10)
    assert all(isinstance(ff, ChunkedFeedForward) for pair in feed_forwards(transformer) for ff in pair)
    batch = torch.ones(2, 3, 4)
    transformer(hidden_states=batch, return_dict=False)
    assert transformer.batches == [1, 1], "a guidance batch one row at a time"

    unfit_long_clips(transformer)
    assert feed_forwards(transformer) == own
    assert "forward" not in transformer.__dict__, "the class's forward again"
    transformer.batches.clear()
    (out,) = transformer(hidden_states=batch, return_dict=False)
    assert transformer.batches == [2] and torch.equal(out, batch * 2)


def test_unfitting_keeps_a_forward_set_before_the_fit() -> None:
    transformer = Transformer()
    counted = []
    own_forward = transformer.forward

    def counting(**kwargs):
        counted.append(kwargs["hidden_states"].shape[0])
        return own_forward(**kwargs)

    transformer.forward = counting
    fit_long_clips(transformer, tokens=100, long_clip=10)
    unfit_long_clips(transformer)
    assert transformer.__dict__["forward"] is counting
    transformer(hidden_states=torch.ones(2, 3, 4), return_dict=False)
    assert counted == [2]


def test_a_short_clip_is_not_fitted_and_unfitting_it_changes_nothing() -> None:
    transformer = Transformer()
    own = feed_forwards(transformer)
    fit_long_clips(transformer, tokens=10, long_clip=10)
    assert feed_forwards(transformer) == own and "forward" not in transformer.__dict__
    unfit_long_clips(transformer)
    assert feed_forwards(transformer) == own and "forward" not in transformer.__dict__


def test_a_lent_module_comes_back_as_its_own_tensors_even_when_its_work_fails() -> None:
    # The meta device stands in for the GPU; a buffer comes and goes as the parameters do.
    module = torch.nn.BatchNorm1d(3)
    before = {name: tensor.data_ptr() for name, tensor in (*module.named_parameters(), *module.named_buffers())}

    with memory.lent_to(module, torch.device("meta")):
        assert {t.device.type for t in (*module.parameters(), *module.buffers())} == {"meta"}
    with pytest.raises(RuntimeError), memory.lent_to(module, torch.device("meta")):
        raise RuntimeError("an encode that broke")

    after = {name: tensor.data_ptr() for name, tensor in (*module.named_parameters(), *module.named_buffers())}
    assert after == before and {t.device.type for t in (*module.parameters(), *module.buffers())} == {"cpu"}


def test_a_lent_module_keeps_its_tied_weights_tied() -> None:
    module = torch.nn.Sequential(torch.nn.Linear(3, 3, bias=False), torch.nn.Linear(3, 3, bias=False))
    module[1].weight = module[0].weight

    with memory.lent_to(module, torch.device("meta")):
        pass

    assert module[1].weight is module[0].weight and module[0].weight.device.type == "cpu"


class Node:
    """Something a reference cycle can hold and a weak reference can watch."""

    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> weakref.ref:
    first, second = Node(), Node()
    first.other, second.other = second, first
    return weakref.ref(first)


def test_a_frozen_heap_still_collects_the_cycles_made_inside_it_and_unfreezes_what_it_froze():
    before = cycle()  # garbage already: collected before the freeze, not frozen with the heap
    with memory.frozen_heap():
        assert gc.get_freeze_count() > 0 and before() is None
        inside = cycle()
        gc.collect()  # what a job's `memory.release` does
        assert inside() is None
    assert gc.get_freeze_count() == 0


def test_a_frozen_heap_inside_a_frozen_process_leaves_the_process_frozen():
    assert memory.freeze_heap() is True  # the runner's: once, for good
    try:
        frozen = gc.get_freeze_count()
        assert memory.freeze_heap() is False
        with memory.frozen_heap():
            pass
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()
