"""Evaluating base models and fine-tuned runs on a prepared test file."""

from pathlib import Path

import pytest

from trimtab.evaluation.evaluate import (
    evaluate_classification,
    evaluate_language_model,
    load_eval_data,
    load_for_eval,
)
from trimtab.training import load_config, train


def run(data: Path, model: Path, out: Path, *extra: str):
    return train(
        load_config(
            None,
            [
                f"data.train={data / 'train.jsonl'}",
                f"data.valid={data / 'valid.jsonl'}",
                f"model.name={model}",
                f"run_dir={out}",
                "batch_size=8",
                *extra,
            ],
        ),
        progress=False,
    )


def test_classify_run_is_scored_with_its_head(tmp_path, reviews, tiny_bert_dir):
    run(
        reviews,
        tiny_bert_dir,
        tmp_path / "run",
        "data.task=classify",
        "method.name=full",
        "epochs=6",
        "optim.lr=0.003",
    )
    outcome = evaluate_classification(
        load_for_eval(tmp_path / "run"), load_eval_data(reviews / "valid.jsonl")
    )
    report = outcome.classification
    assert outcome.mode == "classification head"
    assert (report.n, report.accuracy, report.invalid) == (16, 1.0, 0)
    assert report.labels == ["1", "5"] and report.mae == 0.0


def test_lora_run_is_scored_by_label_log_probability(tmp_path, reviews, tiny_llama_dir):
    run(reviews, tiny_llama_dir, tmp_path / "run", "epochs=3", "optim.lr=0.01")
    model = load_for_eval(tmp_path / "run" / "final")
    assert model.task == "sft"
    outcome = evaluate_classification(model, load_eval_data(reviews / "valid.jsonl"))
    report = outcome.classification
    assert outcome.mode == "label scoring" and report.n == 16 and report.invalid == 0
    assert report.accuracy == 1.0  # the words give the label away


def test_base_model_is_scored_zero_shot(reviews, tiny_llama_dir):
    report = evaluate_classification(
        load_for_eval(tiny_llama_dir), load_eval_data(reviews / "valid.jsonl", limit=6)
    ).classification
    assert report.n == 6 and sum(map(sum, report.confusion)) == 6


def test_prepared_folder_gives_its_test_file_and_training_file(reviews):
    (reviews / "test.jsonl").write_text((reviews / "valid.jsonl").read_text())
    (reviews / "report.json").write_text(
        '{"task": "classification", "separator": "\\n\\n###\\n\\n", "stop": null}'
    )
    data = load_eval_data(reviews)
    assert data.path == reviews / "test.jsonl" and data.train == reviews / "train.jsonl"
    assert data.labels == ["1", "5"] and data.separator == "\n\n###\n\n"
    assert data.leading_space and data.stop == []


def test_free_text_completions_are_not_classification(tmp_path):
    rows = [f'{{"prompt": "q{i} ->", "completion": " answer number {i}"}}' for i in range(6)]
    (tmp_path / "t.jsonl").write_text("\n".join(rows) + "\n")
    assert load_eval_data(tmp_path / "t.jsonl").labels is None


def test_folder_without_test_or_valid_file_is_a_clear_error(tmp_path):
    from trimtab.errors import TrimtabError

    with pytest.raises(TrimtabError, match="no test.jsonl or valid.jsonl"):
        load_eval_data(tmp_path)


def test_language_model_loss_is_the_mean_completion_token_loss(reviews, tiny_llama_dir):
    import math

    import torch
    import torch.nn.functional as F

    model = load_for_eval(tiny_llama_dir)
    data = load_eval_data(reviews / "valid.jsonl", limit=4)
    lm = evaluate_language_model(model, data, bf16=False).language_model
    # By hand: sum the completion tokens' negative log-likelihoods, one example at a time.
    tok, total, count = model.tokenizer, 0.0, 0
    for r in data.records:
        prompt = tok(r.fields["prompt"])["input_ids"]
        completion = tok(r.fields["completion"], add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + completion], device=model.model.device)  # CUDA too
        with torch.no_grad():
            logp = F.log_softmax(model.model(input_ids=ids).logits[0].float(), -1)
        for k, t in enumerate(completion):
            total -= float(logp[len(prompt) + k - 1, t])
            count += 1
    assert lm["tokens"] == count
    assert lm["loss"] == pytest.approx(total / count, rel=1e-4)
    assert lm["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-4)


def test_plain_text_is_scored_on_every_token(tmp_path, tiny_llama_dir):
    (tmp_path / "t.jsonl").write_text(
        '{"text": "the cat sat on the mat"}\n{"text": "a dog ran in the park"}\n'
    )
    model = load_for_eval(tiny_llama_dir)
    lm = evaluate_language_model(
        model, load_eval_data(tmp_path / "t.jsonl"), bf16=False
    ).language_model
    ids = [
        model.tokenizer(t)["input_ids"] for t in ("the cat sat on the mat", "a dog ran in the park")
    ]
    # every token after the first of each document, plus its EOS
    assert lm["tokens"] == sum(len(i) for i in ids)
    assert lm["loss"] > 0 and lm["perplexity"] > 1


def test_classification_head_has_no_language_model_loss(tmp_path, reviews, tiny_bert_dir):
    from trimtab.errors import TrimtabError

    run(
        reviews,
        tiny_bert_dir,
        tmp_path / "run",
        "data.task=classify",
        "method.name=full",
        "epochs=1",
    )
    with pytest.raises(TrimtabError, match="no language-model loss"):
        evaluate_language_model(
            load_for_eval(tmp_path / "run"), load_eval_data(reviews / "valid.jsonl")
        )


def test_median_decision_minimises_absolute_error_not_accuracy():
    import torch

    from trimtab.evaluation.evaluate import median_decision

    # p = (0.4, 0, 0, 0, 0.6) over stars 1..5: argmax 5, median 5; p = (0.45, 0.1, 0, 0, 0.45)
    # puts half the mass at or below 2: median 2 although 1 and 5 are likelier.
    probs = torch.tensor([[0.4, 0.0, 0.0, 0.0, 0.6], [0.45, 0.1, 0.0, 0.0, 0.45]])
    labels = ["1", "2", "3", "4", "5"]
    assert median_decision(torch.log(probs + 1e-12), labels) == ["5", "2"]
    assert median_decision(torch.zeros(1, 2), ["neg", "pos"]) is None


def test_labels_out_of_numeric_order_still_give_the_median():
    import torch

    from trimtab.evaluation.evaluate import median_decision

    probs = torch.tensor([[0.3, 0.3, 0.4]])  # labels 3, 1, 2: mass at 1 = .3, at <=2 = .7
    assert median_decision(torch.log(probs), ["3", "1", "2"]) == ["2"]
