"""A full disk, as both processes recognise it: the failures that mean "no space left", and sizes as people say them.

The web process answers such a failure with a 507 (app/disk.py) and the runner fails its job as `disk_full`
(gpu_runner/pipeline.py), so the same test decides both. Torch-free and litestar-free, as all of contract/.
"""

from __future__ import annotations

import errno
import os
import sqlite3

NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# Libraries that report a failed write in their own exception type keep the system's words (safetensors:
# "I/O error: No space left on device (os error 28)"); those words are all that is left to recognise it by.
_NO_SPACE_WORDS = tuple(os.strerror(number) for number in sorted(NO_SPACE_ERRNOS))
_SQLITE_FULL = 13  # SQLite's "database or disk is full" (the code is set only on errors SQLite itself raised)


def is_disk_full(error: BaseException) -> bool:
    """Whether `error`, or an error it was raised from or while handling, is a write refused for lack of space:
    ENOSPC or EDQUOT (PyAV's and Pillow's errors are OSErrors too), SQLite's SQLITE_FULL, or another library's
    error that quotes the system's message for those."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in NO_SPACE_ERRNOS:
            return True
        if isinstance(current, sqlite3.Error) and getattr(current, "sqlite_errorcode", None) == _SQLITE_FULL:
            return True
        if any(words in str(current) for words in _NO_SPACE_WORDS):
            return True
        current = current.__cause__ or current.__context__
    return False


def say_bytes(count: float) -> str:
    """A size as people say it: "512 KB", "37.5 MB", "18.2 GB" (powers of 1024, as `df -h` counts)."""
    value, unit = count / 1024, "KB"
    for bigger in ("MB", "GB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
