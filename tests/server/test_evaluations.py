"""``/v1/evaluations``: a real ``trimtab eval`` of a served fine-tuned model on an uploaded test
file, from the request to its results, report and plots; one at a time; cancelled; failed with
its log's words; and read back by a new service over the same folder (a restart)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from tests.server.conftest import API_KEY, run_server

# Like the "classes" run's training data: the words give the label away.
TEST_ROWS = [
    {"prompt": f"review {i}: {'great love' if i % 2 else 'terrible awful'}", "completion": s}
    for i in range(100, 112)
    for s in (("5",) if i % 2 else ("1",))
]


@dataclass
class Served:
    url: str
    files: Any  # the JobsService
    evaluations: Any  # the EvaluationService
    home: Path


@pytest.fixture
def served(tmp_path: Path, live) -> Iterator[Served]:
    """The real pool (the tiny Llama and its runs) with files and evaluations under tmp_path."""
    from trimtab.jobs.evaluations import EvaluationService
    from trimtab.jobs.service import JobsService
    from trimtab.jobs.store import Store
    from trimtab.server.app import create_app

    home = tmp_path / "home"
    store = Store(home / "jobs.db")
    files = JobsService(store, home, tmp_path / "runs")
    evaluations = EvaluationService(home, live.pool, files)
    try:
        app = create_app(
            live.engine, live.pool, api_key=API_KEY, jobs=files, evaluations=evaluations
        )
        with run_server(app) as url:
            yield Served(url, files, evaluations, home)
    finally:
        for record in evaluations.list_evaluations(limit=100)["data"]:
            if record["status"] == "running":  # a failed test leaves no process behind
                evaluations.cancel(record["id"])
        store.close()


@pytest.fixture
def client(served: Served) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{served.url}/v1", api_key=API_KEY, max_retries=0, timeout=60
    ) as c:
        yield c


def upload_test_set(client: openai.OpenAI) -> str:
    content = "".join(json.dumps(r) + "\n" for r in TEST_ROWS).encode()
    return client.files.create(file=("test.jsonl", content), purpose="fine-tune").id


def start(client: openai.OpenAI, **body: Any) -> dict[str, Any]:
    made: dict[str, Any] = client.post("/evaluations", body=body, cast_to=object)
    return made


def wait(client: openai.OpenAI, eval_id: str, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        got: dict[str, Any] = client.get(f"/evaluations/{eval_id}", cast_to=object)
        if got["status"] != "running":
            return got
        assert time.monotonic() < deadline, "the evaluation did not end"
        time.sleep(0.5)


def test_a_fine_tuned_classifier_is_evaluated_end_to_end(client, served, run_ids):
    file_id = upload_test_set(client)
    made = start(client, model=run_ids["classes"], file=file_id, limit=8)
    assert made["id"].startswith("eval-") and len(made["id"]) == 29
    assert made["object"] == "evaluation" and made["status"] == "running"
    assert (made["model"], made["file"], made["limit"]) == (run_ids["classes"], file_id, 8)
    assert made["finished_at"] is None and made["results"] is None
    done = wait(client, made["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["error"] is None and done["finished_at"] >= done["created_at"]
    (result,) = done["results"]
    assert result["n"] == 8 and result["seconds"] >= 0
    classification = result["classification"]
    assert 0 <= classification["accuracy"] <= 1 and classification["labels"] == ["1", "5"]
    assert sum(map(sum, classification["confusion"])) == 8
    assert set(classification["per_class"]) == {"1", "5"}
    listed = client.get("/evaluations", cast_to=object)
    assert [e["id"] for e in listed["data"]] == [made["id"]]  # type: ignore[index]

    with httpx2.Client(headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30) as http:
        base = f"{served.url}/v1/evaluations/{made['id']}"
        page = http.get(base + "/report")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "<html" in page.text
        plots = sorted((served.home / "evaluations" / made["id"] / "report" / "plots").iterdir())
        assert plots, "trimtab eval drew no plot"
        plot = http.get(f"{base}/plots/{plots[0].name}")
        assert plot.status_code == 200 and plot.headers["content-type"] == "image/png"
        assert plot.content == plots[0].read_bytes()
        assert http.get(f"{base}/plots/%2e%2e").status_code == 404
        assert http.get(f"{base}/plots/report.json").status_code == 404

    # A restart: a new service over the same folder reads the same evaluation.
    from trimtab.jobs.evaluations import EvaluationService

    again = EvaluationService(served.home, served.evaluations.pool, served.files)
    assert again.get(made["id"]) == done


def test_one_evaluation_runs_at_a_time_and_one_can_be_cancelled(client, served, run_ids):
    file_id = upload_test_set(client)
    first = start(client, model=run_ids["lora-a"], file=file_id)
    with pytest.raises(openai.RateLimitError) as e:
        start(client, model=run_ids["classes"], file=file_id)
    assert e.value.code == "evaluation_running" and first["id"] in e.value.message
    cancelled: dict[str, Any] = client.post(f"/evaluations/{first['id']}/cancel", cast_to=object)
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"] is not None
    assert wait(client, first["id"])["status"] == "cancelled"
    with pytest.raises(openai.BadRequestError):
        client.post(f"/evaluations/{first['id']}/cancel", cast_to=object)
    with pytest.raises(openai.NotFoundError):
        client.get(f"/evaluations/{first['id']}/report", cast_to=object)


def test_unknown_models_files_and_evaluations_are_404s(client, run_ids):
    file_id = upload_test_set(client)
    with pytest.raises(openai.NotFoundError) as e:
        start(client, model="ft:nothing:trimtab::abcdefgh", file=file_id)
    assert (e.value.param, e.value.code) == ("model", "model_not_found")
    with pytest.raises(openai.NotFoundError) as e:
        start(client, model=run_ids["classes"], file="file-nothing")
    assert e.value.param == "file"
    with pytest.raises(openai.BadRequestError) as e:
        start(client, model=run_ids["classes"], file=file_id, limit=0)
    assert e.value.param == "limit"
    with pytest.raises(openai.NotFoundError):
        client.get("/evaluations/eval-nothing", cast_to=object)


def test_an_evaluation_that_ended_without_a_report_failed_with_its_logs_words(served):
    # As a process that died leaves it: its record, its log, no report.
    ended = subprocess.Popen(["true"])
    ended.wait()
    eval_id = "eval-" + "a" * 24
    folder = served.home / "evaluations" / eval_id
    folder.mkdir(parents=True)
    (folder / "eval.log").write_text("loading model\nerror: data: test.jsonl: no examples\n")
    record = {"id": eval_id, "model": "m", "file": "file-x", "limit": None, "mode": None}
    record |= {"created_at": int(time.time()), "handle": str(ended.pid), "cancelled_at": None}
    (folder / "evaluation.json").write_text(json.dumps(record))
    got = served.evaluations.get(eval_id)
    assert got["status"] == "failed" and got["results"] is None
    assert got["error"]["message"].endswith("error: data: test.jsonl: no examples")
    assert "loading model" not in got["error"]["message"]
