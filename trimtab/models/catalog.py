"""The models a user can fine-tune or use: the library side of ``trimtab models list`` / ``pull``.

Three sources are listed:

- ``package``: every known model (:data:`~trimtab.models.registry.KNOWN_MODELS`); ready when its
  weights load offline without work: the package is installed and, for a GGUF-packaged model,
  the fp32 conversion is in the cache;
- ``hub``: hub models already downloaded into the cache by :func:`pull` or a load;
- ``run``: fine-tuned runs under a runs folder, read through
  :class:`~trimtab.models.runs.RunFolder` (``run.json`` with at least ``base_model``, ``task``,
  ``method``, ``status``; once done, ``final/``). A run whose run.json says "running" but whose
  lock no process holds is listed as "interrupted (process gone)".
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trimtab.errors import TrimtabError
from trimtab.models.loading import ensure_weights
from trimtab.models.registry import (
    KNOWN_MODELS,
    WEIGHTS_PART,
    ModelSpec,
    cache_dir,
    kind_of_folder,
    resolve_model,
    weights_part,
)
from trimtab.models.runs import RunFolder

_log = logging.getLogger(__name__)

_RUN_FIELDS = ("base_model", "task", "method", "status")


@dataclass
class CatalogEntry:
    """One model in ``trimtab models list``."""

    name: str  # what to pass as --model (for a run: the run folder's name)
    kind: str  # "decoder" or "encoder" ("unknown" for a run on a base model not known here)
    source: str  # "package", "hub" or "run"
    ready: bool  # usable offline now: cached/converted, or a completed run with final/
    path: Path | None  # the folder to load from when ready (a run's folder otherwise)
    description: str
    base_model: str | None = None  # runs only
    method: str | None = None  # runs only
    task: str | None = None  # runs only
    status: str | None = None  # runs only: "completed", "running", "failed", ... (RunFolder.status)


def list_models(runs_dir: Path) -> list[CatalogEntry]:
    """Every known model, every hub model in the cache, then every run under ``runs_dir``.

    Never loads weights or imports transformers; a run with an unreadable ``run.json`` is
    skipped with a warning.
    """
    entries = [_known_entry(spec) for spec in KNOWN_MODELS.values()]
    entries += _hub_entries()
    entries += _run_entries(Path(runs_dir))
    return entries


def pull(name: str) -> Path:
    """Make a model ready to use offline and return its Hugging Face folder.

    A GGUF-packaged model is converted into the cache, a hub id is downloaded into it (online
    users only), a package or local folder is checked. Unknown names raise TrimtabError.
    """
    return ensure_weights(name)


def _known_entry(spec: ModelSpec) -> CatalogEntry:
    path: Path | None = None
    try:
        resolved = resolve_model(spec.name)  # finds the package without importing it
    except TrimtabError:  # not installed or damaged: pull (or the load) says how to fix it
        resolved = None
    part = weights_part(resolved) if resolved is not None else None
    if part is not None:  # ready once converted: the marker is what the loader trusts too
        path = part.folder if part.complete else None
    elif resolved is not None:
        path = resolved.path
    return CatalogEntry(spec.name, spec.kind, "package", path is not None, path, spec.description)


def _hub_entries() -> list[CatalogEntry]:
    entries = []
    for marker in sorted((cache_dir() / "models").glob(f"*/{WEIGHTS_PART}/.complete")):
        try:
            source = json.loads(marker.read_text())["source"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a half-written or foreign part: the loader rebuilds or ignores it
        if not isinstance(source, str) or not source.startswith("hub:"):
            continue
        hub_id = source.removeprefix("hub:")
        entries.append(
            CatalogEntry(
                hub_id,
                kind_of_folder(marker.parent) or "unknown",
                "hub",
                True,
                marker.parent,
                "downloaded from the Hugging Face hub",
            )
        )
    return entries


def _run_entries(runs_dir: Path) -> list[CatalogEntry]:
    if not runs_dir.is_dir():
        return []
    entries = []
    for folder in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        run = RunFolder(folder)
        info = _read_run(run)
        if info is None:
            continue
        status, base = run.status(), str(info["base_model"])
        ready = status == "completed" and run.final.is_dir()
        spec = KNOWN_MODELS.get(base)
        kind = str(info.get("kind") or (spec.kind if spec else "unknown"))
        description = info.get("description")
        if not isinstance(description, str):
            description = f"{info['method']} fine-tune of {base} ({info['task']}), {status}"
        entries.append(
            CatalogEntry(
                name=folder.name,
                kind=kind,
                source="run",
                ready=ready,
                path=run.final if ready else folder,
                description=description,
                base_model=base,
                method=str(info["method"]),
                task=str(info["task"]),
                status=status,
            )
        )
    return entries


def _read_run(run: RunFolder) -> dict[str, Any] | None:
    # run.json is written by a training process that may be running or may have crashed: a bad
    # file hides that one run, never the whole list
    if not run.info_file.is_file():
        return None  # not a run folder
    try:
        info = run.info()
    except (OSError, TrimtabError) as exc:
        _log.warning("skipping %s: unreadable (%s)", run.info_file, exc)
        return None
    missing = [field for field in _RUN_FIELDS if info.get(field) in (None, "")]
    if missing:
        _log.warning("skipping %s: missing %s", run.info_file, ", ".join(missing))
        return None
    return info
