"""Folders are written complete or not at all."""

from pathlib import Path

import pytest

from trimtab.files import staged_dir


def test_staged_folder_replaces_the_target_only_when_complete(tmp_path: Path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), staged_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
        raise RuntimeError("killed halfway")
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    with staged_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
