"""``trimtab sweep --best``: the best trial retrained on train+valid, tested once; refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.training.test_sweep import write_spec
from trimtab.cli import main
from trimtab.errors import TrimtabError
from trimtab.models.runs import RunFolder
from trimtab.training.config import load_config
from trimtab.training.sweep import load_sweep, retrain_best, run_sweep


def lines(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip())


@pytest.fixture
def test_file(tmp_path, reviews) -> Path:
    """A held-out file: the valid reviews again, under another name (the task is trivial)."""
    path = tmp_path / "held-out" / "test.jsonl"
    path.parent.mkdir()
    shutil.copy(reviews / "valid.jsonl", path)
    return path


def test_best_retrains_on_train_and_valid_and_tests_once(
    tmp_path, reviews, tiny_llama_dir, test_file, capsys
):
    path = write_spec(tmp_path, reviews, tiny_llama_dir, data={
        "train": str(reviews / "train.jsonl"),
        "valid": str(reviews / "valid.jsonl"),
        "test": str(test_file),
    })  # fmt: skip
    out = tmp_path / "sweep"
    sweep = run_sweep(load_sweep(path), out, trials=2, progress=False)
    assert sweep.best is not None
    best = retrain_best(out, progress=False)
    assert best.trial == sweep.best["trial"] and best.trained and best.evaluated
    joined = out / "best-data" / "train.jsonl"
    assert lines(joined) == lines(reviews / "train.jsonl") + lines(reviews / "valid.jsonl") == 64
    run = RunFolder(out / "best")
    assert run.is_completed()
    config = load_config(run.config_file)
    trial_config = load_config(Path(sweep.best["run_dir"]) / "config.yaml")
    assert config.data.train == joined and config.data.valid is None
    assert config.epochs == trial_config.epochs and config.optim.lr == trial_config.optim.lr
    assert config.max_steps == 4 * 64 // 48 + 1  # the trial's 4 steps, over 64/48 the data
    assert not any("valid_loss" in m for m in run.metrics())  # no evaluation split
    report = json.loads((best.report_dir / "report.json").read_text())
    assert report["data"] == str(test_file) and len(report["results"]) == 1
    assert report["results"][0]["n"] == lines(test_file)
    written = (best.report_dir / "report.json").stat().st_mtime_ns

    # Again, from the CLI: the completed run and the report are reused, nothing retrains.
    assert main(["sweep", "--best", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert (
        f"best: trial {best.trial} retrained on train+valid" in printed and "| Model |" in printed
    )
    assert (best.report_dir / "report.json").stat().st_mtime_ns == written
    again = retrain_best(out, progress=False)
    assert not again.trained and not again.evaluated and again.report == report
    with pytest.raises(TrimtabError, match="the test split is read once"):
        retrain_best(out, test=reviews / "train.jsonl", progress=False)


def test_best_is_refused_without_a_test_file_or_a_completed_trial(
    tmp_path, reviews, tiny_llama_dir, test_file
):
    out = tmp_path / "sweep"
    run_sweep(
        load_sweep(write_spec(tmp_path, reviews, tiny_llama_dir)), out, trials=1, progress=False
    )
    with pytest.raises(TrimtabError, match="no test file: give --test FILE"):
        retrain_best(out, progress=False)
    with pytest.raises(TrimtabError, match="--test .*missing.jsonl: file not found"):
        retrain_best(out, test=tmp_path / "missing.jsonl", progress=False)
    assert not (out / "best").exists() and not (out / "best-data").exists()

    # Every trial fails (5 does not divide 8): there is nothing to retrain.
    search = "\n    batch_size: {choices: [8]}\n    micro_batch_size: {choices: [5]}\n"
    failing = write_spec(tmp_path, reviews, tiny_llama_dir, search, batch_size="auto")
    run_sweep(load_sweep(failing), tmp_path / "failed", trials=1, progress=False)
    with pytest.raises(TrimtabError, match="no trial has completed; nothing to retrain"):
        retrain_best(tmp_path / "failed", test=test_file, progress=False)
    assert not (tmp_path / "failed" / "best").exists()
    with pytest.raises(TrimtabError, match="not a sweep folder"):
        retrain_best(tmp_path, test=test_file, progress=False)
