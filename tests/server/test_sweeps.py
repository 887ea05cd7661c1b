"""Sweep jobs over HTTP with the official client, on a server without a scheduler: a sweep is
created with ``trimtab.sweep``, refused naming every param at fault, and its trials are listed
by ``GET /v1/fine_tuning/jobs/{id}/trials`` (the scheduler's part is in tests/jobs)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import openai
import pytest

from tests.server.conftest import API_KEY
from trimtab.jobs.client import HttpJobs
from trimtab.jobs.objects import ApiProblem

ROWS = [{"prompt": f"review {i}: great\n\n###\n\n", "completion": " 5"} for i in range(16)]
CONTENT = "".join(json.dumps(r) + "\n" for r in ROWS).encode()
SEARCH = {"optim.lr": {"low": 1e-4, "high": 1e-2, "log": True}}


@pytest.fixture
def create_sweep(jobs_client, tiny_llama_dir: Path):
    def make(sweep: dict, **fields):
        upload = jobs_client.files.create
        train = upload(file=("train.jsonl", CONTENT), purpose="fine-tune").id
        valid = upload(file=("valid.jsonl", CONTENT), purpose="fine-tune").id
        body = {"model": str(tiny_llama_dir), "training_file": train, "validation_file": valid}
        extension = {"config": {"max_steps": 4}, "sweep": sweep}
        return jobs_client.fine_tuning.jobs.create(
            **body, **fields, extra_body={"trimtab": extension}
        )

    return make


def test_a_sweep_is_a_fine_tuning_job_of_kind_sweep(create_sweep, jobs_client):
    job = create_sweep({"trials": 3, "search": SEARCH, "metric": "valid_loss"}, suffix="sw")
    assert job.object == "fine_tuning.job" and job.status == "validating_files"
    extension = job.model_extra["trimtab"]
    assert extension["kind"] == "sweep"
    assert extension["sweep"]["trials"] == 3 and extension["sweep"]["search"]["optim.lr"]["log"]
    assert extension["sweep"]["direction"] == "minimize"
    assert job.fine_tuned_model is None
    assert jobs_client.fine_tuning.jobs.retrieve(job.id).model_extra["trimtab"] == extension


def test_a_bad_sweep_is_a_400_naming_every_param(create_sweep):
    search = {"optim.lr": {"low": 0.1, "high": 0.01}, "method.lora_rr": {"choices": [4]}}
    with pytest.raises(openai.BadRequestError) as raised:
        create_sweep({"trials": 2, "search": search, "parallel": 0})
    error = raised.value.body
    assert error["param"] == "trimtab.sweep.parallel"
    for named in (
        "trimtab.sweep.parallel: a whole number of at least 1",
        "trimtab.sweep.search.optim.lr: low must be below high",
        "trimtab.sweep.search.method.lora_rr: not a config key",
    ):
        assert named in error["message"], error["message"]


def test_the_trials_route_lists_a_sweep_s_trials_in_trial_order(create_sweep, jobs_live):
    sweep = create_sweep({"trials": 2, "search": SEARCH})
    store = jobs_live.service.store
    parent = store.get_job(sweep.id)
    for number in (1, 0):  # recorded out of order: listed by trial number
        store.insert_trial(
            parent
            | {
                "id": f"ftjob-trial{number}",
                "created_at": int(time.time()),
                "status": "running",
                "parent_id": sweep.id,
                "sweep_trial": number,
                "extension": {"kind": "trial", "params": {"optim.lr": 0.001 * (number + 1)}},
            }
        )
    client = HttpJobs(jobs_live.url, api_key=API_KEY)
    page = client.list_trials(sweep.id)
    assert [j["id"] for j in page["data"]] == ["ftjob-trial0", "ftjob-trial1"]
    first = page["data"][0]["trimtab"]
    assert (first["parent_id"], first["sweep_trial"], first["params"]) == (
        sweep.id,
        0,
        {"optim.lr": 0.001},
    )
    # the job list shows the sweep, not its trials; a trial is still a job of its own
    assert [j["id"] for j in client.list_jobs()["data"]] == [sweep.id]
    assert client.get_job("ftjob-trial1")["status"] == "running"
    with pytest.raises(ApiProblem, match="a trial cannot be cancelled on its own"):
        client.cancel("ftjob-trial1")
    with pytest.raises(ApiProblem, match="is not a sweep"):
        client.list_trials("ftjob-trial1")
    with pytest.raises(ApiProblem, match="No such fine-tuning job"):
        client.list_trials("ftjob-nope")
