"""End to end: ``trimtab train`` then ``trimtab eval`` in subprocesses, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TRIMTAB = [sys.executable, "-m", "trimtab"]


def run(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*TRIMTAB, *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ | {"PYTHONUNBUFFERED": "1"},
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_llama_dir) -> tuple[Path, Path]:
    """A prepared folder (train, valid, test) and a LoRA run trained on it with the CLI."""
    root = tmp_path_factory.mktemp("eval")
    data = root / "data"
    data.mkdir()
    words = {"1": "terrible awful broke", "5": "great love works"}
    rows = [
        {"prompt": f"review {i}: {words[s]}\n\n###\n\n", "completion": f" {s}"}
        for i in range(80)
        for s in (("5",) if i % 2 else ("1",))
    ]
    for name, part in (("train", rows[:48]), ("valid", rows[48:64]), ("test", rows[64:])):
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    (data / "report.json").write_text(
        json.dumps({"task": "classification", "separator": "\n\n###\n\n", "stop": None})
    )
    result = run(
        "train",
        f"model.name={tiny_llama_dir}",
        "--data",
        str(data),
        f"run_dir={root / 'run'}",
        "epochs=3",
        "optim.lr=0.01",
        "batch_size=8",
        "--quiet",
        cwd=root,
    )
    assert result.returncode == 0, result.stderr
    return data, root / "run"


def test_eval_prints_one_table_with_run_and_baselines_and_writes_the_report(
    trained, tiny_llama_dir, tmp_path
):
    data, run_dir = trained
    result = run(
        "eval",
        str(run_dir),
        "--data",
        str(data),
        "--baselines",
        "--shots",
        "2",
        "--mode",
        "both",
        "--out",
        str(tmp_path / "report"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    table = [line for line in result.stdout.splitlines() if line.startswith("|")]
    rows = "\n".join(table)
    assert "zero-shot" in rows and "few-shot (k=2)" in rows and "run" in rows
    assert "[generation]" in rows  # --mode both: a second row per language model
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    kinds = [r["kind"] for r in report["results"]]
    assert kinds.count("fine-tuned") == 2 and "zero-shot" in kinds
    tuned = next(
        r for r in report["results"] if r["kind"] == "fine-tuned" and r["mode"] == "label scoring"
    )
    assert tuned["classification"]["n"] == 16 and tuned["classification"]["accuracy"] == 1.0
    assert tuned["training"]["seconds"] is not None and tuned["run"]["metrics"]
    for name in ("report.md", "report.html"):
        assert (tmp_path / "report" / name).is_file()


def test_eval_refuses_to_overwrite_a_report_before_evaluating(trained, tmp_path):
    data, run_dir = trained
    out = tmp_path / "report"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run("eval", str(run_dir), "--data", str(data), "--out", str(out), cwd=tmp_path)
    assert result.returncode == 2 and "--force" in result.stderr
    assert (out / "keep.txt").read_text() == "mine"


def test_eval_reports_every_bad_option_at_once(trained, tmp_path):
    data, run_dir = trained
    result = run(
        "eval",
        str(run_dir),
        "--data",
        str(data),
        "--temperature",
        "3",
        "--top-p",
        "0",
        "--limit",
        "0",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    for field in ("temperature", "top_p", "limit"):
        assert field in result.stderr


def test_eval_names_a_model_that_is_neither_a_run_nor_known(trained, tmp_path):
    data, _ = trained
    result = run("eval", "no-such-model", "--data", str(data), cwd=tmp_path)
    assert result.returncode == 2
    assert "no-such-model" in result.stderr and "smollm2-135m" in result.stderr


def test_eval_names_a_mistyped_run_folder(trained, tmp_path):
    data, run_dir = trained
    result = run("eval", str(run_dir) + "-typo", "--data", str(data), cwd=tmp_path)
    assert result.returncode == 2 and "-typo" in result.stderr
    assert "not a run folder or a known model" in result.stderr
