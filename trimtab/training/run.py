"""A run folder that describes itself: config, status and metrics beside the weights.

::

    runs/NAME/
      config.yaml        the resolved config (auto values filled in)
      run.json           status, base model, task, method, labels, results
      metrics.jsonl      one line per logged step and per evaluation
      checkpoints/       step-NNNNNNN/ (see trimtab.training.checkpoint)
      best/              the best model by validation loss (same layout as final/)
      final/             the fine-tuned model: weights (PEFT adapter for LoRA, full model
                         otherwise), tokenizer, trimtab.json and a model card (README.md)
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trimtab import __version__
from trimtab.training.config import TrainConfig, dump_config


def default_run_dir(config: TrainConfig, root: Path = Path("runs")) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    model = Path(config.model.name).name
    return root / f"{model}-{config.method.name}-{config.data.task}-{stamp}"


def write_json_atomically(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@dataclass
class RunFolder:
    """Paths and small writers of one run."""

    path: Path

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
    def final(self) -> Path:
        return self.path / "final"

    @property
    def best(self) -> Path:
        return self.path / "best"

    def checkpoint(self, step: int) -> Path:
        return self.path / "checkpoints" / f"step-{step:07d}"

    def start(self, config: TrainConfig, info: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / ".config.yaml.tmp"
        tmp.write_text(dump_config(config), encoding="utf-8")
        os.replace(tmp, self.config_file)
        self.update(status="running", trimtab_version=__version__, **info)

    def info(self) -> dict[str, Any]:
        if not self.info_file.exists():
            return {}
        return json.loads(self.info_file.read_text(encoding="utf-8"))

    def update(self, **values: Any) -> None:
        write_json_atomically(self.info_file, self.info() | values)

    def log(self, record: dict[str, Any]) -> None:
        with self.metrics_file.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def metrics(self) -> list[dict[str, Any]]:
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
            self.metrics_file.read_text().splitlines()[:lines] if self.metrics_file.exists() else []
        )
        tmp = self.path / ".metrics.jsonl.tmp"
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.metrics_file)


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
            " (PEFT adapter format: loads unchanged in PEFT, vLLM, LoRAX)"
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
