"""Ensembles: rows of ``trimtab eval`` that average the label distributions of other rows.

``--ensemble [NAME=]MEMBER[:WEIGHT],MEMBER[:WEIGHT][,...]`` adds a row whose prediction for
each example is the (weighted) mean of its members' distributions over the labels: a
classification head's softmax, or a language model's label scores renormalised over the labels.
The mean is scored exactly as one model's distribution is (argmax, median decision, MAE...).
A member is a model given to ``trimtab eval`` (a run folder, a model name) or a row's label
(``"smollm2-135m few-shot (k=5)"``); members not among the models are evaluated as well. The
members' distributions are the ones their own rows computed: no model runs twice.

The ensemble answers a request by asking every member, one after the other, so its cost is
theirs added up (:func:`trimtab.evaluation.cost.combined_cost`), and so is its training time.

Each classification row's per-example distribution is also written to the report folder as
``predictions/<slug>.jsonl`` (:func:`prediction_files`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, model_validator

from trimtab.errors import TrimtabError
from trimtab.evaluation.cost import combined_cost
from trimtab.evaluation.evaluate import EvalData, Outcome, score_classification
from trimtab.evaluation.metrics import sort_labels


class EnsembleSpec(BaseModel):
    """One ``--ensemble``: its members, their weights (equal if not given), a label."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    members: list[str]
    weights: list[float] | None = None  # one per member, positive; normalised to sum to 1
    name: str | None = None  # the row's label; default ensemble(a+b)

    @model_validator(mode="after")
    def _check(self) -> EnsembleSpec:
        if len(self.members) < 2:
            raise ValueError(
                f"an ensemble needs at least 2 members, got {len(self.members)} "
                f"({', '.join(self.members) or 'none'})"
            )
        if len(set(self.members)) != len(self.members):
            raise ValueError("a member is given twice (give it a larger weight instead)")
        if self.weights is not None:
            if len(self.weights) != len(self.members):
                raise ValueError(f"{len(self.weights)} weights for {len(self.members)} members")
            if not all(math.isfinite(w) and w > 0 for w in self.weights):
                raise ValueError(f"weights must be positive numbers, got {self.weights}")
        return self

    @staticmethod
    def parse_text(text: str) -> dict[str, Any]:
        """``[NAME=]MEMBER[:WEIGHT],MEMBER[:WEIGHT]...`` as the fields of an EnsembleSpec.

        A ``:suffix`` that is not a number stays part of the member (a path may hold a colon).
        """
        name, sep, rest = text.partition("=")
        if not sep or "," in name or "/" in name:
            name, rest = "", text
        members, weights = [], []
        for part in (p.strip() for p in rest.split(",")):
            if not part:
                continue
            member, _, weight = part.rpartition(":")
            try:
                weights.append(float(weight))
                members.append(member.strip())
            except ValueError:
                members.append(part)
                weights.append(1.0)
        return {
            "members": members,
            "weights": weights if any(w != 1.0 for w in weights) else None,
            "name": name.strip() or None,
        }

    def normalised_weights(self) -> list[float]:
        weights = self.weights or [1.0] * len(self.members)
        return [w / sum(weights) for w in weights]


def model_key(ref: str) -> str | None:
    """What a model reference points to (its resolved folder, or its name), so that
    ``runs/a``, ``runs/a/final`` and ``./runs/a`` match; None when ``ref`` is no model (a
    row's label)."""
    from trimtab.models.registry import resolve_model

    try:
        resolved = resolve_model(ref)
    except TrimtabError:
        return None
    return str(resolved.path) if resolved.path is not None else (resolved.hub_id or ref)


def members_to_evaluate(specs: list[EnsembleSpec], models: list[str]) -> list[str]:
    """The members that are models but not among ``models``: they are evaluated too."""
    keys = {model_key(m) for m in models} | set(models)
    extra = []
    for member in (m for spec in specs for m in spec.members):
        key = model_key(member)
        if key is not None and key not in keys and member not in extra:
            extra.append(member)
    return extra


def check_ensembles(specs: list[EnsembleSpec], data: EvalData, mode: str) -> None:
    """Refuse, before any model is loaded, what cannot make an ensemble: data that is not
    classification, a language model asked by generation only, heads with other labels."""
    from trimtab.models.registry import resolve_model

    if not specs:
        return
    if data.labels is None:
        raise TrimtabError(f"--ensemble: {data.path} is not classification data (no labels)")
    for spec in specs:
        for member in spec.members:
            if model_key(member) is None:
                continue  # a row's label: checked once the rows exist
            meta = resolve_model(member).run_meta or {}
            if meta.get("task") == "classify":
                labels = [str(x) for x in meta.get("labels") or []]
                if set(labels) != set(data.labels):
                    raise TrimtabError(
                        f"--ensemble: {member}: its head has the labels {labels}, the data "
                        f"{data.labels}: an ensemble averages distributions over the same labels"
                    )
            elif mode == "generate":
                raise TrimtabError(
                    f"--ensemble: {member} would be evaluated by generation only (--mode "
                    "generate), which gives no label distribution: use --mode score or both"
                )


@dataclass
class Evaluated:
    """One row of the table and the outcome behind it."""

    row: dict[str, Any]
    outcome: Outcome


def _member(member: str, evaluated: list[Evaluated], keys: dict[str, str | None]) -> Evaluated:
    """The row ``member`` names: by its label first, else by the model it evaluated."""
    by_label = [e for e in evaluated if e.row["label"] == member]
    key = model_key(member)
    matches = by_label or [
        e for e in evaluated if key is not None and keys.get(e.row["model"]) == key
    ]
    scored = [e for e in matches if e.outcome.probabilities is not None]
    if not matches:
        labels = ", ".join(repr(e.row["label"]) for e in evaluated)
        raise TrimtabError(f"--ensemble: {member}: no such model or row (rows: {labels})")
    if not scored:
        raise TrimtabError(
            f"--ensemble: {member} was evaluated by generation only, which gives no label "
            "distribution: use --mode score or both"
        )
    if len(scored) > 1:
        labels = ", ".join(repr(e.row["label"]) for e in scored)
        raise TrimtabError(f"--ensemble: {member} has several rows ({labels}): name one by label")
    return scored[0]


def _aligned(members: list[Evaluated], labels: list[str]) -> list[torch.Tensor]:
    """Each member's distributions with their columns in ``labels`` order; the label sets and
    example counts must agree."""
    first = members[0]
    out = []
    for m in members:
        if set(m.outcome.labels) != set(labels):
            raise TrimtabError(
                f"--ensemble: {first.row['label']} predicts {sort_labels(first.outcome.labels)} "
                f"but {m.row['label']} predicts {sort_labels(m.outcome.labels)}: an ensemble "
                "averages distributions over the same labels"
            )
        if m.outcome.n != first.outcome.n:
            raise TrimtabError(
                f"--ensemble: {first.row['label']} was evaluated on {first.outcome.n} examples "
                f"but {m.row['label']} on {m.outcome.n} (--baseline-limit?): members must "
                "answer the same examples"
            )
        assert m.outcome.probabilities is not None
        columns = [m.outcome.labels.index(label) for label in labels]
        out.append(m.outcome.probabilities.float()[:, columns])
    return out


def build_ensemble(spec: EnsembleSpec, evaluated: list[Evaluated], data: EvalData) -> Evaluated:
    """The ensemble's row: its members' distributions averaged, then scored like one model's."""
    assert data.labels is not None
    keys = {e.row["model"]: model_key(e.row["model"]) for e in evaluated}
    members = [_member(m, evaluated, keys) for m in spec.members]
    if len({id(m.row) for m in members}) < len(members):
        raise TrimtabError(
            f"--ensemble: {', '.join(spec.members)} name the same row twice "
            "(give it a larger weight instead)"
        )
    labels = sort_labels(members[0].outcome.labels)
    weights = spec.normalised_weights()
    probabilities = sum(
        (w * p for w, p in zip(weights, _aligned(members, labels))),
        start=torch.zeros(members[0].outcome.n, len(labels)),
    )
    predicted: list[str | None] = [labels[int(i)] for i in probabilities.argmax(-1)]
    n = members[0].outcome.n
    report = score_classification(data.gold[:n], predicted, probabilities, labels, data.labels)
    outcome = Outcome(
        "ensemble",
        n,
        sum(m.outcome.seconds for m in members),  # each request asks every member in turn
        classification=report,
        predicted=predicted,
        probabilities=probabilities,
        labels=labels,
    )
    return Evaluated(_row(spec, members, weights, outcome), outcome)


def _row(
    spec: EnsembleSpec, members: list[Evaluated], weights: list[float], outcome: Outcome
) -> dict[str, Any]:
    """The ensemble's row, with the keys of any other row plus ``members``."""
    assert outcome.classification is not None
    names = [str(m.row["label"]) for m in members]
    trainings = [m.row.get("training") or {} for m in members]
    return {
        "label": spec.name or f"ensemble({'+'.join(names)})",
        "model": "+".join(str(m.row["model"]) for m in members),
        "kind": "ensemble",
        "base_model": None,
        "method": None,
        "task": None,
        "mode": "weighted mean distribution" if spec.weights else "mean distribution",
        "n": outcome.n,
        "seconds": round(outcome.seconds, 2),
        "examples_per_s": round(outcome.examples_per_s, 2),
        "shots": [],
        "classification": outcome.classification.to_json(),
        "language_model": None,
        "generation": None,
        "samples": [],
        "members": [
            {"label": m.row["label"], "model": m.row["model"], "weight": round(w, 6)}
            for m, w in zip(members, weights)
        ],
        # A base model (no training record) costs no training: it adds 0.
        "training": {
            "seconds": _total([t.get("seconds", 0) if t else 0 for t in trainings]),
            "tokens_per_s": None,
            "train_examples": None,
            "trainable_parameters": _total(
                [t.get("trainable_parameters", 0) if t else 0 for t in trainings]
            ),
        },
        "run": None,
        "cost": combined_cost(
            [m.row.get("cost") or {} for m in members], [m.outcome.examples_per_s for m in members]
        ),
    }


def _total(values: list[Any]) -> Any:
    """The sum, or None if any value is unknown."""
    ok = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    return sum(values) if ok else None


def prediction_records(outcome: Outcome, gold: list[str]) -> list[dict[str, Any]]:
    """One record per example: gold label, prediction and, where the row has one, the
    distribution over the labels (6 decimals)."""
    probabilities = outcome.probabilities.tolist() if outcome.probabilities is not None else None
    records = []
    for i, predicted in enumerate(outcome.predicted):
        record: dict[str, Any] = {"gold": gold[i], "predicted": predicted}
        if probabilities is not None:
            record["probabilities"] = {
                label: round(p, 6) for label, p in zip(outcome.labels, probabilities[i])
            }
        records.append(record)
    return records


def prediction_files(
    evaluated: list[Evaluated], slugs: list[str], gold: list[str]
) -> dict[str, str]:
    """``predictions/<slug>.jsonl`` of every classification row, by path in the report folder;
    each such row gets the path as its ``predictions`` field."""
    files = {}
    for e, slug in zip(evaluated, slugs):
        if not e.outcome.predicted:
            continue
        path = f"predictions/{slug}.jsonl"
        e.row["predictions"] = path
        records = prediction_records(e.outcome, gold)
        files[path] = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return files


def read_predictions(folder: Path, row: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-example records of ``row`` from its report ``folder``."""
    path = folder / str(row.get("predictions") or "")
    if not row.get("predictions") or not path.is_file():
        raise TrimtabError(f"{folder}: no predictions file for the row {row.get('label')!r}")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
