"""Write prepared examples as JSONL in the chosen format, all files at once or none.

Formats: OpenAI prompt/completion (``{"prompt", "completion"}``), chat (``{"messages": [...]}``)
and raw text (``{"text"}``). Files are staged in a hidden folder beside the output folder and only
moved into place once every file is complete, so a crash or error leaves no partial outputs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from trimtab.data.checks import OutputFormat
from trimtab.data.examples import Example, Mode
from trimtab.errors import OutputExistsError, TrimtabError

OUTPUT_FILES = ("train.jsonl", "valid.jsonl", "test.jsonl", "report.json")


def to_record(ex: Example, mode: Mode, fmt: OutputFormat, system: str | None) -> dict[str, Any]:
    """One output line's object for an example."""
    if fmt == "prompt-completion":
        return {"prompt": ex.prompt, "completion": ex.completion}
    if fmt == "text":
        return {"text": ex.text if mode == "text" else ex.prompt + ex.completion}
    if mode == "chat":
        return {"messages": ex.messages}
    messages = [{"role": "system", "content": system}] if system else []
    messages += [
        {"role": "user", "content": ex.prompt},
        {"role": "assistant", "content": ex.completion},
    ]
    return {"messages": messages}


_ENCODE = json.JSONEncoder(ensure_ascii=False).encode  # one encoder, not one per line


def jsonl(records: list[dict[str, Any]]) -> str:
    """One JSON object per line, UTF-8 text kept as is."""
    return "".join(_ENCODE(r) + "\n" for r in records)


def check_output_dir(out_dir: Path, force: bool, names: tuple[str, ...] = OUTPUT_FILES) -> None:
    """Fail before any work if the outputs would overwrite files without --force."""
    if out_dir.exists() and not out_dir.is_dir():
        raise TrimtabError(f"{out_dir}: exists and is not a folder")
    existing = [name for name in names if (out_dir / name).exists()]
    if existing and not force:
        raise OutputExistsError(
            f"{out_dir}: already holds {', '.join(existing)}; use --force to overwrite"
        )


def write_atomically(out_dir: Path, files: dict[str, str], force: bool) -> None:
    """Write every file or none: stage in a sibling temp folder, then move into place.

    Into an existing folder, the old files are first moved aside and restored if any step
    fails, so the folder holds either all old or all new outputs.
    """
    check_output_dir(out_dir, force, tuple(files))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(out_dir)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-{os.getpid()}-", dir=out_dir.parent)
    )
    try:
        for name, content in files.items():
            with open(staging / name, "w", encoding="utf-8", newline="\n") as f:
                f.write(content)
                f.flush()
                os.fsync(f.fileno())
        if not out_dir.exists():
            os.rename(staging, out_dir)  # one atomic step for a new folder
            return
        _swap_in(staging, out_dir, list(files))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _swap_in(staging: Path, out_dir: Path, names: list[str]) -> None:
    backup = staging / ".old"
    backup.mkdir()
    moved_old: list[str] = []
    placed: list[str] = []
    try:
        for name in names:
            if (out_dir / name).exists():
                os.replace(out_dir / name, backup / name)
                moved_old.append(name)
        # report.json last: a report always describes data files already in place.
        for name in sorted(names, key=lambda n: n == "report.json"):
            os.replace(staging / name, out_dir / name)
            placed.append(name)
    except BaseException:
        for name in placed:
            (out_dir / name).unlink(missing_ok=True)
        for name in moved_old:
            os.replace(backup / name, out_dir / name)
        raise


def _remove_stale_staging(out_dir: Path) -> None:
    """Staging folders of processes that died mid-write (their pid is in the name)."""
    for path in out_dir.parent.glob(f".{out_dir.name}.partial-*"):
        pid = path.name.removeprefix(f".{out_dir.name}.partial-").split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
