"""``trimtab files`` and ``trimtab jobs``: on the local store, and on a live server with
``--server``. Nothing trains here: jobs are created, listed, followed and cancelled."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.server.conftest import API_KEY, JobsLive, free_socket, serve_jobs
from trimtab.jobs.client import HttpJobs
from trimtab.jobs.objects import ApiProblem

ROWS = [{"prompt": f"review {i}: great\n\n###\n\n", "completion": " 5"} for i in range(4)]
CONTENT = "".join(json.dumps(r) + "\n" for r in ROWS)


def trimtab(home: Path, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    """Run ``python -m trimtab ARGS`` with its data folder in ``home``; check its exit code."""
    env = {**os.environ, "TRIMTAB_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    env.pop("TRIMTAB_API_KEY", None)
    done = subprocess.run(
        [sys.executable, "-m", "trimtab", *args],
        env=env,
        cwd=home.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == code, f"{args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def train_file(tmp_path: Path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text(CONTENT)
    return path


@pytest.fixture(scope="module")
def idle_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    from trimtab.generation.engine import Engine
    from trimtab.generation.pool import ModelPool

    pool = ModelPool(tmp_path_factory.mktemp("no-runs"))
    engine = Engine(pool)
    yield engine, pool
    engine.close()


@pytest.fixture
def server(tmp_path: Path, idle_engine: tuple[Any, Any]) -> Iterator[JobsLive]:
    with serve_jobs(tmp_path / "server", idle_engine) as served:
        yield served


def test_files_commands_upload_list_read_back_and_delete_locally(home, train_file, tmp_path):
    made = json.loads(trimtab(home, "files", "create", str(train_file), "--json").stdout)
    file_id = made["id"]
    assert made["filename"] == "train.jsonl" and made["bytes"] == len(CONTENT)
    assert (home / "files" / f"{file_id}.jsonl").read_text() == CONTENT
    listed = trimtab(home, "files", "list", "--purpose", "fine-tune").stdout
    assert listed.startswith(file_id) and "train.jsonl" in listed and "processed" in listed
    assert file_id in trimtab(home, "files", "get", file_id).stdout
    out = tmp_path / "copy.jsonl"
    trimtab(home, "files", "content", file_id, "-o", str(out))
    assert out.read_text() == CONTENT
    assert trimtab(home, "files", "content", file_id).stdout == CONTENT
    assert trimtab(home, "files", "delete", file_id).stdout.strip() == f"{file_id} deleted"
    gone = trimtab(home, "files", "get", file_id, code=2)
    assert f"No such file: '{file_id}'" in gone.stderr
    assert list((home / "files").iterdir()) == []


def test_files_create_refuses_a_malformed_file_naming_its_line(home, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(CONTENT.splitlines()[0] + "\nnot json\n")
    refused = trimtab(home, "files", "create", str(bad), code=2)
    assert "Invalid file bad.jsonl: line 2: invalid JSON" in refused.stderr
    assert trimtab(home, "files", "list").stdout == ""


def test_jobs_commands_create_list_get_follow_and_cancel_locally(home, train_file, tiny_llama_dir):
    created = trimtab(
        home,
        "jobs",
        "create",
        "--model",
        str(tiny_llama_dir),
        "--training-file",
        str(train_file),
        "--metadata",
        "team=search",
        "--suffix",
        "reviews",
        "--n-epochs",
        "2",
        "--method",
        "full",
        "--json",
    )
    job = json.loads(created.stdout)
    assert job["status"] == "validating_files" and job["user_provided_suffix"] == "reviews"
    assert job["hyperparameters"]["n_epochs"] == 2 and job["trimtab"]["method"] == "full"
    assert "uploaded" in created.stderr and job["training_file"] in created.stderr
    assert "queued" in created.stderr and "trimtab jobs work" in created.stderr
    assert trimtab(home, "jobs", "list", "--metadata", "team=search").stdout.startswith(job["id"])
    assert trimtab(home, "jobs", "list", "--metadata", "team=ads").stdout == ""
    assert "validating_files" in trimtab(home, "jobs", "get", job["id"]).stdout
    events = trimtab(home, "jobs", "events", job["id"]).stdout.splitlines()
    assert len(events) == 1 and "Created fine-tuning job" in events[0]
    assert "validating training file" in events[0]
    refused = trimtab(home, "jobs", "pause", job["id"], code=2)
    assert "only a running job can be paused" in refused.stderr
    assert "cancelled" in trimtab(home, "jobs", "cancel", job["id"]).stdout
    followed = trimtab(home, "jobs", "events", job["id"], "--follow").stdout.splitlines()
    assert len(followed) == 3 and followed[:1] == events  # oldest first
    assert "Fine-tuning job cancelled" in followed[1]
    assert followed[2] == f"{job['id']} cancelled"
    assert trimtab(home, "jobs", "checkpoints", job["id"]).stdout == ""


def test_jobs_create_refusals_name_their_field(home, train_file, tiny_llama_dir):
    base = ["jobs", "create", "--model", str(tiny_llama_dir), "--training-file"]
    refused = trimtab(home, *base, str(train_file), "--suffix", "s" * 65, code=2)
    assert "suffix" in refused.stderr
    refused = trimtab(home, *base, "file-nothing", code=2)
    assert "No such file: 'file-nothing'" in refused.stderr
    refused = trimtab(home, *base, "missing.jsonl", code=2)
    assert "missing.jsonl: no such file" in refused.stderr
    refused = trimtab(home, *base, str(train_file), "--set", "nonsense", code=2)
    assert "--set: expected KEY=VALUE" in refused.stderr


def test_jobs_work_until_idle_returns_when_no_job_is_left(home):
    assert "idle" in trimtab(home, "jobs", "work", "--until-idle").stdout


def test_the_commands_talk_to_a_server_with_server(server, home, train_file, tiny_llama_dir):
    remote = ["--server", server.url, "--api-key", API_KEY]
    made = json.loads(trimtab(home, "files", "create", str(train_file), *remote, "--json").stdout)
    assert server.service.get_file(made["id"])["bytes"] == len(CONTENT)
    assert trimtab(home, "files", "list", *remote).stdout.startswith(made["id"])
    assert trimtab(home, "files", "content", made["id"], *remote).stdout == CONTENT
    created = trimtab(
        home,
        "jobs",
        "create",
        *remote,
        "--model",
        str(tiny_llama_dir),
        "--training-file",
        made["id"],
        "--metadata",
        "team=search",
    )
    job_id = created.stdout.split()[0]
    assert server.service.get_job(job_id)["metadata"] == {"team": "search"}
    assert "queued" not in created.stderr  # the server's own scheduler runs it
    assert trimtab(home, "jobs", "list", *remote, "--metadata", "team=search").stdout.startswith(
        job_id
    )
    assert "cancelled" in trimtab(home, "jobs", "cancel", job_id, *remote).stdout
    followed = trimtab(home, "jobs", "events", job_id, "--follow", *remote).stdout
    assert followed.splitlines()[-1] == f"{job_id} cancelled"
    gone = trimtab(home, "files", "get", "file-nothing", *remote, code=2)
    assert "No such file: 'file-nothing'" in gone.stderr
    assert not (home / "jobs.db").exists()  # nothing went to the local store


def test_a_wrong_api_key_or_an_unreachable_server_is_a_clear_error(server, home):
    wrong = trimtab(home, "files", "list", "--server", server.url, "--api-key", "sk-wrong", code=2)
    assert "Incorrect API key" in wrong.stderr
    with free_socket() as sock:  # bound, never listening: connections are refused
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        gone = trimtab(home, "jobs", "list", "--server", url, code=2)
    assert f"cannot reach the trimtab server at {url}" in gone.stderr


def test_the_http_client_raises_the_servers_refusals_with_their_fields(server, tiny_llama_dir):
    jobs = HttpJobs(f"{server.url}/v1", api_key=API_KEY)
    with pytest.raises(ApiProblem) as e:
        jobs.create_job({"model": str(tiny_llama_dir), "training_file": "file-nothing"})
    assert (e.value.status, e.value.param, e.value.code) == (404, "training_file", "file_not_found")
    with pytest.raises(ApiProblem) as e:
        jobs.get_file("../../etc/passwd")
    assert e.value.status == 404

    class Pipe(io.RawIOBase):  # a stream that cannot tell its size: sent chunked
        def __init__(self) -> None:
            self.data = io.BytesIO(CONTENT.encode())

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            chunk = self.data.read(len(buffer))
            buffer[: len(chunk)] = chunk
            return len(chunk)

    made = jobs.upload("piped.jsonl", Pipe(), "fine-tune")  # type: ignore[arg-type]
    assert made["bytes"] == len(CONTENT) and made["filename"] == "piped.jsonl"
    out = io.BytesIO()
    assert jobs.write_content(made["id"], out) == len(CONTENT)
    assert out.getvalue() == CONTENT.encode()
    assert jobs.list_files(purpose="fine-tune", limit=1)["data"][0]["id"] == made["id"]
