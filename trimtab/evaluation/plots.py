"""The plots of the ``trimtab eval`` report: confusion matrices, training curves, the comparison.

matplotlib is imported inside the plotting functions only: the CLI imports the report for
``comparison_table`` on every ``trimtab eval``, and pyplot costs about a second to import.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeGuard


def is_num(value: Any) -> TypeGuard[int | float]:
    """A finite number (not a bool): something a table or a plot can show."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def ci95(classification: dict[str, Any]) -> tuple[float, float] | None:
    """The accuracy's 95% confidence interval of a classification result, if it has one."""
    ci = classification.get("accuracy_ci95")  # a list once read back from report.json
    if isinstance(ci, list | tuple) and len(ci) == 2 and all(is_num(x) for x in ci):
        return (ci[0], ci[1])
    return None


# --- plots ----------------------------------------------------------------------------------


def _tex(text: Any) -> str:
    # Two "$" in a label would make matplotlib parse it as mathtext (and maybe fail).
    return str(text).replace("$", r"\$")


@contextmanager
def _figure(path: Path, size: tuple[float, float]) -> Iterator[tuple[Any, Any]]:
    """A figure and its axes, saved to ``path`` on success and closed in every case."""
    import matplotlib

    matplotlib.use("Agg")  # servers have no display; must come before importing pyplot
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    try:
        yield fig, ax
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)  # pyplot keeps every figure alive until closed


def _points(metrics: Any, key: str) -> list[tuple[float, float]]:
    """(step, value) of the metrics lines that have both, in step order."""
    if not isinstance(metrics, list):
        return []
    return sorted(
        (m["step"], m[key])
        for m in metrics
        if isinstance(m, dict) and is_num(m.get("step")) and is_num(m.get(key))
    )


def plot_confusion(classification: dict[str, Any], title: str, path: Path) -> bool:
    labels, matrix = classification.get("labels") or [], classification.get("confusion") or []
    k = len(labels)
    if not k or len(matrix) != k or any(len(row) != k for row in matrix):
        return False
    import numpy as np

    counts = np.array(matrix, dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    # Colour by share of the true label, so that rare classes are as readable as common ones.
    shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    side = min(3.0 + 0.6 * k, 14.0)
    with _figure(path, (side + 1.5, side)) as (fig, ax):
        image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
        # fraction/pad: a colour bar as tall as the (square) matrix, not as the figure.
        fig.colorbar(image, ax=ax, label="share of the true label", fraction=0.046, pad=0.04)
        names = [_tex(label) for label in labels]
        slant = k > 6  # long rows of labels overlap unless slanted
        ax.set_xticks(
            range(k), names, rotation=45 if slant else 0, ha="right" if slant else "center"
        )
        ax.set_yticks(range(k), names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(_tex(title))
        size = 10 if k <= 10 else max(5, 10 - (k - 10) // 3)
        for i in range(k):
            for j in range(k):
                ax.text(
                    j,
                    i,
                    str(int(counts[i, j])),
                    ha="center",
                    va="center",
                    fontsize=size,
                    color="white" if shares[i, j] > 0.5 else "black",
                )
    return True


def plot_loss(run: dict[str, Any], title: str, path: Path) -> bool:
    train = _points(run.get("metrics"), "train_loss")
    valid = _points(run.get("metrics"), "valid_loss")
    if not train and not valid:
        return False
    with _figure(path, (7.0, 4.0)) as (_, ax):
        if train:
            ax.plot(*zip(*train), label="train loss", linewidth=1.2)
        if valid:
            ax.plot(*zip(*valid), "o-", label="validation loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(_tex(title))
        ax.grid(alpha=0.3)
        ax.legend()
    return True


def plot_accuracy_by_checkpoint(results: list[dict[str, Any]], path: Path) -> bool:
    lines: dict[str, tuple[str, list[tuple[float, float]]]] = {}
    for i, r in enumerate(results):
        run = r.get("run")
        if isinstance(run, dict):
            points = _points(run.get("metrics"), "valid_accuracy")
            # One line per run: two results evaluating the same run share its curve.
            key = str(run.get("path") or i)
            if points and key not in lines:
                lines[key] = (str(r.get("label") or key), points)
    if not lines:
        return False
    with _figure(path, (7.0, 4.0)) as (_, ax):
        for label, points in lines.values():
            ax.plot(*zip(*points), "o-", label=_tex(label))
        ax.set_xlabel("step")
        ax.set_ylabel("validation accuracy")
        ax.set_title("Validation accuracy by checkpoint")
        ax.grid(alpha=0.3)
        ax.legend()
    return True


def plot_comparison(results: list[dict[str, Any]], path: Path) -> bool:
    bars = [
        (str(r.get("label") or r.get("model") or "?"), r["classification"])
        for r in results
        if isinstance(r.get("classification"), dict) and is_num(r["classification"].get("accuracy"))
    ]
    if not bars:
        return False
    accuracies = [c["accuracy"] for _, c in bars]
    cis = [ci95(c) or (c["accuracy"], c["accuracy"]) for _, c in bars]
    low = [max(a - lo, 0.0) for a, (lo, _) in zip(accuracies, cis)]
    high = [max(hi - a, 0.0) for a, (_, hi) in zip(accuracies, cis)]
    with _figure(path, (7.0, 1.2 + 0.5 * len(bars))) as (_, ax):
        y = range(len(bars))
        ax.barh(y, accuracies, xerr=[low, high], capsize=4, color="#4c72b0")
        ax.set_yticks(y, [_tex(label) for label, _ in bars])
        ax.invert_yaxis()  # first result on top, as in the table
        for i, accuracy in enumerate(accuracies):
            # Inside the bar in white, unless the bar is too short to hold the text.
            ax.text(
                0.01,
                i,
                f"{accuracy:.3f}",
                va="center",
                fontsize=9,
                color="white" if accuracy >= 0.12 else "black",
            )
        ax.set_xlim(0.0, 1.0)
        ax.set_xlabel("accuracy (error bars: 95% bootstrap interval)")
        ax.grid(axis="x", alpha=0.3)
    return True
