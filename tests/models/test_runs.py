"""The run folder: its writers, its tolerant readers, its lock and what its status means."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from trimtab.errors import TrimtabError
from trimtab.models.runs import RunFolder, RunLockedError, model_folder, write_meta


def finished_run(path: Path, **meta: object) -> RunFolder:
    run = RunFolder(path)
    run.start("epochs: 1\n", {"base_model": "tiny", "task": "sft", "method": "lora"})
    write_meta(run.path / "final", {"base_model": "tiny", "task": "sft"} | meta)
    run.update(status="completed")
    return run


# --- writers and readers ------------------------------------------------------------------------


def test_start_writes_the_config_and_marks_the_run_running(tmp_path: Path):
    run = RunFolder(tmp_path / "runs" / "r")
    run.start("epochs: 2\n", {"base_model": "tiny", "labels": ["a", "b"]})
    assert run.config_file.read_text() == "epochs: 2\n"
    info = run.info()
    assert (info["status"], info["base_model"], info["labels"]) == ("running", "tiny", ["a", "b"])
    assert "trimtab_version" in info
    assert sorted(p.name for p in run.path.iterdir()) == ["config.yaml", "run.json"]


def test_update_merges_values_into_run_json(tmp_path: Path):
    run = RunFolder(tmp_path)
    run.update(status="running", base_model="tiny")
    run.update(status="completed", results={"steps": 3})
    assert run.info() == {"status": "completed", "base_model": "tiny", "results": {"steps": 3}}


def test_info_of_a_folder_without_run_json_is_empty(tmp_path: Path):
    assert RunFolder(tmp_path).info() == {}


def test_unreadable_run_json_is_an_error_naming_the_file(tmp_path: Path):
    (tmp_path / "run.json").write_text("{cut")
    with pytest.raises(TrimtabError, match=r"run\.json: not valid JSON"):
        RunFolder(tmp_path).info()


def test_metrics_skip_a_last_line_cut_by_a_crash(tmp_path: Path):
    run = RunFolder(tmp_path)
    run.log({"step": 1, "train_loss": 2.5})
    run.log({"step": 2, "train_loss": 2.0})
    with run.metrics_file.open("a") as f:
        f.write('{"step": 3, "train_lo')  # the process died mid-line
    assert run.metrics() == [{"step": 1, "train_loss": 2.5}, {"step": 2, "train_loss": 2.0}]


def test_truncate_metrics_keeps_the_first_lines_only(tmp_path: Path):
    run = RunFolder(tmp_path)
    for step in range(1, 6):
        run.log({"step": step})
    run.truncate_metrics(2)
    assert run.metrics() == [{"step": 1}, {"step": 2}]
    assert run.metrics_file.read_text() == '{"step": 1}\n{"step": 2}\n'
    run.log({"step": 3})
    assert [m["step"] for m in run.metrics()] == [1, 2, 3]


def test_truncate_metrics_without_a_metrics_file_writes_an_empty_one(tmp_path: Path):
    run = RunFolder(tmp_path)
    run.truncate_metrics(3)
    assert run.metrics() == [] and run.metrics_file.read_text() == ""


def test_checkpoint_paths_sort_by_step(tmp_path: Path):
    run = RunFolder(tmp_path)
    assert run.checkpoint(40) == tmp_path / "checkpoints" / "step-0000040"
    assert sorted([run.checkpoint(100), run.checkpoint(9)]) == [
        run.checkpoint(9),
        run.checkpoint(100),
    ]


# --- the model folder ---------------------------------------------------------------------------


def test_model_folder_accepts_a_run_or_its_final_folder(tmp_path: Path):
    run = finished_run(tmp_path / "r", labels=["neg", "pos"])
    assert model_folder(run.path) == run.path / "final"
    assert model_folder(run.path / "final") == run.path / "final"
    assert run.model_folder() == run.path / "final"
    assert run.meta() == {"base_model": "tiny", "task": "sft", "labels": ["neg", "pos"]}
    assert RunFolder(run.path / "final").meta() == run.meta()


def test_a_run_without_final_has_no_model_folder(tmp_path: Path):
    run = RunFolder(tmp_path / "r")
    run.start("", {})
    with pytest.raises(TrimtabError, match="no fine-tuned model here"):
        run.model_folder()


def test_of_finds_the_run_of_its_final_or_best_folder(tmp_path: Path):
    run = finished_run(tmp_path / "r")
    assert RunFolder.of(run.path / "final").path == run.path
    assert RunFolder.of(run.path / "best").path == run.path
    assert RunFolder.of(run.path).path == run.path


def test_is_completed_needs_the_status_and_the_model(tmp_path: Path):
    run = finished_run(tmp_path / "done")
    assert run.is_completed()
    running = RunFolder(tmp_path / "running")
    running.start("", {})
    assert not running.is_completed()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "run.json").write_text("{")
    assert not RunFolder(tmp_path / "broken").is_completed()


# --- the lock -----------------------------------------------------------------------------------

HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from trimtab.models.runs import RunFolder

    with RunFolder(Path(sys.argv[1])).lock():
        print("locked", flush=True)
        time.sleep(600)
    """
)


def lock_holder(run: Path) -> subprocess.Popen:
    """A process that holds ``run``'s lock until it is killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
    return proc


def test_a_second_process_gets_run_locked_error_at_once(tmp_path: Path):
    run = RunFolder(tmp_path / "r")
    holder = lock_holder(run.path)
    try:
        started = time.monotonic()
        with pytest.raises(RunLockedError, match="another process is training this run"):
            with run.lock():
                pass
        assert time.monotonic() - started < 5  # refused, not waited for (the holder never lets go)
        assert run.is_live()
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path):
    run = RunFolder(tmp_path / "r")
    run.start("", {})
    holder = lock_holder(run.path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert run.lock_file.exists()  # the file stays; the kernel dropped the lock with the process
    assert not run.is_live()
    assert run.status() == "interrupted (process gone)"
    with run.lock():
        assert run.is_live()


def test_the_lock_is_released_when_the_block_ends(tmp_path: Path):
    run = RunFolder(tmp_path / "r")
    with pytest.raises(ValueError), run.lock():
        raise ValueError("training failed")
    assert not run.is_live()
    with run.lock():
        with pytest.raises(RunLockedError):
            with RunFolder(run.path).lock():
                pass


def test_is_live_is_false_for_a_run_never_locked(tmp_path: Path):
    assert not RunFolder(tmp_path).is_live()
    assert not (tmp_path / ".lock").exists()  # asking does not create it


# --- status -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        ({"status": "running"}, "interrupted (process gone)"),
        ({"status": "interrupted", "interrupted_step": 40}, "interrupted at step 40"),
        ({"status": "interrupted"}, "interrupted"),
        ({"status": "completed"}, "completed"),
        ({"status": "failed"}, "failed"),
        ({}, "unknown"),
    ],
)
def test_status_without_a_live_process(tmp_path: Path, info: dict, expected: str):
    (tmp_path / "run.json").write_text(json.dumps(info))
    assert RunFolder(tmp_path).status() == expected


def test_status_of_a_locked_run_is_running(tmp_path: Path):
    run = RunFolder(tmp_path)
    run.update(status="interrupted", interrupted_step=3)  # being resumed: not yet restarted
    with run.lock():
        assert run.status() == "running"
