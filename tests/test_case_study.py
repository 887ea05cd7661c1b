"""The case-study script's docs page: figures redone on every run, findings kept."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_script():
    spec = importlib.util.spec_from_file_location("case_study", ROOT / "scripts/case_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def report_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "report"
    (folder / "plots").mkdir(parents=True)
    (folder / "plots" / "comparison.png").write_bytes(b"\x89PNG fake")
    (folder / "report.json").write_text(
        json.dumps(
            {
                "created": "2026-11-22T06:00:00",
                "trimtab_version": "0.1.0",
                "data": "test.jsonl",
                "results": [
                    {
                        "label": "minilm-full",
                        "kind": "fine-tuned",
                        "mode": "classification head",
                        "n": 5000,
                        "examples_per_s": 120.0,
                        "classification": {
                            "accuracy": 0.5612,
                            "accuracy_ci95": [0.55, 0.57],
                            "mae": 0.52,
                            "off_by_one_accuracy": 0.91,
                            "macro_f1": 0.55,
                            "invalid": 0,
                        },
                        "training": {"seconds": 357.2, "tokens_per_s": 2888.3},
                    }
                ],
            }
        )
    )
    return folder


def test_docs_page_has_each_runs_figures_and_copies_the_plots(tmp_path):
    script = load_script()
    script.write_docs(report_folder(tmp_path), tmp_path / "docs")
    page = (tmp_path / "docs" / "case-study.md").read_text()
    assert (
        "| minilm-full | fine-tuned | classification head | 0.561 [0.550, 0.570] | 0.520 |" in page
    )
    assert "— / — | 6.0 min | 2,888 |" in page
    assert (tmp_path / "docs" / "case-study" / "comparison.png").is_file()
    assert "![comparison](case-study/comparison.png)" in page


def test_findings_below_the_marker_survive_a_rewrite(tmp_path):
    script = load_script()
    docs = tmp_path / "docs"
    script.write_docs(report_folder(tmp_path), docs)
    page = docs / "case-study.md"
    page.write_text(page.read_text() + f"\n{script.FINDINGS}\n\nMiniLM wins on speed.\n")
    script.write_docs(tmp_path / "report", docs)
    text = page.read_text()
    assert text.count(script.FINDINGS) == 1 and "MiniLM wins on speed." in text
