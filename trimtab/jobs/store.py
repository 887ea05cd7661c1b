"""The fine-tuning jobs store: files, jobs, events, checkpoints and schedulers in one database.

Design:

* **The database is the source of truth.** Every process (API server, schedulers, workers)
  reads and writes job state here and keeps nothing authoritative in memory, so a crash loses
  at most the work in flight and any process can pick up where another stopped.
* **One code path, two backends.** SQLAlchemy Core (no ORM) over SQLite (the default: a file
  in the data folder) or PostgreSQL (several hosts). Only the few statements SQL leaves to the
  dialect (upserts, locking) differ, and each says why.
* **One transaction per state change.** A job's new status and the event that announces it
  are written together or not at all (``update_job(..., event=...)``); a job and its first
  event likewise (``insert_job``). Claims are conditional UPDATEs (``WHERE status IN ...``):
  of two processes claiming one job, exactly one sees a changed row.
* **Why BEGIN IMMEDIATE (SQLite).** A plain (deferred) transaction that reads and then writes
  must upgrade its lock; if another connection wrote meanwhile, SQLite fails at once with
  "database is locked" instead of waiting. ``BEGIN IMMEDIATE`` takes the write lock first, so
  writers from several processes queue on ``busy_timeout``; in WAL mode readers never wait.
  Within one process a ``threading.Lock`` admits one writer at a time, so threads queue on
  the lock rather than polling the busy handler.
* **Versioned migrations.** The tables and the migrations that bring an older database to
  their version live in :mod:`trimtab.jobs.migrations`; a store runs them, in one write
  transaction, when it opens a database. A newer database is refused.

Rows are plain dicts keyed by column name; JSON columns come back as Python values.
"""

from __future__ import annotations

import contextlib
import secrets
import string
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import EllipsisType
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from trimtab.errors import TrimtabError
from trimtab.jobs import migrations
from trimtab.jobs.migrations import (
    LATEST_VERSION,
    MIGRATIONS,
    checkpoints,
    events,
    files,
    jobs,
    metadata,
    schedulers,
    schema_version_table,
)

Row = dict[str, Any]

# The optional keys of an event dict (insert_job, update_job) and their defaults.
_EVENT_DEFAULTS = dict(level="info", type="message", data=None, key=None, created_at=None)

_ID_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str) -> str:
    """``prefix`` followed by 24 random letters and digits (from ``secrets``)."""
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


def _parse_url(url: str | Path) -> tuple[URL, Literal["sqlite", "postgresql"]]:
    """The SQLAlchemy URL for a path or a ``sqlite:///`` / ``postgresql://`` URL, and its kind."""
    if isinstance(url, Path) or "://" not in url:
        return URL.create("sqlite", database=str(Path(url).expanduser().absolute())), "sqlite"
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise TrimtabError(f"invalid database URL {_mask(url)}: {e}") from None
    if parsed.drivername in ("sqlite", "sqlite+pysqlite"):
        if parsed.database in (None, "", ":memory:"):
            raise TrimtabError(
                f"database URL {_mask(url)} names no file: the jobs store must outlive the "
                "process, use sqlite:///path/to/jobs.db"
            )
        return parsed.set(drivername="sqlite"), "sqlite"
    if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg"):
        # psycopg 3 is the driver we install; plain postgresql:// would mean psycopg2.
        return parsed.set(drivername="postgresql+psycopg"), "postgresql"
    raise TrimtabError(
        f"unsupported database URL {_mask(url)} (scheme {parsed.drivername!r}): use a file "
        "path, sqlite:///path/to/jobs.db or postgresql://user:password@host/database"
    )


def _mask(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url.split("@")[-1]  # unparsable: drop anything that could be credentials


class Store:
    """The jobs database. All methods are thread-safe; open one Store per process."""

    def __init__(self, url: str | Path) -> None:
        """Open (and create or migrate) the database at a path or URL.

        Raises TrimtabError for an unsupported URL, a database that cannot be opened, or one
        written by a newer trimtab.
        """
        parsed, self.kind = _parse_url(url)
        # Name the database as the user gave it (password masked) in every message.
        self.url: str = _mask(str(url)) if "://" in str(url) else parsed.render_as_string()
        # One writer per process on SQLite (see the module docstring); PostgreSQL's row locks
        # let writers run side by side.
        self._writer: contextlib.AbstractContextManager[object] = (
            threading.Lock() if self.kind == "sqlite" else contextlib.nullcontext()
        )
        try:
            if self.kind == "sqlite":
                Path(parsed.database or "").parent.mkdir(parents=True, exist_ok=True)
                self._engine = sa.create_engine(parsed, connect_args={"isolation_level": None})
                sa.event.listen(self._engine, "connect", _sqlite_pragmas)
                sa.event.listen(self._engine, "begin", _sqlite_begin)
            else:
                self._engine = sa.create_engine(parsed, pool_pre_ping=True)
        except (OSError, ArgumentError, ImportError) as e:
            raise TrimtabError(f"cannot open the jobs database {self.url}: {e}") from None
        try:
            self._migrate()
        except DBAPIError as e:
            self._engine.dispose()
            reason = str(e.orig).strip() or type(e.orig).__name__
            raise TrimtabError(f"cannot open the jobs database {self.url}: {reason}") from None
        except BaseException:
            self._engine.dispose()
            raise

    def close(self) -> None:
        """Close every pooled connection."""
        self._engine.dispose()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        """A write transaction: committed on success, rolled back on any exception."""
        with self._writer, self._engine.connect() as conn:
            conn.execution_options(trimtab_write=True)  # read by _sqlite_begin
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        """A read transaction: one consistent snapshot for queries that take several steps."""
        with self._engine.connect() as conn, conn.begin():
            yield conn

    def _insert(self, table: sa.Table) -> Any:
        # Upserts (ON CONFLICT) exist only in the dialects' own insert(); the two have the
        # same on_conflict_do_nothing / on_conflict_do_update interface.
        return pg_insert(table) if self.kind == "postgresql" else sqlite_insert(table)

    def _migrate(self) -> None:
        with self._write() as conn:
            migrations.migrate(conn, self.url)

    def schema_version(self) -> int:
        """The schema version recorded in the database."""
        with self._read() as conn:
            return migrations.current_version(conn)

    # files

    def insert_file(self, row: Row) -> None:
        """Insert one file row (every column of ``files``)."""
        with self._write() as conn:
            conn.execute(files.insert().values({"created_ns": time.time_ns(), **row}))

    def get_file(self, file_id: str) -> Row | None:
        """The file's row, or None."""
        with self._read() as conn:
            found = conn.execute(sa.select(files).where(files.c.id == file_id)).first()
        return dict(found._mapping) if found else None

    def list_files(
        self,
        *,
        purpose: str | None = None,
        limit: int = 10000,
        order: Literal["asc", "desc"] = "desc",
        after: str | None = None,
    ) -> tuple[list[Row], bool]:
        """A page of files in creation order (``order``), and whether more follow.

        ``after`` is the id of the previous page's last file; an unknown id gives an empty page.
        """
        query = sa.select(files)
        if purpose is not None:
            query = query.where(files.c.purpose == purpose)
        with self._read() as conn:
            return _keyset_page(
                conn, query, ("created_at", "created_ns", "id"), order == "desc", after, limit
            )

    def delete_file(self, file_id: str) -> bool:
        """Delete the file's row; whether it existed."""
        with self._write() as conn:
            return conn.execute(sa.delete(files).where(files.c.id == file_id)).rowcount == 1

    # jobs

    def insert_job(self, row: Row, event: Row | None = None) -> None:
        """Insert a job and, in the same transaction, its first event (see ``add_event``)."""
        with self._write() as conn:
            now = {"updated_at": time.time(), "created_ns": time.time_ns()}
            conn.execute(jobs.insert().values({**now, **row}))
            if event is not None:
                self._insert_event(conn, row["id"], event)

    def get_job(self, job_id: str) -> Row | None:
        """The job's row, or None."""
        with self._read() as conn:
            found = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()
        return dict(found._mapping) if found else None

    def list_jobs(
        self, *, after: str | None = None, limit: int = 20, metadata: dict[str, str] | None = None
    ) -> tuple[list[Row], bool]:
        """A page of jobs, newest first, and whether more follow.

        ``after`` is the id of the previous page's last job (unknown: an empty page);
        ``metadata`` keeps the jobs whose metadata holds every one of its pairs. A sweep's
        trials are left out: they are listed by :meth:`list_trials`.
        """
        query = sa.select(jobs).where(jobs.c.parent_id.is_(None))
        for name, value in (metadata or {}).items():
            query = query.where(self._metadata_has(name, value))
        with self._read() as conn:
            return _keyset_page(conn, query, ("created_at", "created_ns", "id"), True, after, limit)

    def insert_trial(self, row: Row, event: Row | None = None) -> bool:
        """Insert a sweep's trial (``row`` has parent_id and sweep_trial) and its first event,
        unless that trial of that sweep is recorded already; whether it was written."""
        with self._write() as conn:
            now = {"updated_at": time.time(), "created_ns": time.time_ns()}
            query = self._insert(jobs).values({**now, **row})
            query = query.on_conflict_do_nothing(index_elements=["parent_id", "sweep_trial"])
            written = _inserted(conn, query.returning(jobs.c.id))
            if written and event is not None:
                self._insert_event(conn, row["id"], event)
            return written

    def list_trials(self, parent_id: str) -> list[Row]:
        """The trials of a sweep job, in trial order."""
        query = sa.select(jobs).where(jobs.c.parent_id == parent_id).order_by(jobs.c.sweep_trial)
        with self._read() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def _metadata_has(self, name: str, value: str) -> Any:
        column = jobs.c["metadata"]
        if self.kind == "postgresql":
            return column[name].as_string() == value  # metadata ->> name
        # SQLite's JSON paths cannot quote a key holding '"'; json_each matches any key.
        pairs = sa.func.json_each(column).table_valued("key", "value")
        return sa.exists().where(pairs.c.key == name, pairs.c.value == value)

    def jobs_with_status(self, statuses: Iterable[str]) -> list[Row]:
        """Every job whose status is one of ``statuses``, oldest first."""
        query = (
            sa.select(jobs)
            .where(jobs.c.status.in_(list(statuses)))
            .order_by(jobs.c.created_at, jobs.c.created_ns, jobs.c.id)
        )
        with self._read() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def update_job(
        self,
        job_id: str,
        values: Row,
        *,
        expect_status: Iterable[str] | None = None,
        expect_owner: str | None | EllipsisType = ...,
        event: Row | None = None,
    ) -> bool:
        """Set ``values`` (and updated_at) on the job if it matches the expectations.

        ``expect_status``: the job's status must be one of these; ``expect_owner``: its owner
        must be this (None: no owner). If the row changed and ``event`` is given, the event is
        written in the same transaction. Returns whether the row changed: this is how every
        state change and every claim is made.
        """
        query = sa.update(jobs).where(jobs.c.id == job_id)
        if expect_status is not None:
            query = query.where(jobs.c.status.in_(list(expect_status)))
        if not isinstance(expect_owner, EllipsisType):
            owner = jobs.c.owner
            query = query.where(owner.is_(None) if expect_owner is None else owner == expect_owner)
        with self._write() as conn:
            changed = conn.execute(query.values({**values, "updated_at": time.time()})).rowcount
            if changed == 1 and event is not None:
                self._insert_event(conn, job_id, event)
        return changed == 1

    # events

    def add_event(
        self,
        job_id: str,
        message: str,
        *,
        level: str = "info",
        type: str = "message",
        data: dict[str, Any] | None = None,
        key: str | None = None,
        created_at: int | None = None,
    ) -> bool:
        """Append an event to the job; False (nothing written) when its (job_id, key) exists.

        ``type`` is "message" or "metrics"; ``key`` makes the event idempotent (a retried
        step does not log twice); ``created_at`` defaults to now (unix seconds).
        """
        fields = {"level": level, "type": type, "data": data, "key": key, "created_at": created_at}
        with self._write() as conn:
            return self._insert_event(conn, job_id, {"message": message, **fields})

    def _insert_event(self, conn: sa.Connection, job_id: str, event: Row) -> bool:
        """Insert ``event`` (a dict with message and optional add_event keywords) unless its
        (job_id, key) exists; whether it was written."""
        if "message" not in event or not set(event) <= {"message", *_EVENT_DEFAULTS}:
            raise ValueError(
                f"an event has a message and optionally {', '.join(_EVENT_DEFAULTS)}; "
                f"got {sorted(event)}"
            )
        row = {**_EVENT_DEFAULTS, **event, "id": new_id("ftevent-"), "job_id": job_id}
        if row["created_at"] is None:
            row["created_at"] = int(time.time())
        query = self._insert(events).values(row)
        query = query.on_conflict_do_nothing(index_elements=["job_id", "key"])
        return _inserted(conn, query.returning(events.c.id))

    def list_events(
        self, job_id: str, *, after: str | None = None, limit: int = 20
    ) -> tuple[list[Row], bool]:
        """A page of the job's events, newest first, and whether older ones follow.

        ``after`` is an event id: the page continues with the events older than it.
        """
        query = sa.select(events).where(events.c.job_id == job_id)
        with self._read() as conn:
            return _keyset_page(conn, query, ("seq",), True, after, limit)

    # checkpoints

    def upsert_checkpoint(
        self, job_id: str, step: int, metrics: dict[str, Any], model_id: str
    ) -> bool:
        """Record the job's checkpoint at ``step``; True when new, else its metrics and
        model_id are updated."""
        row = {
            "id": new_id("ftckpt_"),
            "job_id": job_id,
            "step": step,
            "created_at": int(time.time()),
            "metrics": metrics,
            "model_id": model_id,
        }
        # Insert-or-nothing then update: atomic on both backends (a SELECT first would race
        # on PostgreSQL) and tells a new checkpoint from an updated one without dialect tricks.
        with self._write() as conn:
            query = self._insert(checkpoints).values(row)
            query = query.on_conflict_do_nothing(index_elements=["job_id", "step"])
            if _inserted(conn, query.returning(checkpoints.c.id)):
                return True
            conn.execute(
                sa.update(checkpoints)
                .where(checkpoints.c.job_id == job_id, checkpoints.c.step == step)
                .values(metrics=metrics, model_id=model_id)
            )
            return False

    def list_checkpoints(
        self, job_id: str, *, after: str | None = None, limit: int = 10
    ) -> tuple[list[Row], bool]:
        """A page of the job's checkpoints, newest step first, and whether more follow.

        ``after`` is a checkpoint id: the page continues with earlier steps.
        """
        query = sa.select(checkpoints).where(checkpoints.c.job_id == job_id)
        with self._read() as conn:
            return _keyset_page(conn, query, ("step",), True, after, limit)

    def delete_checkpoints(self, job_id: str, keep_steps: set[int]) -> int:
        """Delete the job's checkpoints whose step is not in ``keep_steps``; how many."""
        c = checkpoints.c
        query = sa.delete(checkpoints).where(c.job_id == job_id, c.step.not_in(list(keep_steps)))
        with self._write() as conn:
            return int(conn.execute(query).rowcount)

    # schedulers

    def heartbeat(self, owner: str, host: str, pid: int) -> None:
        """Record that the scheduler ``owner`` is alive now."""
        query = self._insert(schedulers).values(
            owner=owner, host=host, pid=pid, heartbeat=time.time()
        )
        query = query.on_conflict_do_update(
            index_elements=["owner"],
            set_={name: query.excluded[name] for name in ("host", "pid", "heartbeat")},
        )
        with self._write() as conn:
            conn.execute(query)

    def live_owners(self, ttl: float) -> set[str]:
        """The schedulers whose last heartbeat is at most ``ttl`` seconds old."""
        query = sa.select(schedulers.c.owner).where(schedulers.c.heartbeat >= time.time() - ttl)
        with self._read() as conn:
            return set(conn.scalars(query))

    def forget_owner(self, owner: str) -> None:
        """Remove the scheduler's heartbeat row."""
        with self._write() as conn:
            conn.execute(sa.delete(schedulers).where(schedulers.c.owner == owner))


def _keyset_page(
    conn: sa.Connection,
    query: Any,
    keys: tuple[str, ...],
    desc: bool,
    after: str | None,
    limit: int,
) -> tuple[list[Row], bool]:
    """One page of ``query`` (a select of one table) ordered by ``keys`` (unique together),
    starting after the row whose id is ``after`` (unknown: an empty page), and whether more
    rows follow. Keyset paging: rows written meanwhile never shift a page."""
    table = query.get_final_froms()[0]
    columns = [table.c[k] for k in keys]
    query = query.order_by(*(c.desc() if desc else c for c in columns))
    if after is not None:
        mark = conn.execute(sa.select(*columns).where(table.c.id == after)).first()
        if mark is None:
            return [], False
        key, bound = sa.tuple_(*columns), sa.tuple_(*mark)
        query = query.where(key < bound if desc else key > bound)
    # One row past the page says whether another page follows, without a COUNT.
    rows = [dict(r._mapping) for r in conn.execute(query.limit(limit + 1))]
    return rows[:limit], len(rows) > limit


def _inserted(conn: sa.Connection, query: Any) -> bool:
    # An INSERT ... ON CONFLICT DO NOTHING wrote a row iff RETURNING gives one back. rowcount
    # would not do: SQLAlchemy keeps it only for UPDATE and DELETE (psycopg INSERTs read -1).
    return conn.execute(query).first() is not None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """Per-connection SQLite settings (pysqlite runs in autocommit: we send BEGIN ourselves)."""
    cursor = dbapi_connection.cursor()
    # busy_timeout first: switching a fresh file to WAL takes a lock that another process may
    # hold for a moment. WAL: readers never block the writer. synchronous=FULL: a committed
    # state change survives power loss. foreign_keys: SQLite ignores FKs (cascades) otherwise.
    for pragma in ("busy_timeout=30000", "journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _sqlite_begin(conn: sa.Connection) -> None:
    """Open SQLAlchemy's transaction: BEGIN IMMEDIATE for writes, plain BEGIN for reads."""
    write = conn.get_execution_options().get("trimtab_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


# The schema names callers import from here (defined in migrations.py since it split off).
__all__ = [
    "LATEST_VERSION",
    "MIGRATIONS",
    "Store",
    "metadata",
    "new_id",
    "schema_version_table",
]
