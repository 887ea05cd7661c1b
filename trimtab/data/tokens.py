"""Checks that count tokens with the chosen base model's real tokenizer.

Character counts are a poor proxy: SmolLM2 spends two tokens on the label ``" 5"``, and a review
of 2,000 characters can be 400 or 700 tokens. These checks tokenize the examples exactly as they
will be written (separator, leading space and stop included).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from trimtab.data.checks import CheckResult, Fix, State, drop, locations
from trimtab.data.examples import Example
from trimtab.models.chat import render_chat

SAMPLE_SIZE = 10_000  # above this many examples, percentiles come from a sample


def special_tokens(tokenizer: Any) -> int:
    """How many special tokens (BOS, [CLS], [SEP]) the tokenizer adds to one sequence."""
    if hasattr(tokenizer, "encode_batch_fast"):  # a bare tokenizers.Tokenizer
        return tokenizer.num_special_tokens_to_add(False)
    return tokenizer.num_special_tokens_to_add(pair=False)  # transformers


def token_pieces(tokenizer: Any, text: str) -> list[str]:
    """The text of each token of ``text``, e.g. ``" 5"`` → ``[" ", "5"]``."""
    rust = _rust(tokenizer)
    if rust is not None:
        ids = rust.encode(text, add_special_tokens=False).ids
    else:
        ids = tokenizer(text, add_special_tokens=False, padding=False, truncation=False)[
            "input_ids"
        ]
    return [tokenizer.decode([i]) for i in ids]


def _rust(tokenizer: Any) -> Any:
    """The Rust tokenizer behind ``tokenizer`` set to count, or None when there is none.

    A tokenizer.json may pad and truncate every sequence (MiniLM's pads and cuts at 128): counted
    that way every example is 128 tokens and no long one is ever found. Both are switched off
    here; transformers sets them again per call from its own arguments, so this changes nothing
    for a transformers tokenizer that shares the backend.
    """
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    if backend is None or not hasattr(backend, "encode_batch_fast"):
        return None
    if backend.padding is not None:
        backend.no_padding()
    if backend.truncation is not None:
        backend.no_truncation()
    return backend


def count_tokens(tokenizer: Any, texts: list[str]) -> list[int]:
    """Token counts without special tokens, padding or truncation; each distinct text once."""
    distinct = list(dict.fromkeys(texts))
    rust = _rust(tokenizer)
    if rust is not None:
        # The Rust tokenizer directly: no offsets, no Python-side padding logic, all cores.
        counts = [len(e.ids) for e in rust.encode_batch_fast(distinct, add_special_tokens=False)]
    else:
        encoded = tokenizer(distinct, add_special_tokens=False, padding=False, truncation=False)
        counts = [len(ids) for ids in encoded["input_ids"]]
    by_text = dict(zip(distinct, counts))
    return [by_text[t] for t in texts]


def _stats(values: list[int]) -> dict[str, int]:
    if not values:
        return {"p50": 0, "p95": 0, "max": 0}
    ordered = sorted(values)

    def pct(q: float) -> int:
        return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]

    return {"p50": pct(0.50), "p95": pct(0.95), "max": ordered[-1]}


def example_lengths(
    state: State, tokenizer: Any, examples: list[Example] | None = None
) -> tuple[list[int], list[int]]:
    """Per example: (prompt tokens, completion tokens); special tokens go into the prompt count."""
    examples = state.examples if examples is None else examples
    prompts, completions = _texts(state, tokenizer, examples)
    specials = special_tokens(tokenizer)
    return (
        [n + specials for n in count_tokens(tokenizer, prompts)],
        count_tokens(tokenizer, completions),
    )


def _texts(state: State, tokenizer: Any, examples: list[Example]) -> tuple[list[str], list[str]]:
    """The prompt side and completion side of each example, as they will be tokenized."""
    if state.mode == "supervised" and state.format in ("prompt-completion", "text"):
        return [ex.prompt for ex in examples], [ex.completion for ex in examples]
    if state.mode == "text":
        return [ex.text for ex in examples], [""] * len(examples)
    return (
        [_chat_text(tokenizer, state, ex) for ex in examples],
        [state.completion_of(ex) for ex in examples],
    )


@dataclass
class TokenCounts:
    """Token counts of a dataset: exact for every example over the limit, and per example for
    every example or, on large data, for a random sample (``sampled``)."""

    prompt: list[int]
    completion: list[int]
    long: list[tuple[Example, int]]  # every example over max_length, with its total
    max_total: int
    n: int
    sampled: int | None = None

    @classmethod
    def exact(
        cls, examples: list[Example], prompt: list[int], completion: list[int], max_length: int
    ) -> TokenCounts:
        totals = [p + c for p, c in zip(prompt, completion)]
        return cls(
            prompt,
            completion,
            [(ex, t) for ex, t in zip(examples, totals) if t > max_length],
            max(totals, default=0),
            len(examples),
        )

    @property
    def totals(self) -> list[int]:
        return [p + c for p, c in zip(self.prompt, self.completion)]


def measure(state: State, tokenizer: Any, max_length: int) -> TokenCounts:
    """Count tokens; above SAMPLE_SIZE examples, percentiles come from a seeded sample.

    Long examples stay exact on any size: a token covers at least one byte, so an example of at
    most ``max_length`` bytes cannot be too long, and only longer ones need counting. That bound
    is checked on the sample first; a tokenizer that breaks it gets every example counted.
    """
    examples = state.examples
    if len(examples) <= SAMPLE_SIZE or state.mode == "chat":
        return TokenCounts.exact(examples, *example_lengths(state, tokenizer), max_length)
    chosen = sorted(random.Random(0).sample(range(len(examples)), SAMPLE_SIZE))
    sample = [examples[i] for i in chosen]
    prompts, completions = example_lengths(state, tokenizer, sample)
    specials = special_tokens(tokenizer)
    texts = _texts(state, tokenizer, examples)
    size = [len(p.encode()) + len(c.encode()) + 2 + specials for p, c in zip(*texts)]
    if any(p + c > size[i] for i, p, c in zip(chosen, prompts, completions)):
        return TokenCounts.exact(examples, *example_lengths(state, tokenizer), max_length)
    in_sample = set(chosen)
    rest = [i for i in range(len(examples)) if i not in in_sample and size[i] > max_length]
    rest_p, rest_c = example_lengths(state, tokenizer, [examples[i] for i in rest])
    measured = list(zip(chosen, prompts, completions)) + list(zip(rest, rest_p, rest_c))
    long = sorted(((i, p + c) for i, p, c in measured if p + c > max_length))
    return TokenCounts(
        prompts,
        completions,
        [(examples[i], t) for i, t in long],
        max((p + c for _, p, c in measured), default=0),
        len(examples),
        sampled=SAMPLE_SIZE,
    )


def _chat_text(tokenizer: Any, state: State, ex: Example) -> str:
    if state.mode == "supervised":  # written as chat: a user turn around the prompt
        messages = [{"role": "system", "content": state.system}] if state.system else []
        messages.append({"role": "user", "content": ex.prompt})
    else:
        messages = [m for m in ex.messages or []]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        messages = messages[:last]
    # the same text training encodes, fallback generation prompt included
    return render_chat(tokenizer, messages, add_generation_prompt=True)


def check_token_lengths(model: str, max_length: int, counts: TokenCounts | None) -> CheckResult:
    if counts is None:
        return CheckResult(
            "token-lengths", "Token lengths", "info", "skipped: no tokenizer (--model none)"
        )
    totals = counts.totals
    over = len(counts.long)
    t = {**_stats(totals), "max": counts.max_total}
    details: dict[str, Any] = {
        "model": model,
        "max_length": max_length,
        "prompt": _stats(counts.prompt),
        "completion": _stats(counts.completion),
        "total": t,
        "over_max_length": over,
        "sampled": counts.sampled,
    }
    if counts.sampled:  # estimated from the sample, and said so
        details["tokens_estimated"] = round(sum(totals) / len(totals) * counts.n)
    else:
        details["tokens"] = sum(totals)
    how = f" (percentiles from a random sample of {counts.sampled:,})" if counts.sampled else ""
    message = (
        f"{model}: p50 {t['p50']}, p95 {t['p95']}, max {t['max']} tokens per example"
        f"{how}; {over} of {counts.n} exceed --max-length {max_length}"
    )
    return CheckResult(
        "token-lengths",
        "Token lengths",
        "warning" if over else "ok",
        message,
        over,
        details=details,
    )


def check_long_examples(state: State, max_length: int, counts: TokenCounts | None) -> CheckResult:
    if counts is None:
        return CheckResult(
            "long-examples", "Long examples", "info", "skipped: no tokenizer (--model none)"
        )
    long = [ex for ex, _ in counts.long]
    if not long:
        return CheckResult(
            "long-examples", "Long examples", "ok", f"every example fits in {max_length} tokens"
        )
    if state.task == "language-modeling":
        return CheckResult(
            "long-examples",
            "Long examples",
            "info",
            f"{len(long)} texts are longer than {max_length} tokens; they are "
            "split into chunks when packed for training",
            len(long),
            locations(long),
        )
    if state.task == "classification":
        why = "their prompts will be truncated (the label is kept), which loses some input"
    else:
        why = "they would be truncated, cutting off the completion the model must learn"
    return CheckResult(
        "long-examples",
        "Long examples",
        "warning",
        f"{len(long)} examples are longer than {max_length} tokens: {why}",
        len(long),
        locations(long),
        fix=Fix(
            "drop-long",
            f"Remove the {len(long)} examples over {max_length} tokens",
            state.task != "classification",
            drop(long),
        ),
    )


def check_multi_token_labels(state: State, tokenizer: Any, model: str) -> CheckResult | None:
    if state.task != "classification":
        return None
    if tokenizer is None:
        return CheckResult(
            "multi-token-labels", "Label tokens", "info", "skipped: no tokenizer (--model none)"
        )
    if state.encoder:
        return CheckResult(
            "multi-token-labels",
            "Label tokens",
            "ok",
            f"{model} is an encoder: its classification head predicts labels, not their tokens",
        )
    # The label as the model must produce it: with its leading space, without the stop sequence.
    written = sorted(
        {state.completion_of(ex).removesuffix(state.stop or "") for ex in state.examples}
    )
    counts = dict(zip(written, count_tokens(tokenizer, written)))
    pieces = {label: token_pieces(tokenizer, label) for label in written}
    multi = {k: v for k, v in counts.items() if v > 1}
    details = {"tokens": {k: pieces[k] for k in written}}
    if not multi:
        return CheckResult(
            "multi-token-labels",
            "Label tokens",
            "ok",
            f"every label is a single {model} token",
            details=details,
        )
    example = next(iter(multi))
    return CheckResult(
        "multi-token-labels",
        "Label tokens",
        "info",
        f"{len(multi)} of {len(written)} labels are more than one {model} token "
        f"(e.g. {example!r} → {pieces[example]}); trimtab scores every token of a "
        "label, but the first token alone no longer identifies it",
        len(multi),
        details=details,
    )
