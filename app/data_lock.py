"""One portal per data directory: an exclusive lock on `<data dir>/portal.lock`, held for the process's life.

Two portals on one data directory would each recover the other's running jobs and run them twice.
The lock is an flock, so the kernel lets go of it when its holder dies, however it dies (a SIGKILL
leaves nothing to clean up); the file's text says who holds it, for the message the next one prints.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE = "portal.lock"


class DataDirBusy(Exception):
    def __init__(self, data_dir: Path, holder: str) -> None:
        self.data_dir = data_dir
        self.holder = holder or "another process"  # it has locked the file but not yet written its name
        super().__init__(f"the data directory {data_dir} is in use by another portal ({self.holder})")


class DataDirLock:
    """Take the data directory's lock now, or raise DataDirBusy naming its holder.

    `holder` (who this process is: its pid and where it serves) goes into the file. The descriptor is
    not inherited by the runners this process spawns, so the lock ends with this process.
    """

    def __init__(self, data_dir: Path, holder: str) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / LOCK_FILE
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(self._fd, 4096).decode(errors="replace").strip()
            os.close(self._fd)
            raise DataDirBusy(data_dir, other) from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, holder.encode())
