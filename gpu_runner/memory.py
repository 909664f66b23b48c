"""Memory: which device and dtype a job runs in, freeing models, and accounting for it.

All the VRAM bookkeeping lives here so the pipeline's stages stay a plain list.
"""

from __future__ import annotations

import gc
import resource
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from contract import protocol
from contract.cost import LONG_CLIP_TOKENS

GIB = 1024**3
FEED_FORWARDS = ("ff", "audio_ff")  # an LTX-2 block's feed-forwards, video and audio


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def compute_dtype(device: torch.device, precision: str) -> torch.dtype:
    """The dtype the models compute in. CPUs get float32 (bf16 is slow or missing there).

    "fp8" computes in bf16 too: FP8 is a storage format for the transformer's linears
    (gpu_runner/fp8.py).
    """
    if device.type != "cuda" or precision == "fp32":
        return torch.float32
    return torch.bfloat16


class ChunkedFeedForward(torch.nn.Module):
    """A token-wise feed-forward run on slices of the sequence: the same output, a fraction of the peak."""

    def __init__(self, feed_forward: torch.nn.Module, chunk_tokens: int) -> None:
        super().__init__()
        self.feed_forward = feed_forward
        self.chunk_tokens = chunk_tokens

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if hidden_states.shape[1] <= self.chunk_tokens:
            return self.feed_forward(hidden_states)
        out = torch.empty_like(hidden_states)
        for start in range(0, hidden_states.shape[1], self.chunk_tokens):
            end = start + self.chunk_tokens
            out[:, start:end] = self.feed_forward(hidden_states[:, start:end])
        return out


def fit_long_clips(transformer: torch.nn.Module, tokens: int, long_clip: int = LONG_CLIP_TOKENS) -> None:
    """Keep activation memory flat as clips grow: same outputs, a smaller peak (`unfit_long_clips` undoes it).

    For a long clip every block's feed-forwards run in slices, and a guidance batch (CFG's
    [negative, positive]) runs one row at a time; at that length one row already fills the
    GPU, so little speed is lost. Short clips keep the batched passes, where batching pays.
    """
    if tokens <= long_clip:
        return
    for block in transformer.transformer_blocks:
        for name in FEED_FORWARDS:
            setattr(block, name, ChunkedFeedForward(getattr(block, name), long_clip))
    transformer.forward = _OneRowAtATime(transformer)


def unfit_long_clips(transformer: torch.nn.Module) -> None:
    """Undo `fit_long_clips`, however often it was applied: the blocks' own feed-forwards and the forward it wrapped.
    A wrapper set over its forward since (`guidance.share_stg_prefix`'s) is undone first."""
    for block in transformer.transformer_blocks:
        for name in FEED_FORWARDS:
            feed_forward = sliced = getattr(block, name, None)
            while isinstance(feed_forward, ChunkedFeedForward):
                feed_forward = feed_forward.feed_forward
            if feed_forward is not sliced:
                setattr(block, name, feed_forward)
    _OneRowAtATime.undo(transformer)


class ForwardWrapper:
    """A job's wrapper of a module's forward, set on the instance over what was there (the class's forward, or an
    earlier wrapper), which `undo` puts back: a warm runner's resident transformer sheds the last job's wrappers."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.inner = module.forward  # what this one calls
        self.replaced = module.__dict__.get("forward")  # what `undo` restores; None: the class's own

    @classmethod
    def undo(cls, module: torch.nn.Module) -> None:
        """Take off every wrapper of this kind at the top of `module`'s forward."""
        while isinstance(wrapper := module.__dict__.get("forward"), cls):
            if wrapper.replaced is None:
                del module.__dict__["forward"]
            else:
                module.forward = wrapper.replaced


class _OneRowAtATime(ForwardWrapper):
    """A guidance batch through the forward one row at a time (`fit_long_clips`)."""

    def __call__(self, **kwargs):
        batch = kwargs["hidden_states"].shape[0]
        if batch == 1 or kwargs.get("return_dict", True):
            return self.inner(**kwargs)
        rows = []
        for row in range(batch):
            rows.append(
                self.inner(
                    **{
                        name: value[row : row + 1] if is_batched(value, batch) else value
                        for name, value in kwargs.items()
                    }
                )
            )
        return tuple(torch.cat(parts) for parts in zip(*rows, strict=True))


def is_batched(value: object, batch: int) -> bool:
    """Whether `value` is a tensor of `batch` rows: an argument a guidance batch splits row by row."""
    return isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == batch


def release(device: torch.device) -> None:
    """Return freed tensors' memory: Python references first, then the CUDA caching allocator."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def snapshot(stage: str, device: torch.device) -> protocol.Memory:
    """What the process holds at a stage boundary."""
    if device.type != "cuda":
        return protocol.Memory(
            stage=stage,
            device="cpu",
            note=f"VRAM does not apply on CPU; process RSS {rss_gib():.2f} GiB, peak {_peak_rss_gib():.2f} GiB",
        )
    free, _total = torch.cuda.mem_get_info(device)
    return protocol.Memory(
        stage=stage,
        device=torch.cuda.get_device_name(device),
        allocated_gib=round(torch.cuda.memory_allocated(device) / GIB, 3),
        reserved_gib=round(torch.cuda.memory_reserved(device) / GIB, 3),
        peak_gib=peak_vram_gib(device),
        free_gib=round(free / GIB, 3),
    )


def free_vram_gib(device: torch.device) -> float:
    free, _total = torch.cuda.mem_get_info(device)
    return free / GIB


def reset_peak(device: torch.device) -> None:
    """Start a new peak measurement, so each stage's `memory` event shows that stage's own peak."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_vram_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / GIB, 3)


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


@contextmanager
def empty_weights() -> Iterator[None]:
    """Modules built inside get their parameters on the meta device (no storage); buffers stay real.

    What accelerate's `init_empty_weights(include_buffers=False)` does, without the dependency:
    non-persistent buffers (RoPE tables and the like) keep the values their constructors computed.
    """
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None:
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def freeze_heap() -> bool:
    """Leave every object alive now (after a collection of what is already garbage) out of later collections, once a
    process: the ~430k objects torch, diffusers and transformers bring live as long as it does, and each full
    collection walked them all (0.2 s idle on a 2-core machine, 0.5-0.8 s busy), five times a job (`release`).
    True where this call froze them, False where something had already."""
    if gc.get_freeze_count():
        return False
    gc.collect()
    gc.freeze()
    return True


@contextmanager
def frozen_heap() -> Iterator[None]:
    """`freeze_heap` for a while (a process that runs jobs in itself among other work: the demo's evaluation): what it
    froze is unfrozen after, so what was alive before and became garbage meanwhile is collected then. Measured on a
    demo clip (idle): 1.8 s, 1.0 s frozen; with 2M more objects in the process 2.6 s, 1.0 s frozen."""
    froze = freeze_heap()
    try:
        yield
    finally:
        if froze:
            gc.unfreeze()


@contextmanager
def lent_to(module: nn.Module, device: torch.device) -> Iterator[None]:
    """`module` on `device` for a while, then back where it was without copying its weights back: its own tensors
    (unchanged: the module must only run forward inside) are put back in place of the device's copies, also where
    the move or the work fails. Moved with `to()` both ways, LTX-2's 2.28 GiB VAE took a conditioned stage ~1.4 s
    longer on an H100 than an earlier run on another H100 that kept it there."""
    # `to()` moves a parameter's data in place: what it holds now is kept apart from the object
    home = [(owner, table, key, tensor, tensor.data) for owner, table, key, tensor in _tensors(module)]
    try:
        module.to(device)
        yield
    finally:
        # New Parameter objects (a CPU tensor cannot be set as a GPU parameter's data in place); tied ones stay tied
        restored: dict[int, torch.Tensor] = {}
        for owner, table, key, tensor, data in home:
            if id(tensor) not in restored:
                restored[id(tensor)] = nn.Parameter(data, tensor.requires_grad) if table == "_parameters" else data
            getattr(owner, table)[key] = restored[id(tensor)]


def _tensors(module: nn.Module) -> Iterator[tuple[nn.Module, str, str, torch.Tensor]]:
    """Every parameter and buffer of `module` with the submodule and table that hold it."""
    for owner in module.modules():
        for table in ("_parameters", "_buffers"):
            for key, tensor in getattr(owner, table).items():
                if tensor is not None:
                    yield owner, table, key, tensor


def rss_gib() -> float:
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * resource.getpagesize() / GIB


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # Linux reports KiB
