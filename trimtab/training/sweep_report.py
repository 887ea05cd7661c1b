"""What a sweep folder shows: results.csv, results.md, plots/ and report.html.

Every file is rebuilt from the study after each trial and written whole (:mod:`trimtab.files`),
so a reader (a person, the jobs API watching the folder) never sees half of one, and several
workers writing them in turn leave the view of the last. report.html is rendered by the
evaluation report's renderer (:mod:`trimtab.evaluation.report`): the same style, its plots
embedded, one file that opens offline.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from trimtab.evaluation.report import Fields, Heading, Image, Table, render_html
from trimtab.files import write_chunks, write_text
from trimtab.training.sweep_spec import Param, SweepSpec

PLOTS = ("metric-by-trial.png", "importance.png", "parallel-coordinates.png")


def counted(t: Any) -> bool:
    """A trial that ran to an end (complete, pruned, failed): not one a crash cut short, nor
    one a worker drew past the sweep's count and gave back."""
    return t.state.is_finished() and "seconds" in t.user_attrs


def shown(t: Any) -> bool:
    """A trial the results list: every one but those given back unrun."""
    return not t.user_attrs.get("surplus")


def trial_rows(study: Any, spec: SweepSpec) -> list[dict[str, Any]]:
    """One row per trial: trial, each searched key, the metric, seconds, state, error."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if not shown(t):
            continue
        value = t.value if t.value is not None else _last_report(t)
        row: dict[str, Any] = {"trial": t.number}
        row |= {k: t.params.get(k) for k in spec.sweep.search}
        row[spec.sweep.metric] = value
        row["seconds"] = t.user_attrs.get("seconds")
        state = "failed" if t.state.name == "FAIL" else t.state.name.lower()
        if state != "running" and "seconds" not in t.user_attrs:
            state = "interrupted"
        row["state"] = state
        row["error"] = t.user_attrs.get("error", "")
        rows.append(row)
    return rows


def _last_report(t: Any) -> float | None:
    steps = t.intermediate_values
    return steps[max(steps)] if steps else None


def best_trial(study: Any) -> Any:
    """The best complete trial (Optuna's pick by the study's direction), or None."""
    if not any(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False)):
        return None
    return study.best_trial


def best_summary(study: Any, spec: SweepSpec) -> dict[str, Any] | None:
    """The best complete trial as ``{trial, params, <metric>, run_dir}``, or None."""
    best = best_trial(study)
    if best is None:
        return None
    out = {"trial": best.number, "params": best.params, spec.sweep.metric: best.value}
    return out | {"run_dir": best.user_attrs.get("run_dir")}


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table (errors listed below it: they are too long for a cell)."""
    if not rows:
        return "no trials yet\n"
    columns = [c for c in rows[0] if c != "error"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r[c]) for c in columns) + " |" for r in rows]
    errors = [f"- trial {r['trial']}: {r['error']}" for r in rows if r.get("error")]
    return "\n".join(lines + ([""] + errors if errors else [])) + "\n"


def cell(value: Any) -> str:
    """A value as a table shows it: floats with 6 significant digits, None as nothing."""
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def write_results(study: Any, spec: SweepSpec, out_dir: Path) -> None:
    """results.csv, results.md, the plots and report.html, each written whole."""
    rows = trial_rows(study, spec)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["trial"])
    writer.writeheader()
    writer.writerows(rows)
    write_text(out_dir / "results.csv", buffer.getvalue())
    best = best_summary(study, spec)
    summary = (
        f"\nbest: trial {best['trial']}, {spec.sweep.metric} {cell(best[spec.sweep.metric])}, "
        f"run {best['run_dir']}\n"
        if best
        else "\nno trial has completed yet\n"
    )
    write_text(
        out_dir / "results.md", f"# Sweep: {spec.sweep.metric}\n\n{markdown_table(rows)}{summary}"
    )
    plots = out_dir / "plots"
    _plot_metric(rows, spec, plots / PLOTS[0])
    _plot_importance(study, plots / PLOTS[1])
    _plot_parallel(rows, spec, plots / PLOTS[2])
    write_text(out_dir / "report.html", render_html(_blocks(rows, spec, best, plots), plots))


# --- report.html -----------------------------------------------------------------------------


def _blocks(
    rows: list[dict[str, Any]], spec: SweepSpec, best: dict[str, Any] | None, plots: Path
) -> list[Any]:
    """The report as the evaluation report's blocks: summary, trials table, errors, plots."""
    metric = spec.sweep.metric
    fields = [
        ("Metric", f"{metric} ({spec.sweep.direction}d, on the validation split)", False),
        ("Trials", f"{len(rows)} of {spec.sweep.trials}", False),
        ("Search", ", ".join(f"{k} {_describe(p)}" for k, p in spec.sweep.search.items()), False),
    ]
    if best is not None:
        fields.append(("Best", f"trial {best['trial']}, {metric} {cell(best[metric])}", False))
        fields.append(("Best run", str(best["run_dir"]), True))
    # Text columns first (the renderer right-aligns the rest as numbers).
    keys = ["trial", "state", *spec.sweep.search, metric, "seconds"]
    table = Table(keys, [[cell(r[k]) for k in keys] for r in rows], left=2)
    blocks: list[Any] = [
        Heading(1, f"Sweep report: {metric}"),
        Fields(fields),
        Heading(2, "Trials"),
        table,
    ]
    errors = [(f"trial {r['trial']}", str(r["error"]), False) for r in rows if r.get("error")]
    if errors:
        blocks += [Heading(3, "Errors"), Fields(errors)]
    captions = (
        f"{metric} by trial (the best so far as a line)",
        "Parameter importance (Optuna's fANOVA)",
        f"Parallel coordinates: each complete trial's parameters and {metric}",
    )
    images = [Image(c, n) for c, n in zip(captions, PLOTS) if (plots / n).is_file()]
    return blocks + ([Heading(2, "Plots"), *images] if images else [])


def _describe(p: Param) -> str:
    if p.choices is not None:
        return "in {" + ", ".join(cell(c) for c in p.choices) + "}"
    return f"in [{cell(p.low)}, {cell(p.high)}]" + (" (log)" if p.log else "")


# --- plots -----------------------------------------------------------------------------------


@contextmanager
def _figure(path: Path, size: tuple[float, float]) -> Iterator[Any]:
    """Axes whose figure is written to ``path`` whole on success and closed in every case."""
    import matplotlib

    matplotlib.use("Agg")  # servers have no display; before pyplot is imported
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    try:
        yield ax
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        write_chunks(path, [buffer.getvalue()])
    finally:
        plt.close(fig)  # pyplot keeps every figure alive until closed


def _plot_metric(rows: list[dict[str, Any]], spec: SweepSpec, path: Path) -> None:
    """Each trial's metric, coloured by state; the complete trials' best so far as a line."""
    metric = spec.sweep.metric
    with _figure(path, (7, 4)) as ax:
        for state, color in (("complete", "tab:blue"), ("pruned", "tab:orange")):
            points = [(r["trial"], r[metric]) for r in rows if r["state"] == state]
            points = [(t, v) for t, v in points if v is not None]
            if points:
                ax.scatter(*zip(*points, strict=True), color=color, label=state)
        done = [(r["trial"], r[metric]) for r in rows if r["state"] == "complete"]
        pick = min if spec.sweep.direction == "minimize" else max
        best = [pick(v for _, v in done[: i + 1]) for i in range(len(done))]
        if done:
            ax.step([t for t, _ in done], best, where="post", color="tab:green", label="best")
            ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)  # trials are whole numbers
        ax.set(xlabel="trial", ylabel=metric)


def _plot_importance(study: Any, path: Path) -> None:
    """Optuna's parameter importances as bars, once it can compute them (2+ complete trials)."""
    import optuna

    if sum(1 for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE") < 2:
        return
    try:
        importances = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):  # e.g. every complete trial sampled the same values
        return
    if importances:
        with _figure(path, (7, 1.2 + 0.4 * len(importances))) as ax:
            names = list(importances)[::-1]  # the most important on top
            ax.barh(names, [importances[n] for n in names], color="tab:blue")
            ax.set_xlabel("importance (share of the metric's variation)")


def _plot_parallel(rows: list[dict[str, Any]], spec: SweepSpec, path: Path) -> None:
    """One vertical axis per searched key and one for the metric; each complete trial a line
    across them, coloured by its metric (the best trials darkest)."""
    metric = spec.sweep.metric
    done = [r for r in rows if r["state"] == "complete" and r[metric] is not None]
    if not done:
        return
    import matplotlib

    axes = [(k, _positions([r[k] for r in done], p)) for k, p in spec.sweep.search.items()]
    axes.append((metric, _positions([r[metric] for r in done], None)))
    values = [float(r[metric]) for r in done]
    low, high = min(values), max(values)

    def shade(value: float) -> float:
        if high == low:
            return 1.0
        share = (value - low) / (high - low)
        return 1 - share if spec.sweep.direction == "minimize" else share

    colors = matplotlib.colormaps["viridis_r"]
    with _figure(path, (1.6 + 1.6 * len(axes), 4)) as ax:
        for i, value in enumerate(values):
            ys = [ys[i] for _, (ys, _) in axes]
            ax.plot(range(len(axes)), ys, color=colors(0.15 + 0.85 * shade(value)), alpha=0.8)
        for x, (_, (_, ticks)) in enumerate(axes):
            ax.axvline(x, color="#999", linewidth=0.8)
            for y, label in ticks:
                ax.annotate(label, (x, y), xytext=(3, 0), textcoords="offset points", fontsize=7)
        ax.set_xticks(range(len(axes)), [name for name, _ in axes], rotation=15)
        ax.set_yticks([])
        ax.set_ylim(-0.05, 1.05)


def _positions(
    values: list[Any], param: Param | None
) -> tuple[list[float], list[tuple[float, str]]]:
    """Values placed on a 0..1 axis (choices evenly, log ranges on a log scale) and the
    ticks to label it with."""
    if param is not None and param.choices is not None:
        choices = list(param.choices)
        at = {cell(c): i / max(1, len(choices) - 1) for i, c in enumerate(choices)}
        return [at[cell(v)] for v in values], [(y, c) for c, y in at.items()]
    log = param is not None and param.log
    lo = float(param.low if param is not None and param.low is not None else min(values))
    hi = float(param.high if param is not None and param.high is not None else max(values))
    scale = (lambda v: math.log(v)) if log else (lambda v: v)
    span = scale(hi) - scale(lo)
    ys = [(scale(float(v)) - scale(lo)) / span if span else 0.5 for v in values]
    return ys, [(0.0, cell(lo)), (1.0, cell(hi))] if span else [(0.5, cell(lo))]


__all__ = ["best_summary", "best_trial", "markdown_table", "trial_rows", "write_results"]
