"""The training data of a run: both splits read, encoded for the task, and what evaluation
needs to score labels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trimtab.data import prepared
from trimtab.data.examples import looks_like_classification
from trimtab.errors import TrimtabError
from trimtab.training.config import TrainConfig


@dataclass
class Data:
    """Encoded examples of both splits and what the task needs to know.

    ``scored``: for sft on a few labels, the valid prompts, their true completions and every
    label, so that evaluation measures label accuracy (the likeliest label against the true
    one)."""

    train: list[Any]
    valid: list[Any]
    labels: list[str] | None
    pad_id: int
    scored: tuple[list[str], list[str], list[str]] | None = None


def read_splits(config: TrainConfig) -> dict[str, list[Any]]:
    """The records of the train and valid splits (valid: none if the config names none)."""
    out = {"train": prepared.read_examples(config.data.train)}  # type: ignore[arg-type]
    out["valid"] = prepared.read_examples(config.data.valid) if config.data.valid else []
    return out


def encode_splits(
    config: TrainConfig, records: dict[str, list[Any]], tokenizer: Any, labels: list[str] | None
) -> Data:
    length = config.model.max_length
    task = config.data.task
    learnt = _learnt(records["train"]) if task == "sft" else None
    few_labels = learnt is not None and looks_like_classification(learnt)
    add_eos = config.data.add_eos if config.data.add_eos != "auto" else not few_labels
    out: dict[str, list[Any]] = {}
    for split, items in records.items():
        if not items:
            out[split] = []
        elif task == "classify":
            out[split] = prepared.encode_classify(items, tokenizer, length, labels or [])
        elif task == "lm":
            out[split] = prepared.encode_lm(items, tokenizer, length, pack=config.data.pack)
        else:
            out[split] = prepared.encode_sft(
                items, tokenizer, length, config.data.prompt_loss_weight, add_eos=bool(add_eos)
            )
    scored = _scored(records["valid"], learnt or []) if few_labels else None
    return Data(out["train"], out["valid"], labels, tokenizer.pad_token_id, scored)


def _learnt(records: list[Any]) -> list[str] | None:
    """What sft learns to write; None for data that has no answers (plain text)."""
    try:
        return prepared.completions(records)
    except TrimtabError:
        return None


def _scored(
    valid: list[Any], completions: list[str]
) -> tuple[list[str], list[str], list[str]] | None:
    """(prompts, true completions, labels) of the valid examples, as label scoring reads them:
    the labels are the distinct completions as written (with their leading space)."""
    if not valid or "prompt" not in valid[0].fields:
        return None  # chat classification: scored by token accuracy only
    answers = [r.fields["completion"] for r in valid]
    return [r.fields["prompt"] for r in valid], answers, sorted({*completions, *answers})
