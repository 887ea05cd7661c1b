"""The scheduler runs real jobs: `python -m trimtab train` on the tiny Llama, each its own
process group, through the local executor; no HTTP (the server's tests add that)."""

from __future__ import annotations

import io
import json
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from trimtab.jobs.executors import LocalExecutor, group_members
from trimtab.jobs.scheduler import Scheduler
from trimtab.jobs.service import JobsService
from trimtab.jobs.store import Store

ROWS = [
    {
        "prompt": f"review {i}: {'great love' if i % 2 else 'awful broke'}\n\n###\n\n",
        "completion": " 5" if i % 2 else " 1",
    }
    for i in range(32)
]


@pytest.fixture
def service(request: pytest.FixtureRequest, tmp_path: Path) -> JobsService:
    """Over a SQLite store, or PostgreSQL for tests parametrised with "postgresql"."""
    kind = getattr(request, "param", "sqlite")
    url = tmp_path / "home" / "jobs.db"
    store = Store(url if kind == "sqlite" else request.getfixturevalue("fresh_postgres_url"))
    yield JobsService(store, tmp_path / "home", tmp_path / "runs", org="acme")
    store.close()


def upload(service: JobsService, rows: list[dict[str, Any]], name: str = "train.jsonl") -> str:
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    return service.upload(name, io.BytesIO(data), "fine-tune")["id"]


def create(service: JobsService, model: Path, **config: Any) -> dict[str, Any]:
    body = {
        "model": str(model),
        "training_file": upload(service, ROWS),
        "suffix": "stars",
        "seed": 7,
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 8}}},
        "trimtab": {"method": "lora", "config": {"precision": "fp32", **config}},
    }
    return service.create_job(body)


def wait_for(service: JobsService, job_id: str, scheduler: Scheduler, predicate, timeout=120.0):
    """Tick until ``predicate(job)`` holds; the job object."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        scheduler.tick()
        job = service.get_job(job_id)
        if predicate(job):
            return job
        time.sleep(0.2)
    raise AssertionError(f"timed out; job is {service.get_job(job_id)['status']}")


def events(service: JobsService, job_id: str) -> list[dict[str, Any]]:
    return list(reversed(service.list_events(job_id, limit=1000)["data"]))


def metrics_steps(service: JobsService, job_id: str) -> list[tuple[str, int]]:
    return [
        (e["message"].split(":")[1].split("=")[0].strip(), e["data"]["step"])
        for e in events(service, job_id)
        if e["type"] == "metrics"
    ]


@pytest.mark.parametrize("service", ["sqlite", "postgresql"], indirect=True)
def test_a_job_runs_from_validation_to_a_served_model(service, tiny_llama_dir):
    job = create(service, tiny_llama_dir, epochs=2)
    assert job["status"] == "validating_files"
    scheduler = Scheduler(service, LocalExecutor(), interval=0.1)
    scheduler.run_until_idle(timeout=180)

    job = service.get_job(job["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["fine_tuned_model"] == f"ft:{tiny_llama_dir.name}:acme:stars:{job['id'][6:14]}"
    assert job["trained_tokens"] > 0 and job["finished_at"] >= job["created_at"]
    assert job["hyperparameters"]["n_epochs"] == 2 and job["hyperparameters"]["batch_size"] == 8
    messages = [e["message"] for e in events(service, job["id"])]
    for expected in (
        "Created fine-tuning job",
        "Files validated",
        "Fine-tuning job started",
        "Checkpoint created at step",
        "New fine-tuned model created",
        "The job has successfully completed",
    ):
        assert any(m.startswith(expected) for m in messages), (expected, messages)
    steps = metrics_steps(service, job["id"])
    assert steps and len(steps) == len(set(steps))  # one event per logged step
    # checkpoints: one per epoch, each a servable model under <model>:ckpt-step-N
    checkpoints = service.list_checkpoints(job["id"])["data"]
    assert [c["step_number"] for c in checkpoints] == [8, 4]
    assert checkpoints[0]["fine_tuned_model_checkpoint"] == f"{job['fine_tuned_model']}:ckpt-step-8"
    assert "train_loss" in checkpoints[0]["metrics"]
    # the results file: OpenAI's CSV columns, one row per logged step
    (result,) = job["result_files"]
    csv = service.file_path(result).read_text().splitlines()
    assert csv[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"
    assert len(csv) > 1
    # the model and its checkpoints are served under those ids, at once
    from trimtab.generation.pool import ModelPool

    pool = ModelPool(service.runs_dir, org="acme")
    ids = {m.id for m in pool.list()}
    assert job["fine_tuned_model"] in ids
    assert checkpoints[1]["fine_tuned_model_checkpoint"] in ids


def test_a_training_file_that_fails_the_checks_fails_the_job_naming_the_line(
    service, tiny_llama_dir
):
    job = create(service, tiny_llama_dir)
    # the file changed on disk after upload (the upload checks would have refused it)
    path = service.file_path(job["training_file"])
    lines = path.read_text().splitlines()
    lines[4] = '{"prompt": "x", "completion": 5}'
    path.write_text("\n".join(lines) + "\n")
    Scheduler(service, LocalExecutor()).run_until_idle(timeout=30)
    job = service.get_job(job["id"])
    assert job["status"] == "failed"
    assert job["error"]["param"] == "training_file"
    assert job["error"]["message"].startswith(
        "Invalid file train.jsonl: line 5: field 'completion'"
    )


def long_job(service: JobsService, model: Path) -> dict[str, Any]:
    """Enough steps to act on it while it trains (checkpoints every 20 steps)."""
    return create(service, model, max_steps=4000, epochs=1000, save_every=20, log_every=5)


def test_cancel_ends_the_whole_process_group(service, tiny_llama_dir):
    job = long_job(service, tiny_llama_dir)
    scheduler = Scheduler(service, LocalExecutor(), interval=0.1)
    wait_for(service, job["id"], scheduler, lambda j: metrics_steps(service, j["id"]))
    pid = int(service.job_row(job["id"])["handle"])
    assert group_members(pid)
    service.cancel(job["id"])
    job = wait_for(service, job["id"], scheduler, lambda j: j["status"] == "cancelled")
    assert job["finished_at"] is not None
    assert group_members(pid) == []  # no orphans
    assert any(e["message"] == "Fine-tuning job cancelled" for e in events(service, job["id"]))


def test_pause_checkpoints_and_resume_continues_without_duplicate_events(service, tiny_llama_dir):
    job = create(service, tiny_llama_dir, max_steps=120, epochs=1000, save_every=1000, log_every=5)
    scheduler = Scheduler(service, LocalExecutor(), interval=0.1)
    wait_for(service, job["id"], scheduler, lambda j: metrics_steps(service, j["id"]))
    service.pause(job["id"])
    job = wait_for(service, job["id"], scheduler, lambda j: j["status"] == "paused")
    run = Path(service.job_row(job["id"])["run_dir"])
    paused_at = json.loads((run / "run.json").read_text())["paused_step"]
    assert 0 < paused_at < 120
    assert (run / "checkpoints" / f"step-{paused_at:07d}" / "state.json").is_file()
    assert not (run / "pause-requested").exists()

    service.resume(job["id"])
    job = wait_for(service, job["id"], scheduler, lambda j: j["status"] == "succeeded")
    steps = metrics_steps(service, job["id"])
    assert len(steps) == len(set(steps))
    assert max(s for kind, s in steps) == 120
    assert service.job_row(job["id"])["attempts"] == 2


def test_a_worker_killed_with_sigkill_is_resumed_from_its_last_checkpoint(service, tiny_llama_dir):
    job = create(service, tiny_llama_dir, max_steps=80, epochs=1000, save_every=20, log_every=5)
    scheduler = Scheduler(service, LocalExecutor(), interval=0.1)
    run = Path(service.job_row(job["id"])["run_dir"])
    wait_for(service, job["id"], scheduler, lambda j: list(run.glob("checkpoints/step-*")))
    os.killpg(int(service.job_row(job["id"])["handle"]), signal.SIGKILL)
    job = wait_for(service, job["id"], scheduler, lambda j: j["status"] == "succeeded", 240)
    messages = [e["message"] for e in events(service, job["id"])]
    assert any("resuming from step-" in m for m in messages), messages
    assert service.job_row(job["id"])["attempts"] == 2
    steps = metrics_steps(service, job["id"])
    assert len(steps) == len(set(steps))


def test_a_worker_that_keeps_dying_fails_the_job_after_the_attempt_limit(service, tiny_llama_dir):
    job = long_job(service, tiny_llama_dir)
    scheduler = Scheduler(service, LocalExecutor(), interval=0.1, max_attempts=1)
    wait_for(service, job["id"], scheduler, lambda j: j["status"] == "running")
    os.killpg(int(service.job_row(job["id"])["handle"]), signal.SIGKILL)
    job = wait_for(service, job["id"], scheduler, lambda j: j["status"] == "failed")
    assert job["error"]["code"] == "worker_failed"
    assert "1 attempts" in job["error"]["message"]


def test_a_new_scheduler_adopts_a_running_job_whose_scheduler_died(service, tiny_llama_dir):
    job = create(service, tiny_llama_dir, max_steps=60, epochs=1000, save_every=20, log_every=5)
    first = Scheduler(service, LocalExecutor(), interval=0.1, owner_ttl=1.0)
    wait_for(service, job["id"], first, lambda j: j["status"] == "running")
    pid = int(service.job_row(job["id"])["handle"])
    # `first` dies without a word: it stops ticking, its heartbeat ages
    second = Scheduler(service, LocalExecutor(), interval=0.1, owner_ttl=1.0)
    time.sleep(1.2)
    job = wait_for(service, job["id"], second, lambda j: j["status"] == "succeeded")
    row = service.job_row(job["id"])
    assert row["attempts"] == 1 and int(row["handle"]) == pid  # followed, not started again
    steps = metrics_steps(service, job["id"])
    assert len(steps) == len(set(steps))
    kinds = Counter(e["message"] for e in events(service, job["id"]))
    assert kinds["Fine-tuning job started"] == 1


@pytest.mark.parametrize("service", ["sqlite", "postgresql"], indirect=True)
def test_two_schedulers_on_one_store_run_a_job_once(service, tiny_llama_dir):
    job = create(service, tiny_llama_dir, max_steps=8)
    a = Scheduler(service, LocalExecutor(), interval=0.05)
    b = Scheduler(service, LocalExecutor(), interval=0.05)
    deadline = time.monotonic() + 180
    while service.get_job(job["id"])["status"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline
        a.tick()
        b.tick()
    assert service.get_job(job["id"])["status"] == "succeeded"
    assert service.job_row(job["id"])["attempts"] == 1
    started = [e for e in events(service, job["id"]) if e["message"] == "Fine-tuning job started"]
    assert len(started) == 1


class Recording:
    """An executor that records its launches and runs nothing (the job stays running)."""

    name = "recording"

    def __init__(self) -> None:
        self.launches: list[Any] = []

    def start(self, launch: Any) -> str:
        self.launches.append(launch)
        return "handle-1"

    def poll(self, handle: str) -> int | None:
        return None

    def stop(self, handle: str, grace: float = 10.0) -> None:
        pass


def test_a_job_s_cpus_and_gpus_reach_the_executor_with_the_train_command(service, tiny_llama_dir):
    body = {
        "model": str(tiny_llama_dir),
        "training_file": upload(service, ROWS),
        "trimtab": {"cpus": 4, "gpus": 2},
    }
    job = service.create_job(body)
    executor = Recording()
    scheduler = Scheduler(service, executor)
    scheduler.tick()  # validated
    scheduler.tick()  # started
    (launch,) = executor.launches
    assert (launch.job_id, launch.attempt, launch.cpus, launch.gpus) == (job["id"], 1, 4.0, 2.0)
    assert launch.argv[1:4] == ["-m", "trimtab", "train"] and launch.argv[-1] == "--quiet"
    config = Path(launch.argv[4])
    assert config.name == "config.yaml" and f"run_dir: {service.runs_dir / job['id']}" in (
        config.read_text()
    )
    assert service.job_row(job["id"])["handle"] == "handle-1"


def test_checkpoint_metrics_are_the_last_training_line_at_or_before_and_the_evaluation_at_it():
    from trimtab.jobs.scheduler import _metrics_at

    records = [
        {"step": 10, "train_loss": 0.5, "train_mean_token_accuracy": 0.7},
        {"step": 12, "valid_loss": 0.4, "valid_accuracy": 0.8},
        {"step": 20, "train_loss": 0.3, "train_accuracy": 0.9},
    ]
    assert _metrics_at(records, 12) == {
        "step": 12,
        "train_loss": 0.5,
        "train_mean_token_accuracy": 0.7,
        "valid_loss": 0.4,
        "valid_mean_token_accuracy": 0.8,
        "full_valid_loss": 0.4,
        "full_valid_mean_token_accuracy": 0.8,
    }
    assert _metrics_at(records, 25) == {
        "step": 25,
        "train_loss": 0.3,
        "train_mean_token_accuracy": 0.9,
    }
    assert _metrics_at(records, 5) == {"step": 5}


def test_a_job_whose_trainer_holds_the_run_lock_is_followed_until_the_lock_is_free(
    service, tiny_llama_dir
):
    from trimtab.models.runs import RunFolder

    job = create(service, tiny_llama_dir)
    # as left by a scheduler of another host: its trainer's pid means nothing here
    service.store.update_job(
        job["id"],
        {"status": "running", "owner": "elsewhere:1:dead", "handle": "999999999", "attempts": 1},
    )
    scheduler = Scheduler(service, LocalExecutor(), max_attempts=1)
    run = RunFolder(Path(service.job_row(job["id"])["run_dir"]))
    with run.lock():  # a trainer (on whichever host) trains the run
        scheduler.tick()
        scheduler.tick()
        row = service.job_row(job["id"])
        assert (row["status"], row["owner"]) == ("running", scheduler.owner)  # adopted, followed
    scheduler.tick()  # the trainer is gone and run.json never said "completed"
    job = service.get_job(job["id"])
    assert job["status"] == "failed" and job["error"]["code"] == "worker_failed"
