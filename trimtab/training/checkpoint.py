"""Checkpoints that count only once complete, and resuming from the last complete one.

A checkpoint is a folder ``checkpoints/step-NNNNNNN`` with a fixed file set:

- ``trainable.safetensors``: every parameter that trains (frozen weights come from the base model)
- ``optimizer.pt``, ``scheduler.pt``: their state dicts
- ``rng.pt``: Python, NumPy and torch random states, so dropout continues identically
- ``state.json``: step, epoch, position in the epoch, best score, patience, metrics lines

It is written with :func:`trimtab.files.staged_dir`: built under a hidden temporary name and
moved into place in one step, so a run killed mid-write leaves a hidden folder that is ignored
(and removed on resume), never a half checkpoint that looks complete. Resuming from it continues
bit for bit as if never interrupted (CPU, fp32).
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from trimtab.files import staged_dir

FILES = ("trainable.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json")


@dataclass
class LoopState:
    """Where the loop is: enough, with the tensors, to continue exactly."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of this epoch already consumed
    tokens: int = 0
    best_score: float | None = None
    best_step: int | None = None
    bad_evals: int = 0  # evaluations without improvement, for early stopping
    metrics_lines: int = 0
    elapsed: float = 0.0


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: p.detach().clone().contiguous()
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def load_trainable(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in tensors]
    if missing:
        raise ValueError(f"checkpoint lacks {len(missing)} trainable tensors, e.g. {missing[0]}")
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value)


def save_checkpoint(
    folder: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: LoopState,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``folder`` (``.../step-N``) atomically and return it; ``extra(tmp)`` may add
    files to it (a servable ``model/``) before it counts.

    :func:`trimtab.files.staged_dir` flushes every file to disk before the folder is swapped
    into place, so the checkpoint counts only once all of it is on disk.
    """
    with staged_dir(folder) as tmp:
        if extra is not None:
            extra(tmp)
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps(asdict(state), indent=2) + "\n")
    return folder


def is_complete(folder: Path) -> bool:
    """A checkpoint folder that counts: not a hidden temporary one, and every file present."""
    return not folder.name.startswith(".") and all((folder / n).is_file() for n in FILES)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The complete checkpoint of the highest step in ``run_dir``, or None."""
    folders = sorted(
        (p for p in (run_dir / "checkpoints").glob("step-*") if is_complete(p)),
        key=lambda p: int(p.name.removeprefix("step-")),
    )
    return folders[-1] if folders else None


def remove_partial(run_dir: Path) -> None:
    """Hidden temporary folders of a run that died while writing a checkpoint."""
    for tmp in (run_dir / "checkpoints").glob(".step-*.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def prune(run_dir: Path, keep: int, protect: set[Path]) -> None:
    """Keep the newest ``keep`` checkpoints (and any in ``protect``, e.g. the best)."""
    folders = sorted(
        (p for p in (run_dir / "checkpoints").glob("step-*") if is_complete(p)),
        key=lambda p: int(p.name.removeprefix("step-")),
    )
    for folder in folders[:-keep]:
        if folder not in protect:
            shutil.rmtree(folder, ignore_errors=True)


def load_checkpoint(
    folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> LoopState:
    """Restore the tensors, optimizer, scheduler and random states; return the loop state."""
    load_trainable(model, load_file(str(folder / "trainable.safetensors")))
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    set_rng_state(torch.load(folder / "rng.pt", weights_only=False))
    return LoopState(**json.loads((folder / "state.json").read_text()))


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
