"""The store and keyframes/extensions (issue 17): an upload a job keys stays; a job knows what extends it."""

from __future__ import annotations

from app.store import Store
from contract.request import Keyframe, Request


def test_an_upload_used_only_as_a_keyframe_outlives_its_time_to_live_and_an_unused_one_does_not(tmp_path) -> None:
    store = Store(tmp_path / "portal.sqlite3")
    for upload_id in ("a" * 32, "b" * 32, "c" * 32):
        store.create_upload(upload_id, "k.png", 64, 64, created_at=0.0)
    keyframes = (Keyframe(upload_id="a" * 32, frame=0), Keyframe(upload_id="b" * 32, frame=-1))
    store.create_job("1" * 32, Request(prompt="a red ball", keyframes=keyframes), {"type": "queued"}, max_queued=10)
    assert store.expired_uploads(young_since=1.0) == ["c" * 32]


def test_a_job_lists_the_jobs_that_extend_it_oldest_first(tmp_path) -> None:
    store = Store(tmp_path / "portal.sqlite3")
    first, second, third = ("1" * 32, "2" * 32, "3" * 32)
    store.create_job(first, Request(prompt="a red ball"), {"type": "queued"}, max_queued=10)
    for later in (second, third):
        store.create_job(later, Request(prompt="on", extend_from=first), {"type": "queued"}, max_queued=10)
    assert store.extensions_of(first) == [second, third]
    assert store.extensions_of(second) == []
