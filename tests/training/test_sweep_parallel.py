"""``trimtab sweep --parallel``: worker processes sharing one study, a killed worker, the HTML
report. Trials are the tiny Llama's 4-step LoRA runs of test_sweep.py (longer where a worker
must be caught training)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from tests.training.test_sweep import ROOT, read_rows, write_spec
from trimtab.errors import ConfigError
from trimtab.models.runs import RunFolder
from trimtab.training.sweep import load_sweep, run_sweep
from trimtab.training.sweep_study import study_ref

ENDED = ("complete", "pruned")


def study_trials(out: Path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="trimtab-sweep", storage=study_ref(out).storage()).trials


def run_status(out: Path, trial: int) -> str:
    info = json.loads((out / "trials" / f"trial-{trial:03d}" / "run.json").read_text())
    return str(info["status"])


def test_two_workers_share_the_study_and_run_each_trial_once(tmp_path, reviews, tiny_llama_dir):
    spec = load_sweep(write_spec(tmp_path, reviews, tiny_llama_dir))
    out = tmp_path / "sweep"
    result = run_sweep(spec, out, trials=4, parallel=2, progress=False)
    numbers = [r["trial"] for r in result.rows]
    assert len(numbers) == 4 and len(set(numbers)) == 4
    assert all(r["state"] in ENDED for r in result.rows)
    assert sorted(os.listdir(out / "trials")) == [f"trial-{n:03d}" for n in sorted(numbers)]
    for row in result.rows:
        assert run_status(out, row["trial"]) == row["state"].replace("complete", "completed")
    workers = {t.user_attrs["worker"] for t in study_trials(out) if "seconds" in t.user_attrs}
    assert len(workers) == 2  # the trials ran in two processes, not in this one
    assert str(os.getpid()) not in {w.rsplit(":", 1)[1] for w in workers}
    assert [int(r["trial"]) for r in read_rows(out)] == numbers


def test_more_workers_than_cores_are_refused(tmp_path, reviews, tiny_llama_dir):
    spec = load_sweep(write_spec(tmp_path, reviews, tiny_llama_dir))
    with pytest.raises(ConfigError, match="--parallel 999: this machine has"):
        run_sweep(spec, tmp_path / "sweep", parallel=999, progress=False)
    assert not (tmp_path / "sweep").exists()


def _kill_a_training_worker(out: Path, launcher: subprocess.Popen[str]) -> int:
    """SIGKILL the worker process training the first trial seen running; its trial number."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and launcher.poll() is None:
        for folder in sorted((out / "trials").glob("trial-*")):
            run = RunFolder(folder)
            if run.is_live() and run.metrics_file.is_file():
                pid = int(run.lock_file.read_text().strip())
                os.kill(pid, signal.SIGKILL)
                return int(folder.name.removeprefix("trial-"))
        time.sleep(0.05)
    raise AssertionError("no trial was seen training")


def test_a_killed_worker_leaves_its_trial_interrupted_and_resume_completes_the_sweep(
    tmp_path, reviews, tiny_llama_dir
):
    path = write_spec(tmp_path, reviews, tiny_llama_dir, max_steps=300, eval_every=150)
    out = tmp_path / "sweep"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "trimtab", "sweep", str(path), "--out", str(out)]
        + ["--trials", "3", "--parallel", "2", "--quiet"],
        cwd=ROOT,
        env=os.environ | {"HF_HUB_OFFLINE": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    killed = _kill_a_training_worker(out, launcher)
    _, stderr = launcher.communicate(timeout=300)
    assert launcher.returncode == 2, stderr
    assert "worker 1 (killed by signal 9) ended early" in stderr or "worker 2 (killed" in stderr
    assert "ended early" in stderr and "continue the sweep with --resume" in stderr
    states = {int(r["trial"]): r["state"] for r in read_rows(out)}
    assert states[killed] == "interrupted"
    # The other worker went on: 3 places in all, the killed trial's among them until it died.
    assert sum(s in ENDED for s in states.values()) == 2

    spec = load_sweep(path)
    resumed = run_sweep(spec, out, trials=3, resume=True, parallel=2, progress=False)
    ended = [r for r in resumed.rows if r["state"] in ENDED]
    assert len(ended) == 3
    assert [r["state"] for r in resumed.rows if r["trial"] == killed] == ["interrupted"]
    numbers = [r["trial"] for r in resumed.rows]
    assert len(numbers) == len(set(numbers)) == 4
    for row in ended:
        assert run_status(out, row["trial"]) == row["state"].replace("complete", "completed")


def test_the_html_report_names_every_trial_and_embeds_the_plots(tmp_path, reviews, tiny_llama_dir):
    spec = load_sweep(write_spec(tmp_path, reviews, tiny_llama_dir))
    out = tmp_path / "sweep"
    result = run_sweep(spec, out, trials=3, progress=False)
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<h1>Sweep report: valid_loss</h1>" in page
    for row in result.rows:
        assert f"<tr><td>{row['trial']}</td><td>{row['state']}</td>" in page
    plots = sorted(os.listdir(out / "plots"))
    assert "parallel-coordinates.png" in plots and "metric-by-trial.png" in plots
    assert page.count('src="data:image/png;base64,') == len(plots)
    assert f"Best run:</strong> <code>{result.best['run_dir']}</code>" in page
