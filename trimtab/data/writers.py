"""Write prepared examples as JSONL in the chosen format, all files at once or none.

Formats: OpenAI prompt/completion (``{"prompt", "completion"}``), chat (``{"messages": [...]}``)
and raw text (``{"text"}``). The output folder is staged beside itself and swapped into place
once every file is complete (:func:`trimtab.files.staged_dir`), so a crash or error leaves no
partial outputs.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from trimtab.data.checks import OutputFormat
from trimtab.data.examples import Example, Mode
from trimtab.files import check_output, staged_dir

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
    check_output(out_dir, force, "output", names)


def write_atomically(out_dir: Path, files: dict[str, str], force: bool) -> None:
    """Write every file or none: the whole folder is staged beside ``out_dir`` and swapped in.

    Files of an existing folder that are not outputs (notes, other data) are carried over into
    the staged folder (hard links where possible), so the folder holds either all old or all
    new outputs, and everything else unchanged.
    """
    check_output_dir(out_dir, force, tuple(files))
    with staged_dir(out_dir) as staging:
        if out_dir.is_dir():
            _carry_over(out_dir, staging, skip=set(files))
        for name, content in files.items():
            with open(staging / name, "w", encoding="utf-8", newline="\n") as f:
                f.write(content)


def _carry_over(source: Path, target: Path, skip: set[str]) -> None:
    shutil.copystat(source, target)  # the folder keeps its permissions
    for entry in source.iterdir():
        if entry.name in skip:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, target / entry.name, symlinks=True, copy_function=_link)
        else:
            _link(entry, target / entry.name)


def _link(source: Path | str, target: Path | str) -> None:
    """The same file under a second name (no copy, same time stamps); a copy where links fail."""
    if Path(source).is_symlink():
        shutil.copy2(source, target, follow_symlinks=False)
        return
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
