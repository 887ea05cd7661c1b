"""``GET /v1/files/{id}/report``: prepare's checks on an uploaded file, nothing fixed or
written; the labels' counts and a token-length histogram, in whitespace words or with a
model's tokenizer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.server.conftest import API_KEY, JobsLive, serve_jobs

WORDS = {"1": "terrible awful broke", "5": "great love works"}
CLEAN = [
    {"prompt": f"review {i}: {WORDS[s]}\n\n###\n\n", "completion": f" {s}"}
    for i in range(12)
    for s in (("5",) if i % 2 else ("1",))
]
STATUSES = {"ok", "info", "warning", "error"}


@pytest.fixture(scope="module")
def tiny_backend(tmp_path_factory, tiny_llama_dir: Path) -> Iterator[tuple[Any, Any]]:
    """A pool that knows the tiny Llama (no runs: nothing to train)."""
    from trimtab.generation.engine import Engine
    from trimtab.generation.pool import ModelPool

    pool = ModelPool(tmp_path_factory.mktemp("no-runs"), preload=[str(tiny_llama_dir)])
    engine = Engine(pool)
    try:
        yield engine, pool
    finally:
        engine.close()


@pytest.fixture
def served(tmp_path: Path, tiny_backend) -> Iterator[JobsLive]:
    with serve_jobs(tmp_path, tiny_backend) as live:
        yield live


@pytest.fixture
def http() -> Iterator[httpx2.Client]:
    with httpx2.Client(headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as client:
        yield client


def upload(http: httpx2.Client, live: JobsLive, rows: list[dict], name: str = "t.jsonl") -> str:
    content = "".join(json.dumps(r) + "\n" for r in rows).encode()
    made = http.post(
        f"{live.v1}/files", files={"file": (name, content)}, data={"purpose": "fine-tune"}
    )
    assert made.status_code == 200, made.text
    return str(made.json()["id"])


def report(http: httpx2.Client, live: JobsLive, file_id: str, **params: str) -> httpx2.Response:
    return http.get(f"{live.v1}/files/{file_id}/report", params=params)


def by_id(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {check["id"]: check for check in body["checks"]}


def test_a_clean_classification_file(http, served):
    file_id = upload(http, served, CLEAN, "reviews.jsonl")
    body = report(http, served, file_id).json()
    assert {k: body[k] for k in ("object", "file_id", "filename", "examples")} == {
        "object": "file.report",
        "file_id": file_id,
        "filename": "reviews.jsonl",
        "examples": 12,
    }
    assert (body["format"], body["task"]) == ("prompt-completion", "classification")
    assert body["labels"] == {"1": 6, "5": 6}
    checks = by_id(body)
    for check in body["checks"]:
        assert check["status"] in STATUSES and isinstance(check["count"], int)
        assert set(check) == {"id", "title", "status", "message", "count", "locations", "fix"}
    for clean in ("duplicates", "empty-fields", "contradictions", "prompt-suffix", "leading-space"):
        assert checks[clean]["status"] == "ok", checks[clean]
    assert checks["quantity"]["status"] == "warning"  # 12 examples: too few to fine-tune
    assert checks["class-quantity"]["status"] == "warning"
    assert checks["token-lengths"]["message"].startswith("skipped")
    lengths = body["token_lengths"]
    words = [len(r["prompt"].split()) + len(r["completion"].split()) for r in CLEAN]
    assert lengths["tokenizer"] == "whitespace" and lengths["over_context"] is None
    assert sum(lengths["counts"]) == 12 and len(lengths["edges"]) == len(lengths["counts"]) + 1
    assert lengths["max"] == max(words) and lengths["mean"] == round(sum(words) / 12, 2)
    assert lengths["edges"][0] == 0 and lengths["edges"][-1] == max(words)
    # Nothing was fixed or written: the file reads back as uploaded.
    content = http.get(f"{served.v1}/files/{file_id}/content").text
    assert [json.loads(line) for line in content.splitlines()] == CLEAN
    assert report(http, served, file_id).json() == body  # kept, and the same


def test_duplicates_and_empty_completions_are_found_on_their_lines(http, served):
    rows = [dict(r) for r in CLEAN[:6]]
    rows.insert(2, dict(rows[0]))  # line 3 repeats line 1
    rows.insert(4, {"prompt": "review 99: meh\n\n###\n\n", "completion": ""})  # line 5
    body = report(http, served, upload(http, served, rows)).json()
    checks = by_id(body)
    duplicates, empty = checks["duplicates"], checks["empty-fields"]
    assert (duplicates["status"], duplicates["count"], duplicates["locations"]) == (
        "warning",
        1,
        ["line 3"],
    )
    assert duplicates["fix"] == {
        "id": "drop-duplicates",
        "description": "Remove 1 duplicates, keeping the first",
        "recommended": True,
    }
    assert (empty["status"], empty["locations"]) == ("warning", ["line 5"])
    assert empty["fix"]["id"] == "drop-empty" and empty["fix"]["recommended"] is True
    assert body["examples"] == 8


def test_tokens_are_counted_with_a_models_tokenizer(http, served, tiny_llama_dir, tokenizer):
    file_id = upload(http, served, CLEAN)
    model = str(tiny_llama_dir)
    body = report(http, served, file_id, model=model).json()
    lengths = body["token_lengths"]
    specials = tokenizer.num_special_tokens_to_add(pair=False)
    totals = [
        len(tokenizer(r["prompt"], add_special_tokens=False)["input_ids"])
        + len(tokenizer(r["completion"], add_special_tokens=False)["input_ids"])
        + specials
        for r in CLEAN
    ]
    assert lengths["tokenizer"] == model and lengths["max"] == max(totals)
    assert sum(lengths["counts"]) == 12 and lengths["mean"] == round(sum(totals) / 12, 2)
    assert lengths["over_context"] == 0
    checks = by_id(body)
    assert not checks["token-lengths"]["message"].startswith("skipped")
    assert checks["multi-token-labels"]["status"] in ("ok", "info")
    whitespace = report(http, served, file_id).json()["token_lengths"]
    assert whitespace["tokenizer"] == "whitespace" and whitespace["max"] != lengths["max"]


def test_an_unknown_model_is_a_400_naming_it(http, served):
    response = report(http, served, upload(http, served, CLEAN), model="no-such-model")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "model"


def test_an_unknown_file_is_a_404(http, served):
    response = report(http, served, "file-abc123")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "file_not_found"
