"""Checks that count tokens with the chosen base model's real tokenizer.

Character counts are a poor proxy: SmolLM2 spends two tokens on the label ``" 5"``, and a review
of 2,000 characters can be 400 or 700 tokens. These checks tokenize the examples exactly as they
will be written (separator, leading space and stop included).
"""

from __future__ import annotations

from typing import Any

from trimtab.data.checks import CheckResult, Fix, State, _drop, _locations


def count_tokens(tokenizer: Any, texts: list[str]) -> list[int]:
    """Token counts without special tokens; distinct texts are encoded once, in a batch."""
    distinct = list(dict.fromkeys(texts))
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch_fast"):
        # The Rust tokenizer directly: no offsets, no Python-side padding logic, all cores.
        counts = [len(e.ids) for e in backend.encode_batch_fast(distinct, add_special_tokens=False)]
    else:
        counts = [len(ids) for ids in tokenizer(distinct, add_special_tokens=False)["input_ids"]]
    by_text = dict(zip(distinct, counts))
    return [by_text[t] for t in texts]


def _stats(values: list[int]) -> dict[str, int]:
    if not values:
        return {"p50": 0, "p95": 0, "max": 0}
    ordered = sorted(values)

    def pct(q: float) -> int:
        return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]

    return {"p50": pct(0.50), "p95": pct(0.95), "max": ordered[-1]}


def example_lengths(state: State, tokenizer: Any) -> tuple[list[int], list[int]]:
    """Per example: (prompt tokens, completion tokens); special tokens go into the prompt count."""
    specials = tokenizer.num_special_tokens_to_add(pair=False)
    if state.mode == "supervised" and state.format in ("prompt-completion", "text"):
        prompts = count_tokens(tokenizer, [ex.prompt for ex in state.examples])
        completions = count_tokens(tokenizer, [ex.completion for ex in state.examples])
    elif state.mode == "text":
        prompts = count_tokens(tokenizer, [ex.text for ex in state.examples])
        completions = [0] * len(prompts)
    else:
        prompts = count_tokens(tokenizer, [_chat_text(tokenizer, state, ex, context=True)
                                           for ex in state.examples])
        completions = count_tokens(tokenizer, [state.completion_of(ex) for ex in state.examples])
    return [p + specials for p in prompts], completions


def _chat_text(tokenizer: Any, state: State, ex, context: bool) -> str:
    if state.mode == "supervised":  # written as chat: a user turn around the prompt
        messages = [{"role": "system", "content": state.system}] if state.system else []
        messages.append({"role": "user", "content": ex.prompt})
    else:
        messages = [m for m in ex.messages or []]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        messages = messages[:last]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages)


def check_token_lengths(state: State, tokenizer: Any, model: str, max_length: int,
                        lengths: tuple[list[int], list[int]] | None) -> CheckResult:
    if tokenizer is None or lengths is None:
        return CheckResult("token-lengths", "Token lengths", "info",
                           "skipped: no tokenizer (--model none)")
    prompts, completions = lengths
    totals = [p + c for p, c in zip(prompts, completions)]
    over = sum(t > max_length for t in totals)
    details = {"model": model, "max_length": max_length, "prompt": _stats(prompts),
               "completion": _stats(completions), "total": _stats(totals),
               "over_max_length": over, "tokens": sum(totals)}
    t = details["total"]
    message = (f"{model}: p50 {t['p50']}, p95 {t['p95']}, max {t['max']} tokens per example; "
               f"{over} of {len(totals)} exceed --max-length {max_length}")
    return CheckResult("token-lengths", "Token lengths", "warning" if over else "ok", message,
                       over, details=details)


def check_long_examples(state: State, max_length: int,
                        lengths: tuple[list[int], list[int]] | None) -> CheckResult:
    if lengths is None:
        return CheckResult("long-examples", "Long examples", "info",
                           "skipped: no tokenizer (--model none)")
    totals = [p + c for p, c in zip(*lengths)]
    long = [ex for ex, t in zip(state.examples, totals) if t > max_length]
    if not long:
        return CheckResult("long-examples", "Long examples", "ok",
                           f"every example fits in {max_length} tokens")
    if state.task == "language-modeling":
        return CheckResult("long-examples", "Long examples", "info",
                           f"{len(long)} texts are longer than {max_length} tokens; they are "
                           "split into chunks when packed for training", len(long),
                           _locations(long))
    if state.task == "classification":
        why = "their prompts will be truncated (the label is kept), which loses some input"
    else:
        why = "they would be truncated, cutting off the completion the model must learn"
    return CheckResult("long-examples", "Long examples", "warning",
                       f"{len(long)} examples are longer than {max_length} tokens: {why}",
                       len(long), _locations(long),
                       fix=Fix("drop-long", f"Remove the {len(long)} examples over {max_length} "
                               "tokens", state.task != "classification", _drop(long)))


def check_multi_token_labels(state: State, tokenizer: Any, model: str) -> CheckResult | None:
    if state.task != "classification":
        return None
    if tokenizer is None:
        return CheckResult("multi-token-labels", "Label tokens", "info",
                           "skipped: no tokenizer (--model none)")
    # The label as the model must produce it: with its leading space, without the stop sequence.
    written = sorted({state.completion_of(ex).removesuffix(state.stop or "")
                      for ex in state.examples})
    counts = dict(zip(written, count_tokens(tokenizer, written)))
    pieces = {label: [tokenizer.decode([i]) for i in
                      tokenizer(label, add_special_tokens=False)["input_ids"]]
              for label in written}
    multi = {k: v for k, v in counts.items() if v > 1}
    details = {"tokens": {k: pieces[k] for k in written}}
    if not multi:
        return CheckResult("multi-token-labels", "Label tokens", "ok",
                           f"every label is a single {model} token", details=details)
    example = next(iter(multi))
    return CheckResult("multi-token-labels", "Label tokens", "info",
                       f"{len(multi)} of {len(written)} labels are more than one {model} token "
                       f"(e.g. {example!r} → {pieces[example]}); trimtab scores every token of a "
                       "label, but the first token alone no longer identifies it",
                       len(multi), details=details)
