"""Classification metrics, with what ordinal labels such as star ratings add.

Accuracy, macro-F1, per-class precision/recall/F1, the confusion matrix, and for ordinal labels
(numbers, such as stars 1-5) the mean absolute error and off-by-one accuracy; a seeded
bootstrap 95% interval on accuracy. Predictions that are not a valid label (a generation that
parsed to nothing) count as wrong and are reported separately.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ClassScores:
    precision: float
    recall: float
    f1: float
    support: int


@dataclass
class ClassificationReport:
    """Every metric of one model on one labelled set."""

    n: int
    accuracy: float
    macro_f1: float
    per_class: dict[str, ClassScores]
    labels: list[str]
    confusion: list[list[int]]  # rows: true label, columns: predicted label (labels order)
    invalid: int  # predictions that are not one of the labels
    accuracy_ci95: tuple[float, float]
    mae: float | None = None  # ordinal labels only
    off_by_one_accuracy: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _ordinal(labels: list[str]) -> dict[str, float] | None:
    """Numeric values of the labels if every label is a number (stars), else None."""
    try:
        return {label: float(label) for label in labels}
    except ValueError:
        return None


def bootstrap_ci(
    correct: list[bool], *, samples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``correct`` (all resamples drawn at once
    with numpy: 1,000 x 5,000 draws take milliseconds, not the seconds of a Python loop)."""
    import numpy as np

    n = len(correct)
    if n == 0:
        return (0.0, 0.0)
    values = np.asarray(correct, dtype=np.float64)
    draws = np.random.default_rng(seed).integers(0, n, size=(samples, n))
    means = np.sort(values[draws].mean(axis=1))
    tail = (1 - level) / 2
    low, high = means[int(tail * (samples - 1))], means[int((1 - tail) * (samples - 1) + 0.5)]
    return (float(low), float(high))


def classification_report(
    gold: list[str], predicted: list[str | None], labels: list[str] | None = None, *, seed: int = 0
) -> ClassificationReport:
    """Score ``predicted`` against ``gold``; ``None`` or an unknown label counts as invalid."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold labels but {len(predicted)} predictions")
    labels = list(labels or [])
    labels += sort_labels(set(gold) - set(labels))
    index = {label: i for i, label in enumerate(labels)}
    confusion = [[0] * len(labels) for _ in labels]
    invalid = 0
    correct: list[bool] = []
    for g, p in zip(gold, predicted):
        ok = p is not None and p == g
        correct.append(ok)
        if p is None or p not in index:
            invalid += 1
            continue
        confusion[index[g]][index[p]] += 1
    per_class: dict[str, ClassScores] = {}
    for label, i in index.items():
        tp = confusion[i][i]
        predicted_as = sum(row[i] for row in confusion)
        support = sum(1 for g in gold if g == label)
        precision = tp / predicted_as if predicted_as else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = ClassScores(precision, recall, f1, support)
    n = len(gold)
    accuracy = sum(correct) / n if n else 0.0
    present = [s for s in per_class.values() if s.support]
    macro_f1 = sum(s.f1 for s in present) / len(present) if present else 0.0
    report = ClassificationReport(
        n,
        accuracy,
        macro_f1,
        per_class,
        labels,
        confusion,
        invalid,
        bootstrap_ci(correct, seed=seed),
    )
    values = _ordinal(labels)
    if values is not None and n:
        # An invalid prediction has no distance: it counts as the farthest label (worst case).
        span = max(values.values()) - min(values.values())
        errors = [
            abs(values[g] - values[p]) if p in values else span for g, p in zip(gold, predicted)
        ]
        report.mae = sum(errors) / n
        report.off_by_one_accuracy = sum(e <= 1 for e in errors) / n
    return report


def sort_labels(labels: Iterable[str]) -> list[str]:
    """Numbers in numeric order ("2" before "10"), then text labels alphabetically."""

    def key(label: str) -> tuple[float, str]:
        try:
            return (float(label), label)
        except ValueError:
            return (float("inf"), label)

    return sorted(labels, key=key)


# --- open-ended generation ------------------------------------------------------------------


def _normalize(text: str) -> str:
    return " ".join(text.split())


def _words(text: str) -> list[str]:
    # ROUGE's usual tokenisation (as in Google's rouge-score): lowercase, runs of [a-z0-9].
    return re.findall(r"[a-z0-9]+", text.lower())


def _lcs(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence; one row of the table at a time."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0
        for j, y in enumerate(b, 1):
            above = row[j]
            row[j] = diagonal + 1 if x == y else max(row[j], row[j - 1])
            diagonal = above
    return row[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1: the longest common word subsequence, as precision and recall's harmonic mean.

    Written out (20 lines) rather than taken from ``rouge-score``, whose nltk dependency is
    larger than trimtab itself; scores match its default (no stemming) tokenisation.
    """
    pred, ref = _words(prediction), _words(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = _lcs(pred, ref)
    if not common:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


@dataclass
class GenerationScores:
    """Open-ended generation against references."""

    n: int
    exact_match: float  # equal after trimming and collapsing whitespace
    rouge_l: float  # mean ROUGE-L F1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def generation_scores(predictions: list[str], references: list[str]) -> GenerationScores:
    """Exact match and mean ROUGE-L of ``predictions`` against ``references``."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(references)} references but {len(predictions)} predictions")
    n = len(references)
    if not n:
        return GenerationScores(0, 0.0, 0.0)
    exact = sum(_normalize(p) == _normalize(r) for p, r in zip(predictions, references))
    rouge = sum(rouge_l(p, r) for p, r in zip(predictions, references))
    return GenerationScores(n, exact / n, rouge / n)
