"""The report folder of ``trimtab eval``: report.json, report.md, report.html and plots/.

The content is built once as a list of blocks (headings, fields, tables, images) and rendered
twice, as Markdown and as HTML, so that the two files cannot drift apart. The HTML file embeds
its plots as ``data:`` URLs: it is one file that can be mailed or opened offline.

matplotlib is imported inside the plotting functions only: the CLI imports this module for
``comparison_table`` on every ``trimtab eval``, and pyplot costs about a second to import.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from trimtab.files import check_output, staged_dir

DASH = "—"  # a missing value, in tables and fields


# --- blocks: what the report says, independent of Markdown or HTML ----------------------------


@dataclass
class _Heading:
    level: int
    text: str


@dataclass
class _Fields:
    items: list[tuple[str, str, bool]]  # (name, value, shown as code: paths and commands)


@dataclass
class _Table:
    header: list[str]
    rows: list[list[str]]
    left: int = 1  # leading text columns; the rest are numbers, right-aligned


@dataclass
class _Image:
    alt: str
    name: str  # file name under plots/


_Block = _Heading | _Fields | _Table | _Image


# --- formatting ---------------------------------------------------------------------------


def _is_num(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _num(value: Any, digits: int = 3) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.{digits}f}"  # inf/nan (a diverged perplexity) print as such
    return DASH


def _int(value: Any) -> str:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else DASH


def _ci(classification: dict[str, Any]) -> tuple[float, float] | None:
    ci = classification.get("accuracy_ci95")  # a list once read back from report.json
    if isinstance(ci, list | tuple) and len(ci) == 2 and all(_is_num(x) for x in ci):
        return (ci[0], ci[1])
    return None


def _accuracy(classification: dict[str, Any]) -> str:
    accuracy, ci = classification.get("accuracy"), _ci(classification)
    if not _is_num(accuracy):
        return DASH
    return f"{accuracy:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{accuracy:.3f}"


def _pair(section: dict[str, Any] | None, first: str, second: str) -> str:
    if not section:
        return DASH
    return f"{_num(section.get(first))} / {_num(section.get(second))}"


def _slugs(results: list[dict[str, Any]]) -> list[str]:
    """Filesystem-safe, unique slugs of the results' labels (``-2``, ``-3`` on clashes)."""
    used: set[str] = set()
    slugs = []
    for i, result in enumerate(results):
        label = str(result.get("label") or result.get("model") or f"result-{i + 1}")
        # NFKD then ASCII keeps "café" readable as "cafe" instead of dropping the letter.
        ascii_label = unicodedata.normalize("NFKD", label).encode("ascii", "ignore").decode()
        base = re.sub(r"[^a-z0-9]+", "-", ascii_label.lower()).strip("-")[:60].strip("-")
        base = base or "result"
        slug, n = base, 2
        while slug in used:
            slug, n = f"{base}-{n}", n + 1
        used.add(slug)
        slugs.append(slug)
    return slugs


def _results(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in report.get("results") or [] if isinstance(r, dict)]


# --- the comparison table -------------------------------------------------------------------


def _comparison(report: dict[str, Any]) -> _Table:
    results = _results(report)
    has_lm = any(r.get("language_model") for r in results)
    has_generation = any(r.get("generation") for r in results)
    has_training = any(r.get("training") for r in results)
    header = [
        "Model",
        "Kind",
        "Mode",
        "n",  # examples evaluated for this row: baselines may see fewer (--baseline-limit)
        "Accuracy [95% CI]",
        "Macro-F1",
        "MAE",
        "Off-by-one",
        "Invalid",
    ]
    # Optional columns appear only when some result has them: a table of classifiers should not
    # carry three columns of dashes.
    header += ["Loss / PPL"] * has_lm + ["Exact match / ROUGE-L"] * has_generation
    header += ["Train time (min)"] * has_training + ["Eval examples/s"]
    rows = []
    for r in results:
        c = r.get("classification") or {}
        row = [
            str(r.get("label") or r.get("model") or DASH),
            str(r.get("kind") or DASH),
            str(r.get("mode") or DASH),
            _int(r.get("n")),
            _accuracy(c),
            _num(c.get("macro_f1")),
            _num(c.get("mae")),
            _num(c.get("off_by_one_accuracy")),
            _int(c.get("invalid")),
        ]
        if has_lm:
            row.append(_pair(r.get("language_model"), "loss", "perplexity"))
        if has_generation:
            row.append(_pair(r.get("generation"), "exact_match", "rouge_l"))
        if has_training:
            seconds = (r.get("training") or {}).get("seconds")
            row.append(_num(seconds / 60, 1) if _is_num(seconds) else DASH)
        row.append(_num(r.get("examples_per_s"), 1))
        rows.append(row)
    return _Table(header, rows, left=3)


def comparison_table(report: dict[str, Any]) -> str:
    """The Markdown table comparing every result of ``report`` (one row per result).

    Missing values show as ``—``; metrics have 3 decimals, accuracy its 95% interval.
    """
    return _md_table(_comparison(report))


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
        if isinstance(m, dict) and _is_num(m.get("step")) and _is_num(m.get(key))
    )


def _plot_confusion(classification: dict[str, Any], title: str, path: Path) -> bool:
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


def _plot_loss(run: dict[str, Any], title: str, path: Path) -> bool:
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


def _plot_accuracy_by_checkpoint(results: list[dict[str, Any]], path: Path) -> bool:
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


def _plot_comparison(results: list[dict[str, Any]], path: Path) -> bool:
    bars = [
        (str(r.get("label") or r.get("model") or "?"), r["classification"])
        for r in results
        if isinstance(r.get("classification"), dict)
        and _is_num(r["classification"].get("accuracy"))
    ]
    if not bars:
        return False
    accuracies = [c["accuracy"] for _, c in bars]
    cis = [_ci(c) or (c["accuracy"], c["accuracy"]) for _, c in bars]
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


# --- building the blocks --------------------------------------------------------------------


def _summary_fields(r: dict[str, Any], run: dict[str, Any] | None) -> list[tuple[str, str, bool]]:
    """The fields under a result's heading: what was evaluated, how, and how long it took."""
    fields: list[tuple[str, str, bool]] = [("Model", str(r.get("model") or DASH), True)]
    for name, key in [
        ("Kind", "kind"),
        ("Base model", "base_model"),
        ("Method", "method"),
        ("Task", "task"),
        ("Mode", "mode"),
        ("Examples", "n"),
    ]:
        if r.get(key) is not None:
            fields.append((name, str(r[key]), False))
    if _is_num(r.get("seconds")):
        speed = _num(r.get("examples_per_s"), 1)
        fields.append(("Evaluation time", f"{r['seconds']:.1f} s ({speed} examples/s)", False))
    training = r.get("training") or {}
    if training:
        seconds = training.get("seconds")
        fields.append(
            (
                "Training",
                f"{_num(seconds / 60 if _is_num(seconds) else None, 1)} min, "
                f"{_num(training.get('tokens_per_s'), 0)} tokens/s, "
                f"{_int(training.get('train_examples'))} examples",
                False,
            )
        )
    if run and run.get("path"):
        fields.append(("Run", str(run["path"]), True))
    return fields


def _classification_fields(c: dict[str, Any]) -> list[_Block]:
    """The headline classification metrics, plus the median decision for ordinal labels."""
    blocks: list[_Block] = [
        _Fields(
            [
                ("Accuracy [95% CI]", _accuracy(c), False),
                ("Macro-F1", _num(c.get("macro_f1")), False),
                ("MAE", _num(c.get("mae")), False),
                ("Off-by-one accuracy", _num(c.get("off_by_one_accuracy")), False),
                ("Invalid predictions", _int(c.get("invalid")), False),
            ]
        )
    ]
    median = (c.get("extra") or {}).get("median_decision")
    if isinstance(median, dict):  # ordinal labels: the decision that minimises MAE
        blocks.append(
            _Fields(
                [
                    (
                        "Median of the predicted distribution",
                        (
                            f"accuracy {_num(median.get('accuracy'))}, "
                            f"MAE {_num(median.get('mae'))}, "
                            f"off-by-one {_num(median.get('off_by_one_accuracy'))}"
                        ),
                        False,
                    )
                ]
            )
        )
    return blocks


def _per_class_blocks(c: dict[str, Any], labels: list[str]) -> list[_Block]:
    """The per-class precision/recall/F1 table, in label order, if there is one."""
    per_class = c.get("per_class") or {}
    order = labels + [k for k in per_class if k not in labels]
    rows = [
        [
            k,
            _num(s.get("precision")),
            _num(s.get("recall")),
            _num(s.get("f1")),
            _int(s.get("support")),
        ]
        for k in order
        if isinstance(s := per_class.get(k), dict)
    ]
    if not rows:
        return []
    return [_Table(["Label", "Precision", "Recall", "F1", "Support"], rows)]


def _confusion_blocks(
    c: dict[str, Any], labels: list[str], label: str, slug: str, plots: Path
) -> list[_Block]:
    """The confusion matrix as a table and, if it can be drawn, as a plot."""
    blocks: list[_Block] = []
    matrix = c.get("confusion") or []
    if labels and len(matrix) == len(labels):
        blocks.append(_Heading(4, "Confusion matrix (rows: true, columns: predicted)"))
        blocks.append(
            _Table(
                ["true \\ predicted", *labels],
                [[true, *map(str, row)] for true, row in zip(labels, matrix)],
            )
        )
    name = f"confusion-{slug}.png"
    if _plot_confusion(c, f"Confusion matrix: {label}", plots / name):
        blocks.append(_Image(f"Confusion matrix of {label}", name))
    return blocks


def _classification_blocks(c: dict[str, Any], label: str, slug: str, plots: Path) -> list[_Block]:
    """The classification section of one result."""
    labels = [str(x) for x in c.get("labels") or []]
    return [
        _Heading(4, "Classification"),
        *_classification_fields(c),
        *_per_class_blocks(c, labels),
        *_confusion_blocks(c, labels, label, slug, plots),
    ]


def _language_model_blocks(lm: dict[str, Any]) -> list[_Block]:
    """The language-modelling section of one result."""
    return [
        _Heading(4, "Language modelling"),
        _Fields(
            [
                ("Loss", _num(lm.get("loss")), False),
                ("Perplexity", _num(lm.get("perplexity")), False),
                ("Tokens", _int(lm.get("tokens")), False),
            ]
        ),
    ]


def _generation_blocks(generation: dict[str, Any]) -> list[_Block]:
    """The generation section of one result."""
    return [
        _Heading(4, "Generation"),
        _Fields(
            [
                ("Exact match", _num(generation.get("exact_match")), False),
                ("ROUGE-L", _num(generation.get("rouge_l")), False),
                ("Examples", _int(generation.get("n")), False),
            ]
        ),
    ]


def _training_curve_blocks(
    run: dict[str, Any] | None, label: str, slug: str, plots: Path
) -> list[_Block]:
    """The training-loss plot of one result, if its run logged one."""
    name = f"loss-{slug}.png"
    if run and _plot_loss(run, f"Training loss: {label}", plots / name):
        return [_Heading(4, "Training curve"), _Image(f"Training loss of {label}", name)]
    return []


def _result_blocks(r: dict[str, Any], slug: str, plots: Path) -> list[_Block]:
    """Every block of one result: its summary, then a section per kind of metric it has."""
    label = str(r.get("label") or r.get("model") or slug)
    run = r.get("run") if isinstance(r.get("run"), dict) else None
    blocks: list[_Block] = [_Heading(3, label), _Fields(_summary_fields(r, run))]
    c = r.get("classification")
    if isinstance(c, dict):
        blocks += _classification_blocks(c, label, slug, plots)
    lm = r.get("language_model")
    if isinstance(lm, dict):
        blocks += _language_model_blocks(lm)
    generation = r.get("generation")
    if isinstance(generation, dict):
        blocks += _generation_blocks(generation)
    blocks += _training_curve_blocks(run, label, slug, plots)
    return blocks


def _blocks(report: dict[str, Any], plots: Path) -> list[_Block]:
    """Every block of the report, drawing its plots into ``plots`` on the way."""
    results = _results(report)
    fields = [
        ("Data", str(report.get("data") or DASH), True),
        ("Date", str(report.get("created") or DASH).replace("T", " "), False),
    ]
    if report.get("command"):
        fields.append(("Command", str(report["command"]), True))
    if report.get("trimtab_version"):
        fields.append(("trimtab", str(report["trimtab_version"]), False))
    blocks: list[_Block] = [
        _Heading(1, "Evaluation report"),
        _Fields(fields),
        _Heading(2, "Comparison"),
        _comparison(report),
    ]
    if _plot_comparison(results, plots / "comparison.png"):
        blocks.append(_Image("Accuracy per model, with 95% intervals", "comparison.png"))
    if _plot_accuracy_by_checkpoint(results, plots / "accuracy-by-checkpoint.png"):
        blocks.append(_Image("Validation accuracy by checkpoint", "accuracy-by-checkpoint.png"))
    if results:
        blocks.append(_Heading(2, "Results"))
    for result, slug in zip(results, _slugs(results)):
        blocks += _result_blocks(result, slug, plots)
    return blocks


# --- rendering ------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("\n", " ").replace("|", "\\|")  # a bare "|" would split the cell


def _md_code(text: str) -> str:
    # A backtick inside the value would end a single-backtick span early.
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _md_table(table: _Table) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(_md_cell(c) for c in cells) + " |"

    align = ["---" if i < table.left else "---:" for i in range(len(table.header))]
    return "\n".join([line(table.header), line(align), *map(line, table.rows)])


def _markdown(blocks: list[_Block]) -> str:
    parts = []
    for block in blocks:
        if isinstance(block, _Heading):
            parts.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, _Fields):
            parts.append(
                "\n".join(
                    f"- **{name}:** {_md_code(value) if code else value}"
                    for name, value, code in block.items
                )
            )
        elif isinstance(block, _Table):
            parts.append(_md_table(block))
        else:
            parts.append(f"![{block.alt}](plots/{block.name})")
    return "\n\n".join(parts) + "\n"


_CSS = """
body { font: 15px/1.5 system-ui, sans-serif; color: #222; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; }
h1, h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; } h3 { margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ccc; padding: .3em .6em; } th { background: #f3f3f3; }
td.num { text-align: right; } tr:nth-child(even) td { background: #fafafa; }
code { background: #f3f3f3; padding: .1em .3em; border-radius: 3px; word-break: break-all; }
ul.fields { list-style: none; padding-left: 0; } img { max-width: 100%; height: auto; }
figcaption { color: #666; font-size: .9em; }
"""


def _html(blocks: list[_Block], plots: Path) -> str:
    e = html.escape
    parts = []
    for block in blocks:
        if isinstance(block, _Heading):
            parts.append(f"<h{block.level}>{e(block.text)}</h{block.level}>")
        elif isinstance(block, _Fields):
            items = "".join(
                f"<li><strong>{e(name)}:</strong> "
                f"{f'<code>{e(value)}</code>' if code else e(value)}</li>"
                for name, value, code in block.items
            )
            parts.append(f'<ul class="fields">{items}</ul>')
        elif isinstance(block, _Table):
            head = "".join(f"<th>{e(h)}</th>" for h in block.header)
            body = "".join(
                "<tr>"
                + "".join(
                    f"<td>{e(c)}</td>" if i < block.left else f'<td class="num">{e(c)}</td>'
                    for i, c in enumerate(row)
                )
                + "</tr>"
                for row in block.rows
            )
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        else:
            # Embedded, not linked: the HTML file must stand alone, with no network and no
            # plots/ folder beside it.
            data = base64.b64encode((plots / block.name).read_bytes()).decode("ascii")
            parts.append(
                f'<figure><img alt="{e(block.alt)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{e(block.alt)}</figcaption></figure>"
            )
    title = next((b.text for b in blocks if isinstance(b, _Heading)), "Evaluation report")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(parts)
        + "\n</body>\n</html>\n"
    )


def write_report(report: dict[str, Any], out: Path, *, force: bool = False) -> Path:
    """Write the report folder ``out``: report.json, report.md, report.html and plots/*.png.

    The folder is built under a hidden name and moved into place once complete, so ``out`` is
    either the whole new report or left as it was. An existing non-empty ``out`` is replaced
    only with ``force``; otherwise OutputExistsError. Returns ``out``.
    """
    out = Path(out)
    check_output(out, force, "report")
    with staged_dir(out) as tmp:
        (tmp / "report.json").write_text(
            json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        plots = tmp / "plots"
        plots.mkdir()
        blocks = _blocks(report, plots)
        (tmp / "report.md").write_text(_markdown(blocks), encoding="utf-8")
        (tmp / "report.html").write_text(_html(blocks, plots), encoding="utf-8")
    return out
