"""Fine-tuning through `trimtab serve` as a real process, driven by the official `openai`
client: upload, create, follow the events, call the model; kill the server mid-job and start it
again; two servers on one store."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

API_KEY = "sk-jobs-e2e"
ROWS = [
    {
        "prompt": f"review {i}: {'great love' if i % 2 else 'awful broke'}\n\n###\n\n",
        "completion": " 5" if i % 2 else " 1",
    }
    for i in range(32)
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(home: Path, port: int | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """`trimtab serve` on 127.0.0.1 with its store and runs under ``home``; stopped (SIGINT)
    at the end unless the test killed it."""
    port = port or free_port()
    argv = [
        sys.executable,
        "-m",
        "trimtab",
        "serve",
        "--port",
        str(port),
        "--api-key",
        API_KEY,
        "--home",
        str(home),
        "--runs",
        str(home / "runs"),
    ]
    home.mkdir(parents=True, exist_ok=True)
    log = (home / "server.log").open("ab")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    proc.port = port  # type: ignore[attr-defined]
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
                break
            except OSError:
                assert proc.poll() is None, (home / "server.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
        log.close()


def client_for(proc: subprocess.Popen[bytes], key: str = API_KEY):
    from openai import OpenAI

    port = proc.port  # type: ignore[attr-defined]
    return OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=60)


def upload(client, tmp_path: Path) -> str:
    path = tmp_path / "reviews.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    with path.open("rb") as f:
        return client.files.create(file=f, purpose="fine-tune").id


def create(client, tmp_path: Path, model: Path, **config: Any):
    return client.fine_tuning.jobs.create(
        model=str(model),
        training_file=upload(client, tmp_path),
        suffix="stars",
        seed=3,
        method={"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 8}}},
        extra_body={"trimtab": {"config": {"precision": "fp32", **config}}},
    )


def follow(client, job_id: str, until: tuple[str, ...], timeout: float = 180):
    deadline = time.monotonic() + timeout
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in until:
            return job
        assert job.status not in ("failed", "cancelled") or job.status in until, job.error
        assert time.monotonic() < deadline, f"still {job.status}"
        time.sleep(0.2)


def events(client, job_id: str) -> list:
    return list(reversed(client.fine_tuning.jobs.list_events(job_id, limit=1000).data))


def assert_no_duplicate_events(client, job_id: str) -> None:
    seen = Counter((e.message, json.dumps(e.data, sort_keys=True)) for e in events(client, job_id))
    assert [k for k, n in seen.items() if n > 1] == []


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def test_the_official_client_fine_tunes_and_calls_the_model_and_its_checkpoints(
    home, tmp_path, tiny_llama_dir
):
    with server(home) as proc:
        client = client_for(proc)
        job = create(client, tmp_path, tiny_llama_dir, epochs=2)
        assert job.status == "validating_files" and job.object == "fine_tuning.job"
        job = follow(client, job.id, ("succeeded",))
        assert job.fine_tuned_model.startswith(f"ft:{tiny_llama_dir.name}:trimtab:stars:")
        assert job.trained_tokens > 0 and job.result_files
        kinds = {e.type for e in events(client, job.id)}
        assert kinds == {"message", "metrics"}
        answer = client.completions.create(
            model=job.fine_tuned_model, prompt="review 1: great love\n\n###\n\n", max_tokens=2
        )
        assert answer.model == job.fine_tuned_model and answer.choices[0].text
        checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
        assert [c.step_number for c in checkpoints] == [8, 4]
        chat = client.chat.completions.create(
            model=checkpoints[-1].fine_tuned_model_checkpoint,
            messages=[{"role": "user", "content": "review 2: awful"}],
            max_tokens=2,
        )
        assert chat.choices[0].message.content is not None
        results = client.files.content(job.result_files[0]).text.splitlines()
        assert results[0].startswith("step,train_loss") and len(results) > 1
        assert_no_duplicate_events(client, job.id)


def test_pause_resume_and_cancel_through_the_client(home, tmp_path, tiny_llama_dir):
    with server(home) as proc:
        client = client_for(proc)
        job = create(client, tmp_path, tiny_llama_dir, max_steps=150, epochs=1000, log_every=5)
        follow(client, job.id, ("running",))
        deadline = time.monotonic() + 120
        while not [e for e in events(client, job.id) if e.type == "metrics"]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        client.fine_tuning.jobs.pause(job.id)
        follow(client, job.id, ("paused",))
        client.fine_tuning.jobs.resume(job.id)
        assert follow(client, job.id, ("succeeded",)).status == "succeeded"
        assert_no_duplicate_events(client, job.id)

        other = create(client, tmp_path, tiny_llama_dir, max_steps=4000, epochs=1000)
        follow(client, other.id, ("running",))
        client.fine_tuning.jobs.cancel(other.id)
        assert follow(client, other.id, ("cancelled",)).status == "cancelled"


def test_a_server_killed_mid_job_comes_back_and_the_job_succeeds_once(
    home, tmp_path, tiny_llama_dir
):
    port = free_port()
    with server(home, port) as proc:
        client = client_for(proc)
        job = create(client, tmp_path, tiny_llama_dir, max_steps=120, epochs=1000, save_every=20)
        follow(client, job.id, ("running",))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with server(home, port) as proc:
        client = client_for(proc)
        job = follow(client, job.id, ("succeeded",))
        messages = [e.message for e in events(client, job.id)]
        assert messages.count("Fine-tuning job started") == 1  # followed, not started again
        assert_no_duplicate_events(client, job.id)


def test_a_server_and_its_job_killed_together_resume_from_the_last_checkpoint(
    home, tmp_path, tiny_llama_dir
):
    port = free_port()
    with server(home, port) as proc:
        client = client_for(proc)
        job = create(client, tmp_path, tiny_llama_dir, max_steps=100, epochs=1000, save_every=20)
        follow(client, job.id, ("running",))
        run = Path(client.fine_tuning.jobs.retrieve(job.id).model_extra["trimtab"]["run_dir"])
        deadline = time.monotonic() + 120
        while not list(run.glob("checkpoints/step-*")):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        trainer = int((run / ".lock").read_text())
        proc.send_signal(signal.SIGKILL)  # the machine goes down: server and trainer
        os.killpg(os.getpgid(trainer), signal.SIGKILL)
        proc.wait()
    with server(home, port) as proc:
        client = client_for(proc)
        job = follow(client, job.id, ("succeeded",))
        messages = [e.message for e in events(client, job.id)]
        assert any("resuming from step-" in m for m in messages), messages
        assert_no_duplicate_events(client, job.id)


def test_two_servers_on_one_store_run_a_job_once(home, tmp_path, tiny_llama_dir):
    with server(home) as first, server(home) as second:
        a, b = client_for(first), client_for(second)
        job = create(a, tmp_path, tiny_llama_dir, max_steps=16)
        assert follow(b, job.id, ("succeeded",)).status == "succeeded"
        messages = [e.message for e in events(b, job.id)]
        assert messages.count("Fine-tuning job started") == 1
        assert b.models.retrieve(a.fine_tuning.jobs.retrieve(job.id).fine_tuned_model)
