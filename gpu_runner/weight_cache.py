"""An on-disk cache of the transformer as the GPU holds it: FP8-stored, so later jobs skip the bf16 read and the cast.

The first FP8 job of a model reads its bf16 transformer (~38 GB at full size), casts the big
linears to FP8 on the CPU (gpu_runner/fp8.py) and writes the result here as one safetensors
file (~half the size): FP8 weights, their float32 per-row scales, every other tensor as loaded.
(`avportal import-model` writes a model's entry itself from an FP8 single file, keeping its FP8 weights as they
are: gpu_runner/import_model.py.)
Later jobs build the transformer on the meta device, lay it out in FP8 and load the file's
tensors straight onto the GPU, so the CPU never holds the model.

An entry's name covers the component's directory and a fingerprint of its config and weight
files (names, sizes and modification times: a fine-tune has the same names and sizes), the
compute dtype and this module's format version. Writing an entry removes the others of the
same directory, so a model keeps one; entries share AVP_CACHE_GB with the other caches
(gpu_runner/cache_budget.py), so a model library's entries go least recently used first, and one
that cannot fit is not written. An entry is written whole or not at all (`.partial`, fsync,
rename); a missing, truncated or differently laid out file is a miss, and the job loads the slow
way and writes the entry again. The cache never fails a job: a write that cannot finish (a full
disk, say) is logged and skipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import nn

from gpu_runner import cache_budget
from gpu_runner.cache_budget import CacheBudget
from gpu_runner.prompt_cache import model_revision

# Bump when what an entry holds changes meaning (which layers are FP8, how they are scaled).
FORMAT_VERSION = 1

log = logging.getLogger(__name__)


class WeightCache:
    def __init__(self, directory: Path, budget: CacheBudget) -> None:
        self.directory = directory
        self.budget = budget

    def entry(self, component_dir: Path, dtype: torch.dtype, files_in: Path | None = None) -> CachedWeights:
        """Where the FP8 copy of the component in `component_dir` (e.g. <model>/transformer) is kept. `files_in`:
        where its files are now, when they are to be renamed to `component_dir` with their modification times
        (`avportal import-model` writes the entry from its temporary directory)."""
        component_dir = component_dir.resolve()
        place = _digest(str(component_dir))
        files_in = component_dir if files_in is None else files_in
        revision = model_revision(files_in.parent, (files_in.name,), modified_times=True)
        content = _digest(json.dumps([FORMAT_VERSION, str(dtype), revision]))
        return CachedWeights(self.directory / f"{place}-{content}{cache_budget.ENTRY_SUFFIX}", self.budget)


@dataclass(frozen=True)
class CachedWeights:
    path: Path
    budget: CacheBudget

    def load(self, build: Callable[[], nn.Module], device: torch.device) -> nn.Module | None:
        """The cached model on `device`, or None when the entry is missing, torn or laid out differently.

        `build` makes the model's skeleton: its parameters on the meta device, laid out as the entry
        stores them (FP8 where it holds FP8). It is called only when the entry exists.
        """
        try:
            with cache_budget.using(self.path) as present:  # recorded as used; no sweep takes it while it is read
                return self._load(build, device) if present else None
        except OSError as error:  # the entry cannot even be opened
            return _miss(self.path, str(error))

    def _load(self, build: Callable[[], nn.Module], device: torch.device) -> nn.Module | None:
        began = time.monotonic()
        model = build()
        expected = model.state_dict()  # meta tensors: names, shapes and dtypes, no storage
        try:
            data, layout = _layout(self.path)
            if layout.keys() != expected.keys():
                return _miss(self.path, f"{len(layout.keys() ^ expected.keys())} tensor names differ")
            for name, (dtype, shape, _span) in layout.items():
                wanted = expected[name]
                if (shape, dtype) != (wanted.shape, wanted.dtype):
                    return _miss(self.path, f"{name} is {dtype}{list(shape)}")
            tensors = _read(self.path, data, layout, device)
        except (OSError, ValueError, KeyError) as error:
            return _miss(self.path, str(error))
        model.load_state_dict(tensors, strict=True, assign=True)
        gib = sum(t.numel() * t.element_size() for t in tensors.values()) / 2**30
        seconds = time.monotonic() - began
        log.info("weight cache: loaded %s (%.2f GiB) onto %s in %.1f s", self.path.name, gib, device, seconds)
        return model

    def save(self, model: nn.Module) -> None:
        """Write the model's tensors (on the CPU) as this entry, in place of the other entries of its directory
        and once there is room for it within the budget."""
        tensors = model.state_dict()
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        self.write(size, lambda partial: save_file(tensors, partial))

    def write(self, size: int, write_to: Callable[[Path], None]) -> bool:
        """Write this entry (`size` bytes, a safetensors file laid out as `load`'s skeleton) with `write_to(path)`,
        in place of the other entries of its directory and once there is room; whether it was written."""
        began = time.monotonic()
        place = self.path.name.split("-")[0]
        for other in self.path.parent.glob(f"{place}-*"):
            if other != self.path:
                cache_budget.remove(other, f"{self.path.name} replaces it")  # an older revision, or a crashed write
        if not self.budget.make_room(self.path, size):
            return False
        try:
            with cache_budget.writing(self.path) as partial:
                write_to(partial)
        except (OSError, SafetensorError, ValueError) as error:
            log.warning("weight cache: could not write %s (%s); the next job casts again", self.path, error)
            return False
        gib = self.path.stat().st_size / 2**30
        log.info("weight cache: wrote %s (%.2f GiB) in %.1f s", self.path.name, gib, time.monotonic() - began)
        return True


def _miss(path: Path, why: str) -> None:
    log.warning("weight cache: %s is unusable (%s); loading the original weights", path.name, why)
    return None


# safetensors' dtype names (its format's spec) for the dtypes a transformer holds.
SAFETENSORS_DTYPES = {
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F32": torch.float32,
    "F64": torch.float64,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
Layout = dict[str, tuple[torch.dtype, torch.Size, tuple[int, int]]]  # name -> dtype, shape, span in the data
# Bytes a reader stages at a time, in each of its two pinned buffers. On an H200 host, 8 readers read a 6 GiB
# file from the page cache at 26 GiB/s in 8 MiB chunks, 20 in 32 MiB and 9 in 64 MiB (one run each).
READ_CHUNK = 8 * 2**20
READERS = 8  # reads in flight: page-cache copies are CPU-bound, one core each (4 and 16 were slower there)


def _layout(path: Path) -> tuple[int, Layout]:
    """Where a safetensors file's data starts, and its tensors, from its header (8 bytes of length, then JSON).

    Raises ValueError when the header is not one, or a tensor's entry does not hold together: a
    dtype it does not know, bytes past the file's end, a size other than its shape's, or bytes not
    aligned to its dtype (safetensors writes them aligned).
    """
    with path.open("rb") as file:
        size = os.fstat(file.fileno()).st_size
        length = int.from_bytes(file.read(8), "little")
        if not 2 <= length <= size - 8:
            raise ValueError("no safetensors header")
        header = json.loads(file.read(length))
    if not isinstance(header, dict):
        raise ValueError("the safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    data = 8 + length
    layout = {}
    for name, entry in header.items():
        try:
            dtype = SAFETENSORS_DTYPES[entry["dtype"]]
            shape = torch.Size(entry["shape"])
            start, end = (int(offset) for offset in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{name}: a header entry that is not one ({error!r})") from None
        if not 0 <= start <= end <= size - data or end - start != shape.numel() * dtype.itemsize:
            raise ValueError(f"{name}: {dtype}{list(shape)} at data bytes {start}-{end} of {size - data}")
        if start % dtype.itemsize:
            raise ValueError(f"{name}: not aligned to its dtype")
        layout[name] = (dtype, shape, (start, end))
    return data, layout


def _read(path: Path, data: int, layout: Layout, device: torch.device) -> dict[str, torch.Tensor]:
    """The file's tensors on `device`, read by `READERS` threads in chunks into one block of its memory.

    On CUDA each thread stages its chunks in two pinned buffers and copies them on its own stream,
    so reading the next chunk overlaps copying the last: page cache to GPU at memory speed, where
    safetensors' own loader maps the file and copies tensor by tensor from pageable memory
    (3 GB/s, bench/results). The tensors are views into the block, which goes when they all have.
    A reader that fails stops the others at their next chunk, and the error is raised once every
    copy has finished: nothing writes into the block after it is freed.
    """
    size = max((end for _dtype, _shape, (_start, end) in layout.values()), default=0)
    block = torch.empty(size, dtype=torch.uint8, device=device)
    # The readers' streams start after whatever the current stream has queued that may touch this memory.
    allocated = torch.cuda.current_stream(device).record_event() if device.type == "cuda" else None
    chunks = [(offset, min(READ_CHUNK, size - offset)) for offset in range(0, size, READ_CHUNK)]
    readers = min(READERS, len(chunks))
    failed = threading.Event()
    with ThreadPoolExecutor(max(1, readers)) as pool:
        # Chunks dealt round-robin: the threads advance through the file together, sequential on disk.
        work = [
            pool.submit(_read_chunks, path, data, chunks[i::readers], block, allocated, failed) for i in range(readers)
        ]
        for done in work:
            done.result()
    return {name: block[start:end].view(dtype).view(shape) for name, (dtype, shape, (start, end)) in layout.items()}


def _read_chunks(
    path: Path,
    data: int,
    chunks: list[tuple[int, int]],
    block: torch.Tensor,
    allocated: torch.cuda.Event | None,
    failed: threading.Event,
) -> None:
    """Read these (offset, length) chunks of the file's data, which starts at byte `data`, into the block."""
    cuda = allocated is not None
    largest = max(length for _offset, length in chunks)
    staging = [torch.empty(largest, dtype=torch.uint8, pin_memory=True) for _ in range(2)] if cuda else []
    copied: list[torch.cuda.Event | None] = [None, None]  # the copy out of each buffer: wait before refilling
    stream = torch.cuda.Stream(block.device) if cuda else None
    try:
        with path.open("rb", buffering=0) as file, torch.cuda.stream(stream) if cuda else contextlib.nullcontext():
            if cuda:
                stream.wait_event(allocated)
            for index, (offset, length) in enumerate(chunks):
                if failed.is_set():
                    return
                into = block[offset : offset + length]
                if not cuda:
                    _read_exactly(file.fileno(), into, data + offset)
                    continue
                slot = index % 2
                if copied[slot] is not None:
                    copied[slot].synchronize()
                _read_exactly(file.fileno(), staging[slot][:length], data + offset)
                into.copy_(staging[slot][:length], non_blocking=True)
                copied[slot] = stream.record_event()
    except BaseException:
        failed.set()
        raise
    finally:
        if cuda:
            stream.synchronize()  # every copy into the block and out of the pinned buffers has finished


def _read_exactly(descriptor: int, into: torch.Tensor, offset: int) -> None:
    """Fill a CPU byte tensor from the file at `offset` (a read may return less than asked)."""
    view = memoryview(into.numpy()).cast("B")
    while view:
        got = os.preadv(descriptor, [view], offset)
        if got == 0:
            raise OSError(f"the file ends before byte {offset}")
        view, offset = view[got:], offset + got


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]
