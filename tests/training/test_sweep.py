"""``trimtab sweep``: spec validation, trials, results, seeds, resume, failures, the CLI.

Every trial is a 4-step LoRA run of the tiny Llama on the reviews fixture (evaluations at
steps 2 and 4): a fraction of a second each.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from trimtab.cli import main
from trimtab.errors import ConfigError, TrimtabError
from trimtab.training import sweep_study as sweep_module
from trimtab.training.loop import TrainingDiverged
from trimtab.training.sweep import SweepInterrupted, load_sweep, run_sweep
from trimtab.training.sweep_study import study_ref

ROOT = Path(__file__).resolve().parents[2]

LR_AND_RANK = """
    optim.lr: {low: 1e-4, high: 3e-2, log: true}
    method.lora_r: {choices: [2, 4, 8]}
"""


def write_spec(
    tmp_path: Path, reviews: Path, model: Path, search: str = LR_AND_RANK, **extra: object
) -> Path:
    """A spec file: the tiny training run, then the sweep section with ``search``."""
    base = {
        "model": {"name": str(model)},
        "data": {"train": str(reviews / "train.jsonl"), "valid": str(reviews / "valid.jsonl")},
        "batch_size": 8,
        "max_steps": 4,
        "eval_every": 2,
        "log_every": 2,
    } | extra
    sweep = "sweep:\n  trials: 3\n  seed: 7\n  search:" + search
    path = tmp_path / "sweep.yaml"
    path.write_text(_yaml(base) + sweep)
    return path


def _yaml(values: dict) -> str:
    import yaml

    return yaml.safe_dump(values, sort_keys=False)


def read_rows(out: Path) -> list[dict[str, str]]:
    with (out / "results.csv").open() as f:
        return list(csv.DictReader(f))


def sampled(result) -> list[tuple[float, int]]:
    return [(r["optim.lr"], r["method.lora_r"]) for r in result.rows]


def test_spec_problems_are_reported_at_once_naming_the_keys(tmp_path, reviews, tiny_llama_dir):
    search = """
    optim.lr: {low: 1e-3, high: 1e-5, log: true}
    optim.lrr: {low: 1, high: 2}
    method.lora_r: {choices: []}
    method: {choices: [full]}
    run_dir: {choices: [elsewhere]}
    epochs: {low: 1}
"""
    data = {"train": str(reviews / "train.jsonl"), "other": 1}
    path = write_spec(tmp_path, reviews, tiny_llama_dir, search, data=data)
    path.write_text(path.read_text().replace("trials: 3", "trials: 0\n  metric: valid_f1"))
    with pytest.raises(ConfigError) as e:
        load_sweep(path)
    problems = "\n".join(e.value.problems)
    for expected in (
        "sweep.search.optim.lr: low must be below high",
        "sweep.search.optim.lrr: not a config key (optim has optimizer, lr,",
        "sweep.search.method.lora_r: choices: give at least one value",
        "sweep.search.method: a section; search one of its keys",
        "sweep.search.run_dir: cannot be searched",
        "sweep.search.epochs: give low and high (a range) or choices (a list)",
        "sweep.trials:",
        "sweep.metric:",
        "data.other: Extra inputs are not permitted",
    ):
        assert expected in problems
    assert all(p.startswith(f"{path}: ") for p in e.value.problems)


def test_values_that_can_never_train_and_a_missing_valid_split_are_refused(
    tmp_path, reviews, tiny_llama_dir
):
    search = """
    optim.lr: {low: 1e-4, high: 2}
    batch_size: {choices: [8, 64]}
"""
    path = write_spec(tmp_path, reviews, tiny_llama_dir, search)
    with pytest.raises(ConfigError) as e:
        load_sweep(path)
    assert len(e.value.problems) == 2
    assert "sweep.search.optim.lr: high 2: optim.lr: should be" in e.value.problems[0]
    assert (
        "sweep.search.batch_size: choice 64: batch_size 64 is larger than the 48"
        in (e.value.problems[1])
    )
    with pytest.raises(ConfigError, match="data.valid: required: the sweep decides by the valid"):
        load_sweep(write_spec(tmp_path, reviews, tiny_llama_dir), ["data.valid=null"])
    with pytest.raises(ConfigError, match="sweep: required"):
        load_sweep(write_spec(tmp_path, reviews, tiny_llama_dir), ["sweep=null"])


def test_a_sweep_trains_each_trial_and_writes_results_and_plots(tmp_path, reviews, tiny_llama_dir):
    spec = load_sweep(write_spec(tmp_path, reviews, tiny_llama_dir))
    out = tmp_path / "sweep"
    result = run_sweep(spec, out, progress=False)
    trials = sorted(os.listdir(out / "trials"))
    assert trials == ["trial-000", "trial-001", "trial-002"]
    # The median pruner may stop trial 2 (its first two trials are never pruned).
    statuses = [json.loads((out / "trials" / n / "run.json").read_text())["status"] for n in trials]
    assert statuses[:2] == ["completed"] * 2 and statuses[2] in ("completed", "pruned")
    rows = read_rows(out)
    assert list(rows[0]) == [
        "trial",
        "optim.lr",
        "method.lora_r",
        "valid_loss",
        "seconds",
        "state",
        "error",
    ]
    assert [r["state"] for r in rows] == [s.replace("completed", "complete") for s in statuses]
    for row, trial in zip(rows, trials, strict=True):
        config = (out / "trials" / trial / "config.yaml").read_text()
        assert f"lora_r: {row['method.lora_r']}" in config
        assert 1e-4 <= float(row["optim.lr"]) <= 3e-2
    losses = {int(r["trial"]): float(r["valid_loss"]) for r in rows if r["state"] == "complete"}
    assert result.best is not None
    assert result.best["trial"] == min(losses, key=losses.__getitem__)
    assert result.best["valid_loss"] == min(losses.values())
    assert result.best["run_dir"] == str(out / "trials" / trials[result.best["trial"]])
    md = (out / "results.md").read_text()
    assert "| trial | optim.lr | method.lora_r | valid_loss | seconds | state |" in md
    assert f"best: trial {result.best['trial']}" in md
    assert {"metric-by-trial.png", "importance.png"} <= set(os.listdir(out / "plots"))
    with pytest.raises(TrimtabError, match="a sweep is there already; continue it with --resume"):
        run_sweep(spec, out, progress=False)


def test_the_same_seed_samples_the_same_values(tmp_path, reviews, tiny_llama_dir):
    path = write_spec(tmp_path, reviews, tiny_llama_dir)
    first = run_sweep(load_sweep(path), tmp_path / "a", trials=2, progress=False)
    again = run_sweep(load_sweep(path), tmp_path / "b", trials=2, progress=False)
    other = run_sweep(load_sweep(path, ["sweep.seed=8"]), tmp_path / "c", trials=2, progress=False)
    assert sampled(first) == sampled(again)
    assert sampled(first) != sampled(other)


def test_resume_runs_only_the_missing_trials(tmp_path, reviews, tiny_llama_dir):
    path = write_spec(tmp_path, reviews, tiny_llama_dir)
    spec = load_sweep(path)
    out = tmp_path / "sweep"
    first = run_sweep(spec, out, trials=2, progress=False)
    kept = {
        n: (out / "trials" / n / "run.json").stat().st_mtime_ns for n in os.listdir(out / "trials")
    }
    # A crash during the next trial leaves it running in the study: resume must not count it.
    study = optuna.load_study(study_name="trimtab-sweep", storage=study_ref(out).storage())
    study.ask()
    resumed = run_sweep(spec, out, trials=3, resume=True, progress=False)
    assert sorted(os.listdir(out / "trials")) == ["trial-000", "trial-001", "trial-003"]
    assert {n: (out / "trials" / n / "run.json").stat().st_mtime_ns for n in kept} == kept
    assert [r["state"] for r in resumed.rows] == ["complete", "complete", "interrupted", "complete"]
    assert resumed.rows[:2] == first.rows
    assert len(read_rows(out)) == 4
    # Trials are sampled with the seed and their number: a resumed sweep samples what an
    # unbroken one does.
    unbroken = run_sweep(spec, tmp_path / "unbroken", trials=4, progress=False)
    assert (
        sampled(resumed)[:2] + sampled(resumed)[3:] == sampled(unbroken)[:2] + sampled(unbroken)[3:]
    )
    with pytest.raises(TrimtabError, match="searched another space or metric"):
        run_sweep(load_sweep(path, ["sweep.metric=valid_accuracy"]), out, resume=True)
    with pytest.raises(TrimtabError, match="no sweep to resume"):
        run_sweep(spec, tmp_path / "nothing", resume=True)


def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(
    tmp_path, reviews, tiny_llama_dir, monkeypatch
):
    real_train = sweep_module.train
    calls = []

    def train(config, **kwargs):
        calls.append(config.run_dir)
        if len(calls) == 1:
            raise TrainingDiverged("training stopped at step 1: the loss is nan")
        return real_train(config, **kwargs)

    monkeypatch.setattr(sweep_module, "train", train)
    spec = load_sweep(write_spec(tmp_path, reviews, tiny_llama_dir))
    result = run_sweep(spec, tmp_path / "sweep", trials=2, progress=False)
    assert [r["state"] for r in result.rows] == ["failed", "complete"]
    assert result.rows[0]["error"] == "training stopped at step 1: the loss is nan"
    assert result.rows[0]["valid_loss"] is None
    assert result.best is not None and result.best["trial"] == 1
    assert (
        "- trial 0: training stopped at step 1" in (tmp_path / "sweep" / "results.md").read_text()
    )


def test_a_combination_that_cannot_train_fails_its_trial_only(tmp_path, reviews, tiny_llama_dir):
    # Each value alone fits the base config (auto batch size); together 5 does not divide 8.
    search = """
    batch_size: {choices: [8]}
    micro_batch_size: {choices: [5]}
"""
    path = write_spec(tmp_path, reviews, tiny_llama_dir, search, batch_size="auto")
    result = run_sweep(load_sweep(path), tmp_path / "sweep", trials=2, progress=False)
    assert [r["state"] for r in result.rows] == ["failed", "failed"]
    assert "micro_batch_size 5 must divide batch_size 8" in result.rows[0]["error"]
    assert result.best is None
    assert "no trial has completed yet" in (tmp_path / "sweep" / "results.md").read_text()


def test_a_trial_behind_is_pruned_at_an_evaluation(tmp_path, reviews, tiny_llama_dir, monkeypatch):
    # The median pruner's verdict is forced for trial 1; what is under test is that the verdict
    # stops the training at its first evaluation and is recorded.
    monkeypatch.setattr(optuna.trial.Trial, "should_prune", lambda self: self.number == 1)
    spec = load_sweep(write_spec(tmp_path, reviews, tiny_llama_dir))
    result = run_sweep(spec, tmp_path / "sweep", trials=2, progress=False)
    assert [r["state"] for r in result.rows] == ["complete", "pruned"]
    pruned = tmp_path / "sweep" / "trials" / "trial-001"
    assert json.loads((pruned / "run.json").read_text())["status"] == "pruned"
    evaluations = [m for m in map(json.loads, (pruned / "metrics.jsonl").read_text().splitlines())]
    evaluations = [m for m in evaluations if "valid_loss" in m]
    assert [m["step"] for m in evaluations] == [2]
    assert result.rows[1]["valid_loss"] == evaluations[0]["valid_loss"]
    assert not (pruned / "final").exists()


def test_cli_prints_the_table_and_the_best_run(tmp_path, reviews, tiny_llama_dir):
    path = write_spec(tmp_path, reviews, tiny_llama_dir)
    out = tmp_path / "sweep"
    done = subprocess.run(
        # an override after the options too, as `trimtab train` takes them
        [sys.executable, "-m", "trimtab", "sweep", str(path), "sweep.seed=3"]
        + ["--trials", "2", "--out", str(out), "--quiet", "sweep.metric=valid_loss"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=os.environ | {"HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "| trial | optim.lr | method.lora_r | valid_loss | seconds | state |" in done.stdout
    assert "best: trial " in done.stdout
    assert f"run: {out / 'trials' / 'trial-00'}" in done.stdout
    assert len(read_rows(out)) == 2


def test_cli_reports_spec_problems_before_training(tmp_path, reviews, tiny_llama_dir, capsys):
    path = write_spec(tmp_path, reviews, tiny_llama_dir, "\n    optim.lrr: {low: 1, high: 2}\n")
    assert main(["sweep", str(path), "--out", str(tmp_path / "sweep")]) == 2
    assert "sweep.search.optim.lrr: not a config key" in capsys.readouterr().err
    assert not (tmp_path / "sweep").exists()


def test_ctrl_c_stops_the_sweep_and_resume_carries_on(
    tmp_path, reviews, tiny_llama_dir, monkeypatch
):
    real_train = sweep_module.train

    def interrupted(config, **kwargs):
        raise KeyboardInterrupt

    spec = load_sweep(write_spec(tmp_path, reviews, tiny_llama_dir))
    out = tmp_path / "sweep"
    monkeypatch.setattr(sweep_module, "train", interrupted)
    with pytest.raises(SweepInterrupted, match="during trial 0; continue it with --resume"):
        run_sweep(spec, out, trials=1, progress=False)
    assert [r["state"] for r in read_rows(out)] == ["interrupted"]
    monkeypatch.setattr(sweep_module, "train", real_train)
    result = run_sweep(spec, out, trials=1, resume=True, progress=False)
    assert [r["state"] for r in result.rows] == ["interrupted", "complete"]
