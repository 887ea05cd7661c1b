"""The one atomic writer: files and folders are complete or absent, never half-written.

Everything trimtab writes that another step trusts (checkpoints, ``best/``, ``final/``, exports,
reports, prepared data, cache parts, ``run.json``) is built under a hidden name beside its target
and moved into place once complete:

- a file: written, flushed to disk, then ``os.replace``-d over the target (one atomic step);
- a folder: built beside the target, then swapped with it. On Linux the swap is one
  ``renameat2(RENAME_EXCHANGE)`` call, so the target path names the old or the new folder at
  every instant. Elsewhere it takes two renames (old aside, new in); a crash between them leaves
  the old folder complete under a hidden backup name, which :func:`recover` (called before every
  write and by readers) moves back.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically: readers see the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, value: Any) -> None:
    """``value`` as indented UTF-8 JSON, written atomically."""
    write_text(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


@contextmanager
def staged_dir(target: Path) -> Iterator[Path]:
    """Yield an empty hidden folder beside ``target``; on success it replaces ``target``.

    On an exception the partial folder is removed and ``target`` is left as it was. The files
    are flushed to disk before the swap, so a power cut cannot leave a renamed but empty folder.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        swap_into_place(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def swap_into_place(new: Path, target: Path) -> None:
    """Make the complete folder ``new`` be ``target``; the old ``target`` (if any) is deleted."""
    if not target.exists():
        os.rename(new, target)
        return
    if _exchange(new, target):  # new is now the old folder
        shutil.rmtree(new, ignore_errors=True)
        return
    backup = _backup_name(target)
    shutil.rmtree(backup, ignore_errors=True)
    os.rename(target, backup)
    _between_renames()
    os.rename(new, target)
    shutil.rmtree(backup, ignore_errors=True)


def recover(target: Path) -> None:
    """Undo a two-rename swap cut between its renames: the old folder comes back."""
    target = Path(target)
    backup = _backup_name(target)
    if backup.is_dir() and not target.exists():
        os.rename(backup, target)
    elif backup.exists() and target.exists():  # the swap finished; only the cleanup did not
        shutil.rmtree(backup, ignore_errors=True)


def _backup_name(target: Path) -> Path:
    return target.parent / f".{target.name}.old"


def _between_renames() -> None:
    """A seam for fault-injection tests: a crash here must leave a recoverable state."""


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one system call (Linux renameat2); False where it is unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
