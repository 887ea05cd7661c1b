"""A run folder that describes itself: config, status and metrics beside the weights.

This module is the one place that knows a run's layout; everything else (the trainer, the
catalog, evaluation, export, the case study) reads and writes runs through :class:`RunFolder`.

::

    runs/NAME/
      .lock              held (flock) by the process training the run; free once it exits
      pause-requested    asks the training process to checkpoint and stop (the jobs API's pause)
      config.yaml        the resolved config (auto values filled in)
      run.json           status, base model, task, method, labels, results
      metrics.jsonl      one line per logged step and per evaluation
      checkpoints/       step-NNNNNNN/ (see trimtab.training.checkpoint)
      best/              the best model by validation loss (same layout as final/)
      final/             the fine-tuned model: weights (PEFT adapter for LoRA, full model
                         otherwise), tokenizer, trimtab.json and a model card (README.md)
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trimtab import __version__
from trimtab.errors import TrimtabError
from trimtab.files import recover, write_json, write_text

META = "trimtab.json"  # what makes a folder a trimtab model folder


class RunLockedError(TrimtabError):
    """Another process holds the run's lock: it is training (or resuming) that run now."""


def model_folder(path: Path) -> Path:
    """The model folder of a run (its ``final/``), or ``path`` itself if it is a model folder."""
    path = Path(path)
    recover(path / "final")
    for candidate in (path / "final", path):
        if (candidate / META).is_file():
            return candidate
    raise TrimtabError(
        f"{path}: no fine-tuned model here (expected a run folder with final/"
        f"{META}, written when training completes)"
    )


def write_meta(folder: Path, meta: dict[str, Any]) -> None:
    """Write a model folder's ``trimtab.json`` (what makes it a trimtab model folder)."""
    write_json(Path(folder) / META, meta)


@dataclass
class RunFolder:
    """Paths, readers and small atomic writers of one run."""

    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    @classmethod
    def of(cls, path: Path) -> RunFolder:
        """The run a path belongs to: a run folder itself, or its ``final/`` or ``best/``."""
        path = Path(path)
        if path.name in ("final", "best") and not (path / "run.json").is_file():
            return cls(path.parent)
        return cls(path)

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def info_file(self) -> Path:
        return self.path / "run.json"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def lock_file(self) -> Path:
        return self.path / ".lock"

    @property
    def pause_file(self) -> Path:
        """Created to ask the process training the run to checkpoint and stop (pause); the
        trainer removes it when it stops. A file, not a signal: it reaches a trainer on another
        node of a cluster through the shared folder as well."""
        return self.path / "pause-requested"

    @property
    def final(self) -> Path:
        """``final/``, put back first if a swap into it was cut by a crash."""
        recover(self.path / "final")
        return self.path / "final"

    @property
    def best(self) -> Path:
        """``best/``, put back first if a swap into it was cut by a crash."""
        recover(self.path / "best")
        return self.path / "best"

    def checkpoint(self, step: int) -> Path:
        return self.path / "checkpoints" / f"step-{step:07d}"

    def model_folder(self) -> Path:
        """The run's fine-tuned model (``final/``); an error if training has not completed."""
        return model_folder(self.path)

    def meta(self) -> dict[str, Any]:
        """``final/trimtab.json``: base model, task, method, labels of the fine-tuned model."""
        return _read_json(self.model_folder() / META)

    def start(self, config_yaml: str, info: dict[str, Any]) -> None:
        """Write the resolved config and mark the run as running."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_text(self.config_file, config_yaml)
        self.update(status="running", trimtab_version=__version__, **info)

    def info(self) -> dict[str, Any]:
        """``run.json`` (empty before the run starts)."""
        if not self.info_file.exists():
            return {}
        return _read_json(self.info_file)

    def update(self, **values: Any) -> None:
        write_json(self.info_file, self.info() | values)

    def log(self, record: dict[str, Any]) -> None:
        with self.metrics_file.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def metrics(self) -> list[dict[str, Any]]:
        """The records of ``metrics.jsonl``; a line cut by a crash is skipped."""
        if not self.metrics_file.exists():
            return []
        out = []
        for line in self.metrics_file.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:  # a line cut by a crash: the rest is still worth reading
                continue
        return out

    def truncate_metrics(self, lines: int) -> None:
        """On resume: forget what was logged after the checkpoint (it will be logged again)."""
        kept = (
            self.metrics_file.read_text(encoding="utf-8").splitlines()[:lines]
            if self.metrics_file.exists()
            else []
        )
        write_text(self.metrics_file, "".join(line + "\n" for line in kept))

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run's lock for the block; :class:`RunLockedError` at once if it is held.

        An OS lock (``flock``) on ``.lock``: the kernel releases it when the holder exits,
        however it dies, so a killed run never leaves a stale lock behind.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunLockedError(
                    f"{self.path}: another process is training this run now "
                    f"(it holds {self.lock_file}); wait for it or stop it first"
                ) from None
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())  # for people; the lock is the flock
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def is_live(self) -> bool:
        """True while some process holds the run's lock (it is training now)."""
        if not self.lock_file.exists():
            return False
        fd = os.open(self.lock_file, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def is_completed(self) -> bool:
        """Training finished: run.json says so and ``final/`` holds the model."""
        try:
            return self.info().get("status") == "completed" and (self.final / META).is_file()
        except (OSError, TrimtabError):  # an unreadable run.json: not a completed run
            return False

    def status(self) -> str:
        """run.json's status, told by the lock: "running" only while a process holds it.

        A run whose process died without a word (killed, machine lost) still says "running" in
        run.json; the lock, which dies with the process, tells it apart from a live one.
        """
        if self.is_live():
            return "running"
        info = self.info()
        status = str(info.get("status") or "unknown")
        if status == "running":
            return "interrupted (process gone)"
        if status == "interrupted" and info.get("interrupted_step") is not None:
            return f"interrupted at step {info['interrupted_step']}"
        return status


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:  # UnicodeDecodeError included
        raise TrimtabError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise TrimtabError(f"{path}: expected a JSON object")
    return value
