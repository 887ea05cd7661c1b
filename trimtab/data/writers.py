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
    messages += [{"role": "user", "content": ex.prompt},
                 {"role": "assistant", "content": ex.completion}]
    return {"messages": messages}


def jsonl(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def check_output_dir(out_dir: Path, force: bool) -> None:
    """Fail before any work if the outputs would overwrite files without --force."""
    if out_dir.exists() and not out_dir.is_dir():
        raise TrimtabError(f"{out_dir}: exists and is not a folder")
    existing = [name for name in OUTPUT_FILES if (out_dir / name).exists()]
    if existing and not force:
        raise OutputExistsError(f"{out_dir}: already holds {', '.join(existing)}; "
                                "use --force to overwrite")


def write_atomically(out_dir: Path, files: dict[str, str], force: bool) -> None:
    """Write every file or none: stage in a sibling temp folder, then move into place."""
    check_output_dir(out_dir, force)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        for name, content in files.items():
            with open(staging / name, "w", encoding="utf-8", newline="\n") as f:
                f.write(content)
                f.flush()
                os.fsync(f.fileno())
        if not out_dir.exists():
            os.rename(staging, out_dir)  # one atomic step for a new folder
            return
        # An existing folder: os.replace each file; report.json goes last so that a report
        # always describes data files that are already in place.
        for name in sorted(files, key=lambda n: n == "report.json"):
            os.replace(staging / name, out_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
