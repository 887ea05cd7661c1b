"""Sweep jobs: a parent job runs `python -m trimtab sweep` through the local executor; each
trial becomes a fine-tuning job of its own (tiny Llama, 4-step LoRA trials)."""

from __future__ import annotations

import csv
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.jobs.test_scheduler import ROWS, events, metrics_steps, upload, wait_for
from trimtab.jobs.executors import LocalExecutor, group_members
from trimtab.jobs.objects import ApiProblem
from trimtab.jobs.scheduler import Scheduler
from trimtab.jobs.service import JobsService
from trimtab.jobs.store import Store

SEARCH = {
    "optim.lr": {"low": 1e-4, "high": 3e-2, "log": True},
    "method.lora_r": {"choices": [2, 4]},
}
# 4 steps, an evaluation at steps 2 and 4: a trial takes a few seconds.
QUICK = {"precision": "fp32", "max_steps": 4, "eval_every": 2, "log_every": 2}


@pytest.fixture
def service(tmp_path: Path) -> JobsService:
    store = Store(tmp_path / "home" / "jobs.db")
    yield JobsService(store, tmp_path / "home", tmp_path / "runs", org="acme")
    store.close()


def create_sweep(
    service: JobsService, model: Path, sweep: dict[str, Any], **config: Any
) -> dict[str, Any]:
    body = {
        "model": str(model),
        "training_file": upload(service, ROWS),
        "validation_file": upload(service, ROWS[:8], "valid.jsonl"),
        "suffix": "sw",
        "seed": 7,
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 8}}},
        "trimtab": {"method": "lora", "config": {**QUICK, **config}, "sweep": sweep},
    }
    return service.create_job(body)


def trials(service: JobsService, job_id: str) -> list[dict[str, Any]]:
    return service.list_trials(job_id)["data"]


def test_a_sweep_job_runs_its_trials_as_jobs_and_names_the_best(service, tiny_llama_dir):
    sweep = create_sweep(service, tiny_llama_dir, {"trials": 2, "search": SEARCH})
    assert sweep["trimtab"]["kind"] == "sweep" and sweep["trimtab"]["sweep"]["trials"] == 2
    Scheduler(service, LocalExecutor(), interval=0.1).run_until_idle(timeout=300)

    sweep = service.get_job(sweep["id"])
    assert sweep["status"] == "succeeded", (sweep["error"], events(service, sweep["id"]))
    children = trials(service, sweep["id"])
    assert [c["trimtab"]["sweep_trial"] for c in children] == [0, 1]
    for child in children:
        assert child["status"] == "succeeded" and child["trimtab"]["parent_id"] == sweep["id"]
        assert set(child["trimtab"]["params"]) == set(SEARCH)
        assert child["trimtab"]["state"] == "complete" and child["trimtab"]["value"] > 0
        assert metrics_steps(service, child["id"])  # metrics events, as an ordinary job's
        assert child["hyperparameters"]["batch_size"] == 8  # resolved from the trial's config
    # the best: the lowest valid_loss of the sweep's own results, its job, params and model
    with open(Path(sweep["trimtab"]["run_dir"]) / "results.csv") as f:
        rows = list(csv.DictReader(f))
    best_row = min(rows, key=lambda r: float(r["valid_loss"]))
    best = sweep["trimtab"]["best"]
    best_child = children[int(best_row["trial"])]
    assert (best["trial"], best["job_id"]) == (int(best_row["trial"]), best_child["id"])
    assert best["value"] == pytest.approx(float(best_row["valid_loss"]))
    assert best["params"] == best_child["trimtab"]["params"]
    assert sweep["fine_tuned_model"] == best_child["fine_tuned_model"]
    (result,) = sweep["result_files"]
    assert service.file_path(result).read_text().startswith("trial,")
    messages = [e["message"] for e in events(service, sweep["id"])]
    for expected in ("Trial 0 started", "Trial 0 finished", "Trial 1 finished", "Best trial: "):
        assert any(m.startswith(expected) for m in messages), (expected, messages)
    # the trials are left out of the job list, and every trial's model is served
    assert [j["id"] for j in service.list_jobs()["data"]] == [sweep["id"]]
    from trimtab.generation.pool import ModelPool

    ids = {m.id for m in ModelPool(service.runs_dir, org="acme").list()}
    assert {c["fine_tuned_model"] for c in children} <= ids


def test_sweep_problems_are_refused_at_once_each_naming_its_param(service, tiny_llama_dir):
    bad = {
        "trials": 0,
        "metric": "accuracy",
        "search": {"optim.lr": {"low": 1, "high": 0.1}, "optim.lrr": {"choices": [1]}},
    }
    with pytest.raises(ApiProblem) as raised:
        create_sweep(service, tiny_llama_dir, bad)
    message = raised.value.message
    for named in (
        "trimtab.sweep.trials:",
        "trimtab.sweep.metric:",
        "trimtab.sweep.search.optim.lr: low must be below high",
        "trimtab.sweep.search.optim.lrr: not a config key",
    ):
        assert named in message, message
    assert raised.value.status == 400 and raised.value.param.startswith("trimtab.sweep.")
    # a key the job sets itself cannot be searched; no validation file is named as such
    body = {"model": str(tiny_llama_dir), "training_file": upload(service, ROWS)}
    body["trimtab"] = {"sweep": {"search": {"data.train": {"choices": ["/etc/passwd"]}}}}
    with pytest.raises(ApiProblem) as raised:
        service.create_job(body)
    assert "trimtab.sweep.search.data.train: set by the job itself" in raised.value.message
    assert "validation_file: required" in raised.value.message
    assert service.list_jobs()["data"] == []  # nothing recorded
    assert not list((service.jobs_dir).glob("*/sweep.yaml"))


def test_cancel_stops_the_sweep_process_group_and_cancels_its_running_trial(
    service, tiny_llama_dir
):
    long = {"max_steps": 100000, "epochs": 100000, "eval_every": 100000, "log_every": 5}
    sweep = create_sweep(service, tiny_llama_dir, {"trials": 2, "search": SEARCH}, **long)
    scheduler = Scheduler(service, LocalExecutor(), interval=0.1)

    def training(job: dict[str, Any]) -> bool:
        children = trials(service, job["id"])
        return bool(children) and bool(metrics_steps(service, children[0]["id"]))

    wait_for(service, sweep["id"], scheduler, training, timeout=180)
    pid = int(service.job_row(sweep["id"])["handle"])
    assert group_members(pid)
    service.cancel(sweep["id"])
    sweep = wait_for(service, sweep["id"], scheduler, lambda j: j["status"] == "cancelled")
    assert group_members(pid) == []  # the sweep and its trial's training: no orphans
    (child,) = trials(service, sweep["id"])
    assert child["status"] == "cancelled" and child["finished_at"] is not None
    assert events(service, child["id"])[-1]["message"] == "Trial cancelled with its sweep"
    with pytest.raises(ApiProblem, match="a trial cannot be cancelled on its own"):
        service.cancel(child["id"])


def test_a_new_scheduler_adopts_a_running_sweep_without_recording_a_trial_twice(
    service, tiny_llama_dir
):
    sweep = create_sweep(service, tiny_llama_dir, {"trials": 2, "search": SEARCH}, max_steps=40)
    first = Scheduler(service, LocalExecutor(), interval=0.1, owner_ttl=1.0)
    wait_for(service, sweep["id"], first, lambda j: trials(service, j["id"]), timeout=180)
    pid = int(service.job_row(sweep["id"])["handle"])
    # `first` dies without a word: it stops ticking, its heartbeat ages
    second = Scheduler(service, LocalExecutor(), interval=0.1, owner_ttl=1.0)
    time.sleep(1.2)
    sweep = wait_for(service, sweep["id"], second, lambda j: j["status"] == "succeeded", 300)
    row = service.job_row(sweep["id"])
    assert row["attempts"] == 1 and int(row["handle"]) == pid  # followed, not started again
    children = trials(service, sweep["id"])
    assert [c["trimtab"]["sweep_trial"] for c in children] == [0, 1]
    for child in children:
        steps = metrics_steps(service, child["id"])
        assert steps and len(steps) == len(set(steps))


def test_a_sweep_whose_process_is_killed_resumes_its_study(service, tiny_llama_dir):
    sweep = create_sweep(service, tiny_llama_dir, {"trials": 2, "search": SEARCH}, max_steps=40)
    scheduler = Scheduler(service, LocalExecutor(), interval=0.1)
    out = Path(service.job_row(sweep["id"])["run_dir"])
    wait_for(service, sweep["id"], scheduler, lambda j: (out / "results.csv").exists(), 180)
    os.killpg(int(service.job_row(sweep["id"])["handle"]), signal.SIGKILL)
    sweep = wait_for(service, sweep["id"], scheduler, lambda j: j["status"] == "succeeded", 300)
    log = (service.jobs_dir / sweep["id"] / "train.log").read_text()
    assert service.job_row(sweep["id"])["attempts"] == 2, log
    messages = [e["message"] for e in events(service, sweep["id"])]
    assert any("resuming the sweep from its finished trials" in m for m in messages), messages
    states = [c["status"] for c in trials(service, sweep["id"])]
    # trial 0 finished before the kill; the one cut short ended; the study went on to 2
    assert states[0] == "succeeded" and states.count("succeeded") == 2, states


def test_jobs_create_with_a_sweep_spec_makes_a_sweep_job_and_names_bad_keys(
    tmp_path, tiny_llama_dir, capsys
):
    from trimtab.cli import main

    where = ["--home", str(tmp_path / "home"), "--runs", str(tmp_path / "runs")]
    data = "".join(json.dumps(r) + "\n" for r in ROWS)
    (tmp_path / "train.jsonl").write_text(data)
    (tmp_path / "valid.jsonl").write_text(data)
    spec = tmp_path / "sweep.yaml"
    spec.write_text(
        "max_steps: 4\nmethod:\n  lora_alpha: 16\n"
        "sweep:\n  trials: 2\n  search:\n    optim.lr: {low: 0.001, high: 0.01}\n"
    )
    create = ["jobs", "create", "--model", str(tiny_llama_dir), *where, "--json"]
    create += ["--training-file", str(tmp_path / "train.jsonl")]
    create += ["--validation-file", str(tmp_path / "valid.jsonl"), "--sweep", str(spec)]
    assert main(create) == 0
    job = json.loads(capsys.readouterr().out)
    assert job["trimtab"]["kind"] == "sweep" and job["trimtab"]["sweep"]["trials"] == 2
    # the spec's other keys are config keys, dotted as --set writes them
    assert job["trimtab"]["config"] == {"max_steps": 4, "method.lora_alpha": 16}
    assert main(["jobs", "trials", job["id"], *where, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["data"] == []

    spec.write_text("sweep:\n  trials: 2\n  search:\n    optim.lrr: {low: 0.001, high: 0.01}\n")
    assert main(create) != 0
    assert "trimtab.sweep.search.optim.lrr: not a config key" in capsys.readouterr().err
