"""``/v1/fine_tuning/jobs`` with the official client, on a server without a scheduler: jobs
are created, listed, cancelled and refused; nothing trains here."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import openai
import pytest

from tests.server.conftest import API_KEY

ROWS = [{"prompt": f"review {i}: great\n\n###\n\n", "completion": " 5"} for i in range(4)]
CONTENT = "".join(json.dumps(r) + "\n" for r in ROWS).encode()


@pytest.fixture
def training_file(jobs_client) -> str:
    return jobs_client.files.create(file=("train.jsonl", CONTENT), purpose="fine-tune").id


@pytest.fixture
def create(jobs_client, tiny_llama_dir: Path, training_file: str):
    """Create a job on the tiny Llama and the training file; keyword arguments override."""

    def make(**fields):
        return jobs_client.fine_tuning.jobs.create(
            **{"model": str(tiny_llama_dir), "training_file": training_file, **fields}
        )

    return make


def test_a_created_job_has_openais_fields_and_is_retrievable(create, jobs_client, training_file):
    job = create(suffix="reviews", seed=7, metadata={"team": "search"})
    assert job.id.startswith("ftjob-") and job.object == "fine_tuning.job"
    assert job.status == "validating_files" and job.training_file == training_file
    assert (job.seed, job.metadata, job.user_provided_suffix) == (7, {"team": "search"}, "reviews")
    assert job.hyperparameters.n_epochs == "auto"
    assert job.hyperparameters.batch_size == "auto"
    assert job.hyperparameters.learning_rate_multiplier == "auto"
    assert job.method.type == "supervised"
    assert job.method.supervised.hyperparameters.n_epochs == "auto"
    assert job.fine_tuned_model is None and job.finished_at is None and job.error is None
    assert job.result_files == [] and job.organization_id and job.created_at > 0
    assert job.model_extra["trimtab"]["method"] == "lora"  # trimtab's extension, default
    assert jobs_client.fine_tuning.jobs.retrieve(job.id).model_dump() == job.model_dump()


def test_jobs_are_listed_newest_first_page_by_page_and_by_metadata(create, jobs_client):
    a = create(metadata={"team": "search", "stage": "dev"})
    b = create(metadata={"team": "ads"})
    c = create()
    listed = jobs_client.fine_tuning.jobs.list().data
    # Newest first by created_at (whole seconds, as OpenAI's): jobs of one second in id order.
    assert sorted(j.id for j in listed) == sorted([a.id, b.id, c.id])
    assert [j.created_at for j in listed] == sorted((j.created_at for j in listed), reverse=True)
    first = jobs_client.fine_tuning.jobs.list(limit=2)
    rest = jobs_client.fine_tuning.jobs.list(limit=2, after=first.data[-1].id)
    assert [j.id for j in first.data + rest.data] == [j.id for j in listed]
    assert (first.has_more, rest.has_more) == (True, False)
    search = jobs_client.fine_tuning.jobs.list(metadata={"team": "search"})
    assert [j.id for j in search.data] == [a.id]
    assert jobs_client.fine_tuning.jobs.list(metadata={"team": "search", "stage": "dev"}).data
    both = jobs_client.fine_tuning.jobs.list(metadata={"team": "search", "stage": "prod"})
    assert both.data == []


@pytest.mark.parametrize(
    ("fields", "status", "param"),
    [
        ({"model": "no-such-model-anywhere"}, 400, "model"),
        ({"training_file": "file-doesnotexist"}, 404, "training_file"),
        ({"validation_file": "file-doesnotexist"}, 404, "validation_file"),
        ({"suffix": "s" * 65}, 400, "suffix"),
        ({"seed": -1}, 400, "seed"),
        ({"extra_body": {"trimtab": {"config": {"optim.no_such_key": 1}}}}, 400, "trimtab"),
        ({"extra_body": {"trimtab": {"method": "qlora"}}}, 400, "trimtab.method"),
    ],
    ids=[
        "unknown-model",
        "unknown-training-file",
        "unknown-validation-file",
        "long-suffix",
        "negative-seed",
        "bad-config-key",
        "bad-method",
    ],
)
def test_a_refused_create_names_its_param(create, jobs_client, fields, status, param):
    with pytest.raises(openai.APIStatusError) as e:
        create(**fields)
    assert (e.value.status_code, e.value.param) == (status, param), e.value.message
    assert e.value.type == "invalid_request_error"
    assert jobs_client.fine_tuning.jobs.list().data == []


def test_an_unknown_field_is_an_unrecognized_request_argument(create):
    with pytest.raises(openai.BadRequestError) as e:
        create(extra_body={"learning_rate": 0.1})
    assert "Unrecognized request argument supplied: learning_rate" in e.value.message
    assert e.value.param == "learning_rate"


def test_a_method_other_than_supervised_is_refused(create):
    with pytest.raises(openai.BadRequestError) as e:
        create(method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1}}})
    assert e.value.param.startswith("method")


def test_the_deprecated_top_level_hyperparameters_are_accepted(create):
    job = create(hyperparameters={"n_epochs": 2, "batch_size": 4})
    assert (job.hyperparameters.n_epochs, job.hyperparameters.batch_size) == (2, 4)
    assert job.method.supervised.hyperparameters.n_epochs == 2


def test_method_hyperparameters_are_recorded(create):
    hyper = {"n_epochs": 3, "learning_rate_multiplier": 0.5}
    job = create(method={"type": "supervised", "supervised": {"hyperparameters": hyper}})
    assert job.hyperparameters.n_epochs == 3
    assert job.hyperparameters.learning_rate_multiplier == 0.5


def test_a_body_that_is_not_a_json_object_is_a_400(jobs_live):
    import httpx2

    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    with httpx2.Client(headers=headers) as http:
        for body in (b"[1, 2]", b"{nope"):
            response = http.post(f"{jobs_live.v1}/fine_tuning/jobs", content=body)
            assert response.status_code == 400 and "JSON" in response.json()["error"]["message"]


def test_cancelling_a_job_not_started_cancels_it_with_an_event(create, jobs_client):
    job = create()
    cancelled = jobs_client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert jobs_client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    events = jobs_client.fine_tuning.jobs.list_events(job.id).data
    assert "cancelled" in events[0].message.lower()
    with pytest.raises(openai.BadRequestError):  # a second cancel: it has ended already
        jobs_client.fine_tuning.jobs.cancel(job.id)


def test_pausing_or_resuming_a_job_that_is_not_running_or_paused_is_a_400(create, jobs_client):
    job = create()
    with pytest.raises(openai.BadRequestError) as e:
        jobs_client.fine_tuning.jobs.pause(job.id)
    assert "validating_files" in e.value.message
    with pytest.raises(openai.BadRequestError):
        jobs_client.fine_tuning.jobs.resume(job.id)
    assert jobs_client.fine_tuning.jobs.retrieve(job.id).status == "validating_files"


def test_an_unknown_job_is_a_404_everywhere(jobs_client):
    jobs = jobs_client.fine_tuning.jobs
    for call in (jobs.retrieve, jobs.cancel, jobs.pause, jobs.resume, jobs.list_events):
        with pytest.raises(openai.NotFoundError):
            call("ftjob-nothing")
    with pytest.raises(openai.NotFoundError):
        jobs.checkpoints.list("ftjob-nothing")


def test_events_are_listed_newest_first_page_by_page(create, jobs_client):
    job = create()
    jobs_client.fine_tuning.jobs.cancel(job.id)
    events = jobs_client.fine_tuning.jobs.list_events(job.id)
    assert len(events.data) == 2 and events.has_more is False
    assert all(e.object == "fine_tuning.job.event" and e.level == "info" for e in events.data)
    messages = [e.message for e in events.data]
    assert messages[0] == "Fine-tuning job cancelled"
    assert messages[-1].startswith(f"Created fine-tuning job: {job.id}; validating training file")
    first = jobs_client.fine_tuning.jobs.list_events(job.id, limit=1)
    assert [e.id for e in first.data] == [events.data[0].id] and first.has_more is True
    rest = jobs_client.fine_tuning.jobs.list_events(job.id, after=first.data[0].id, limit=5)
    assert [e.id for e in rest.data] == [e.id for e in events.data[1:]]


def test_a_job_not_started_has_no_checkpoints(create, jobs_client):
    job = create()
    page = jobs_client.fine_tuning.jobs.checkpoints.list(job.id)
    assert page.data == [] and page.has_more is False


def test_fifty_concurrent_creates_all_land(jobs_live, tiny_llama_dir, training_file):
    from openai import OpenAI

    made: list[str] = []
    failures: list[BaseException] = []
    start = threading.Barrier(50)

    def create_one(i: int) -> None:
        try:
            with OpenAI(base_url=jobs_live.v1, api_key=API_KEY, max_retries=0, timeout=120) as c:
                start.wait()
                job = c.fine_tuning.jobs.create(
                    model=str(tiny_llama_dir), training_file=training_file, metadata={"i": str(i)}
                )
                made.append(job.id)
        except BaseException as e:
            failures.append(e)

    threads = [threading.Thread(target=create_one, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures and len(set(made)) == 50
    with OpenAI(base_url=jobs_live.v1, api_key=API_KEY, max_retries=0) as c:
        listed = c.fine_tuning.jobs.list(limit=100)
        assert sorted(j.id for j in listed.data) == sorted(made)
        assert {j.metadata["i"] for j in listed.data} == {str(i) for i in range(50)}


def test_serve_runs_a_scheduler_over_the_store_while_uvicorn_runs(monkeypatch, tmp_path):
    import uvicorn

    import trimtab.generation.engine as engine_module
    import trimtab.generation.pool as pool_module
    import trimtab.jobs.scheduler as scheduler_module
    from trimtab.server.app import serve

    seen: list[str] = []

    class Scheduler:
        def __init__(self, service, executor, *, concurrency, owner_ttl):
            seen.append(f"scheduler {executor.name} {concurrency} {owner_ttl}")
            self.service = service

        def start(self) -> None:
            seen.append("started")

        def stop(self) -> None:
            seen.append("stopped")

    def run(server: uvicorn.Server) -> None:
        service = server.config.app.state.jobs
        seen.append(f"uvicorn {service.home} {service.runs_dir} {service.max_file_bytes}")
        seen.append(f"store {service.store.url}")

    monkeypatch.setattr(pool_module, "ModelPool", lambda runs, **options: seen.append(str(runs)))
    monkeypatch.setattr(engine_module.Engine, "__init__", lambda self, pool, **options: None)
    monkeypatch.setattr(engine_module.Engine, "close", lambda self: seen.append("engine closed"))
    monkeypatch.setattr(scheduler_module, "Scheduler", Scheduler)
    monkeypatch.setattr(uvicorn.Server, "run", run)
    serve(home=tmp_path, runs_dir=tmp_path / "served", jobs_concurrency=3, max_file_bytes=99)
    assert seen == [
        str(tmp_path / "served"),
        "scheduler local 3 10.0",
        "started",
        f"uvicorn {tmp_path} {tmp_path / 'served'} 99",
        f"store sqlite:///{tmp_path / 'jobs.db'}",
        "stopped",
        "engine closed",
    ]


def test_serve_refuses_the_ray_executor_without_an_address(monkeypatch, tmp_path):
    from trimtab.errors import TrimtabError
    from trimtab.server.app import serve

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(TrimtabError, match="--ray-address"):
        serve(home=tmp_path, executor="ray")
    assert not (tmp_path / "jobs.db").exists()


def test_trimtab_serve_passes_the_jobs_options_and_prints_them(monkeypatch, tmp_path, capsys):
    import trimtab.server.app as app_module
    from trimtab.cli import main

    given: dict = {}
    monkeypatch.setattr(app_module, "serve", lambda *a, **options: given.update(options))
    database = "postgresql://jobs:s3cret@db.example/trimtab"
    args = ["serve", "--home", str(tmp_path), "--database", database, "--executor", "ray"]
    args += ["--ray-address", "http://head:8265", "--jobs-concurrency", "2"]
    assert main([*args, "--max-file-bytes", "1000"]) == 0
    assert given["home"] == tmp_path and given["database"] == database
    assert (given["executor"], given["ray_address"]) == ("ray", "http://head:8265")
    assert (given["jobs_concurrency"], given["max_file_bytes"]) == (2, 1000)
    line = capsys.readouterr().out
    assert "postgresql://jobs:***@db.example/trimtab" in line and "s3cret" not in line
    assert "ray at http://head:8265" in line and "2 job(s)" in line and "1000 bytes" in line


def test_a_file_in_use_by_an_unfinished_job_cannot_be_deleted_until_the_job_ends(
    create, jobs_client, training_file
):
    job = create()
    with pytest.raises(openai.BadRequestError) as refused:
        jobs_client.files.delete(training_file)
    assert refused.value.param == "file_id" and job.id in refused.value.message
    jobs_client.fine_tuning.jobs.cancel(job.id)
    assert jobs_client.files.delete(training_file).deleted is True


@pytest.mark.parametrize("key", ["run_dir", "data.train", "model_id", "model.name"])
def test_a_config_key_the_job_sets_itself_is_refused(create, key):
    with pytest.raises(openai.BadRequestError) as refused:
        create(extra_body={"trimtab": {"config": {key: "/tmp/elsewhere"}}})
    assert refused.value.param == f"trimtab.config.{key}"
    assert "set by the job itself" in refused.value.message
