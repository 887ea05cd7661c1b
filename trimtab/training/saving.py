"""What a run writes while it trains: checkpoints (with a servable model when asked), the model
folders of ``best/`` and ``final/``, and the checkpoint of a pause.

Split from :mod:`trimtab.training.trainer`, which decides *when* (its steps and evaluations);
these functions decide *what* goes on disk, each write atomic (:func:`trimtab.files.staged_dir`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch.distributed as dist

from trimtab.files import staged_dir
from trimtab.methods import save_trainable
from trimtab.models.runs import write_meta
from trimtab.training import checkpoint as ckpt
from trimtab.training.loop import TrainingPaused, all_reduce

if TYPE_CHECKING:
    from trimtab.training.trainer import Session


def pause_requested(s: Session) -> bool:
    """The run's pause file exists (every rank agrees: one stat per step, then a reduce)."""
    asked = float(s.run.pause_file.exists()) if s.d.main else 0.0
    if s.d.world > 1:
        asked = all_reduce([asked], s.d, s.device)[0]
    return asked > 0


def pause(s: Session) -> None:
    """Checkpoint where the loop is, mark the run paused, stop (TrainingPaused)."""
    step = s.state.step
    last = ckpt.latest_checkpoint(s.run.path)
    if s.d.main and (last is None or last != s.run.checkpoint(step)):
        checkpoint(s)
    if s.d.main:
        s.run.update(status="paused", paused_step=step)
        s.run.pause_file.unlink(missing_ok=True)
    if s.d.world > 1:
        dist.barrier()
    raise TrainingPaused(
        f"paused at step {step} of {s.total} (checkpoint {s.run.checkpoint(step).name}); "
        f"continue with: trimtab train --resume {s.run.path}"
    )


def checkpoint(s: Session) -> None:
    """``checkpoints/step-N`` of where the loop is (with ``model/`` when the config asks for
    servable checkpoints), then the oldest beyond ``keep_checkpoints`` pruned."""
    s.state.elapsed = time.perf_counter() - s.started
    step = s.state.step
    extra = None
    if s.config.checkpoint_models:
        model_id = f"{s.config.model_id}:ckpt-step-{step}" if s.config.model_id else None

        def extra(tmp: Path) -> None:
            write_model(s, tmp / "model", model_id)

    ckpt.save_checkpoint(s.run.checkpoint(step), s.model, s.optimizer, s.scheduler, s.state, extra)
    ckpt.prune(s.run.path, s.config.keep_checkpoints, set())


def export(s: Session, folder: Path) -> None:
    """Write a complete model folder: weights, tokenizer, trimtab.json (all or nothing)."""
    with staged_dir(folder) as tmp:
        write_model(s, tmp, s.config.model_id)


def write_model(s: Session, folder: Path, model_id: str | None) -> None:
    """The model as it is now into ``folder`` (inside a staged folder): weights, tokenizer,
    trimtab.json (with the id it is served under, when the config names one)."""
    config = s.config
    folder.mkdir(parents=True, exist_ok=True)
    save_trainable(s.model, folder)
    s.tokenizer.save_pretrained(folder)
    write_meta(
        folder,
        {
            "base_model": s.adapter_base or config.model.name,
            "task": config.data.task,
            "method": config.method.name,
            "labels": s.data.labels,
            "max_length": config.model.max_length,
            "run": str(s.run.path),
        }
        | ({"parent_run": s.parent["parent_run"]} if s.parent else {})
        | ({"model_id": model_id} if model_id else {}),
    )


__all__ = ["checkpoint", "export", "pause", "pause_requested", "write_model"]
