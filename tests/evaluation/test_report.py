"""The report folder of ``trimtab eval``: files, content, plots, self-contained HTML, atomicity."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from trimtab.errors import OutputExistsError
from trimtab.evaluation import report as report_module
from trimtab.evaluation.metrics import classification_report
from trimtab.evaluation.report import comparison_table, write_report

LABELS = ["1", "2", "3", "4", "5"]
# Rows: true label, columns: predicted; 100 of each; the diagonal sums to 275 -> accuracy 0.55.
CONFUSION = [
    [70, 20, 5, 3, 2],
    [25, 40, 25, 7, 3],
    [5, 20, 45, 25, 5],
    [2, 5, 20, 48, 25],
    [1, 2, 5, 20, 72],
]


def classification_from(confusion: list[list[int]], labels: list[str]) -> dict:
    """ClassificationReport.to_json() of the predictions that give ``confusion``."""
    gold, predicted = [], []
    for true, row in zip(labels, confusion):
        for guess, count in zip(labels, row):
            gold += [true] * count
            predicted += [guess] * count
    return classification_report(gold, predicted, labels).to_json()


def make_report() -> dict:
    fine_tuned = {
        "label": "smollm2-135m lora",
        "model": "runs/case-study/runs/smollm2-lora",
        "kind": "fine-tuned",
        "base_model": "smollm2-135m",
        "method": "lora",
        "task": "sft",
        "mode": "label scoring",
        "n": 500,
        "seconds": 12.5,
        "examples_per_s": 40.0,
        "classification": classification_from(CONFUSION, LABELS),
        "language_model": None,
        "generation": None,
        "training": {"seconds": 600.0, "tokens_per_s": 1500.0, "train_examples": 11203},
        "run": {
            "path": "runs/case-study/runs/smollm2-lora",
            "metrics": [
                {"step": 10, "train_loss": 1.6},
                {"step": 20, "train_loss": 1.4},
                {"step": 25, "valid_loss": 1.3, "valid_accuracy": 0.45},
                {"step": 30, "train_loss": 1.2},
                {"step": 50, "valid_loss": 1.1, "valid_accuracy": 0.55},
            ],
        },
    }
    zero_shot = {
        "label": "smollm2-135m zero-shot",
        "model": "smollm2-135m",
        "kind": "zero-shot",
        "base_model": "smollm2-135m",
        "method": None,
        "task": "sft",
        "mode": "generation",
        "n": 500,
        "seconds": 30.0,
        "examples_per_s": 16.7,
        "classification": classification_from([[30, 70], [10, 90]], ["neg", "pos"]),
        "language_model": None,
        "generation": {"exact_match": 0.4, "rouge_l": 0.55, "n": 50},
        "training": None,
        "run": None,
    }
    lm = {
        "label": "smollm2-135m lm",
        "model": "runs/lm",
        "kind": "fine-tuned",
        "base_model": "smollm2-135m",
        "method": "full",
        "task": "lm",
        "mode": "loss",
        "n": 100,
        "seconds": 2.0,
        "examples_per_s": 50.0,
        "classification": None,
        "language_model": {"loss": 1.23, "perplexity": 3.42, "tokens": 1000},
        "generation": None,
        "training": None,
        "run": None,
    }
    return {
        "trimtab_version": "0.1.0",
        "created": "2026-11-22T05:30:00",
        "data": "runs/demo/data/marc-en/test.jsonl",
        "command": "trimtab eval runs/x smollm2-135m --data runs/demo/data/marc-en/test.jsonl",
        "results": [fine_tuned, zero_shot, lm],
    }


EXPECTED_PLOTS = {
    "comparison.png",
    "accuracy-by-checkpoint.png",
    "confusion-smollm2-135m-lora.png",
    "confusion-smollm2-135m-zero-shot.png",
    "loss-smollm2-135m-lora.png",
}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    # Written once: rendering the plots is the slow part, and these tests only read the folder.
    report = make_report()
    out = tmp_path_factory.mktemp("eval") / "report"
    assert write_report(report, out) == out
    return report, out


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_folder_holds_exactly_the_report_files_and_plots(written):
    _, out = written
    assert files_under(out) == (
        {"report.json", "report.md", "report.html"} | {f"plots/{name}" for name in EXPECTED_PLOTS}
    )
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no staging left


def test_report_json_round_trips_the_report(written):
    report, out = written
    text = (out / "report.json").read_text(encoding="utf-8")
    assert json.loads(text) == json.loads(json.dumps(report))
    assert text.startswith('{\n  "trimtab_version"')  # indent=2


def test_markdown_has_title_data_date_and_the_comparison_rows(written):
    _, out = written
    md = (out / "report.md").read_text(encoding="utf-8")
    assert md.startswith("# Evaluation report\n")
    assert "runs/demo/data/marc-en/test.jsonl" in md and "2026-11-22 05:30:00" in md
    row = next(line for line in md.splitlines() if line.startswith("| smollm2-135m lora |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:4] == ["smollm2-135m lora", "fine-tuned", "label scoring", "500"]
    accuracy, low, high = cells[4].replace("[", "").replace("]", "").replace(",", "").split()
    assert accuracy == "0.550" and float(low) < 0.55 < float(high)
    assert cells[-2:] == ["10.0", "40.0"]  # train time in minutes, eval examples/s
    lm_row = next(line for line in md.splitlines() if line.startswith("| smollm2-135m lm |"))
    assert "1.230 / 3.420" in lm_row and "| — |" in lm_row


def test_markdown_has_per_class_scores_and_confusion_counts(written):
    _, out = written
    md = (out / "report.md").read_text(encoding="utf-8")
    # label "1": precision 70/103, recall 70/100, support 100
    assert "| 1 | 0.680 | 0.700 | 0.690 | 100 |" in md
    for label, row in zip(LABELS, CONFUSION):
        assert f"| {label} | {' | '.join(map(str, row))} |" in md
    assert "| neg | 30 | 70 |" in md and "| pos | 10 | 90 |" in md
    assert "- **Exact match:** 0.400" in md and "- **ROUGE-L:** 0.550" in md
    assert "- **Loss:** 1.230" in md and "- **Perplexity:** 3.420" in md


def test_markdown_links_every_plot_once_by_relative_path(written):
    _, out = written
    md = (out / "report.md").read_text(encoding="utf-8")
    for name in EXPECTED_PLOTS:
        assert md.count(f"(plots/{name})") == 1


def test_plots_are_pngs_with_a_confusion_plot_per_classified_result(written):
    report, out = written
    for name in EXPECTED_PLOTS:
        assert (out / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    classified = [r for r in report["results"] if r["classification"]]
    assert len(list((out / "plots").glob("confusion-*.png"))) == len(classified) == 2


def test_html_is_one_self_contained_file_with_every_plot_embedded(written):
    _, out = written
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page
    assert 'src="plots' not in page and "<script" not in page
    assert page.count("data:image/png;base64,") == len(EXPECTED_PLOTS)
    assert "<table>" in page and '<td class="num">0.550 [' in page
    assert "<style>" in page and 'rel="stylesheet"' not in page


def test_html_escapes_text_from_the_report(tmp_path):
    report = make_report()
    report["results"][0]["label"] = "<b>evil</b> & co"
    write_report(report, tmp_path / "r")
    page = (tmp_path / "r" / "report.html").read_text(encoding="utf-8")
    assert "<b>evil</b>" not in page and "&lt;b&gt;evil&lt;/b&gt; &amp; co" in page


def test_comparison_table_only_has_optional_columns_that_some_result_fills():
    report = make_report()
    header = comparison_table(report).splitlines()[0]
    assert "Loss / PPL" in header and "Exact match / ROUGE-L" in header
    assert "Train time (min)" in header
    report["results"] = [report["results"][0]]
    header = comparison_table(report).splitlines()[0]
    assert "Loss / PPL" not in header and "Exact match / ROUGE-L" not in header
    assert header.split("|")[1].strip() == "Model"
    assert header.split("|")[-2].strip() == "Eval examples/s"


def test_existing_non_empty_folder_is_kept_without_force(tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="force"):
        write_report(make_report(), out)
    assert files_under(out) == {"notes.txt"} and (out / "notes.txt").read_text() == "mine"


def test_force_replaces_the_existing_folder(tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "notes.txt").write_text("old")
    write_report(make_report(), out, force=True)
    assert "notes.txt" not in files_under(out) and (out / "report.html").exists()


def test_an_empty_existing_folder_needs_no_force(tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    write_report(make_report(), out)
    assert (out / "report.md").exists()


def test_a_failure_while_writing_leaves_the_old_report_in_place(tmp_path, monkeypatch):
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.md").write_text("old report")

    def broken(*args, **kwargs):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(report_module, "plot_comparison", broken)
    with pytest.raises(RuntimeError):
        write_report(make_report(), out, force=True)
    assert files_under(out) == {"report.md"} and (out / "report.md").read_text() == "old report"
    assert [p.name for p in tmp_path.iterdir()] == ["report"]  # no staging folder left


def test_result_without_classification_or_mae_is_reported_with_dashes(tmp_path):
    text_labels = classification_from([[3, 1], [0, 4]], ["neg", "pos"])
    assert text_labels["mae"] is None
    report = make_report()
    report["results"] = [
        {"label": "text labels", "model": "m1", "classification": text_labels},
        {
            "label": "nothing",
            "model": "m2",
            "classification": None,
            "language_model": None,
            "generation": None,
            "training": None,
            "run": None,
            "n": None,
            "seconds": None,
            "examples_per_s": None,
        },
        {
            "label": "bad run",
            "model": "m3",
            "run": {
                "path": "runs/x",
                "metrics": [{"step": 1, "train_loss": None}, {"step": None, "valid_loss": 1.0}],
            },
        },
    ]
    out = tmp_path / "r"
    write_report(report, out)
    # Only the one classification has something to plot: no loss or checkpoint plots.
    assert files_under(out) == {
        "report.json",
        "report.md",
        "report.html",
        "plots/comparison.png",
        "plots/confusion-text-labels.png",
    }
    table = comparison_table(report).splitlines()
    text_row = [c.strip() for c in table[2].strip("|").split("|")]
    assert text_row[4] == "0.875 [" + text_row[4].split("[")[1] and text_row[6] == "—"
    assert table[3].startswith("| nothing | — | — | — | — |")


def test_a_report_without_results_still_writes_every_file(tmp_path):
    report = {
        "trimtab_version": "0.1.0",
        "created": "2026-11-22T05:30:00",
        "data": "d.jsonl",
        "command": "trimtab eval",
        "results": [],
    }
    write_report(report, tmp_path / "r")
    assert files_under(tmp_path / "r") == {"report.json", "report.md", "report.html"}
    assert (tmp_path / "r" / "plots").is_dir()


def test_duplicate_labels_get_unique_filesystem_safe_slugs(tmp_path):
    report = make_report()
    for result in report["results"]:
        result["label"] = "Café / LoRA #1"
    write_report(report, tmp_path / "r")
    confusion = {p.name for p in (tmp_path / "r" / "plots").glob("confusion-*.png")}
    assert confusion == {"confusion-cafe-lora-1.png", "confusion-cafe-lora-1-2.png"}
    assert report_module.result_slugs(
        [{"label": "a"}, {"label": "A"}, {"label": "a-2"}, {"label": "日本"}]
    ) == ["a", "a-2", "a-2-2", "result"]


def test_every_figure_is_closed(tmp_path):
    import matplotlib.pyplot as plt

    write_report(make_report(), tmp_path / "r")
    assert plt.get_fignums() == []


def test_importing_the_module_does_not_import_matplotlib():
    code = "import sys, trimtab.evaluation.report; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_median_decision_of_ordinal_labels_is_shown_beside_the_argmax(tmp_path):
    report = make_report()
    report["results"][0]["classification"]["extra"] = {
        "median_decision": {"accuracy": 0.512, "mae": 0.456, "off_by_one_accuracy": 0.934}
    }
    write_report(report, tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "accuracy 0.512, MAE 0.456, off-by-one 0.934" in md


def test_comparison_table_gives_each_row_the_number_of_examples_it_was_evaluated_on():
    report = make_report()
    report["results"][1]["n"] = 200  # a baseline on the first 200 (--baseline-limit)
    table = comparison_table(report).splitlines()
    assert [c.strip() for c in table[0].strip("|").split("|")][3] == "n"
    ns = [[c.strip() for c in row.strip("|").split("|")][3] for row in table[2:]]
    assert ns == ["500", "200", "100"]
