"""Evaluate a base model or a fine-tuned run on a prepared test file (classification).

The first piece of ``trimtab eval`` (issue 4): label scoring for language models (base or
fine-tuned, LoRA or full), the head for ``classify`` runs, and the metrics of
:mod:`trimtab.evaluation.metrics`. Generation-based evaluation, baselines and reports build
on it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trimtab.errors import TrimtabError
from trimtab.evaluation.metrics import ClassificationReport, classification_report, sort_labels
from trimtab.evaluation.scoring import classify_logits, score_labels


@dataclass
class EvalModel:
    """A model ready to score: where it came from and what it was trained for."""

    model: Any
    tokenizer: Any
    name: str
    task: str  # "sft" / "lm" (language model: label scoring) or "classify" (a head)
    labels: list[str] | None  # the head's labels, in its order (classify)


def load_for_eval(name_or_run: str | Path) -> EvalModel:
    """A fine-tuned run (its folder or ``final/``), or a base model by name or folder."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers import AutoTokenizer

    from trimtab.training.export import model_folder

    path = Path(name_or_run)
    try:
        folder = model_folder(path)
    except TrimtabError:
        folder = None
    if folder is None:  # a base model: a language model scored zero-shot
        from trimtab.models.loading import load_model

        loaded = load_model(str(name_or_run), "causal-lm")
        return EvalModel(loaded.model.eval(), loaded.tokenizer, str(name_or_run), "lm", None)
    meta = json.loads((folder / "trimtab.json").read_text(encoding="utf-8"))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if (folder / "adapter_config.json").is_file():
        from peft import PeftModel

        from trimtab.models.loading import load_model

        task = "classify" if meta["task"] == "classify" else "causal-lm"
        base = load_model(meta["base_model"], task, labels=meta.get("labels")).model
        model = PeftModel.from_pretrained(base, folder)
    elif meta["task"] == "classify":
        model = AutoModelForSequenceClassification.from_pretrained(folder)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder)
    return EvalModel(model.eval(), tokenizer, str(name_or_run), meta["task"], meta.get("labels"))


def evaluate_classification(model: EvalModel, data: Path, *, limit: int | None = None,
                            bf16: bool = False, batch_size: int = 16,
                            max_length: int = 512) -> ClassificationReport:
    """Predict a label for every prompt of a prepared prompt/completion file and score it."""
    from trimtab.training.batches import read_examples

    records = read_examples(data)[:limit]
    prompts = [r.fields["prompt"] for r in records]
    gold = [r.fields["completion"].strip() for r in records]
    labels = model.labels or sort_labels(set(gold))
    if model.task == "classify":
        scores = classify_logits(model.model, model.tokenizer, prompts, batch_size=batch_size,
                                 max_length=max_length)
    else:
        # The labels as a completion holds them: with the leading space of the training data.
        space = " " if records and records[0].fields["completion"][:1].isspace() else ""
        scores = score_labels(model.model, model.tokenizer, prompts,
                              [space + label for label in labels], batch_size=batch_size,
                              max_length=max_length, bf16=bf16)
    predicted = [labels[int(i)] for i in torch.argmax(scores, dim=-1)] if len(scores) else []
    return classification_report(gold, predicted, labels)

