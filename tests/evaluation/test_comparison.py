"""``run_eval``: what each kind of data measures, and the options that shape the table."""

from __future__ import annotations

import json

import pytest

from trimtab.errors import ConfigError
from trimtab.evaluation.comparison import EvalOptions, run_eval


def quiet(_: str) -> None:
    pass


def test_open_ended_data_gets_exact_match_rouge_and_loss_in_one_row(tmp_path, tiny_llama_dir):
    rows = [
        {"prompt": f"say {w} ->", "completion": f" {w} and more words {i}"}
        for i, w in enumerate(["red", "blue", "green", "pink"] * 2)
    ]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    options = EvalOptions.parse(
        models=[str(tiny_llama_dir)], data=tmp_path / "t.jsonl", sampling={"max_tokens": 4}
    )
    (row,) = run_eval(options, say=quiet)["results"]
    assert row["mode"] == "generation" and row["classification"] is None
    assert row["generation"]["n"] == 8 and 0 <= row["generation"]["rouge_l"] <= 1
    assert row["language_model"]["perplexity"] > 1


def test_plain_text_gets_loss_and_perplexity(tmp_path, tiny_llama_dir):
    (tmp_path / "t.jsonl").write_text('{"text": "one two three"}\n{"text": "four five"}\n')
    options = EvalOptions.parse(models=[str(tiny_llama_dir)], data=tmp_path / "t.jsonl")
    (row,) = run_eval(options, say=quiet)["results"]
    assert row["mode"] == "loss" and row["generation"] is None
    assert row["language_model"]["loss"] > 0


def test_baselines_can_be_evaluated_on_fewer_examples(reviews, tiny_llama_dir):
    (reviews / "test.jsonl").write_text((reviews / "valid.jsonl").read_text())
    options = EvalOptions.parse(
        models=[str(tiny_llama_dir)], data=reviews, shots=2, baseline_limit=4, precision="fp32"
    )
    results = run_eval(options, say=quiet)["results"]
    assert [r["kind"] for r in results] == ["zero-shot", "few-shot (k=2)"]
    assert [r["n"] for r in results] == [4, 4]
    assert len(results[1]["shots"]) == 2


def test_every_bad_option_is_reported_at_once(tmp_path):
    with pytest.raises(ConfigError) as e:
        EvalOptions.parse(
            models=[], data=tmp_path / "missing", shots=-1, sampling={"temperature": 5, "n": 2}
        )
    text = str(e.value)
    for field in ("models", "shots", "missing", "temperature", "n: evaluation"):
        assert field in text
