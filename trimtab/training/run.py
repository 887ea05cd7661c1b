"""Where a new run goes and the model card of its fine-tuned model.

The run folder itself (layout, readers, writers, lock) is :class:`trimtab.models.runs.RunFolder`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from trimtab import __version__
from trimtab.training.config import TrainConfig


def default_run_dir(config: TrainConfig, root: Path = Path("runs")) -> Path:
    """``runs/MODEL-METHOD-TASK-YYYYmmdd-HHMMSS``: a new folder per run, named by what it is."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    model = Path(config.model.name).name
    return root / f"{model}-{config.method.name}-{config.data.task}-{stamp}"


def model_card(config: TrainConfig, info: dict[str, Any]) -> str:
    """README.md of a fine-tuned model: what it is, how it was made, how well it did."""
    results = info.get("results", {})
    lines = [
        f"# {info.get('name', 'trimtab fine-tune')}",
        "",
        f"Fine-tuned from `{config.model.name}` with trimtab {__version__}: "
        f"task `{config.data.task}`, method `{config.method.name}`.",
        "",
        "## Training",
        "",
        f"- data: `{config.data.train}` ({info.get('train_examples', '?')} examples), "
        f"validation `{config.data.valid}`",
        f"- epochs {config.epochs}, batch size {config.batch_size}, learning rate "
        f"{config.optim.lr}, optimizer {config.optim.optimizer}, schedule "
        f"{config.optim.schedule}, weight decay {config.optim.weight_decay}, L1 {config.optim.l1}",
        f"- steps {results.get('steps', '?')}, {results.get('train_seconds', '?')} s, "
        f"{results.get('tokens_per_second', '?')} tokens/s",
    ]
    if config.method.name == "lora":
        lines.append(
            f"- LoRA r={config.method.lora_r}, alpha={config.method.lora_alpha}, "
            f"dropout={config.method.lora_dropout}, targets {config.method.target_modules}"
            " (PEFT adapter format: loads unchanged with `peft.PeftModel.from_pretrained`)"
        )
    if config.method.name == "freeze":
        lines.append(f"- frozen trunk, top {config.method.trainable_layers} layers + head trained")
    if info.get("labels"):
        lines.append(f"- labels: {', '.join(repr(x) for x in info['labels'])}")
    lines += ["", "## Results", ""]
    for key in ("train_loss", "valid_loss", "valid_accuracy", "best_step"):
        if key in results:
            lines.append(f"- {key.replace('_', ' ')}: {results[key]}")
    lines += [
        "",
        "The full config is `config.yaml` in the run folder; per-step metrics are "
        "in `metrics.jsonl`.",
        "",
    ]
    return "\n".join(lines)
