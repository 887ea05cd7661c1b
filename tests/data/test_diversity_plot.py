"""The diversity check's figure: drawn from the check, written by prepare into its output folder
(``plots/diversity.png``, named in report.json), skipped with ``--no-plots``, never written by
the inspection the console's Data page and ``GET /v1/files/{id}/report`` run.

The vectors are bag-of-words ones (MiniLM is made unavailable): the figure's panels do not depend
on how the vectors were made.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.data.test_diversity import TOPICS, supervised, topical, varied
from trimtab.cli import build_parser, main
from trimtab.data import PrepareOptions, prepare
from trimtab.data import diversity as dv
from trimtab.data import diversity_plot as dp
from trimtab.data.inspection import inspect_file
from trimtab.errors import OutputExistsError, TrimtabError

PNG = b"\x89PNG\r\n\x1a\n"
MIN_BYTES = 10_000  # a figure of three panels with points and bars, not an empty canvas


@pytest.fixture(autouse=True)
def _bag_of_words(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(texts: list[str]) -> Any:
        raise ImportError("MiniLM is not used in these tests")

    monkeypatch.setattr(dv, "_minilm", missing)


def topical_rows(per_topic: int = 40, seed: int = 0) -> list[dict[str, str]]:
    """Prompts on three topics (narrow within each), three classes spread over them."""
    rng = random.Random(seed)
    return [
        {"text": topical(topic, rng), "label": ("pos", "neg", "mixed")[i % 3]}
        for topic in TOPICS
        for i in range(per_topic)
    ]


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def options(data: Path, out: Path, **kw: Any) -> PrepareOptions:
    values = {
        "inputs": [data],
        "out": out,
        "model": "none",
        "prompt_template": "{text}",
        "completion_field": "label",
    } | kw
    return PrepareOptions.parse(values)


def png_width(png: bytes) -> int:
    assert png.startswith(PNG) and png[12:16] == b"IHDR"
    return int.from_bytes(png[16:20], "big")


def diversity_entry(report: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in report["checks"] if c["id"] == "diversity")


def files_under(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


# --- the figure -----------------------------------------------------------------------------


def test_the_figure_has_a_lengths_panel_for_classes_and_stays_out_of_the_json() -> None:
    rows = topical_rows()
    classes = dv.check_diversity(supervised([(r["text"], r["label"]) for r in rows]))
    generation = dv.check_diversity(supervised([(r["text"], "x") for r in rows], task=None))
    with_classes, without = dp.plot_diversity(classes), dp.plot_diversity(generation)
    assert with_classes is not None and without is not None
    assert len(with_classes) > MIN_BYTES and len(without) > MIN_BYTES
    # projection + bars + lengths per class is one panel wider than projection + bars
    assert png_width(with_classes) > png_width(without)
    entry = classes.to_json()
    assert "map" not in entry and "vectors" not in json.dumps(entry)


def test_the_same_result_draws_the_same_bytes() -> None:
    result = dv.check_diversity(supervised([(t, str(i % 2)) for i, t in enumerate(varied(80))]))
    assert dp.plot_diversity(result) == dp.plot_diversity(result)


def test_the_projection_keeps_topics_apart() -> None:
    rng = random.Random(3)
    texts = [topical(topic, rng) for topic in TOPICS for _ in range(30)]
    points = dp._project(dv._bag_of_words(texts), seed=0)
    groups = [points[i * 30 : (i + 1) * 30] for i in range(len(TOPICS))]
    centres = [g.mean(axis=0) for g in groups]
    spread = max(float(np.linalg.norm(g - c, axis=1).mean()) for g, c in zip(groups, centres))
    apart = min(
        float(np.linalg.norm(centres[a] - centres[b]))
        for a in range(len(centres))
        for b in range(a + 1, len(centres))
    )
    assert apart > 2 * spread


# --- prepare writes it ----------------------------------------------------------------------


def test_prepare_writes_the_plot_and_report_json_names_it(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", topical_rows())
    out = tmp_path / "out"
    result = prepare(options(data, out))
    png = (out / dv.PLOT).read_bytes()
    assert png.startswith(PNG) and len(png) > MIN_BYTES
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert diversity_entry(report)["details"]["plot"] == "plots/diversity.png"
    assert diversity_entry(result.report)["details"]["plot"] == "plots/diversity.png"
    assert "--no-plots" not in report["command"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl", "out"]  # no staging left


def test_no_plots_writes_no_plot_and_the_reproduce_command_keeps_it(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", topical_rows())
    out = tmp_path / "out"
    prepare(options(data, out, plots=False))
    assert not (out / "plots").exists()
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert "plot" not in diversity_entry(report)["details"]
    assert "--no-plots" in report["command"].split()


def test_a_rerun_without_plots_removes_the_old_plot_and_keeps_other_files(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", topical_rows())
    out = tmp_path / "out"
    prepare(options(data, out))
    (out / "plots" / "notes.txt").write_text("mine\n")
    with pytest.raises(OutputExistsError, match="plots/diversity.png"):
        prepare(options(data, out, plots=False))
    prepare(options(data, out, plots=False, force=True))
    assert not (out / dv.PLOT).exists()  # an older run's figure would not match this report
    assert (out / "plots" / "notes.txt").read_text() == "mine\n"


def test_a_failed_rerun_leaves_the_old_plot_and_report_as_they_were(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", topical_rows(seed=1))
    out = tmp_path / "out"
    prepare(options(data, out))
    before = files_under(out)
    other = write_jsonl(tmp_path / "broad.jsonl", [{"text": t, "label": "a"} for t in varied(90)])

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    # fsync comes after every file is written in the staged folder: the figure included
    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError):
        prepare(options(other, out, force=True))
    assert files_under(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broad.jsonl", "d.jsonl", "out"]


def test_a_file_named_plots_is_a_clear_error_before_any_work(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", topical_rows())
    out = tmp_path / "out"
    out.mkdir()
    (out / "plots").write_text("not a folder\n")
    with pytest.raises(TrimtabError, match=r"out/plots: exists and is not a folder"):
        prepare(options(data, out))
    assert sorted(p.name for p in out.iterdir()) == ["plots"]
    prepare(options(data, out, plots=False))  # no figure to write: the file stays as it is
    assert (out / "plots").read_text() == "not a folder\n"


def test_too_few_examples_to_compare_write_no_plot(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "only one", "label": "a"}])
    out = tmp_path / "out"
    prepare(options(data, out, valid_size=0, test_size=0))
    assert not (out / "plots").exists()
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert "plot" not in diversity_entry(report)["details"]


# --- the command line -----------------------------------------------------------------------


def test_the_cli_parses_no_plots() -> None:
    parser = build_parser()
    assert parser.parse_args(["prepare", "d.csv", "--out", "o"]).plots is True
    assert parser.parse_args(["prepare", "d.csv", "--out", "o", "--no-plots"]).plots is False


def test_the_summary_names_the_plot_and_no_plots_skips_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", topical_rows())
    args = ["prepare", str(data), "--prompt-template", "{text}", "--completion-field", "label"]
    args += ["--model", "none"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    printed = capsys.readouterr().out
    assert [line for line in printed.splitlines() if "plots/diversity.png" in line] == [
        "Diversity: plot in plots/diversity.png of the output folder"
    ]
    assert main([*args, "--out", str(tmp_path / "b"), "--no-plots"]) == 0
    assert "diversity.png" not in capsys.readouterr().out
    assert (tmp_path / "a" / dv.PLOT).is_file() and not (tmp_path / "b" / "plots").exists()


# --- inspection writes nothing --------------------------------------------------------------


def test_inspecting_a_file_runs_the_diversity_check_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a relative path written by mistake would land here
    rows = [{"prompt": r["text"], "completion": r["label"]} for r in topical_rows()]
    folder = tmp_path / "files"
    path = write_jsonl(folder / "upload.jsonl", rows)
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file()}
    found = inspect_file(path)
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["files", "upload.jsonl"]
    assert "diversity" in [c["id"] for c in found["checks"]]
    assert "diversity.png" not in json.dumps(found)
