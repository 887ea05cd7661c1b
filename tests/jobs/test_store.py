"""The jobs store (trimtab/jobs/store.py): every behaviour on SQLite and on PostgreSQL."""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import create_engine, event, update

from trimtab.errors import TrimtabError
from trimtab.jobs import migrations as migrations_module
from trimtab.jobs import store as store_module
from trimtab.jobs.store import LATEST_VERSION, Store, new_id, schema_version_table


@pytest.fixture
def store(store_url: str):
    s = Store(store_url)
    yield s
    s.close()


def file_row(file_id: str, created_at: int, purpose: str = "fine-tune") -> dict[str, Any]:
    return {
        "id": file_id,
        "filename": f"{file_id}.jsonl",
        "purpose": purpose,
        "bytes": 123,
        "created_at": created_at,
        "status": "processed",
        "status_details": None,
        "path": f"{file_id}.jsonl",
    }


def job_row(job_id: str | None = None, created_at: int = 1000, **extra: Any) -> dict[str, Any]:
    return {
        "id": job_id or new_id("ftjob-"),
        "created_at": created_at,
        "model": "tiny-llama",
        "training_file": "file-train",
        "seed": 42,
        "method": {"type": "supervised"},
        "status": "queued",
        **extra,
    }


def test_new_id_is_the_prefix_and_24_random_letters_or_digits():
    ids = {new_id("ftjob-") for _ in range(100)}
    assert len(ids) == 100
    for i in ids:
        assert i.startswith("ftjob-") and len(i) == 6 + 24 and i[6:].isalnum() and i.isascii()


def test_files_insert_get_and_delete(store: Store):
    store.insert_file(file_row("file-a", 10))
    got = store.get_file("file-a")
    assert got is not None and got.pop("created_ns") > 0  # the store's creation order
    assert got == file_row("file-a", 10)
    assert store.get_file("file-missing") is None
    assert store.delete_file("file-a") is True
    assert store.delete_file("file-a") is False
    assert store.get_file("file-a") is None


def test_list_files_filters_by_purpose_orders_and_pages_after_an_id(store: Store):
    # Two files share a created_at: creation order (created_ns) breaks the tie, so pages
    # never skip or repeat.
    for file_id, created_at, purpose in [
        ("file-1", 1, "fine-tune"),
        ("file-2", 2, "fine-tune"),
        ("file-3a", 3, "fine-tune"),
        ("file-3b", 3, "fine-tune"),
        ("file-x", 2, "batch"),
    ]:
        store.insert_file(file_row(file_id, created_at, purpose))

    def ids(rows: list[dict[str, Any]]) -> list[str]:
        return [r["id"] for r in rows]

    everything, more = store.list_files()
    assert ids(everything) == ["file-3b", "file-3a", "file-x", "file-2", "file-1"] and not more
    tuned, _ = store.list_files(purpose="fine-tune", order="asc")
    assert ids(tuned) == ["file-1", "file-2", "file-3a", "file-3b"]
    assert ids(store.list_files(purpose="batch")[0]) == ["file-x"]

    for order in ("asc", "desc"):
        seen, after, more = [], None, True
        while more:
            page, more = store.list_files(purpose="fine-tune", order=order, limit=3, after=after)
            seen += ids(page)
            after = page[-1]["id"]
        expected = ["file-1", "file-2", "file-3a", "file-3b"]
        assert seen == (expected if order == "asc" else expected[::-1])
    page, more = store.list_files(purpose="fine-tune", order="asc", limit=2, after="file-1")
    assert (ids(page), more) == (["file-2", "file-3a"], True)
    assert store.list_files(after="file-unknown") == ([], False)


def test_insert_job_writes_the_job_and_its_first_event_together(store: Store):
    row = job_row("ftjob-a", metadata={"team": "x"}, hyperparameters={"n_epochs": 3})
    store.insert_job(row, event={"message": "Validating training file"})
    job = store.get_job("ftjob-a")
    assert job is not None
    assert job["metadata"] == {"team": "x"} and job["method"] == {"type": "supervised"}
    assert job["result_files"] == [] and job["attempts"] == 0 and job["error"] is None
    assert isinstance(job["updated_at"], float)
    events, _ = store.list_events("ftjob-a")
    assert [(e["message"], e["level"], e["type"]) for e in events] == [
        ("Validating training file", "info", "message")
    ]
    assert events[0]["id"].startswith("ftevent-")
    # An event that cannot be written takes the job down with it: neither is stored.
    with pytest.raises(ValueError, match="an event has a message"):
        store.insert_job(job_row("ftjob-b"), event={"level": "info"})
    assert store.get_job("ftjob-b") is None
    assert store.get_job("ftjob-missing") is None


def test_list_jobs_is_newest_first_with_after_limit_and_metadata_filter(store: Store):
    for n in range(5):
        meta = {"team": "a" if n % 2 else "b", 'odd "key"': str(n % 2)}
        store.insert_job(job_row(f"ftjob-{n}", created_at=100 + n, metadata=meta))
    store.insert_job(job_row("ftjob-none", created_at=50))

    def ids(page: tuple[list[dict[str, Any]], bool]) -> tuple[list[str], bool]:
        return [r["id"] for r in page[0]], page[1]

    assert ids(store.list_jobs()) == (
        ["ftjob-4", "ftjob-3", "ftjob-2", "ftjob-1", "ftjob-0", "ftjob-none"],
        False,
    )
    assert ids(store.list_jobs(limit=2)) == (["ftjob-4", "ftjob-3"], True)
    assert ids(store.list_jobs(limit=2, after="ftjob-3")) == (["ftjob-2", "ftjob-1"], True)
    assert ids(store.list_jobs(limit=3, after="ftjob-1")) == (["ftjob-0", "ftjob-none"], False)
    assert ids(store.list_jobs(after="ftjob-unknown")) == ([], False)
    assert ids(store.list_jobs(metadata={"team": "a"})) == (["ftjob-3", "ftjob-1"], False)
    assert ids(store.list_jobs(metadata={"team": "b", 'odd "key"': "0"}, limit=2)) == (
        ["ftjob-4", "ftjob-2"],
        True,
    )
    assert ids(store.list_jobs(metadata={"team": "a", 'odd "key"': "0"})) == ([], False)
    assert ids(store.list_jobs(metadata={"team": "a"}, after="ftjob-3")) == (["ftjob-1"], False)


def test_jobs_with_status_is_oldest_first(store: Store):
    store.insert_job(job_row("ftjob-new", created_at=20))
    store.insert_job(job_row("ftjob-old", created_at=10))
    store.insert_job(job_row("ftjob-run", created_at=15, status="running"))
    assert [j["id"] for j in store.jobs_with_status({"queued"})] == ["ftjob-old", "ftjob-new"]
    assert [j["id"] for j in store.jobs_with_status(["queued", "running"])] == [
        "ftjob-old",
        "ftjob-run",
        "ftjob-new",
    ]
    assert store.jobs_with_status([]) == []


def test_of_two_concurrent_claims_exactly_one_wins(store: Store):
    job_ids = [new_id("ftjob-") for _ in range(10)]
    for job_id in job_ids:
        store.insert_job(job_row(job_id))
    wins: dict[str, list[str]] = {job_id: [] for job_id in job_ids}
    barrier = threading.Barrier(2)

    def claim(owner: str) -> None:
        for job_id in job_ids:
            barrier.wait()
            if store.update_job(
                job_id,
                {"status": "running", "owner": owner},
                expect_status={"queued"},
                event={"message": f"claimed by {owner}"},
            ):
                wins[job_id].append(owner)

    threads = [threading.Thread(target=claim, args=(o,)) for o in ("sched-a", "sched-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for job_id, winners in wins.items():
        assert len(winners) == 1
        job = store.get_job(job_id)
        assert job is not None and (job["status"], job["owner"]) == ("running", winners[0])
        assert [e["message"] for e in store.list_events(job_id)[0]] == [f"claimed by {winners[0]}"]


def test_update_job_writes_the_status_and_its_event_both_or_neither(store: Store):
    store.insert_job(job_row("ftjob-a", owner="sched-a"))
    before = store.get_job("ftjob-a")
    assert before is not None
    time.sleep(0.01)
    # Failed conditions: nothing changes and no event is written.
    assert not store.update_job(
        "ftjob-a", {"status": "running"}, expect_status={"paused"}, event={"message": "no"}
    )
    assert not store.update_job(
        "ftjob-a", {"status": "running"}, expect_owner="sched-b", event={"message": "no"}
    )
    assert not store.update_job(
        "ftjob-a", {"status": "running"}, expect_owner=None, event={"message": "no"}
    )
    assert not store.update_job("ftjob-missing", {"status": "running"}, event={"message": "no"})
    assert store.get_job("ftjob-a") == before
    assert store.list_events("ftjob-a") == ([], False)
    # Met conditions: the row and the event, updated_at moves.
    assert store.update_job(
        "ftjob-a",
        {"status": "failed", "error": {"code": "oom", "message": "out of memory"}},
        expect_status={"queued", "running"},
        expect_owner="sched-a",
        event={"message": "Job failed", "level": "error", "data": {"code": "oom"}},
    )
    after = store.get_job("ftjob-a")
    assert after is not None and after["status"] == "failed"
    assert after["error"] == {"code": "oom", "message": "out of memory"}
    assert after["updated_at"] > before["updated_at"]
    events, _ = store.list_events("ftjob-a")
    assert [(e["message"], e["level"], e["data"]) for e in events] == [
        ("Job failed", "error", {"code": "oom"})
    ]
    # An event that fails rolls the status back.
    with pytest.raises(ValueError, match="an event has a message"):
        store.update_job("ftjob-a", {"status": "queued"}, event={"message": "x", "nonsense": 1})
    job = store.get_job("ftjob-a")
    assert job is not None and job["status"] == "failed"
    # Without expectations the update is unconditional.
    assert store.update_job("ftjob-a", {"trained_tokens": 1234})


def test_add_event_with_the_same_key_twice_writes_one_event(store: Store):
    store.insert_job(job_row("ftjob-a"))
    store.insert_job(job_row("ftjob-b"))
    step = {"step": 10, "train_loss": 0.5}
    assert store.add_event("ftjob-a", "Step 10", type="metrics", data=step, key="step-10")
    assert not store.add_event("ftjob-a", "Step 10 again", type="metrics", key="step-10")
    # The same key on another job, and events without a key, never collide.
    assert store.add_event("ftjob-b", "Step 10", type="metrics", key="step-10")
    assert store.add_event("ftjob-a", "note", created_at=7)
    assert store.add_event("ftjob-a", "note")
    events, _ = store.list_events("ftjob-a")
    assert [(e["message"], e["key"]) for e in events] == [
        ("note", None),
        ("note", None),
        ("Step 10", "step-10"),
    ]
    assert events[1]["created_at"] == 7
    assert events[2]["type"] == "metrics" and events[2]["data"] == step


def test_list_events_is_newest_first_and_pages_to_older_events(store: Store):
    store.insert_job(job_row("ftjob-a"), event={"message": "m0"})
    store.insert_job(job_row("ftjob-b"), event={"message": "other job"})
    for n in range(1, 7):
        store.add_event("ftjob-a", f"m{n}", created_at=1)  # same second: seq keeps the order
    page, more = store.list_events("ftjob-a", limit=3)
    assert [e["message"] for e in page] == ["m6", "m5", "m4"] and more
    page, more = store.list_events("ftjob-a", limit=3, after=page[-1]["id"])
    assert [e["message"] for e in page] == ["m3", "m2", "m1"] and more
    page, more = store.list_events("ftjob-a", limit=3, after=page[-1]["id"])
    assert [e["message"] for e in page] == ["m0"] and not more
    assert store.list_events("ftjob-a", after="ftevent-unknown") == ([], False)
    assert store.list_events("ftjob-missing") == ([], False)


def test_checkpoints_upsert_list_and_delete(store: Store):
    store.insert_job(job_row("ftjob-a"))
    store.insert_job(job_row("ftjob-b"))
    for step in (10, 20, 30):
        assert store.upsert_checkpoint("ftjob-a", step, {"loss": 1 / step}, f"m:ckpt-{step}")
    assert store.upsert_checkpoint("ftjob-b", 10, {"loss": 9.0}, "other")
    # The same step again updates metrics and model_id in place.
    first, _ = store.list_checkpoints("ftjob-a", limit=100)
    assert not store.upsert_checkpoint("ftjob-a", 20, {"loss": 0.01}, "m:ckpt-20b")
    page, more = store.list_checkpoints("ftjob-a", limit=2)
    assert [(c["step"], c["metrics"], c["model_id"]) for c in page] == [
        (30, {"loss": 1 / 30}, "m:ckpt-30"),
        (20, {"loss": 0.01}, "m:ckpt-20b"),
    ]
    assert more and page[1]["id"] == first[1]["id"] and page[0]["id"].startswith("ftckpt_")
    rest, more = store.list_checkpoints("ftjob-a", limit=2, after=page[-1]["id"])
    assert [c["step"] for c in rest] == [10] and not more
    assert store.list_checkpoints("ftjob-a", after="ftckpt_unknown") == ([], False)
    assert store.delete_checkpoints("ftjob-a", keep_steps={30}) == 2
    assert [c["step"] for c in store.list_checkpoints("ftjob-a")[0]] == [30]
    assert store.delete_checkpoints("ftjob-a", keep_steps=set()) == 1
    assert store.list_checkpoints("ftjob-a") == ([], False)
    assert len(store.list_checkpoints("ftjob-b")[0]) == 1


def test_heartbeat_and_live_owners_within_ttl(store: Store, monkeypatch: pytest.MonkeyPatch):
    clock = SimpleNamespace(time=lambda: 1000.0)  # the store's clock, moved by hand
    monkeypatch.setattr(store_module, "time", clock)
    store.heartbeat("sched-a", "host1", 111)
    store.heartbeat("sched-b", "host2", 222)
    assert store.live_owners(60) == {"sched-a", "sched-b"}
    clock.time = lambda: 1030.0
    store.heartbeat("sched-b", "host2", 223)  # an upsert: same owner, fresh heartbeat
    assert store.live_owners(30) == {"sched-a", "sched-b"}  # within ttl: 30 s old is alive
    assert store.live_owners(29.5) == {"sched-b"}
    store.forget_owner("sched-b")
    assert store.live_owners(60) == {"sched-a"}
    store.forget_owner("sched-unknown")


def test_a_fresh_database_is_at_the_latest_version_and_reopening_runs_only_newer_migrations(
    store_url: str, monkeypatch: pytest.MonkeyPatch
):
    first = Store(store_url)
    assert first.schema_version() == LATEST_VERSION
    first.insert_job(job_row("ftjob-a"))
    first.close()
    ran: list[int] = []
    migrations = [
        (version, lambda conn, v=version, f=fn: (ran.append(v), f(conn)))
        for version, fn in migrations_module.MIGRATIONS
    ]
    monkeypatch.setattr(migrations_module, "MIGRATIONS", migrations)
    again = Store(store_url)
    assert ran == [] and again.schema_version() == LATEST_VERSION
    assert again.get_job("ftjob-a") is not None
    again.close()
    # one version back: the store runs the last migration alone (and so the wrapped list)
    engine = create_engine(store_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.execute(update(schema_version_table).values(version=LATEST_VERSION - 1))
    engine.dispose()
    third = Store(store_url)
    assert ran == [LATEST_VERSION] and third.schema_version() == LATEST_VERSION
    assert third.get_job("ftjob-a") is not None
    third.close()


def test_a_database_written_by_a_newer_trimtab_is_refused(store_url: str):
    Store(store_url).close()
    engine = create_engine(store_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.execute(update(schema_version_table).values(version=LATEST_VERSION + 1))
    engine.dispose()
    with pytest.raises(TrimtabError, match="written by a newer trimtab") as raised:
        Store(store_url)
    assert f"schema version {LATEST_VERSION + 1}" in str(raised.value)


def test_sqlite_connections_use_wal_full_sync_and_begin_immediate_for_writes(tmp_path: Path):
    store = Store(tmp_path / "deep" / "folder" / "jobs.db")  # a Path: parents are created
    assert store.kind == "sqlite" and (tmp_path / "deep" / "folder" / "jobs.db").exists()
    assert store.url == f"sqlite:///{tmp_path / 'deep' / 'folder' / 'jobs.db'}"
    with store._engine.connect() as conn:
        pragma = {
            name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
            for name in ("journal_mode", "synchronous", "busy_timeout", "foreign_keys")
        }
    assert pragma == {
        "journal_mode": "wal",
        "synchronous": 2,
        "busy_timeout": 30000,
        "foreign_keys": 1,
    }
    sent: list[str] = []
    event.listen(store._engine, "before_cursor_execute", lambda *a: sent.append(a[2]))
    store.insert_job(job_row("ftjob-a"))
    assert sent[0] == "BEGIN IMMEDIATE" and sent[1].startswith("INSERT INTO jobs")
    sent.clear()
    store.get_job("ftjob-a")
    assert sent[0] == "BEGIN"  # reads take no write lock
    store.close()


def _create_jobs(url: str, worker: int, count: int) -> None:
    """One process's share of the concurrent-create test (module level: spawn imports it)."""
    store = Store(url)
    for n in range(count):
        store.insert_job(job_row(created_at=worker * 1000 + n), event={"message": "created"})
    store.close()


def _assert_all_jobs_listed(url: str, total: int) -> None:
    store = Store(url)
    listed, more = store.list_jobs(limit=total + 10)
    assert len(listed) == total and not more
    assert len({j["id"] for j in listed}) == total
    assert all(len(store.list_events(j["id"])[0]) == 1 for j in listed)
    store.close()


def test_concurrent_creates_from_four_processes_lose_nothing_on_sqlite(tmp_path: Path):
    # The processes also race to create and migrate the fresh database.
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    spawn = multiprocessing.get_context("spawn")
    processes = [spawn.Process(target=_create_jobs, args=(url, w, 25)) for w in range(4)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=120)
    assert [p.exitcode for p in processes] == [0, 0, 0, 0]
    _assert_all_jobs_listed(url, 100)


def test_concurrent_creates_from_eight_threads_lose_nothing_on_postgresql(
    fresh_postgres_url: str,
):
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            _create_jobs(fresh_postgres_url, worker, 25)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    _assert_all_jobs_listed(fresh_postgres_url, 200)


def test_an_unsupported_url_scheme_is_a_clear_error_with_the_password_masked():
    with pytest.raises(TrimtabError, match=r"unsupported database URL mysql://me:\*\*\*@db/x"):
        Store("mysql://me:secret@db/x")
    with pytest.raises(TrimtabError, match="names no file"):
        Store("sqlite://")


def test_a_database_that_cannot_be_opened_is_a_clear_error(tmp_path: Path):
    (tmp_path / "not-a-db").write_bytes(b"this is not a SQLite database" * 100)
    with pytest.raises(TrimtabError, match="cannot open the jobs database sqlite:///"):
        Store(tmp_path / "not-a-db")
    with pytest.raises(TrimtabError) as raised:
        Store("postgresql://me:secret@127.0.0.1:1/jobs")  # nothing listens on port 1
    assert "postgresql://me:***@127.0.0.1:1/jobs" in str(raised.value)
    assert "secret" not in str(raised.value)


def test_a_version_1_database_is_upgraded_keeping_its_rows_in_creation_order(store_url: str):
    first = Store(store_url)
    first.insert_job(job_row("ftjob-old", created_at=500))
    first.insert_job(job_row("ftjob-older", created_at=400))
    first.close()
    # back to version 1: no created_ns column (as a trimtab of version 1 wrote it)
    engine = create_engine(store_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        for table in ("jobs", "files"):
            conn.exec_driver_sql(f"ALTER TABLE {table} DROP COLUMN created_ns")
        conn.execute(update(schema_version_table).values(version=1))
    engine.dispose()
    again = Store(store_url)
    assert again.schema_version() == LATEST_VERSION == 3
    again.insert_job(job_row("ftjob-new", created_at=500))  # same second as ftjob-old
    rows, _ = again.list_jobs()
    assert [r["id"] for r in rows] == ["ftjob-new", "ftjob-old", "ftjob-older"]
    assert again.get_job("ftjob-old")["created_ns"] == 500 * 10**9
    again.close()


def test_a_version_2_database_is_upgraded_to_record_a_sweep_s_trials_once(store_url: str):
    first = Store(store_url)
    first.insert_job(job_row("ftjob-sweep", created_at=500))
    first.close()
    # back to version 2: no parent_id or sweep_trial (their indexes go first: SQLite keeps an
    # indexed column)
    engine = create_engine(store_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        for index in ("ux_jobs_parent_trial", "ix_jobs_parent_id"):
            conn.exec_driver_sql(f"DROP INDEX {index}")
        for column in ("parent_id", "sweep_trial"):
            conn.exec_driver_sql(f"ALTER TABLE jobs DROP COLUMN {column}")
        conn.execute(update(schema_version_table).values(version=2))
    engine.dispose()
    again = Store(store_url)
    assert again.schema_version() == LATEST_VERSION == 3
    assert again.get_job("ftjob-sweep")["parent_id"] is None
    trial = job_row(status="running", parent_id="ftjob-sweep", sweep_trial=0)
    assert again.insert_trial(trial, {"message": "trial 0"})
    # the same trial recorded again (a second scheduler): nothing written, no event
    assert not again.insert_trial(job_row(status="running", parent_id="ftjob-sweep", sweep_trial=0))
    assert [r["id"] for r in again.list_trials("ftjob-sweep")] == [trial["id"]]
    assert [r["id"] for r in again.list_jobs()[0]] == ["ftjob-sweep"]  # trials are not listed
    again.close()
