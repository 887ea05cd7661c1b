"""The jobs database's schema and its versioned migrations.

The Table definitions below are the latest version's; :data:`MIGRATIONS` bring a database of
any older version to it. ``schema_version`` holds the version; :func:`migrate` (called by
:class:`~trimtab.jobs.store.Store` when it opens a database) runs the migrations newer than it
in order, inside the caller's one write transaction, so a database is either fully upgraded or
left as it was. A database of a newer version is refused: this trimtab would misread it.

Adding a version: change the live definitions, append ``(N, _migrate_vN)`` whose function
brings version N-1 to N (and does nothing harmful on a database created at N from the live
definitions), and test the upgrade from N-1 in tests/jobs/test_store.py.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

from trimtab.errors import TrimtabError

metadata = sa.MetaData()


def _json() -> sa.JSON:
    # none_as_null: a Python None is stored as SQL NULL, not the JSON text 'null'.
    return sa.JSON(none_as_null=True)


files = sa.Table(
    "files",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("filename", sa.Text, nullable=False),
    sa.Column("purpose", sa.Text, nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("status_details", sa.Text),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("created_ns", sa.BigInteger),  # version 2: creation order within a second
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("created_at", sa.BigInteger, nullable=False, index=True),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("training_file", sa.Text, nullable=False),
    sa.Column("validation_file", sa.Text),
    sa.Column("suffix", sa.Text),
    sa.Column("seed", sa.BigInteger, nullable=False),
    sa.Column("metadata", _json()),
    sa.Column("method", sa.JSON, nullable=False),
    sa.Column("extension", _json()),
    sa.Column("hyperparameters", _json()),
    sa.Column("status", sa.Text, nullable=False, index=True),
    sa.Column("error", _json()),
    sa.Column("fine_tuned_model", sa.Text),
    sa.Column("finished_at", sa.BigInteger),
    sa.Column("trained_tokens", sa.BigInteger),
    sa.Column("estimated_finish", sa.BigInteger),
    sa.Column("result_files", sa.JSON, nullable=False, default=lambda: []),
    sa.Column("run_dir", sa.Text),
    sa.Column("config", _json()),
    sa.Column("owner", sa.Text),
    sa.Column("handle", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("requested", sa.Text),
    sa.Column("executor", sa.Text),
    sa.Column("created_ns", sa.BigInteger),  # version 2: creation order within a second
    # version 3: a sweep's trials are jobs whose parent is the sweep, numbered as its trials
    sa.Column("parent_id", sa.Text),
    sa.Column("sweep_trial", sa.Integer),
)
# Version 3's indexes: a sweep's trials by parent; one job per (sweep, trial number), so that
# two schedulers recording one trial write one job (NULLs never collide: other jobs are free).
jobs_parent_index = sa.Index("ix_jobs_parent_id", jobs.c.parent_id)
jobs_trial_index = sa.Index(
    "ux_jobs_parent_trial", jobs.c.parent_id, jobs.c.sweep_trial, unique=True
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("id", sa.Text, nullable=False, unique=True),
    sa.Column("job_id", sa.Text, sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("level", sa.Text, nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("data", _json()),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("key", sa.Text),
    # NULL keys never collide (both backends treat NULLs as distinct in UNIQUE).
    sa.UniqueConstraint("job_id", "key"),
    # AUTOINCREMENT: SQLite never reuses a seq, so seq order stays event order.
    sqlite_autoincrement=True,
)

checkpoints = sa.Table(
    "checkpoints",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("job_id", sa.Text, sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("metrics", sa.JSON, nullable=False),
    sa.Column("model_id", sa.Text, nullable=False),
    sa.UniqueConstraint("job_id", "step"),
)

schedulers = sa.Table(
    "schedulers",
    metadata,
    sa.Column("owner", sa.Text, primary_key=True),
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("heartbeat", sa.Float, nullable=False),
)

schema_version_table = sa.Table("schema_version", metadata, sa.Column("version", sa.Integer))


def _migrate_v1(conn: sa.Connection) -> None:
    # Creates the live Table definitions, which are version 1's. When a later migration alters
    # a table, copy version 1's definitions in here so that this keeps creating version 1.
    tables = [files, jobs, events, checkpoints, schedulers]
    metadata.create_all(conn, tables=tables, checkfirst=False)


def _migrate_v2(conn: sa.Connection) -> None:
    # created_at is OpenAI's whole seconds: jobs and files created in one second listed in a
    # random order. created_ns orders them; rows written before it get their second's start.
    # (A database created at version 2 already has the column, from the live definitions.)
    for table in (files, jobs):
        present = {c["name"] for c in sa.inspect(conn).get_columns(table.name)}
        if "created_ns" not in present:
            conn.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN created_ns BIGINT"))
        conn.execute(
            sa.update(table)
            .where(table.c.created_ns.is_(None))
            .values(created_ns=table.c.created_at * 1_000_000_000)
        )


def _migrate_v3(conn: sa.Connection) -> None:
    # Sweeps: a trial is a job with parent_id (its sweep) and sweep_trial (its number). As in
    # version 2, a database created at version 3 has the columns and indexes already.
    present = {c["name"] for c in sa.inspect(conn).get_columns("jobs")}
    for name, kind in (("parent_id", "TEXT"), ("sweep_trial", "INTEGER")):
        if name not in present:
            conn.execute(sa.text(f"ALTER TABLE jobs ADD COLUMN {name} {kind}"))
    for index in (jobs_parent_index, jobs_trial_index):
        index.create(conn, checkfirst=True)


MIGRATIONS: list[tuple[int, Callable[[sa.Connection], None]]] = [
    (1, _migrate_v1),
    (2, _migrate_v2),
    (3, _migrate_v3),
]
LATEST_VERSION = MIGRATIONS[-1][0]

# Any constant bigint: the key of the PostgreSQL advisory lock that serialises migrations.
_PG_MIGRATION_LOCK = 0x7472696D746162


def current_version(conn: sa.Connection) -> int:
    """The schema version recorded in the database (0: none, a fresh database)."""
    return conn.scalar(sa.select(sa.func.max(schema_version_table.c.version))) or 0


def migrate(conn: sa.Connection, database: str) -> None:
    """Bring the database to the latest version, within ``conn``'s write transaction.

    ``database`` names it in errors. Raises TrimtabError for a database written by a newer
    trimtab. Reads :data:`MIGRATIONS` when called, so that tests can wrap the migrations.
    """
    if conn.dialect.name == "postgresql":
        # Two processes opening a fresh database at once would both create the tables; the
        # lock (released at commit) makes the second wait and then see the latest version.
        # On SQLite, the store's BEGIN IMMEDIATE already serialises this transaction.
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_MIGRATION_LOCK)))
    schema_version_table.create(conn, checkfirst=True)
    version = current_version(conn)
    latest = MIGRATIONS[-1][0]
    if version > latest:
        raise TrimtabError(
            f"the jobs database {database} was written by a newer trimtab (schema version "
            f"{version}; this trimtab knows up to {latest}): upgrade trimtab"
        )
    for number, step in MIGRATIONS:
        if number > version:
            step(conn)
    if version < latest:
        conn.execute(sa.delete(schema_version_table))
        conn.execute(schema_version_table.insert().values(version=latest))


__all__ = [
    "LATEST_VERSION",
    "MIGRATIONS",
    "checkpoints",
    "current_version",
    "events",
    "files",
    "jobs",
    "metadata",
    "migrate",
    "schema_version_table",
    "schedulers",
]
