"""The data disk on a real small file system: which failures mean "no space left", the room a job or upload needs
with AVP_MIN_FREE_MB to spare, what the refusal says, and the setting itself."""

from __future__ import annotations

import errno
import sqlite3

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from app.config import Settings, SettingsError
from app.disk import DataDisk, DiskFull
from contract.disk import is_disk_full, say_bytes
from tests.small_disk import MIB


def test_every_kind_of_write_that_finds_no_space_is_recognised_and_nothing_else(small_disk) -> None:
    disk = small_disk(4)
    database = sqlite3.connect(disk.root / "portal.sqlite3", isolation_level=None)
    database.execute("PRAGMA journal_mode=WAL")
    database.execute("CREATE TABLE t (x)")
    disk.fill()
    failures = []
    with pytest.raises(OSError) as plain_write:
        (disk.root / "job.json").write_bytes(b"{}" * 4096)
    failures.append(plain_write.value)
    with pytest.raises(sqlite3.OperationalError) as sqlite_write:
        database.execute("INSERT INTO t VALUES (?)", ("x" * 8192,))
    failures.append(sqlite_write.value)
    with pytest.raises(OSError) as pillow_save:
        Image.new("RGB", (512, 512), "red").save(disk.root / "preview.jpg", format="PNG")
    failures.append(pillow_save.value)
    with pytest.raises(Exception) as safetensors_save:  # the prompt cache's writer has an error type of its own
        save_file({"context": torch.zeros(65536)}, disk.root / "prompt.safetensors")
    failures.append(safetensors_save.value)
    try:
        raise RuntimeError("the cache could not be written") from plain_write.value
    except RuntimeError as wrapped:
        failures.append(wrapped)
    failures.append(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert all(is_disk_full(failure) for failure in failures), [repr(f) for f in failures if not is_disk_full(f)]

    database.close()
    locked = sqlite3.OperationalError("database is locked")
    others = [OSError(errno.EACCES, "Permission denied"), FileNotFoundError(2, "gone"), locked, ValueError("no")]
    assert not any(is_disk_full(other) for other in others)


def test_a_job_fits_only_with_the_floor_to_spare_and_the_refusal_says_what_is_free_and_what_to_do(small_disk) -> None:
    disk = small_disk(16)
    data_disk = DataDisk(disk.root, min_free_bytes=4 * MIB)
    disk.fill(leave=6 * MIB)
    assert data_disk.status().free_bytes == 6 * MIB and data_disk.status().low is False

    data_disk.check_room(2 * MIB, "this job")  # 6 - 2 leaves the 4 of the floor
    with pytest.raises(DiskFull) as refused:
        data_disk.check_room(2 * MIB + 4096, "this job and the 1 queued or running before it")
    message = str(refused.value)
    assert "6.0 MB free, but this job and the 1 queued or running before it will write about 2.0 MB" in message
    assert "4.0 MB must stay free (AVP_MIN_FREE_MB)" in message
    assert "delete finished jobs" in message and "AVP_KEEP_DAYS or AVP_KEEP_GB" in message

    disk.fill(leave=3 * MIB)
    status = data_disk.status()
    assert status.low is True and status.free == "3.0 MB" and status.floor == "4.0 MB"
    with pytest.raises(DiskFull, match="3.0 MB free"):
        data_disk.check_room(0, "the upload")  # below the floor nothing fits
    full = data_disk.full("the job")
    assert full.message.startswith("The data disk is full (3.0 MB free): the job could not be saved.")

    disk.unfill()
    assert data_disk.status().low is False
    data_disk.check_room(8 * MIB, "this job")


def test_sizes_are_said_as_people_say_them() -> None:
    assert [say_bytes(n) for n in (0, 12 * 1024, 1536 * 1024, 37.5 * MIB, 250 * MIB, 18.2 * 1024 * MIB)] == [
        "0.0 KB",
        "12.0 KB",
        "1.5 MB",
        "37.5 MB",
        "250 MB",
        "18.2 GB",
    ]


def test_the_floor_is_a_gib_unless_set_and_a_bad_value_names_the_variable(tmp_path) -> None:
    data = {"AVP_DATA_DIR": str(tmp_path)}
    assert Settings.from_env(data).data_disk == DataDisk(tmp_path.resolve(), 1024 * MIB)
    assert Settings.from_env({**data, "AVP_MIN_FREE_MB": "0.5"}).data_disk.min_free_bytes == MIB // 2
    assert Settings.from_env({**data, "AVP_MIN_FREE_MB": "0"}).data_disk.min_free_bytes == 0
    for bad in ("lots", "-1", "inf", "nan"):
        with pytest.raises(SettingsError, match=f"AVP_MIN_FREE_MB={bad!r}"):
            Settings.from_env({**data, "AVP_MIN_FREE_MB": bad})
