"""Schema migrations: a data directory made by any earlier release opens with this one.

The database's version is `PRAGMA user_version` (0: a database from before versions were kept,
or a new file). `MIGRATIONS[n - 1]` takes a database from version n - 1 to n; start-up runs every
step above the database's version, in order, each in its own transaction together with the new
version number, so a crash leaves the database at a whole version. A released step never changes:
a later schema change is a new step appended at the end. Steps are idempotent too (IF NOT EXISTS),
because a version-0 database may already hold the tables that step 1 creates.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

Migration = Callable[[sqlite3.Connection], None]


class SchemaTooNew(RuntimeError):
    """The database was written by a newer release; this one would not know its columns."""


def _v1_initial(db: sqlite3.Connection) -> None:
    """The schema as releases up to 8da605c created it (with version 0)."""
    for statement in (
        """CREATE TABLE IF NOT EXISTS jobs (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            status TEXT NOT NULL,
            request TEXT NOT NULL,
            progress TEXT NOT NULL DEFAULT '{}',
            error TEXT,
            result TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL
        )""",
        "CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, seq)",
        """CREATE TABLE IF NOT EXISTS job_events (
            job_id TEXT NOT NULL,
            id INTEGER NOT NULL,
            type TEXT NOT NULL,
            data TEXT NOT NULL,
            at REAL NOT NULL,
            PRIMARY KEY (job_id, id)
        ) WITHOUT ROWID""",
        """CREATE TABLE IF NOT EXISTS uploads (
            id TEXT PRIMARY KEY,
            filename TEXT NOT NULL,
            width INTEGER NOT NULL,
            height INTEGER NOT NULL,
            created_at REAL NOT NULL
        ) WITHOUT ROWID""",
    ):
        db.execute(statement)


def _add_missing_columns(db: sqlite3.Connection, columns: dict[str, str]) -> None:
    """Add each of `columns` (name: SQL type) that `jobs` lacks. Steps that add columns skip those already
    there, so a database made by a development build that numbered its steps differently still upgrades."""
    present = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
    for name, sql_type in columns.items():
        if name not in present:
            db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {sql_type}")


def _v2_job_estimate(db: sqlite3.Connection) -> None:
    """Each job's predicted cost (contract/cost.py), made when it is submitted; NULL for older jobs."""
    _add_missing_columns(db, {"estimate": "TEXT"})


def _v3_retention(db: sqlite3.Connection) -> None:
    """Retention (app/retention.py): whether a person marked the job keep, and when its files were removed.

    The estimate again: a development build numbered retention's step 2, and its databases skip step 2 here."""
    _add_missing_columns(db, {"keep": "INTEGER NOT NULL DEFAULT 0", "files_removed_at": "REAL", "estimate": "TEXT"})


def _v4_job_mode(db: sqlite3.Connection) -> None:
    """Each job's request names its mode (fast or quality); jobs from before modes ran quality, the one path."""
    db.execute(
        "UPDATE jobs SET request = json_set(request, '$.mode', 'quality') WHERE json_extract(request, '$.mode') IS NULL"
    )


def _v5_webhooks(db: sqlite3.Connection) -> None:
    """Signed webhooks (app/webhooks.py): a job's webhook, and every delivery with its attempts, kept so that a
    restart loses none (the id is the delivery's `webhook-id`, the same on every attempt)."""
    for statement in (
        """CREATE TABLE IF NOT EXISTS webhooks (
            job_id TEXT PRIMARY KEY,
            url TEXT NOT NULL,
            events TEXT NOT NULL
        ) WITHOUT ROWID""",
        """CREATE TABLE IF NOT EXISTS webhook_deliveries (
            id TEXT NOT NULL UNIQUE,
            job_id TEXT NOT NULL,
            event TEXT NOT NULL,
            url TEXT NOT NULL,
            body BLOB NOT NULL,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            next_at REAL,
            last_attempt_at REAL,
            last_status INTEGER,
            last_error TEXT
        )""",
        "CREATE INDEX IF NOT EXISTS webhook_deliveries_job ON webhook_deliveries(job_id, event, created_at)",
        "CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries(state, next_at)",
    ):
        db.execute(statement)


def _v6_queue_control(db: sqlite3.Connection) -> None:
    """The queue's order and state (app/queue.py): a queued job's priority (a move to the front raises it above
    every other; then submission order), whether the queue is paused, and the API's idempotency keys."""
    _add_missing_columns(db, {"priority": "INTEGER NOT NULL DEFAULT 0"})
    for statement in (
        "CREATE INDEX IF NOT EXISTS jobs_queue ON jobs(status, priority DESC, seq)",
        "CREATE TABLE IF NOT EXISTS queue_state (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
        """CREATE TABLE IF NOT EXISTS idempotency_keys (
            key TEXT PRIMARY KEY,
            body_hash TEXT NOT NULL,
            job_id TEXT NOT NULL,
            created_at REAL NOT NULL
        ) WITHOUT ROWID""",
        "CREATE INDEX IF NOT EXISTS idempotency_keys_age ON idempotency_keys(created_at)",
    ):
        db.execute(statement)


def _v7_job_list_filters(db: sqlite3.Connection) -> None:
    """The job list's filters (app/store.py, JobFilter) read the model and the prompt from each job's request: both
    indexed, so a model's newest jobs are found without reading every request, and a prompt search scans the
    prompts alone, newest first (a filter by status has jobs_status)."""
    db.execute("CREATE INDEX IF NOT EXISTS jobs_model ON jobs(json_extract(request, '$.model'), seq)")
    db.execute("CREATE INDEX IF NOT EXISTS jobs_prompt ON jobs(seq, json_extract(request, '$.prompt'))")


def _v8_batches(db: sqlite3.Connection) -> None:
    """Batches (POST /api/batches): the batch a job was submitted in, NULL for a job submitted alone; a batch's jobs
    are read by it, in submission order."""
    _add_missing_columns(db, {"batch_id": "TEXT"})
    db.execute("CREATE INDEX IF NOT EXISTS jobs_batch ON jobs(batch_id, seq) WHERE batch_id IS NOT NULL")


def _v9_job_provenance(db: sqlite3.Connection) -> None:
    """What made each job's clip (contract/provenance.py: the model's revision, its LoRAs' hashes, the portal's
    version), recorded at submit; NULL for older jobs."""
    _add_missing_columns(db, {"provenance": "TEXT"})


def _v10_text_phase_choices(db: sqlite3.Connection) -> None:
    """What the runner's text phase chose for a job (LTX-2.5, issue 16): the clip's length where its request left it
    to the duration head (num_frames "auto"), and the prompt enhancer's rewrite where it asked for one; NULL until
    the runner reports them, and for every other job."""
    _add_missing_columns(db, {"num_frames_chosen": "INTEGER", "enhanced_prompt": "TEXT"})


def _v11_job_slot(db: sqlite3.Connection) -> None:
    """Runner slots (AVP_GPUS): the slot a job runs or last ran on ("gpu0", "cpu1"); NULL for a job that never
    started, and for every job from before slots (they ran on the one runner there was). A development build
    numbered this migration 10: its databases lack v10's columns, added here."""
    _add_missing_columns(db, {"slot": "TEXT", "num_frames_chosen": "INTEGER", "enhanced_prompt": "TEXT"})


MIGRATIONS: tuple[Migration, ...] = (
    _v1_initial,
    _v2_job_estimate,
    _v3_retention,
    _v4_job_mode,
    _v5_webhooks,
    _v6_queue_control,
    _v7_job_list_filters,
    _v8_batches,
    _v9_job_provenance,
    _v10_text_phase_choices,
    _v11_job_slot,
)
LATEST = len(MIGRATIONS)


def schema_version(db: sqlite3.Connection) -> int:
    return db.execute("PRAGMA user_version").fetchone()[0]


def migrate(db: sqlite3.Connection, steps: Sequence[Migration] = MIGRATIONS) -> int:
    """Bring `db` (autocommit mode) up to `len(steps)`; returns the version it was at. A no-op when current."""
    found = schema_version(db)
    if found > len(steps):
        raise SchemaTooNew(
            f"the database is at schema version {found}, newer than this release's {len(steps)}; "
            "run the release that wrote it (or a later one)"
        )
    for version, step in enumerate(steps, start=1):
        # IMMEDIATE: a second process opening the same file waits here, then sees the version already done.
        db.execute("BEGIN IMMEDIATE")
        try:
            if schema_version(db) < version:
                step(db)
                db.execute(f"PRAGMA user_version = {version}")  # a pragma takes no parameters; an int is safe
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    return found
