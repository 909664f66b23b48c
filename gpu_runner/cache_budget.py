"""The caches' one budget (AVP_CACHE_GB): FP8 weights, encoded prompts and torch's compiled kernels together,
least recently used first, never an entry a runner is using.

An entry is a `*.safetensors` file of a cache directory (a prompt's encoding, a model's FP8 transformer), a
`*.partial` directory there (a write in progress, or one a crash left), or a whole directory where its
files refer to each other (torch's compile cache). Its last use is its modification time, which a runner
sets itself each time it reads or writes it: never the access time, which noatime and relatime mounts do
not keep. A cache may also have a cap of its own inside the budget (the prompts' AVP_PROMPT_CACHE_MB).

In use means locked: a runner holds a shared flock on an entry (the file, or the directory) while it reads
it or writes into it, and a lock dies with its process, so a crash leaves no stale mark. Removal takes an
exclusive flock without waiting and skips the entry when that fails; it then checks that the path still
names the file it locked (a reader does the same), so an entry never goes while anyone holds it.

The runner makes room before it writes an entry (an entry that cannot fit is not written) and sweeps after
each job, whatever its ending (torch writes its compiled kernels with no such moment before). Torch-free.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

GIB = 2**30
MIB = 2**20
ENTRY_SUFFIX = ".safetensors"
PARTIAL_SUFFIX = ".partial"  # a directory: the write in progress, and the temporary files of the library writing it
PARTIAL_DATA = "data"  # the file being written, inside its .partial directory

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limit:
    bytes: int
    setting: str  # how the log names it, e.g. "AVP_CACHE_GB=50"


@dataclass(frozen=True)
class Cache:
    directory: Path
    whole: bool = False  # the directory is one entry: its files refer to each other (torch's compile cache)
    cap: Limit | None = None  # this cache's own limit inside the budget


@dataclass(frozen=True)
class Entry:
    path: Path
    cache: Cache
    size: int
    last_used_ns: int


class CacheBudget:
    def __init__(self, caches: Sequence[Cache], limit: Limit) -> None:
        self.caches = tuple(caches)
        self.limit = limit

    def entries(self) -> list[Entry]:
        """Every cache's entries, as they are now."""
        return [entry for cache in self.caches for entry in _entries(cache)]

    def make_room(self, path: Path, size: int) -> bool:
        """Remove least recently used entries until a new entry of `size` bytes at `path` fits in its cache's cap
        and in the budget; whether it does (False: it must not be written)."""
        return self._within(path, size)

    def sweep(self) -> None:
        """Bring every cache within its cap and all of them within the budget (after a job). Never raises."""
        self._within(None, 0)

    def _within(self, path: Path | None, size: int) -> bool:
        try:
            entries = self.entries()
        except OSError as error:  # a cache directory we cannot read: nothing is written, the next sweep tries again
            log.warning("cache budget: could not list the caches (%s)", error)
            return False
        fits = True
        for cache in self.caches:
            if cache.cap is not None:
                needed = size if path is not None and path.parent == cache.directory else 0
                ours, entries = _split(entries, cache)
                cache_fits, kept = _evict(ours, cache.cap, needed, f"the {cache.directory.name} cache")
                fits = fits and cache_fits
                entries += kept
        fits = _evict(entries, self.limit, size, "the caches")[0] and fits
        if not fits and path is not None:
            log.info(
                "cache budget: not writing %s (%s): it does not fit within %s (or its cache's own cap) beside the "
                "entries in use",
                path,
                _size(size),
                self.limit.setting,
            )
        elif not fits:
            log.warning("cache budget: the caches stay over %s: the entries left are in use", self.limit.setting)
        return fits


def _split(entries: list[Entry], cache: Cache) -> tuple[list[Entry], list[Entry]]:
    """(this cache's entries, the others)."""
    return [e for e in entries if e.cache is cache], [e for e in entries if e.cache is not cache]


def _evict(entries: list[Entry], limit: Limit, needed: int, what: str) -> tuple[bool, list[Entry]]:
    """Remove the least recently used of `entries` not in use until `needed` more bytes fit in `limit`:
    whether they do, and the entries left. Nothing goes for an entry larger than the limit itself."""
    total = sum(entry.size for entry in entries)
    if needed > limit.bytes:
        return False, entries
    kept = []
    for entry in sorted(entries, key=lambda e: e.last_used_ns):
        over = total + needed > limit.bytes
        adding = f" with {_size(needed)} to write" if needed else ""
        why = f"{what} took {_size(total)}{adding}, over {limit.setting}"
        if over and remove(entry.path, why):
            total -= entry.size
        else:
            kept.append(entry)
    return total + needed <= limit.bytes, kept


def remove(path: Path, why: str) -> bool:
    """Remove a cache entry (a file or a directory) unless a runner is using it; whether it is gone. Logs it."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return True
    except OSError as error:
        log.warning("cache budget: could not open %s to remove it (%s)", path, error)
        return False
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("cache budget: kept %s although %s: a runner is using it", path, why)
            return False
        if not _names(path, descriptor):
            return False  # replaced by a new entry as we locked it: that one is not the one we chose
        status = os.fstat(descriptor)
        size = _bytes_in(path) if stat.S_ISDIR(status.st_mode) else status.st_size
        if stat.S_ISDIR(status.st_mode):
            shutil.rmtree(path)
        else:
            path.unlink()
        last_used = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(status.st_mtime))
        log.info("cache budget: removed %s (%s, last used %s): %s", path, _size(size), last_used, why)
        return True
    except OSError as error:
        log.warning("cache budget: could not remove %s (%s)", path, error)
        return False
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def using(path: Path, directory: bool = False) -> Iterator[bool]:
    """Hold a cache entry in use (a sweep leaves it alone) and record its use. Yields False when there is no
    such file; `directory`: the entry is a directory, made if missing."""
    descriptor = _hold(path, directory)
    if descriptor is None:
        yield False
        return
    try:
        _record_use(path)
        yield True
    finally:
        os.close(descriptor)  # the lock goes with it


@contextlib.contextmanager
def writing(path: Path) -> Iterator[Path]:
    """Write a file entry whole or not at all: yields where to write it, then syncs it and gives it its name.

    The write happens inside `<entry>.partial/`, held in use, so a sweep never takes a write in progress, and
    the temporary files of whatever library writes it are there too; a crash leaves the directory to the next
    sweep. A failed write leaves nothing behind.
    """
    partial = path.with_suffix(PARTIAL_SUFFIX)
    descriptor = _hold(partial, directory=True)
    assert descriptor is not None  # a directory entry is made when missing
    try:
        data = partial / PARTIAL_DATA
        yield data
        with data.open("rb") as written:
            os.fsync(written.fileno())  # on disk before it gets its name: a named entry is a whole one
        data.replace(path)
        _record_use(path)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(partial)
        os.close(descriptor)


def _hold(path: Path, directory: bool) -> int | None:
    """A descriptor of `path` holding a shared lock, or None when there is no such file. The path is checked to
    still name what was locked: a sweep that removed it meanwhile makes this a miss (a directory: made anew)."""
    while True:
        if directory:
            path.mkdir(parents=True, exist_ok=True)
        try:
            descriptor = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
        except FileNotFoundError:
            if directory:
                continue  # removed between mkdir and open
            return None
        fcntl.flock(descriptor, fcntl.LOCK_SH)  # waits only while a sweep removes it
        if _names(path, descriptor):
            return descriptor
        os.close(descriptor)
        if not directory:
            return None


def _names(path: Path, descriptor: int) -> bool:
    """Whether `path` still names the file open as `descriptor`."""
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(descriptor)
    return (on_disk.st_dev, on_disk.st_ino) == (opened.st_dev, opened.st_ino)


def _record_use(path: Path) -> None:
    now = time.time_ns()
    os.utime(path, ns=(now, now))


def _entries(cache: Cache) -> list[Entry]:
    """A cache's entries: the directory itself when whole, else its *.safetensors files and *.partial
    directories (a crashed writer's .partial file too). Anything else there is not ours and stays."""
    if cache.whole:
        candidates = [cache.directory]
    else:
        try:
            candidates = [
                child for child in cache.directory.iterdir() if child.name.endswith((ENTRY_SUFFIX, PARTIAL_SUFFIX))
            ]
        except (FileNotFoundError, NotADirectoryError):
            return []  # nothing cached yet (or a path that cannot hold a cache: its write fails and says so)
    entries = []
    for path in candidates:
        try:
            status = path.lstat()
        except FileNotFoundError:
            continue  # removed as we looked
        if stat.S_ISLNK(status.st_mode):
            continue
        size = _bytes_in(path) if stat.S_ISDIR(status.st_mode) else status.st_size
        entries.append(Entry(path=path, cache=cache, size=size, last_used_ns=status.st_mtime_ns))
    return entries


def _bytes_in(directory: Path) -> int:
    total = 0
    for parent, _dirs, files in os.walk(directory):
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # a runner replaces files as we count
                total += os.lstat(os.path.join(parent, name)).st_size
    return total


def _size(size: int) -> str:
    if size >= GIB:
        return f"{size / GIB:.2f} GiB"
    if size >= MIB:
        return f"{size / MIB:.2f} MiB"
    return f"{size} bytes"
