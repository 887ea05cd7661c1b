"""Prompts for base-model baselines, and reading a label out of generated text.

A fine-tuned model sees test prompts exactly as it saw training prompts. A base model needs to be
told the task: the zero-shot baseline puts an instruction before the text, the few-shot baseline
also shows ``k`` solved examples from the training file. With a chat template (an instruct model
such as SmolLM2-Instruct) the instruction is the system turn and each example a user/assistant
exchange, so the answer is the assistant's first token; without one, the examples are written out
as prompt + completion, the way the training file holds them.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trimtab.models.chat import has_chat_template

DEFAULT_INSTRUCTION = "Classify the text. Answer with exactly one of these labels: {labels}."


@dataclass(frozen=True)
class Shot:
    """One solved example shown to a few-shot baseline."""

    text: str  # the prompt without its separator
    label: str


def pick_shots(
    examples: Sequence[tuple[str, str]], labels: Sequence[str], k: int, *, seed: int = 0
) -> list[Shot]:
    """``k`` examples of (text, label), labels taken in turn so every label is shown once
    before any twice; within a label the shorter half is preferred, so the prompt stays cheap.
    The order is shuffled (seeded): a fixed label order would teach the model a pattern."""
    rng = random.Random(seed)
    by_label: dict[str, list[str]] = {label: [] for label in labels}
    for text, label in examples:
        if label in by_label:
            by_label[label].append(text)
    pools = {}
    for label, texts in by_label.items():
        short = sorted(texts, key=len)[: max(1, len(texts) // 2)]
        rng.shuffle(short)
        pools[label] = short
    shots: list[Shot] = []
    turn = 0
    while len(shots) < k and any(pools.values()):
        label = labels[turn % len(labels)]
        if pools[label]:
            shots.append(Shot(pools[label].pop(), label))
        turn += 1
    rng.shuffle(shots)
    return shots


def instruction_for(labels: Sequence[str], instruction: str | None) -> str:
    return (instruction or DEFAULT_INSTRUCTION).replace("{labels}", ", ".join(labels))


def baseline_prompts(
    tokenizer: Any,
    texts: Sequence[str],
    labels: Sequence[str],
    *,
    instruction: str | None = None,
    shots: Sequence[Shot] = (),
    separator: str | None = None,
    leading_space: bool = True,
) -> tuple[list[str], list[str]]:
    """Prompts for a base model and the labels as its answer would start.

    Returns ``(prompts, label_texts)``. With a chat template the prompt ends with the assistant
    turn's opening, and labels are bare; otherwise the prompt ends with the separator, and the
    labels keep the training data's leading space.
    """
    task = instruction_for(labels, instruction)
    if has_chat_template(tokenizer):
        turns: list[dict[str, str]] = [{"role": "system", "content": task}]
        for shot in shots:
            turns += [
                {"role": "user", "content": shot.text},
                {"role": "assistant", "content": shot.label},
            ]
        prompts = [
            tokenizer.apply_chat_template(
                turns + [{"role": "user", "content": text}],
                tokenize=False,
                add_generation_prompt=True,
            )
            for text in texts
        ]
        return prompts, list(labels)
    sep = separator or "\nAnswer:"
    space = " " if leading_space else ""
    head = task + "\n\n" + "".join(f"{s.text}{sep}{space}{s.label}\n\n" for s in shots)
    return [head + text + sep for text in texts], [space + label for label in labels]


def parse_label(text: str, labels: Sequence[str]) -> str | None:
    """The label a generated answer gives, or None when it gives none.

    The whole answer equal to a label wins; otherwise the first label that appears as a whole
    word ("4 stars", "Rating: 4"). Longer labels are tried first so "10" is not read as "1".
    """
    answer = text.strip()
    if answer in labels:
        return answer
    best: tuple[int, str] | None = None
    for label in sorted(labels, key=len, reverse=True):
        match = re.search(rf"(?<!\w){re.escape(label)}(?!\w)", answer)
        if match and (best is None or match.start() < best[0]):
            best = (match.start(), label)
    return best[1] if best else None
