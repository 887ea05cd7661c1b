"""``trimtab export``: a run's model as a standalone folder, LoRA merged into full weights if asked.

A LoRA run's ``final/`` is a PEFT adapter (what vLLM and LoRAX load beside the base model);
``--merge`` folds it into the base weights for servers that take one plain model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from trimtab.errors import OutputExistsError, TrimtabError
from trimtab.files import staged_dir


def model_folder(run: Path) -> Path:
    """The model folder of a run (its ``final/``), or the folder itself if it is one."""
    for candidate in (run / "final", run):
        if (candidate / "trimtab.json").is_file():
            return candidate
    raise TrimtabError(
        f"{run}: no fine-tuned model here (expected a run folder with final/"
        "trimtab.json, written when training completes)"
    )


def export(run: Path, out: Path, *, merge: bool = False, force: bool = False) -> Path:
    """Write the run's model to ``out`` atomically; with ``merge``, LoRA becomes full weights."""
    source = model_folder(run)
    if out.exists() and any(out.iterdir()) and not force:
        raise OutputExistsError(f"{out}: exists and is not empty; use --force to overwrite")
    meta = json.loads((source / "trimtab.json").read_text(encoding="utf-8"))
    is_adapter = (source / "adapter_config.json").is_file()
    with staged_dir(out) as tmp:
        if merge and is_adapter:
            _merge(source, tmp, meta)
        else:
            shutil.copytree(source, tmp, dirs_exist_ok=True)
    return out


def _merge(source: Path, target: Path, meta: dict) -> None:
    from peft import PeftModel

    from trimtab.methods import merge_lora
    from trimtab.models.loading import load_model

    task = "classify" if meta.get("task") == "classify" else "causal-lm"
    loaded = load_model(meta["base_model"], task, labels=meta.get("labels"))
    merged = merge_lora(PeftModel.from_pretrained(loaded.model, source))
    merged.save_pretrained(target, safe_serialization=True)
    loaded.tokenizer.save_pretrained(target)
    (target / "trimtab.json").write_text(
        json.dumps(meta | {"method": "full", "merged_from": meta["method"]}, indent=2) + "\n",
        encoding="utf-8",
    )
    if (source / "README.md").is_file():
        shutil.copy(source / "README.md", target / "README.md")
