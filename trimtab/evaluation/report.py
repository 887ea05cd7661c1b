"""The report folder of ``trimtab eval``: report.json, report.md, report.html and plots/.

The content is built once as a list of blocks (headings, fields, tables, images) and rendered
twice, as Markdown and as HTML, so that the two files cannot drift apart. The HTML file embeds
its plots as ``data:`` URLs: it is one file that can be mailed or opened offline.

The plots are drawn by :mod:`trimtab.evaluation.plots`.
"""

from __future__ import annotations

import base64
import html
import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trimtab.evaluation.plots import (
    ci95,
    is_num,
    plot_accuracy_by_checkpoint,
    plot_comparison,
    plot_confusion,
    plot_loss,
)
from trimtab.files import check_output, staged_dir

DASH = "—"  # a missing value, in tables and fields


# --- blocks: what the report says, independent of Markdown or HTML (public: the sweep report
# is drawn with them too) ---------------------------------------------------------------------


@dataclass
class Heading:
    """A section title."""

    level: int
    text: str


@dataclass
class Fields:
    """Name: value lines."""

    items: list[tuple[str, str, bool]]  # (name, value, shown as code: paths and commands)


@dataclass
class Table:
    """A table; its number columns are right-aligned."""

    header: list[str]
    rows: list[list[str]]
    left: int = 1  # leading text columns; the rest are numbers, right-aligned


@dataclass
class Image:
    """A plot of the report's plots/ folder."""

    alt: str
    name: str  # file name under plots/


Block = Heading | Fields | Table | Image


# --- formatting ---------------------------------------------------------------------------


def _num(value: Any, digits: int = 3) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.{digits}f}"  # inf/nan (a diverged perplexity) print as such
    return DASH


def _int(value: Any) -> str:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else DASH


def _accuracy(classification: dict[str, Any]) -> str:
    accuracy, ci = classification.get("accuracy"), ci95(classification)
    if not is_num(accuracy):
        return DASH
    return f"{accuracy:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{accuracy:.3f}"


def _pair(section: dict[str, Any] | None, first: str, second: str) -> str:
    if not section:
        return DASH
    return f"{_num(section.get(first))} / {_num(section.get(second))}"


def result_slugs(results: list[dict[str, Any]]) -> list[str]:
    """Filesystem-safe, unique slugs of the results' labels (``-2``, ``-3`` on clashes): the
    names of each result's files (plots, predictions)."""
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


def _comparison(report: dict[str, Any]) -> Table:
    results = _results(report)
    has_lm = any(r.get("language_model") for r in results)
    has_generation = any(r.get("generation") for r in results)
    has_training = any(r.get("training") for r in results)
    has_cost = any(r.get("cost") for r in results)
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
    header += ["Train time (min)"] * has_training
    # With cost figures the throughput is one of them (requests/s: examples/s by another name).
    header += ["Prompt tokens", "Latency (ms)", "Requests/s"] if has_cost else ["Eval examples/s"]
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
            row.append(_num(seconds / 60, 1) if is_num(seconds) else DASH)
        if has_cost:
            cost = r.get("cost") or {}
            row += [
                _num(cost.get("prompt_tokens_per_request"), 0),
                _num(cost.get("latency_ms_per_request"), 1),
            ]
        row.append(_num(r.get("examples_per_s"), 1))
        rows.append(row)
    return Table(header, rows, left=3)


def comparison_table(report: dict[str, Any]) -> str:
    """The Markdown table comparing every result of ``report`` (one row per result).

    Missing values show as ``—``; metrics have 3 decimals, accuracy its 95% interval.
    """
    return _md_table(_comparison(report))


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
    if is_num(r.get("seconds")):
        speed = _num(r.get("examples_per_s"), 1)
        fields.append(("Evaluation time", f"{r['seconds']:.1f} s ({speed} examples/s)", False))
    training = r.get("training") or {}
    if training:
        seconds = training.get("seconds")
        parts = [f"{_num(seconds / 60 if is_num(seconds) else None, 1)} min"]
        if training.get("tokens_per_s") is not None:  # an ensemble has no speed of its own
            parts.append(f"{_num(training.get('tokens_per_s'), 0)} tokens/s")
        if training.get("train_examples") is not None:
            parts.append(f"{_int(training.get('train_examples'))} examples")
        fields.append(("Training", ", ".join(parts), False))
    fields += _cost_fields(r)
    if run and run.get("path"):
        fields.append(("Run", str(run["path"]), True))
    return fields


def _cost_fields(r: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """An ensemble's members and weights, and what a request costs (``cost``)."""
    fields: list[tuple[str, str, bool]] = []
    members = [m for m in r.get("members") or [] if isinstance(m, dict)]
    if members:
        text = ", ".join(f"{m.get('label')} (weight {_num(m.get('weight'))})" for m in members)
        fields.append(("Members", text, False))
    cost = r.get("cost")
    if isinstance(cost, dict):
        parameters = cost.get("parameters")
        fields.append(
            (
                "Cost per request",
                f"{_num(cost.get('prompt_tokens_per_request'), 1)} prompt tokens, "
                f"{_num(cost.get('latency_ms_per_request'), 1)} ms alone (median of "
                f"{_int(cost.get('latency_sample'))}), "
                f"{_num(cost.get('requests_per_s'), 1)} requests/s batched, "
                f"{f'{parameters:,}' if _int(parameters) != DASH else DASH} parameters",
                False,
            )
        )
    return fields


def _classification_fields(c: dict[str, Any]) -> list[Block]:
    """The headline classification metrics, plus the median decision for ordinal labels."""
    blocks: list[Block] = [
        Fields(
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
            Fields(
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


def _per_class_blocks(c: dict[str, Any], labels: list[str]) -> list[Block]:
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
    return [Table(["Label", "Precision", "Recall", "F1", "Support"], rows)]


def _confusion_blocks(
    c: dict[str, Any], labels: list[str], label: str, slug: str, plots: Path
) -> list[Block]:
    """The confusion matrix as a table and, if it can be drawn, as a plot."""
    blocks: list[Block] = []
    matrix = c.get("confusion") or []
    if labels and len(matrix) == len(labels):
        blocks.append(Heading(4, "Confusion matrix (rows: true, columns: predicted)"))
        blocks.append(
            Table(
                ["true \\ predicted", *labels],
                [[true, *map(str, row)] for true, row in zip(labels, matrix)],
            )
        )
    name = f"confusion-{slug}.png"
    if plot_confusion(c, f"Confusion matrix: {label}", plots / name):
        blocks.append(Image(f"Confusion matrix of {label}", name))
    return blocks


def _classification_blocks(c: dict[str, Any], label: str, slug: str, plots: Path) -> list[Block]:
    """The classification section of one result."""
    labels = [str(x) for x in c.get("labels") or []]
    return [
        Heading(4, "Classification"),
        *_classification_fields(c),
        *_per_class_blocks(c, labels),
        *_confusion_blocks(c, labels, label, slug, plots),
    ]


def _language_model_blocks(lm: dict[str, Any]) -> list[Block]:
    """The language-modelling section of one result."""
    return [
        Heading(4, "Language modelling"),
        Fields(
            [
                ("Loss", _num(lm.get("loss")), False),
                ("Perplexity", _num(lm.get("perplexity")), False),
                ("Tokens", _int(lm.get("tokens")), False),
            ]
        ),
    ]


def _generation_blocks(generation: dict[str, Any]) -> list[Block]:
    """The generation section of one result."""
    return [
        Heading(4, "Generation"),
        Fields(
            [
                ("Exact match", _num(generation.get("exact_match")), False),
                ("ROUGE-L", _num(generation.get("rouge_l")), False),
                ("Examples", _int(generation.get("n")), False),
            ]
        ),
    ]


def _training_curve_blocks(
    run: dict[str, Any] | None, label: str, slug: str, plots: Path
) -> list[Block]:
    """The training-loss plot of one result, if its run logged one."""
    name = f"loss-{slug}.png"
    if run and plot_loss(run, f"Training loss: {label}", plots / name):
        return [Heading(4, "Training curve"), Image(f"Training loss of {label}", name)]
    return []


def _result_blocks(r: dict[str, Any], slug: str, plots: Path) -> list[Block]:
    """Every block of one result: its summary, then a section per kind of metric it has."""
    label = str(r.get("label") or r.get("model") or slug)
    run = r.get("run") if isinstance(r.get("run"), dict) else None
    blocks: list[Block] = [Heading(3, label), Fields(_summary_fields(r, run))]
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


def _blocks(report: dict[str, Any], plots: Path) -> list[Block]:
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
    blocks: list[Block] = [
        Heading(1, "Evaluation report"),
        Fields(fields),
        Heading(2, "Comparison"),
        _comparison(report),
    ]
    if plot_comparison(results, plots / "comparison.png"):
        blocks.append(Image("Accuracy per model, with 95% intervals", "comparison.png"))
    if plot_accuracy_by_checkpoint(results, plots / "accuracy-by-checkpoint.png"):
        blocks.append(Image("Validation accuracy by checkpoint", "accuracy-by-checkpoint.png"))
    if results:
        blocks.append(Heading(2, "Results"))
    for result, slug in zip(results, result_slugs(results)):
        blocks += _result_blocks(result, slug, plots)
    return blocks


# --- rendering ------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("\n", " ").replace("|", "\\|")  # a bare "|" would split the cell


def _md_code(text: str) -> str:
    # A backtick inside the value would end a single-backtick span early.
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _md_table(table: Table) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(_md_cell(c) for c in cells) + " |"

    align = ["---" if i < table.left else "---:" for i in range(len(table.header))]
    return "\n".join([line(table.header), line(align), *map(line, table.rows)])


def _markdown(blocks: list[Block]) -> str:
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Fields):
            parts.append(
                "\n".join(
                    f"- **{name}:** {_md_code(value) if code else value}"
                    for name, value, code in block.items
                )
            )
        elif isinstance(block, Table):
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


def render_html(blocks: list[Block], plots: Path) -> str:
    """One self-contained HTML page of ``blocks``, the PNGs of ``plots`` embedded."""
    e = html.escape
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"<h{block.level}>{e(block.text)}</h{block.level}>")
        elif isinstance(block, Fields):
            items = "".join(
                f"<li><strong>{e(name)}:</strong> "
                f"{f'<code>{e(value)}</code>' if code else e(value)}</li>"
                for name, value, code in block.items
            )
            parts.append(f'<ul class="fields">{items}</ul>')
        elif isinstance(block, Table):
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
    title = next((b.text for b in blocks if isinstance(b, Heading)), "Evaluation report")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(parts)
        + "\n</body>\n</html>\n"
    )


def write_report(
    report: dict[str, Any], out: Path, *, force: bool = False, files: dict[str, str] | None = None
) -> Path:
    """Write the report folder ``out``: report.json, report.md, report.html and plots/*.png,
    and ``files`` (text by relative path, such as ``predictions/<slug>.jsonl``).

    The folder is built under a hidden name and moved into place once complete, so ``out`` is
    either the whole new report or left as it was. An existing non-empty ``out`` is replaced
    only with ``force``; otherwise OutputExistsError. Returns ``out``.
    """
    out = Path(out)
    check_output(out, force, "report")
    with staged_dir(out) as tmp:
        for name, text in (files or {}).items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text, encoding="utf-8")
        (tmp / "report.json").write_text(
            json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        plots = tmp / "plots"
        plots.mkdir()
        blocks = _blocks(report, plots)
        (tmp / "report.md").write_text(_markdown(blocks), encoding="utf-8")
        (tmp / "report.html").write_text(render_html(blocks, plots), encoding="utf-8")
    return out
