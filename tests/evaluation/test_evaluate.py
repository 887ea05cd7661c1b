"""Evaluating base models and fine-tuned runs on a prepared test file."""

from pathlib import Path

import pytest

from trimtab.evaluation.evaluate import evaluate_classification, load_for_eval
from trimtab.training import load_config, train


def run(data: Path, model: Path, out: Path, *extra: str):
    return train(load_config(None, [f"data.train={data / 'train.jsonl'}",
                                    f"data.valid={data / 'valid.jsonl'}", f"model.name={model}",
                                    f"run_dir={out}", "batch_size=8", *extra]), progress=False)


def test_classify_run_is_scored_with_its_head(tmp_path, reviews, tiny_bert_dir):
    run(reviews, tiny_bert_dir, tmp_path / "run", "data.task=classify", "method.name=full",
        "epochs=6", "optim.lr=0.003")
    report = evaluate_classification(load_for_eval(tmp_path / "run"), reviews / "valid.jsonl")
    assert (report.n, report.accuracy, report.invalid) == (16, 1.0, 0)
    assert report.labels == ["1", "5"] and report.mae == 0.0


def test_lora_run_is_scored_by_label_log_probability(tmp_path, reviews, tiny_llama_dir):
    run(reviews, tiny_llama_dir, tmp_path / "run", "epochs=3", "optim.lr=0.01")
    model = load_for_eval(tmp_path / "run" / "final")
    assert model.task == "sft"
    report = evaluate_classification(model, reviews / "valid.jsonl")
    assert report.n == 16 and report.invalid == 0
    assert report.accuracy == 1.0  # the words give the label away


def test_base_model_is_scored_zero_shot(reviews, tiny_llama_dir):
    report = evaluate_classification(load_for_eval(tiny_llama_dir), reviews / "valid.jsonl",
                                     limit=6)
    assert report.n == 6 and sum(map(sum, report.confusion)) == 6
