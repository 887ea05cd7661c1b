"""The one word for each training task, used by the config, the loader, the methods and eval.

- ``sft``: supervised fine-tuning of a language model on prompt/completion or chat examples
  (the loss is on the completions);
- ``lm``: language modelling on plain text (the loss is on every token);
- ``classify``: a classification head on top of the model, one output per label.

``sft`` and ``lm`` train the same kind of model (a causal LM head); only the data and the loss
differ. What ``trimtab prepare`` says about the data (classification, conditional generation,
...) describes data, not a training task: :func:`task_for_data_kind` is the one mapping.
"""

from __future__ import annotations

from typing import Literal, get_args

from trimtab.errors import TrimtabError

Task = Literal["sft", "lm", "classify"]
TASKS: tuple[Task, ...] = get_args(Task)

DataKind = Literal[
    "classification", "conditional-generation", "open-ended-generation", "language-modeling"
]
ModelKind = Literal["decoder", "encoder"]


def check_task(task: str) -> Task:
    """``task`` if it is one of :data:`TASKS`; a TrimtabError naming the valid words otherwise."""
    if task not in TASKS:
        raise TrimtabError(f"unknown task '{task}'; use one of: {', '.join(TASKS)}")
    return task


def is_generative(task: Task) -> bool:
    """True for the tasks trained with a language-model head (``sft``, ``lm``)."""
    return task != "classify"


def task_for_data_kind(kind: str, model_kind: ModelKind = "decoder") -> Task:
    """The training task that fits data of ``kind`` (as ``trimtab prepare`` names it).

    Classification data trains a head on an encoder (it has no language-model head) and is
    learnt as completions by a decoder; plain text is language modelling; everything else is
    supervised fine-tuning. An encoder can only be fine-tuned for classification.
    """
    if kind not in get_args(DataKind):
        raise TrimtabError(
            f"unknown data kind '{kind}'; expected one of: {', '.join(get_args(DataKind))}"
        )
    if model_kind == "encoder":
        if kind != "classification":
            raise TrimtabError(
                f"an encoder can only be fine-tuned for classification, and the data is {kind}"
            )
        return "classify"
    return "lm" if kind == "language-modeling" else "sft"
