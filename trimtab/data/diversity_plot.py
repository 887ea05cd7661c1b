"""The diversity check's figure (``plots/diversity.png``): the sample in two dimensions coloured
by cluster, each cluster's examples stacked by class, each class's prompt length.

Apart from :mod:`trimtab.data.diversity` so that the check stays one stage; matplotlib is
imported only when a figure is drawn.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from trimtab.data.checks import CheckResult
from trimtab.data.diversity import MAX_LEGEND, ClusterMap, DiversityResult


def plot_diversity(result: CheckResult, seed: int = 0) -> bytes | None:
    """The check's figure as PNG bytes, or None when it compared fewer than two examples.

    Panels, left to right: the sample in two dimensions (the vectors' first two principal
    components) coloured by cluster, or by class when there are no clusters; the examples of
    each cluster stacked by class; each class's prompt words (p10 to p90, a dot at p50).
    """
    cmap = result.map if isinstance(result, DiversityResult) else None
    if cmap is None:
        return None
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    clusters = result.details.get("clusters") or []
    lengths = result.details.get("prompt_words_by_class") or {}
    classes = sorted({*lengths, *(cmap.labels or [])})
    # Classes take another palette than the clusters (tab10), so cluster 1 and class "1" differ.
    palette = matplotlib.colormaps["Dark2" if len(classes) <= 8 else "tab20b"]
    colour = {label: palette(i % palette.N) for i, label in enumerate(classes)}
    panels = 1 + bool(clusters) + bool(lengths)
    wide = 4.5 + (0.35 * len(lengths) if lengths else 0)
    # Figure, not pyplot: no global state, safe in a server thread, and no backend to switch.
    fig = Figure(figsize=(min(4.5 * (panels - 1) + wide, 24.0), 4.2))
    FigureCanvasAgg(fig)
    axes = list(np.atleast_1d(fig.subplots(1, panels)))
    _scatter(axes.pop(0), cmap, _project(cmap.vectors, seed), colour)
    if clusters:
        _cluster_bars(axes.pop(0), clusters, colour)
    if lengths:
        _length_ranges(axes.pop(0), lengths, colour)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def _project(vectors: np.ndarray, seed: int, power: int = 4) -> np.ndarray:
    """The rows' first two principal components (a seeded randomised SVD: a few matrix products
    where a full SVD of 1,000 x 4,096 bag-of-words rows takes seconds), signs made stable."""
    x = vectors.astype(np.float64) - vectors.mean(axis=0)
    k = min(8, *x.shape)
    q = x @ np.random.default_rng(seed).standard_normal((x.shape[1], k))
    for _ in range(power):  # power iterations sharpen the leading directions
        q, _r = np.linalg.qr(x @ (x.T @ q))
    u, s, _vt = np.linalg.svd(q.T @ x, full_matrices=False)
    points = (q @ u[:, :2]) * s[:2]
    if points.shape[1] < 2:  # a single direction (two examples): a flat second axis
        points = np.column_stack([points, np.zeros(len(points))])
    # An SVD's signs are arbitrary: make each axis's largest coordinate positive.
    signs = np.sign(points[np.abs(points).argmax(axis=0), [0, 1]])
    return points * np.where(signs == 0, 1, signs)


def _tex(text: Any) -> str:
    """A label matplotlib shows as written: two "$" would make it parse mathtext. (The same as
    trimtab.evaluation.plots._tex, which cannot be imported here: its package imports torch,
    a second of start-up that the figure does not need.)"""
    return str(text).replace("$", r"\$")


def _scatter(ax: Any, cmap: ClusterMap, points: np.ndarray, colour: dict[str, Any]) -> None:
    how = "MiniLM" if cmap.embeddings == "minilm" else "bag of words"
    if cmap.clusters is not None:
        for number in range(1, int(cmap.clusters.max()) + 1):
            at = points[cmap.clusters == number]
            ax.scatter(at[:, 0], at[:, 1], s=9, alpha=0.6, color=f"C{(number - 1) % 10}")
            # the number at the cluster's middle names it as the bars do
            middle = (float(at[:, 0].mean()), float(at[:, 1].mean()))
            ax.annotate(
                str(number),
                middle,
                ha="center",
                va="center",
                weight="bold",
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "alpha": 0.7, "lw": 0},
            )
        ax.set_title(f"Clusters ({how}, 2-D projection)")
    elif cmap.labels is not None:
        for label in sorted(set(cmap.labels)):
            at = points[[i for i, got in enumerate(cmap.labels) if got == label]]
            ax.scatter(at[:, 0], at[:, 1], s=9, alpha=0.6, color=colour[label], label=_tex(label))
        if len(colour) <= MAX_LEGEND:
            ax.legend(title="class", fontsize="small")
        ax.set_title(f"Examples by class ({how}, 2-D projection)")
    else:
        ax.scatter(points[:, 0], points[:, 1], s=9, alpha=0.6)
        ax.set_title(f"Examples ({how}, 2-D projection)")
    ax.set_xticks([])
    ax.set_yticks([])


def _cluster_bars(ax: Any, clusters: list[dict[str, Any]], colour: dict[str, Any]) -> None:
    """Cluster sizes as bars stacked by class (one colour when not classification)."""
    labels = sorted({k for c in clusters for k in c.get("labels", {})})
    names = [str(c["cluster"]) for c in clusters]
    if labels:
        bottom = np.zeros(len(clusters))
        for label in labels:
            counts = np.array([c["labels"].get(label, 0) for c in clusters], dtype=float)
            ax.bar(names, counts, bottom=bottom, color=colour.get(label), label=_tex(label))
            bottom += counts
        if len(labels) <= MAX_LEGEND:
            ax.legend(title="class", fontsize="small")
        ax.set_title("Classes per cluster")
    else:
        ax.bar(names, [c["size"] for c in clusters])
        ax.set_title("Examples per cluster")
    ax.set_xlabel("cluster")
    ax.set_ylabel("examples")


def _length_ranges(ax: Any, lengths: dict[str, dict[str, int]], colour: dict[str, Any]) -> None:
    """Each class's prompt words from p10 to p90, with a dot at p50."""
    names = sorted(lengths)
    for x, label in enumerate(names):
        p = lengths[label]
        ax.vlines(x, p["p10"], p["p90"], color=colour.get(label), linewidth=6, alpha=0.6)
        ax.plot([x], [p["p50"]], "o", color=colour.get(label), markeredgecolor="white")
    ax.set_xticks(range(len(names)), [_tex(n) for n in names], rotation=45 if len(names) > 6 else 0)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("class")
    ax.set_ylabel("prompt words")
    ax.set_title("Prompt length per class (p10, p50, p90)")
