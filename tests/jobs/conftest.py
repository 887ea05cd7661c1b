"""Fixtures for the jobs store: a real PostgreSQL server (Debian's package) and a store URL
for each backend, so that every behaviour test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_USER = "trimtab"


def _pg_bindir() -> Path | None:
    """The folder holding initdb and pg_ctl: on PATH, else the newest /usr/lib/postgresql/*."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return Path(versions[-1]).parent if versions else None


def _unavailable(reason: str) -> None:
    if os.environ.get("TRIMTAB_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"TRIMTAB_REQUIRE_POSTGRES=1 but {reason}")
    pytest.skip(f"{reason}: PostgreSQL tests skipped (apt-get install postgresql)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server on 127.0.0.1 (trust auth, fsync off); yields the URL of
    its ``postgres`` database (tests create their own databases in it)."""
    bindir = _pg_bindir()
    if bindir is None or not (bindir / "pg_ctl").exists():
        _unavailable("PostgreSQL's initdb/pg_ctl were not found")
    assert bindir is not None
    # PostgreSQL refuses to run as root: run the server as the postgres user.
    prefix: list[str] = []
    if os.geteuid() == 0:
        try:
            pg = pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root and there is no 'postgres' user to run the server")
        if shutil.which("runuser") is None:
            _unavailable("running as root and runuser is missing")
        prefix = ["runuser", "-u", "postgres", "--"]
    # Under /tmp, not pytest's tmp_path: its root-only parent folders would shut postgres out.
    root = Path(tempfile.mkdtemp(prefix="trimtab-pg-"))
    if prefix:
        os.chown(root, pg.pw_uid, pg.pw_gid)
    data, log = root / "data", root / "server.log"
    port = _free_port()

    def run(*args: str) -> None:
        subprocess.run([*prefix, *args], check=True, capture_output=True, text=True, timeout=120)

    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", PG_USER, "--auth=trust", "-E", "UTF8")
        run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-o", options, "start")
    except subprocess.CalledProcessError as e:
        server_log = log.read_text() if log.exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {e.stderr}\n{e.stdout}\n{server_log}")
    try:
        yield f"postgresql://{PG_USER}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "stop", "-m", "immediate"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def fresh_postgres_url(postgres_url: str) -> Iterator[str]:
    """A new, empty database on the test server, dropped after the test."""
    import psycopg

    name = f"t_{uuid.uuid4().hex}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield postgres_url.rsplit("/", 1)[0] + f"/{name}"
    # WITH (FORCE) (PostgreSQL 13+) ends connections a failed test left open. A database that
    # stays behind does no harm: the whole server is thrown away at the end of the session.
    with (
        contextlib.suppress(psycopg.Error),
        psycopg.connect(postgres_url, autocommit=True) as admin,
    ):
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL for a fresh jobs database: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    return str(request.getfixturevalue("fresh_postgres_url"))
