"""Ctrl-C says what is true for the command it stopped; a dead run is not shown as running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trimtab import cli
from trimtab.errors import TrimtabError
from trimtab.models.runs import RunFolder


def interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    ("argv", "target", "says"),
    [
        (["export", "run", "--out", "out"], "trimtab.training.export.export", "no half-written"),
        (["models", "pull", "x"], "trimtab.models.catalog.pull", "not ready yet"),
        (
            ["eval", "run", "--data", "d"],
            "trimtab.evaluation.comparison.EvalOptions.parse",
            "report",
        ),
        (["prepare", "in.csv", "--out", "o"], "trimtab.data.prepare", "no output is half"),
        (["train", "--resume", "run"], "trimtab.training.train", "nothing is half-written"),
    ],
)
def test_ctrl_c_outside_training_says_what_is_true_for_the_command(
    monkeypatch, capsys, argv: list[str], target: str, says: str
):
    monkeypatch.setattr(target, interrupt)
    assert cli.main(argv) == 130
    err = capsys.readouterr().err
    assert err.startswith("interrupted") and says in err
    assert "nothing was written" not in err  # the old message, false for some commands


def test_an_error_with_exit_code_130_is_printed_as_is_with_its_code(monkeypatch, capsys):
    class Stopped(TrimtabError):
        exit_code = 130

    def stopped(*args, **kwargs):
        raise Stopped("interrupted at step 4 of 9; continue with: trimtab train --resume r")

    monkeypatch.setattr("trimtab.training.train", stopped)
    assert cli.main(["train", "--resume", "r"]) == 130
    assert capsys.readouterr().err == (
        "interrupted at step 4 of 9; continue with: trimtab train --resume r\n"
    )


def test_models_list_tells_a_dead_running_run_from_a_live_one(tmp_path: Path, capsys):
    for name in ("live", "dead"):
        RunFolder(tmp_path / name).update(
            status="running", base_model="smollm2-135m", task="sft", method="lora"
        )
    with RunFolder(tmp_path / "live").lock():
        assert cli.main(["models", "list", "--runs", str(tmp_path)]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["live"].rstrip().endswith("running")
    assert "interrupted (process gone)" in lines["dead"]


def test_sigint_during_training_names_the_step_the_checkpoint_and_the_resume_command(
    tmp_path: Path, reviews: Path, tiny_llama_dir: Path
):
    run = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "trimtab",
        "train",
        f"data.train={reviews / 'train.jsonl'}",
        f"data.valid={reviews / 'valid.jsonl'}",
        f"model.name={tiny_llama_dir}",
        f"run_dir={run}",
        "epochs=20",
        "batch_size=4",
        "precision=fp32",
        "save_every=1",
        "keep_checkpoints=100",
        "--quiet",
    ]
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    second = run / "checkpoints" / "step-0000002"
    deadline = time.monotonic() + 240
    while not second.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err_bytes = proc.communicate(timeout=120)
    err = err_bytes.decode()
    assert proc.returncode == 130, err
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "interrupted"
    step, last = info["interrupted_step"], info["last_checkpoint"]
    assert step >= 2 and Path(last).name.startswith("step-")
    assert int(Path(last).name.removeprefix("step-")) <= step
    assert f"interrupted at step {step}" in err
    assert last in err
    assert f"trimtab train --resume {run}" in err
    assert not RunFolder(run).is_live()
    assert RunFolder(run).status() == f"interrupted at step {step}"
