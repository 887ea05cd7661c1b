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
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from trimtab.errors import OutputExistsError, TrimtabError

_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically: readers see the old file or the new one."""
    write_chunks(path, [text.encode("utf-8")])


def write_chunks(path: Path, chunks: Iterable[bytes]) -> int:
    """Write ``chunks`` (an upload, read as it arrives) to ``path`` atomically and return the
    bytes written. An exception raised while the chunks are produced (a size limit) leaves
    ``path`` as it was and no temporary file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    size = 0
    try:
        with open(tmp, "xb") as f:
            for chunk in chunks:
                f.write(chunk)
                size += len(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return size


def write_json(path: Path, value: Any) -> None:
    """``value`` as indented UTF-8 JSON, written atomically."""
    write_text(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


@contextmanager
def staged_dir(target: Path) -> Iterator[Path]:
    """Yield an empty hidden folder beside ``target``; on success it replaces ``target``.

    On an exception the partial folder is removed and ``target`` is left as it was. The files
    are flushed to disk before the swap, so a power cut cannot leave a renamed but empty folder.
    """
    target = Path(os.path.abspath(target))  # "." has no name to stage beside
    _refuse_current_folder(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)
    tmp = _temp_name(target)
    tmp.mkdir()  # not mkdtemp: its 0700 would become the target's permissions
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
    """Undo a two-rename swap cut between its renames: the old folder comes back.

    Also removes what writers that died left beside ``target``: their temporary files and
    folders (the process id in their name is no longer running).
    """
    target = Path(target)
    backup = _backup_name(target)
    if backup.is_dir() and not target.exists():
        os.rename(backup, target)
    elif backup.exists() and target.exists():  # the swap finished; only the cleanup did not
        shutil.rmtree(backup, ignore_errors=True)
    if target.parent.is_dir():
        for tmp in target.parent.glob(f".{target.name}.tmp-*"):
            pid = tmp.name.removeprefix(f".{target.name}.tmp-").split("-", 1)[0]
            if pid.isdigit() and not pid_alive(int(pid)):
                _remove(tmp)


def check_output(
    path: Path, force: bool, what: str = "output", names: tuple[str, ...] | None = None
) -> None:
    """Fail before any work if writing ``path`` would replace existing files without ``force``.

    ``names``: only these entries of the folder would be replaced (others are kept), so only
    they count; None: the whole folder is replaced, so any entry counts. A ``path`` that is a
    file, not a folder, is an error even with ``force``: a folder never replaces a file.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise TrimtabError(f"{path}: exists and is not a folder")
    if force or not path.is_dir():
        return
    if names is None:
        if any(path.iterdir()):
            raise OutputExistsError(
                f"{path}: {what} folder exists and is not empty; use --force to replace it"
            )
        return
    existing = [name for name in names if (path / name).exists()]
    if existing:
        raise OutputExistsError(
            f"{path}: already holds {', '.join(existing)}; use --force to overwrite"
        )


def _refuse_current_folder(target: Path) -> None:
    # Swapping the folder a shell (or this process) stands in would leave it in a deleted one.
    try:
        cwd = Path.cwd()
    except OSError:
        return
    if target == cwd or target in cwd.parents:
        raise TrimtabError(
            f"{target}: is the current folder (or holds it); it would be replaced whole, so "
            "write to another folder, e.g. a subfolder"
        )


def _temp_name(target: Path) -> Path:
    """``.NAME.tmp-PID-RANDOM`` beside ``target``: hidden, named after its target and its
    writer (:func:`recover` removes those of dead writers), unique per call (threads)."""
    return target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def _backup_name(target: Path) -> Path:
    return target.parent / f".{target.name}.old"


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, ended but not yet reaped, is not running).

    The one liveness check of trimtab: temp files of dead writers, jobs' trainers and sweep
    workers all ask it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc (or the process is gone): ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # someone else's process: alive
            return True
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _between_renames() -> None:
    """A seam for fault-injection tests: a crash here must leave a recoverable state."""


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one system call (Linux renameat2); False where it is unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
