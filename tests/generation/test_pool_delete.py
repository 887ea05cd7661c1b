"""Deleting a fine-tuned model from the pool: links (a sweep's trials), folders the server does
not own, and a deletion that fails halfway. Runs here are folders with the files the pool
reads to list a model (no weights: nothing is loaded)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from trimtab.generation import pool as pool_module
from trimtab.generation.pool import ModelPool
from trimtab.generation.types import EngineError


def fake_run(folder: Path, model_id: str) -> Path:
    """A completed full fine-tune as the pool lists it: run.json and final/trimtab.json."""
    (folder / "final").mkdir(parents=True)
    meta = {"base_model": "tiny-base", "task": "sft", "model_id": model_id}
    (folder / "final" / "trimtab.json").write_text(json.dumps(meta))
    (folder / "final" / "model.safetensors").write_bytes(b"weights")
    (folder / "run.json").write_text(json.dumps({"status": "completed"}))
    return folder


def served(pool: ModelPool) -> set[str]:
    return {m.id for m in pool.list() if m.fine_tuned}


def test_a_linked_run_inside_a_managed_folder_loses_its_link_and_its_folder(tmp_path: Path):
    jobs = tmp_path / "home" / "jobs"
    trial = fake_run(jobs / "ftjob-sweep" / "sweep" / "trials" / "trial-000", "ft:t:o::ftjob-c")
    runs = tmp_path / "runs"
    runs.mkdir()
    os.symlink(trial, runs / "ftjob-c", target_is_directory=True)
    pool = ModelPool(runs, managed_dirs=[jobs])
    assert served(pool) == {"ft:t:o::ftjob-c"}
    pool.delete("ft:t:o::ftjob-c")
    assert not os.path.lexists(runs / "ftjob-c") and not trial.exists()
    assert list(trial.parent.iterdir()) == []  # nothing left beside it either
    assert served(pool) == set()


def test_a_link_to_a_folder_the_server_does_not_own_is_only_unlinked(tmp_path: Path):
    mine = fake_run(tmp_path / "my-experiments" / "run-1", "ft:t:o::mine")
    runs = tmp_path / "runs"
    runs.mkdir()
    os.symlink(mine, runs / "mine", target_is_directory=True)
    pool = ModelPool(runs, managed_dirs=[tmp_path / "home" / "jobs"])
    pool.delete("ft:t:o::mine")
    assert not os.path.lexists(runs / "mine")
    assert (mine / "final" / "model.safetensors").read_bytes() == b"weights"
    assert served(pool) == set()


def test_a_link_to_a_folder_holding_the_runs_folder_never_deletes_it(tmp_path: Path):
    # The runs folder lies inside a managed folder's run-looking parent: following the link
    # would delete the runs folder itself.
    home = fake_run(tmp_path / "home", "ft:t:o::home")
    runs = home / "runs"
    runs.mkdir()
    os.symlink(home, runs / "up", target_is_directory=True)
    pool = ModelPool(runs, managed_dirs=[tmp_path])
    pool.delete("ft:t:o::home")
    assert not os.path.lexists(runs / "up")
    assert runs.is_dir() and (home / "final" / "trimtab.json").is_file()


def test_a_checkpoint_reached_through_a_link_out_of_the_runs_folder_is_refused(tmp_path: Path):
    mine = fake_run(tmp_path / "elsewhere" / "run", "ft:t:o::ext")
    step = mine / "checkpoints" / "step-1" / "model"
    step.mkdir(parents=True)
    meta = {"base_model": "tiny-base", "task": "sft", "model_id": "ft:t:o::ext:ckpt-step-1"}
    (step / "trimtab.json").write_text(json.dumps(meta))
    runs = tmp_path / "runs"
    runs.mkdir()
    os.symlink(mine, runs / "ext", target_is_directory=True)
    pool = ModelPool(runs)
    with pytest.raises(EngineError, match="through a link out of the runs folder") as raised:
        pool.delete("ft:t:o::ext:ckpt-step-1")
    assert raised.value.param == "model"
    assert (step / "trimtab.json").is_file() and os.path.islink(runs / "ext")
    assert "ft:t:o::ext:ckpt-step-1" in served(pool)


def test_a_deletion_failing_halfway_never_leaves_the_model_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    runs = tmp_path / "runs"
    run = fake_run(runs / "plain", "ft:t:o::plain")
    removed: list[Path] = []

    def fail_halfway(path: Path) -> None:
        # The weights go, then the disk fails: what is left still has final/trimtab.json.
        next(Path(path).glob("final/*.safetensors")).unlink()
        removed.append(Path(path))
        raise OSError("I/O error")

    monkeypatch.setattr(pool_module.shutil, "rmtree", fail_halfway)
    pool = ModelPool(runs)
    assert pool.delete("ft:t:o::plain").id == "ft:t:o::plain"
    assert not run.exists() and removed and removed[0].parent == runs
    assert removed[0].name.startswith(".plain.deleting-")
    assert (removed[0] / "final" / "trimtab.json").is_file()  # the half-deleted leftover...
    assert served(pool) == set()  # ...is not served
    monkeypatch.undo()
    shutil.rmtree(removed[0])
