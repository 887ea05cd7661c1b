"""Files and folders are written complete or not at all, and a cut swap is recovered."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from trimtab import files
from trimtab.errors import OutputExistsError, TrimtabError
from trimtab.files import check_output, recover, staged_dir, write_json, write_text
from trimtab.models.runs import RunFolder


def folder_with(path: Path, **contents: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, text in contents.items():
        (path / name).write_text(text)
    return path


def read_folder(path: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(path.iterdir())}


# --- staged_dir ---------------------------------------------------------------------------------


def test_staged_folder_replaces_the_target_only_when_complete(tmp_path: Path):
    target = folder_with(tmp_path / "model", **{"old.txt": "old"})
    with pytest.raises(RuntimeError), staged_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
        raise RuntimeError("killed halfway")
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    with staged_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_success_replaces_the_whole_content_and_leaves_nothing_beside(tmp_path: Path):
    target = folder_with(tmp_path / "final", a="old a", b="old b")
    with staged_dir(target) as tmp:
        (tmp / "a").write_text("new a")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "c").write_text("new c")
    assert (target / "a").read_text() == "new a"
    assert not (target / "b").exists()  # the old folder is replaced, not merged
    assert (target / "sub" / "c").read_text() == "new c"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_a_new_target_appears_only_on_success(tmp_path: Path):
    target = tmp_path / "deep" / "best"
    with staged_dir(target) as tmp:
        (tmp / "w").write_text("weights")
        assert not target.exists()
    assert read_folder(target) == {"w": "weights"}


def test_exception_inside_the_block_leaves_target_untouched_and_no_temp_folder(tmp_path: Path):
    target = folder_with(tmp_path / "final", w="old weights")
    before = target.stat().st_ino
    with pytest.raises(ValueError, match="bad batch"), staged_dir(target) as tmp:
        (tmp / "w").write_text("half")
        raise ValueError("bad batch")
    assert read_folder(target) == {"w": "old weights"}
    assert target.stat().st_ino == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_the_current_folder_is_never_swapped_away(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(folder_with(tmp_path / "work", notes="mine"))
    for target in (Path("."), tmp_path):
        with pytest.raises(TrimtabError, match="is the current folder"), staged_dir(target):
            pass
    assert read_folder(Path.cwd()) == {"notes": "mine"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]


def test_a_fault_at_the_swap_leaves_the_old_folder_complete(tmp_path: Path, monkeypatch):
    target = folder_with(tmp_path / "best", w="old weights", tok="old tokenizer")

    def failing_exchange(a: Path, b: Path) -> bool:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(files, "_exchange", failing_exchange)
    with pytest.raises(OSError, match="Input/output error"), staged_dir(target) as tmp:
        (tmp / "w").write_text("new weights")
    assert read_folder(target) == {"tok": "old tokenizer", "w": "old weights"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_without_exchange_two_renames_still_replace_the_folder(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    target = folder_with(tmp_path / "final", w="old")
    with staged_dir(target) as tmp:
        (tmp / "w").write_text("new")
    assert read_folder(target) == {"w": "new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


KILLED_BETWEEN_RENAMES = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from trimtab import files

    files._exchange = lambda a, b: False  # as on a system without renameat2
    files._between_renames = lambda: os.kill(os.getpid(), signal.SIGKILL)
    with files.staged_dir(Path(sys.argv[1])) as tmp:
        (tmp / "weights").write_text("new weights")
    """
)


def kill_between_renames(target: Path) -> None:
    """Run a swap into ``target`` in a subprocess that is SIGKILLed between its two renames."""
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_BETWEEN_RENAMES, str(target)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not target.exists()  # the window the test is about: old folder aside, new not in


def test_a_process_killed_between_the_two_renames_leaves_the_old_folder_recoverable(
    tmp_path: Path,
):
    target = folder_with(tmp_path / "final", weights="old weights", tokenizer="old tokenizer")
    kill_between_renames(target)
    recover(target)
    assert read_folder(target) == {"tokenizer": "old tokenizer", "weights": "old weights"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]  # dead writer's temp removed


def test_run_readers_find_final_and_best_complete_after_a_cut_swap(tmp_path: Path):
    run = RunFolder(tmp_path / "run")
    for name in ("final", "best"):
        folder_with(run.path / name, **{"trimtab.json": '{"task": "sft"}', "weights": "old"})
        kill_between_renames(run.path / name)
    assert read_folder(run.best)["weights"] == "old"
    assert run.meta() == {"task": "sft"}
    assert read_folder(run.final)["weights"] == "old"


def test_the_next_write_after_a_cut_swap_starts_from_the_old_folder(tmp_path: Path):
    target = folder_with(tmp_path / "best", weights="old")
    kill_between_renames(target)
    with staged_dir(target) as tmp:
        (tmp / "weights").write_text("newer")
    assert read_folder(target) == {"weights": "newer"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_recover_finishes_a_swap_whose_cleanup_was_cut(tmp_path: Path):
    target = folder_with(tmp_path / "final", weights="new")
    folder_with(tmp_path / ".final.old", weights="old")
    recover(target)
    assert read_folder(target) == {"weights": "new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_recover_keeps_temp_folders_of_live_writers(tmp_path: Path):
    live = folder_with(tmp_path / f".final.tmp-{os.getpid()}", weights="being written")
    dead = folder_with(tmp_path / ".final.tmp-999999999", weights="abandoned")
    recover(tmp_path / "final")
    assert live.is_dir()
    assert not dead.exists()


# --- write_text / write_json --------------------------------------------------------------------


def test_write_text_replaces_a_file_whole(tmp_path: Path):
    path = tmp_path / "sub" / "run.json"
    write_text(path, "first")
    write_text(path, "second")
    assert path.read_text() == "second"
    assert [p.name for p in path.parent.iterdir()] == ["run.json"]


def test_a_failed_write_text_leaves_the_old_file_and_no_temp_file(tmp_path: Path, monkeypatch):
    path = tmp_path / "run.json"
    path.write_text("old")

    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space"):
        write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_write_json_writes_indented_utf8(tmp_path: Path):
    write_json(tmp_path / "a.json", {"label": "é"})
    assert (tmp_path / "a.json").read_text(encoding="utf-8") == '{\n  "label": "é"\n}\n'


# --- check_output -------------------------------------------------------------------------------


def test_check_output_accepts_missing_and_empty_folders(tmp_path: Path):
    check_output(tmp_path / "missing", force=False)
    (tmp_path / "empty").mkdir()
    check_output(tmp_path / "empty", force=False)


def test_check_output_refuses_a_non_empty_folder_without_force(tmp_path: Path):
    out = folder_with(tmp_path / "report", **{"report.html": "x"})
    with pytest.raises(OutputExistsError) as info:
        check_output(out, force=False, what="report")
    assert str(info.value) == (
        f"{out}: report folder exists and is not empty; use --force to replace it"
    )
    check_output(out, force=True)


def test_check_output_with_names_counts_only_those_files(tmp_path: Path):
    out = folder_with(tmp_path / "data", **{"notes.txt": "mine", "valid.jsonl": ""})
    check_output(out, force=False, names=("train.jsonl",))
    with pytest.raises(OutputExistsError, match=r"already holds valid\.jsonl; use --force"):
        check_output(out, force=False, names=("train.jsonl", "valid.jsonl"))


def test_check_output_refuses_a_file_even_with_force(tmp_path: Path):
    (tmp_path / "out").write_text("precious")
    for force in (False, True):
        with pytest.raises(TrimtabError, match="exists and is not a folder"):
            check_output(tmp_path / "out", force=force)


def test_write_chunks_cut_by_an_error_leaves_the_old_file_and_no_temporary(tmp_path):
    from trimtab.files import write_chunks

    target = tmp_path / "upload.jsonl"
    assert write_chunks(target, [b"old\n"]) == 4

    def too_long():
        yield b"new part\n"
        raise ValueError("over the limit")

    with pytest.raises(ValueError, match="over the limit"):
        write_chunks(target, too_long())
    assert target.read_bytes() == b"old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["upload.jsonl"]
