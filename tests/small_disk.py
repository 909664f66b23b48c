"""A real small file system for tests of a full disk: a tmpfs of a few MiB that the test mounts (the tests run
as root, in CI too), filled with filler files to the last bytes it is asked to leave, unmounted afterwards.

conftest.py offers it as the `small_disk` fixture.
"""

from __future__ import annotations

import errno
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

MIB = 2**20
FILLER_CHUNK = MIB


@dataclass
class SmallDisk:
    root: Path  # the mount point
    size_mib: int
    fillers: list[Path] = field(default_factory=list)

    def mount(self) -> SmallDisk:
        self.root.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size_mib}m", "tmpfs", str(self.root)], check=True)
        return self

    def unmount(self) -> None:
        if subprocess.run(["umount", str(self.root)], check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", str(self.root)], check=True)  # something still holds a file open

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def fill(self, leave: int = 0) -> None:
        """Take the free space but `leave` bytes (whole pages) with a new filler file; 0: to the last byte."""
        filler = self.root / f".filler-{len(self.fillers)}"
        self.fillers.append(filler)
        with open(filler, "wb", buffering=0) as out:
            while (room := self.free_bytes() - leave) > 0:
                try:
                    out.write(bytes(min(room, FILLER_CHUNK)))
                except OSError as error:  # another writer took the last pages meanwhile
                    if error.errno != errno.ENOSPC:
                        raise
                    return

    def unfill(self) -> None:
        """Give the space back: remove every filler file."""
        for filler in self.fillers:
            filler.unlink(missing_ok=True)
        self.fillers.clear()
