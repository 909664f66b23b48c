"""The caches' one budget on real files: least recently used first by the use the runner records, never an
entry in use (in this process or another), caps inside the budget, whole-directory entries, writes in progress."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpu_runner import cache_budget
from gpu_runner.cache_budget import Cache, CacheBudget, Limit
from tests.portal import REPO_ROOT

KB = 1000
LOG = "gpu_runner.cache_budget"


def entry(directory: Path, name: str, size: int, used_at_s: int) -> Path:
    """A cache entry of `size` bytes last used `used_at_s` seconds into the epoch. Its access time says the
    opposite order (newest for the oldest use): the budget must not read it, as noatime mounts never update it."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(b"x" * size)
    os.utime(path, ns=(10**18 - used_at_s * 10**9, used_at_s * 10**9))
    return path


def budget(*caches: Cache, limit: int) -> CacheBudget:
    return CacheBudget(caches, Limit(limit, "AVP_CACHE_GB=test"))


def test_the_least_recently_used_entries_go_first_until_a_new_one_fits(tmp_path, caplog) -> None:
    prompts, weights = Cache(tmp_path / "prompts"), Cache(tmp_path / "weights")
    oldest = entry(prompts.directory, "a.safetensors", 3 * KB, used_at_s=100)
    middle = entry(weights.directory, "b.safetensors", 3 * KB, used_at_s=200)
    newest = entry(prompts.directory, "c.safetensors", 3 * KB, used_at_s=300)
    caches = budget(prompts, weights, limit=10 * KB)

    with caplog.at_level(logging.INFO, logger=LOG):
        assert caches.make_room(prompts.directory / "d.safetensors", 2 * KB)  # 9 + 2 > 10: one must go
    assert not oldest.exists() and middle.exists() and newest.exists()
    assert f"removed {oldest} (3000 bytes" in caplog.text
    assert "the caches took 9000 bytes with 2000 bytes to write, over AVP_CACHE_GB=test" in caplog.text

    assert caches.make_room(prompts.directory / "e.safetensors", 5 * KB)  # 6 + 5 > 10: the next oldest goes
    assert not middle.exists() and newest.exists()


def test_a_use_is_recorded_so_an_entry_read_lately_stays(tmp_path) -> None:
    cache = Cache(tmp_path / "prompts")
    first = entry(cache.directory, "a.safetensors", 3 * KB, used_at_s=100)
    second = entry(cache.directory, "b.safetensors", 3 * KB, used_at_s=200)
    with cache_budget.using(first) as present:
        assert present
    with cache_budget.using(cache.directory / "never-written.safetensors") as present:
        assert not present

    assert budget(cache, limit=5 * KB).make_room(cache.directory / "c.safetensors", 2 * KB)
    assert first.exists() and not second.exists(), "the entry read lately is the most recently used"


def test_an_entry_in_use_is_skipped_and_the_next_least_recently_used_goes(tmp_path, caplog) -> None:
    cache = Cache(tmp_path / "weights")
    in_use = entry(cache.directory, "a.safetensors", 4 * KB, used_at_s=100)
    idle = entry(cache.directory, "b.safetensors", 4 * KB, used_at_s=200)
    caches = budget(cache, limit=6 * KB)

    with caplog.at_level(logging.INFO, logger=LOG), cache_budget.using(in_use):
        os.utime(in_use, ns=(0, 100 * 10**9))  # held since long before the other entry was last used
        assert caches.make_room(cache.directory / "c.safetensors", 2 * KB)
        assert in_use.exists() and not idle.exists()
        assert f"kept {in_use}" in caplog.text and "a runner is using it" in caplog.text

        assert not caches.make_room(cache.directory / "d.safetensors", 3 * KB), "only the entry in use is left"
        assert in_use.exists() and "not writing" in caplog.text


def test_an_entry_another_process_holds_survives_every_sweep_until_it_lets_go(tmp_path) -> None:
    cache = Cache(tmp_path / "prompts")
    held = entry(cache.directory, "a.safetensors", 4 * KB, used_at_s=100)
    caches = budget(cache, limit=1 * KB)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from gpu_runner import cache_budget\n"
            "with cache_budget.using(Path(sys.argv[1])) as present:\n"
            "    print('held' if present else 'missing', flush=True); sys.stdin.read()",
            str(held),
        ],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        caches.sweep()
        caches.sweep()
        assert held.exists()
    finally:
        holder.communicate("", timeout=60)  # it lets go and exits
    assert holder.returncode == 0

    caches.sweep()
    assert not held.exists()


def test_a_cache_with_its_own_cap_gives_up_its_entries_first_for_the_cap(tmp_path) -> None:
    prompts = Cache(tmp_path / "prompts", cap=Limit(5 * KB, "AVP_PROMPT_CACHE_MB=test"))
    weights = Cache(tmp_path / "weights")
    weight = entry(weights.directory, "w.safetensors", 4 * KB, used_at_s=100)  # the oldest of all
    old_prompt = entry(prompts.directory, "a.safetensors", 2 * KB, used_at_s=200)
    new_prompt = entry(prompts.directory, "b.safetensors", 2 * KB, used_at_s=300)
    caches = budget(prompts, weights, limit=100 * KB)

    assert caches.make_room(prompts.directory / "c.safetensors", 2 * KB)  # 4 + 2 > 5 prompt bytes
    assert weight.exists() and not old_prompt.exists() and new_prompt.exists()

    budget(prompts, weights, limit=5 * KB).sweep()  # the prompts are within their cap, 4 + 2 not within 5
    assert not weight.exists() and new_prompt.exists()


def test_a_whole_directory_is_one_entry_of_all_its_bytes_kept_while_held(tmp_path, caplog) -> None:
    compiled = Cache(tmp_path / "compiled", whole=True)  # torch's compile cache: its files refer to each other
    kernel = compiled.directory / "triton" / "0" / "kernel.cubin"
    kernel.parent.mkdir(parents=True)
    kernel.write_bytes(b"k" * 3 * KB)
    (compiled.directory / "fxgraph.bin").write_bytes(b"g" * 2 * KB)
    caches = budget(compiled, limit=4 * KB)
    assert [(e.path, e.size) for e in caches.entries()] == [(compiled.directory, 5 * KB)]

    with cache_budget.using(compiled.directory, directory=True):
        caches.sweep()
        assert kernel.exists(), "a job is compiling with it"
    with caplog.at_level(logging.INFO, logger=LOG):
        caches.sweep()
    assert not compiled.directory.exists()
    assert f"removed {compiled.directory} (5000 bytes" in caplog.text


def test_a_write_in_progress_is_never_taken_and_one_a_crash_left_is(tmp_path) -> None:
    cache = Cache(tmp_path / "weights")
    caches = budget(cache, limit=1)
    target = cache.directory / "new.safetensors"

    with cache_budget.writing(target) as partial:
        partial.write_bytes(b"w" * KB)
        caches.sweep()
        assert partial.read_bytes() == b"w" * KB
    assert target.read_bytes() == b"w" * KB and not target.with_suffix(".partial").exists()

    with pytest.raises(RuntimeError), cache_budget.writing(cache.directory / "failed.safetensors") as partial:
        partial.write_bytes(b"half")
        raise RuntimeError("the writer failed half-way")
    assert sorted(p.name for p in cache.directory.iterdir()) == ["new.safetensors"]

    crashed = cache.directory / "crashed.partial"
    crashed.mkdir()
    (crashed / ".tmp123").write_bytes(b"t" * KB)  # a writer's temporary file, its process gone
    caches.sweep()
    assert not crashed.exists() and not target.exists()


def test_an_entry_larger_than_the_budget_is_not_written_and_nothing_goes_for_it(tmp_path) -> None:
    cache = Cache(tmp_path / "weights")
    kept = entry(cache.directory, "a.safetensors", 1 * KB, used_at_s=100)
    assert not budget(cache, limit=10 * KB).make_room(cache.directory / "huge.safetensors", 11 * KB)
    assert kept.exists()


def test_files_that_are_not_entries_are_neither_counted_nor_removed(tmp_path) -> None:
    cache = Cache(tmp_path / "weights")  # AVP_WEIGHT_CACHE_DIR may name a directory holding other things
    other = cache.directory / "notes.txt"
    entry(cache.directory, "a.safetensors", 1 * KB, used_at_s=100)
    other.write_bytes(b"n" * 50 * KB)
    caches = budget(cache, limit=10 * KB)
    assert [e.path.name for e in caches.entries()] == ["a.safetensors"]
    caches.sweep()
    assert other.exists() and (cache.directory / "a.safetensors").exists()


def test_a_prompt_entry_that_finds_the_disk_full_is_not_kept_and_the_job_goes_on(small_disk, caplog) -> None:
    import torch

    from gpu_runner.prompt_cache import PromptCache

    disk = small_disk(4)
    directory = disk.root / "prompts"
    directory.mkdir()
    prompts = PromptCache(directory, budget(Cache(directory), limit=1000 * KB * KB))
    disk.fill()
    with caplog.at_level(logging.WARNING, logger="gpu_runner.prompt_cache"):
        prompts.put("a-key", {"context": torch.zeros(65536)})  # 256 KiB: no room
    assert prompts.get("a-key") is None and list(directory.iterdir()) == [], "no entry, no partial left"
    assert "the disk is full" in caplog.text
