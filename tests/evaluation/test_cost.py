"""The cost of every row of ``trimtab eval``: prompt tokens, latency of one request, requests/s."""

from __future__ import annotations

import json

import pytest

from trimtab.evaluation.comparison import EvalOptions, run_eval
from trimtab.evaluation.cost import combined_cost, measure_latency, prompt_tokens_per_request
from trimtab.evaluation.report import comparison_table, write_report

COST_KEYS = {
    "prompt_tokens_per_request",
    "latency_ms_per_request",
    "latency_sample",
    "requests_per_s",
    "parameters",
}


def quiet(_: str) -> None:
    pass


@pytest.fixture
def baselines(reviews, tiny_llama_dir) -> list[dict]:
    """The tiny Llama asked zero-shot and 2-shot on 6 examples, latency timed on 4."""
    (reviews / "test.jsonl").write_text((reviews / "valid.jsonl").read_text())
    options = EvalOptions.parse(
        models=[str(tiny_llama_dir)],
        data=reviews,
        shots=2,
        limit=6,
        latency_sample=4,
        precision="fp32",
    )
    return run_eval(options, say=quiet)["results"]


def test_few_shot_prompts_cost_more_tokens_than_zero_shot(baselines):
    zero, few = baselines
    assert (zero["kind"], few["kind"]) == ("zero-shot", "few-shot (k=2)")
    assert zero["cost"]["prompt_tokens_per_request"] > 0
    assert few["cost"]["prompt_tokens_per_request"] > zero["cost"]["prompt_tokens_per_request"]


def test_every_row_has_its_cost_with_the_latency_sample_it_was_asked(baselines):
    for row in baselines:
        cost = row["cost"]
        assert set(cost) == COST_KEYS
        assert cost["latency_sample"] == 4 and cost["latency_ms_per_request"] > 0
        assert cost["requests_per_s"] == row["examples_per_s"]
        assert cost["parameters"] > 0


def test_latency_sample_larger_than_the_data_times_every_example_and_zero_skips(
    tmp_path, tiny_llama_dir
):
    (tmp_path / "t.jsonl").write_text('{"text": "one two three"}\n{"text": "four five"}\n')
    for sample, timed in ((50, 2), (0, 0)):
        options = EvalOptions.parse(
            models=[str(tiny_llama_dir)], data=tmp_path / "t.jsonl", latency_sample=sample
        )
        (row,) = run_eval(options, say=quiet)["results"]
        assert row["cost"]["latency_sample"] == timed
        assert (row["cost"]["latency_ms_per_request"] is None) == (timed == 0)
        assert row["cost"]["prompt_tokens_per_request"] > 0  # the documents' tokens


def test_latency_times_the_first_examples_after_two_warmups():
    calls: list[int] = []
    median, timed = measure_latency(calls.append, n=10, sample=3)
    assert calls == [0, 1, 0, 1, 2] and timed == 3 and median is not None and median >= 0
    calls.clear()
    assert measure_latency(calls.append, n=10, sample=0) == (None, 0) and calls == []


def test_prompt_tokens_count_special_tokens_and_stop_at_max_length(tiny_llama_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    texts = ["great product", "terrible " * 40]
    lengths = [len(tokenizer(t)["input_ids"]) for t in texts]
    assert prompt_tokens_per_request(tokenizer, texts, 1000) == sum(lengths) / 2
    assert prompt_tokens_per_request(tokenizer, texts, 10) == (min(lengths[0], 10) + 10) / 2
    assert prompt_tokens_per_request(tokenizer, [], 10) is None


def test_an_ensemble_costs_its_members_added_up():
    costs = [
        {
            "prompt_tokens_per_request": 30.0,
            "latency_ms_per_request": 4.0,
            "latency_sample": 20,
            "parameters": 100,
        },
        {
            "prompt_tokens_per_request": 50.0,
            "latency_ms_per_request": 6.0,
            "latency_sample": 20,
            "parameters": 300,
        },
    ]
    cost = combined_cost(costs, [100.0, 300.0])
    assert cost["prompt_tokens_per_request"] == 80.0 and cost["latency_ms_per_request"] == 10.0
    assert cost["parameters"] == 400 and cost["requests_per_s"] == 75.0  # 1 / (1/100 + 1/300)
    costs[1]["latency_ms_per_request"] = None  # a member measured without latency
    assert combined_cost(costs, [100.0, 300.0])["latency_ms_per_request"] is None


def test_report_tables_show_the_cost_of_each_row(tmp_path):
    row = {
        "label": "minilm-full",
        "kind": "fine-tuned",
        "mode": "classification head",
        "n": 100,
        "examples_per_s": 250.0,
        "seconds": 0.4,
        "cost": {
            "prompt_tokens_per_request": 64.4,
            "latency_ms_per_request": 7.31,
            "latency_sample": 20,
            "requests_per_s": 250.0,
            "parameters": 22_713_216,
        },
    }
    report = {"data": "d.jsonl", "results": [row, {"label": "no cost", "n": 5}]}
    header, _, first, second = comparison_table(report).splitlines()
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert cells[-3:] == ["Prompt tokens", "Latency (ms)", "Requests/s"]
    assert [c.strip() for c in first.strip("|").split("|")][-3:] == ["64", "7.3", "250.0"]
    assert second.rstrip().endswith("| — | — | — |")
    write_report(report, tmp_path / "r")
    md = (tmp_path / "r" / "report.md").read_text()
    assert "64.4 prompt tokens, 7.3 ms alone (median of 20), 250.0 requests/s" in md
    assert (
        "22,713,216 parameters" in md and "22,713,216" in (tmp_path / "r/report.html").read_text()
    )
    assert json.loads((tmp_path / "r" / "report.json").read_text())["results"][0]["cost"]
