"""The migration runner: ordered steps, one transaction each, a version that only goes up, idempotent reruns."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from app import migrations
from app.store import Store

OLD_RELEASE_DB = Path(__file__).resolve().parent.parent / "data" / "release-8da605c" / "portal.sqlite3"


def connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)  # autocommit, as the store opens it


def layout(db: sqlite3.Connection) -> dict[str, list[tuple]]:
    """Every table's columns and every index's columns, independent of how the CREATE text was spelled."""
    rows = db.execute("SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name")
    return {name: db.execute(f"PRAGMA {kind}_xinfo({name})").fetchall() for kind, name in rows}


def test_a_new_database_is_created_at_the_latest_version(tmp_path: Path) -> None:
    db = connect(tmp_path / "new.sqlite3")
    assert migrations.migrate(db) == 0
    assert migrations.schema_version(db) == migrations.LATEST
    assert {"jobs", "job_events", "uploads", "jobs_status"} <= set(layout(db))


def test_the_previous_releases_database_is_upgraded_keeping_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    shutil.copy(OLD_RELEASE_DB, path)
    db = connect(path)
    assert migrations.schema_version(db) == 0  # releases up to 8da605c kept no version
    rows = db.execute("SELECT * FROM jobs ORDER BY seq").fetchall()
    events = db.execute("SELECT * FROM job_events ORDER BY job_id, id").fetchall()
    assert len(rows) == 3 and events

    assert migrations.migrate(db) == 0
    assert migrations.schema_version(db) == migrations.LATEST
    # Every row as it was, its request naming the mode it ran (v4: quality); later steps add columns after these:
    # v2 the estimate (empty for jobs submitted before it), v3 retention's keep mark and removal time (not kept,
    # files not removed), v6 the queue's priority (none: submission order), v8 the batch (none: submitted alone),
    # v9 the provenance (none recorded), v10 the text phase's choices (no length chosen, no enhanced prompt),
    # v11 the runner slot (none: they ran on the one runner there was).
    old_columns = len(rows[0])
    upgraded = db.execute("SELECT * FROM jobs ORDER BY seq").fetchall()
    request = 3  # jobs.request's column
    for new, old in zip(upgraded, rows, strict=True):
        assert new[:request] + new[request + 1 : old_columns] == old[:request] + old[request + 1 :]
        assert json.loads(new[request]) == json.loads(old[request]) | {"mode": "quality"}
    assert [row[old_columns:] for row in upgraded] == [(None, 0, None, 0, None, None, None, None, None)] * 3
    assert db.execute("SELECT * FROM job_events ORDER BY job_id, id").fetchall() == events
    # version 1 is exactly the schema that release made: a new database has the same tables, columns and indexes
    fresh = connect(tmp_path / "fresh.sqlite3")
    migrations.migrate(fresh, migrations.MIGRATIONS[:1])
    shutil.copy(OLD_RELEASE_DB, tmp_path / "as-made.sqlite3")
    assert layout(fresh) == layout(connect(tmp_path / "as-made.sqlite3"))


def test_the_store_opens_an_old_database_and_reads_its_jobs(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    shutil.copy(OLD_RELEASE_DB, path)
    store = Store(path)
    try:
        jobs = store.list_jobs(10)
        assert [job.request.prompt for job in jobs][-1] == "a red ball bouncing with clicks"
        assert jobs[-1].request.seed == 1234 and jobs[-1].request.negative_prompt == "blurry"
    finally:
        store.close()
    assert migrations.schema_version(connect(path)) == migrations.LATEST


def recording_steps(calls: list[str]) -> tuple[migrations.Migration, ...]:
    def v1(db: sqlite3.Connection) -> None:
        calls.append("v1")
        db.execute("CREATE TABLE IF NOT EXISTS a (x)")

    def v2(db: sqlite3.Connection) -> None:
        calls.append("v2")
        db.execute("CREATE TABLE IF NOT EXISTS b (y)")

    return v1, v2


def test_steps_run_in_order_only_above_the_databases_version_and_a_rerun_is_a_no_op(tmp_path: Path) -> None:
    calls: list[str] = []
    db = connect(tmp_path / "db.sqlite3")
    v1, v2 = recording_steps(calls)
    assert migrations.migrate(db, (v1,)) == 0
    assert calls == ["v1"] and migrations.schema_version(db) == 1

    assert migrations.migrate(db, (v1, v2)) == 1  # a later release: only its new step runs
    assert calls == ["v1", "v2"] and migrations.schema_version(db) == 2

    assert migrations.migrate(db, (v1, v2)) == 2
    assert calls == ["v1", "v2"]  # nothing ran again
    assert {"a", "b"} <= set(layout(db))


def test_a_failing_step_leaves_the_database_at_the_last_whole_version(tmp_path: Path) -> None:
    calls: list[str] = []
    v1, _ = recording_steps(calls)

    def broken(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE c (z)")
        raise RuntimeError("half-way")

    db = connect(tmp_path / "db.sqlite3")
    with pytest.raises(RuntimeError, match="half-way"):
        migrations.migrate(db, (v1, broken))
    assert migrations.schema_version(db) == 1
    assert "c" not in layout(db)  # the step's table went with its rollback
    assert not db.in_transaction


def test_a_database_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    db = connect(tmp_path / "db.sqlite3")
    db.execute(f"PRAGMA user_version = {migrations.LATEST + 1}")
    with pytest.raises(migrations.SchemaTooNew, match="newer than this release"):
        migrations.migrate(db)
    assert migrations.schema_version(db) == migrations.LATEST + 1


def test_a_database_whose_version_2_added_retentions_columns_upgrades_to_every_column(tmp_path: Path) -> None:
    """A development build numbered retention's step 2 (keep, files_removed_at) before the estimate took it."""
    db = connect(tmp_path / "db.sqlite3")
    migrations.migrate(db, migrations.MIGRATIONS[:1])
    db.execute("ALTER TABLE jobs ADD COLUMN keep INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE jobs ADD COLUMN files_removed_at REAL")
    db.execute("PRAGMA user_version = 2")

    assert migrations.migrate(db) == 2
    fresh = connect(tmp_path / "fresh.sqlite3")
    migrations.migrate(fresh)
    without_position = [{column[1:] for column in layout(d)["jobs"]} for d in (db, fresh)]
    assert without_position[0] == without_position[1]  # the same columns, in another order


def test_a_database_whose_version_10_was_the_slot_gets_the_text_phase_columns_at_11(tmp_path: Path) -> None:
    """A development build numbered the slot migration 10: its databases skip today's v10, so v11 adds its columns."""
    db = connect(tmp_path / "slots-first.sqlite3")
    migrations.migrate(db, migrations.MIGRATIONS[:9])
    db.execute("ALTER TABLE jobs ADD COLUMN slot TEXT")
    db.execute("PRAGMA user_version = 10")

    migrations.migrate(db)

    columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
    assert {"slot", "num_frames_chosen", "enhanced_prompt"} <= columns
    assert migrations.schema_version(db) == migrations.LATEST
