"""``trimtab export``: a run's model as a standalone folder, LoRA merged into full weights if asked.

A LoRA run's ``final/`` is a PEFT adapter (``peft.PeftModel.from_pretrained`` loads it on its base
model); ``--merge`` folds it into the base weights: one plain model that
``transformers.AutoModel*.from_pretrained`` loads alone.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from trimtab.files import check_output, staged_dir
from trimtab.models.runs import RunFolder, model_folder, write_meta


def export(run: Path, out: Path, *, merge: bool = False, force: bool = False) -> Path:
    """Write the run's model to ``out`` atomically; with ``merge``, LoRA becomes full weights."""
    source = model_folder(run)
    check_output(out, force, "export")
    meta = RunFolder(run).meta()
    is_adapter = (source / "adapter_config.json").is_file()
    with staged_dir(out) as tmp:
        if merge and is_adapter:
            _merge(source, tmp, meta)
        else:
            shutil.copytree(source, tmp, dirs_exist_ok=True)
    return out


def _merge(source: Path, target: Path, meta: dict[str, Any]) -> None:
    from trimtab.models.loading import load_model
    from trimtab.models.registry import quiet_transformers

    loaded = load_model(source, meta["task"], adapter="merge")  # the adapter folded in
    with quiet_transformers():  # no "Writing model shards" bar: trimtab prints what it wrote
        loaded.model.save_pretrained(target, safe_serialization=True)
        loaded.tokenizer.save_pretrained(target)
    write_meta(target, meta | {"method": "full", "merged_from": meta["method"]})
    if (source / "README.md").is_file():
        shutil.copy(source / "README.md", target / "README.md")
