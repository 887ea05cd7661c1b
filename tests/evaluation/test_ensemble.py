"""Ensembles of ``trimtab eval``: the mean of the members' label distributions, scored like one
model, with the members' costs added up."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from trimtab.errors import ConfigError, TrimtabError
from trimtab.evaluation import comparison
from trimtab.evaluation.comparison import EvalOptions, run_eval
from trimtab.evaluation.ensemble import EnsembleSpec, Evaluated, build_ensemble
from trimtab.evaluation.evaluate import EvalData, Outcome, load_eval_data, median_of
from trimtab.evaluation.metrics import classification_report
from trimtab.training import load_config, train

WORDS = {"1": "terrible awful broke", "5": "great love works"}


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Prepared reviews: 48 train and 16 test examples, labels 1 and 5 given away by words."""
    rows = [
        {"prompt": f"review {i}: {WORDS[s]}\n\n###\n\n", "completion": f" {s}"}
        for i in range(64)
        for s in (("5",) if i % 2 else ("1",))
    ]
    folder = tmp_path_factory.mktemp("data")
    for name, part in (("train", rows[:48]), ("valid", rows[48:]), ("test", rows[48:])):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data, tiny_bert_dir, tiny_llama_dir) -> tuple[Path, Path]:
    """Two fine-tuned runs over the same labels: a BERT classification head, a Llama LoRA."""
    folder = tmp_path_factory.mktemp("runs")
    common = [f"data.train={data / 'train.jsonl'}", f"data.valid={data / 'valid.jsonl'}"]
    common += ["batch_size=8", "epochs=1", "seed=0"]
    head, lora = folder / "head", folder / "lora"
    for out, extra in (
        (head, [f"model.name={tiny_bert_dir}", "data.task=classify", "method.name=full"]),
        (lora, [f"model.name={tiny_llama_dir}"]),
    ):
        train(load_config(None, [*common, *extra, f"run_dir={out}"]), progress=False)
    return head, lora


@pytest.fixture(scope="module")
def report(tmp_path_factory, data, runs) -> tuple[dict, Path]:
    """``trimtab eval HEAD --ensemble HEAD,LORA --out ...``: LORA is not among the models."""
    head, lora = runs
    out = tmp_path_factory.mktemp("report") / "r"
    options = EvalOptions.parse(
        models=[str(head)],
        data=data,
        ensembles=[f"{head},{lora}"],
        latency_sample=3,
        precision="fp32",
        out=out,
    )
    return run_eval(options, say=quiet), out


def stored(out: Path, row: dict) -> list[dict]:
    path = out / row["predictions"]
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_ensemble_distribution_is_the_mean_of_the_members_stored_distributions(report):
    result, out = report
    head, lora, ensemble = result["results"]
    assert ensemble["label"] == "ensemble(head+lora)" and ensemble["kind"] == "ensemble"
    members = [stored(out, head), stored(out, lora)]
    for i, record in enumerate(stored(out, ensemble)):
        for label, p in record["probabilities"].items():
            mean = sum(m[i]["probabilities"][label] for m in members) / 2
            assert p == pytest.approx(mean, abs=2e-6)
        assert sum(record["probabilities"].values()) == pytest.approx(1, abs=1e-5)


def test_ensemble_metrics_follow_from_the_averaged_distribution(report):
    result, out = report
    ensemble = result["results"][-1]
    records = stored(out, ensemble)
    labels = list(records[0]["probabilities"])
    probs = torch.tensor([[r["probabilities"][k] for k in labels] for r in records])
    gold = [r["gold"] for r in records]
    predicted = [labels[int(i)] for i in probs.argmax(-1)]
    assert predicted == [r["predicted"] for r in records]
    expected = classification_report(gold, list(predicted), labels)
    c = ensemble["classification"]
    assert (c["n"], c["accuracy"], c["mae"]) == (16, expected.accuracy, expected.mae)
    median = classification_report(gold, list(median_of(probs, labels) or []), labels)
    assert c["extra"]["median_decision"]["accuracy"] == median.accuracy


def test_ensemble_costs_and_training_time_are_the_members_added_up(report):
    result, _ = report
    head, lora, ensemble = result["results"]
    members = (head, lora)
    assert ensemble["training"]["seconds"] == pytest.approx(
        sum(m["training"]["seconds"] for m in members)
    )
    cost = ensemble["cost"]
    for key in ("prompt_tokens_per_request", "latency_ms_per_request", "parameters"):
        assert cost[key] == pytest.approx(sum(m["cost"][key] for m in members), abs=0.02)
    rate = 1 / sum(1 / m["examples_per_s"] for m in members)
    assert cost["requests_per_s"] == pytest.approx(rate, rel=0.01)
    assert ensemble["examples_per_s"] == pytest.approx(rate, rel=0.01)
    assert [m["weight"] for m in ensemble["members"]] == [0.5, 0.5]


def test_report_shows_the_ensemble_row_like_any_other(report):
    _, out = report
    md = (out / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| ensemble(head+lora) |"))
    assert "| ensemble | mean distribution | 16 |" in row
    assert "head (weight 0.500), lora (weight 0.500)" in md
    assert "ensemble(head+lora)" in (out / "report.html").read_text()
    saved = json.loads((out / "report.json").read_text())
    assert saved["results"][-1]["predictions"] == "predictions/ensemble-head-lora.jsonl"


def test_members_are_evaluated_once_and_the_ensemble_runs_no_model(
    tmp_path, data, runs, monkeypatch
):
    calls: list[str] = []
    real = comparison.evaluate_classification

    def counting(model, *args, **kwargs):
        calls.append(model.name)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(comparison, "evaluate_classification", counting)
    head, lora = runs
    options = EvalOptions.parse(
        models=[str(head), str(lora / "final")],
        data=data,
        ensembles=[f"{head / 'final'},{lora}"],  # the same runs, named another way
        latency_sample=0,
    )
    results = run_eval(options, say=quiet)["results"]
    assert len(calls) == 2 and len(results) == 3


def outcome(probabilities: list[list[float]], labels: list[str], seconds: float = 1.0) -> Outcome:
    probs = torch.tensor(probabilities)
    predicted: list[str | None] = [labels[int(i)] for i in probs.argmax(-1)]
    return Outcome(
        "label scoring",
        len(probs),
        seconds,
        predicted=predicted,
        probabilities=probs,
        labels=labels,
    )


def first_two(data: Path) -> EvalData:
    """The test file's first two examples, still over its labels 1 and 5."""
    test = load_eval_data(data)
    return replace(test, records=test.records[:2])


def row(label: str) -> dict:
    return {"label": label, "model": f"runs/{label}", "training": None, "cost": {}}


def test_weights_and_label_order_are_respected(data):
    test = first_two(data)
    a = Evaluated(row("a"), outcome([[0.9, 0.1], [0.2, 0.8]], ["1", "5"]))
    b = Evaluated(row("b"), outcome([[0.3, 0.7], [0.6, 0.4]], ["5", "1"]))  # other column order
    spec = EnsembleSpec.model_validate(EnsembleSpec.parse_text("best=a:3,b"))
    done = build_ensemble(spec, [a, b], test)
    expected = torch.tensor([[0.75 * 0.9 + 0.25 * 0.7, 0.75 * 0.1 + 0.25 * 0.3]])
    assert done.outcome.labels == ["1", "5"] and done.row["label"] == "best"
    assert torch.allclose(done.outcome.probabilities[:1], expected)
    assert done.outcome.probabilities[1].tolist() == pytest.approx([0.25, 0.75])
    assert done.outcome.seconds == 2.0  # every request asks both members


def test_members_with_different_labels_are_refused(data):
    test = first_two(data)
    a = Evaluated(row("a"), outcome([[0.9, 0.1], [0.2, 0.8]], ["1", "5"]))
    b = Evaluated(row("b"), outcome([[0.3, 0.3, 0.4], [0.6, 0.2, 0.2]], ["1", "3", "5"]))
    spec = EnsembleSpec(members=["a", "b"])
    with pytest.raises(TrimtabError, match=r"a predicts \['1', '5'\] but b predicts"):
        build_ensemble(spec, [a, b], test)


def test_a_member_without_a_distribution_is_refused(data):
    test = first_two(data)
    a = Evaluated(row("a"), outcome([[0.9, 0.1], [0.2, 0.8]], ["1", "5"]))
    b = Evaluated(row("b"), Outcome("generation", 2, 1.0, predicted=["1", "5"]))
    with pytest.raises(TrimtabError, match="b was evaluated by generation only"):
        build_ensemble(EnsembleSpec(members=["a", "b"]), [a, b], test)


def test_an_unknown_member_names_the_rows_there_are(data):
    test = first_two(data)
    a = Evaluated(row("a"), outcome([[0.9, 0.1], [0.2, 0.8]], ["1", "5"]))
    with pytest.raises(TrimtabError, match="zzz: no such model or row \\(rows: 'a'\\)"):
        build_ensemble(EnsembleSpec(members=["a", "zzz"]), [a], test)


def test_generate_mode_members_are_refused_before_anything_loads(data, tiny_llama_dir):
    options = EvalOptions.parse(
        models=[str(tiny_llama_dir)],
        data=data,
        mode="generate",
        ensembles=[f"{tiny_llama_dir},tiny zero-shot"],
    )
    with pytest.raises(TrimtabError, match="generation only \\(--mode generate\\)"):
        run_eval(options, say=quiet)


def test_a_head_with_other_labels_is_refused_before_anything_loads(tmp_path, runs):
    rows = [{"prompt": f"r{i}\n\n###\n\n", "completion": f" {s}"} for i, s in enumerate("123" * 4)]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    head, lora = runs
    options = EvalOptions.parse(
        models=[str(head)], data=tmp_path / "t.jsonl", ensembles=[f"{head},{lora}"]
    )
    with pytest.raises(TrimtabError, match="its head has the labels"):
        run_eval(options, say=quiet)


def test_an_ensemble_needs_two_distinct_members_and_positive_weights(data):
    with pytest.raises(ConfigError) as e:
        EvalOptions.parse(
            models=["x"], data=data, ensembles=["runs/a", "runs/a,runs/a", "runs/a:0,runs/b"]
        )
    text = str(e.value)
    assert "at least 2 members, got 1 (runs/a)" in text
    assert "a member is given twice" in text and "weights must be positive" in text


def test_ensemble_text_gives_name_members_and_weights():
    assert EnsembleSpec.parse_text("best=runs/a:2, runs/b") == {
        "members": ["runs/a", "runs/b"],
        "weights": [2.0, 1.0],
        "name": "best",
    }
    # A suffix that is no number stays part of the member; no "=" before a path: no name.
    parsed = EnsembleSpec.parse_text("runs/x=y:a,b")
    assert parsed == {"members": ["runs/x=y:a", "b"], "weights": None, "name": None}


def test_cli_passes_every_ensemble_and_the_latency_sample():
    from trimtab.cli import build_parser

    args = build_parser().parse_args(
        ["eval", "m", "--data", "d", "--ensemble", "a,b", "--ensemble", "n=a,c:2"]
    )
    assert args.ensemble == ["a,b", "n=a,c:2"] and args.latency_sample == 20
    assert build_parser().parse_args(["eval", "m", "--data", "d"]).ensemble == []
