"""Default guidance without repeated work: the STG pass starts where it first differs from the positive row.

LTX-2's default guidance runs the transformer three times a step: CFG's [negative, positive] batch,
the STG pass and the modality pass. The STG pass is the positive row once more, with self-attention
skipped in its STG blocks (block 29 of 48 for LTX-2.0, 28 for 2.3). Up to the first STG block it
computes what the positive row has just computed (the same sums; batched with the negative row they
may round differently), so this keeps the positive row's hidden
states as they enter that block and starts the STG pass there: for LTX-2.0, 29 of the 48 blocks of
one of the step's four transformer passes, about 15% of a step.

It reuses only when the STG call's every input equals the positive row's (the latents, timestep,
prompt, positions and settings, compared on the device), so a pipeline that calls differently gets
the full pass, never a wrong one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from gpu_runner.memory import ForwardWrapper, is_batched

# The STG call's arguments that may differ from the positive row's: they act only in the STG blocks.
STG_ONLY_ARGUMENTS = frozenset({"spatio_temporal_guidance_blocks", "perturbation_mask"})


def share_stg_prefix(transformer: nn.Module, stg_blocks: list[int] | None) -> None:
    """Make `transformer`'s STG passes reuse the blocks before `stg_blocks` from the CFG pass before them.

    Wraps `transformer.forward` (after `memory.fit_long_clips`, so a CFG batch run a row at a time
    is seen whole). No STG blocks, or STG from block 0, leaves it as it is. `unshare_stg_prefix` undoes it.
    """
    first = min(stg_blocks or [0])
    if first == 0:
        return
    transformer.forward = _PrefixSharing(transformer, first)


def unshare_stg_prefix(transformer: nn.Module) -> None:
    """Undo `share_stg_prefix`, however often it was applied: the forward it wrapped again (before undoing a wrapper
    it went over, `memory.fit_long_clips`')."""
    _PrefixSharing.undo(transformer)


class _PrefixSharing(ForwardWrapper):
    def __init__(self, transformer: nn.Module, first_stg_block: int) -> None:
        super().__init__(transformer)
        self.transformer = transformer
        self.first = first_stg_block
        self.positive: dict | None = None  # the last CFG call's arguments, its positive row only
        self.reached: tuple[torch.Tensor, torch.Tensor] | None = None  # its (video, audio) entering `first`
        blocks = list(transformer.transformer_blocks)
        # The CFG call runs every block with a tap before the first STG block (it perturbs none, so
        # the shifted indices do not matter); the STG call has the tap's states stand for the blocks before.
        self.tapped = nn.ModuleList([*blocks[: self.first], _Tap(self), *blocks[self.first :]])
        self.replayed = nn.ModuleList([_Replay(self)] * self.first + blocks[self.first :])

    def __call__(self, **kwargs):
        batch = kwargs["hidden_states"].shape[0]
        stg = kwargs.get("spatio_temporal_guidance_blocks") or []
        cfg = (
            batch == 2 and not stg and not kwargs.get("isolate_modalities") and kwargs.get("perturbation_mask") is None
        )
        reusable = batch == 1 and min(stg, default=0) == self.first and _same(kwargs, self.positive)
        try:
            if cfg:
                self.reached = None
                with self._blocks(self.tapped):
                    output = self.inner(**kwargs)
                self.positive = {name: _last_row(value, batch) for name, value in kwargs.items()}
                return output
            if reusable and self.reached is not None:
                with self._blocks(self.replayed):
                    return self.inner(**kwargs)
            return self.inner(**kwargs)
        finally:
            if not cfg:  # one STG pass per CFG pass: nothing is held past the step
                self.positive = self.reached = None

    @contextmanager
    def _blocks(self, blocks: nn.ModuleList) -> Iterator[None]:
        original = self.transformer.transformer_blocks
        self.transformer.transformer_blocks = blocks
        try:
            yield
        finally:
            self.transformer.transformer_blocks = original


class _Tap(nn.Module):
    """A no-op block that keeps the last row of the states passing through: the positive one.

    A CFG batch run a row at a time passes it twice, the positive row last.
    """

    def __init__(self, sharing: _PrefixSharing) -> None:
        super().__init__()
        self.sharing = sharing

    def forward(self, hidden_states: torch.Tensor, audio_hidden_states: torch.Tensor, **_block_arguments):
        self.sharing.reached = (_own_last_row(hidden_states), _own_last_row(audio_hidden_states))
        return hidden_states, audio_hidden_states


class _Replay(nn.Module):
    """Stands for each block before the first STG block: gives the states the positive row had there."""

    def __init__(self, sharing: _PrefixSharing) -> None:
        super().__init__()
        self.sharing = sharing

    def forward(self, **_block_arguments) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sharing.reached


def _last_row(value: object, batch: int) -> object:
    return value[-1:] if is_batched(value, batch) else value


def _own_last_row(states: torch.Tensor) -> torch.Tensor:
    """The last row, not a view that would keep the whole batch alive."""
    return states if states.shape[0] == 1 else states[-1:].clone()


def _same(kwargs: dict, positive: dict | None) -> bool:
    """Whether an STG call's inputs are the positive row's, apart from the STG blocks' own settings.

    The tensors are compared on their device and read back once: one synchronisation a step.
    """
    if positive is None or kwargs.keys() - STG_ONLY_ARGUMENTS != positive.keys() - STG_ONLY_ARGUMENTS:
        return False
    on_device = []
    for name in kwargs.keys() - STG_ONLY_ARGUMENTS:
        value, other = kwargs[name], positive[name]
        if not isinstance(value, torch.Tensor) or not isinstance(other, torch.Tensor):
            if isinstance(value, torch.Tensor) or isinstance(other, torch.Tensor) or value != other:
                return False
        elif (value.shape, value.dtype, value.device) != (other.shape, other.dtype, other.device):
            return False
        elif value.device.type == "cpu":
            if not torch.equal(value, other):
                return False
        else:
            on_device.append((value == other).all())
    return not on_device or bool(torch.stack(on_device).all())
