"""What answering costs: prompt tokens per request, latency of one request, requests per second.

Every row of ``trimtab eval`` gets a ``cost`` object, so that a few-shot prompt of a base model
and a fine-tuned model compare on price as well as accuracy in one table (the few-shot prompt
carries its solved examples and instruction in every request; the fine-tuned model needs
neither):

- ``prompt_tokens_per_request``: mean tokens of the whole input as sent (instruction and shots
  included), capped at ``max_length`` as the evaluation cuts it;
- ``latency_ms_per_request``: median wall time of answering one request alone (batch size 1)
  over the first ``latency_sample`` examples, after :data:`WARMUP` untimed requests (the first
  calls pay for kernel compilation and allocator growth);
- ``requests_per_s``: the batched throughput of the whole evaluation (``examples_per_s``);
- ``parameters``: the model's parameters, all of them (a LoRA adapter's and its base model's).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from trimtab.evaluation.evaluate import Outcome

WARMUP = 2
DEFAULT_LATENCY_SAMPLE = 20


def prompt_tokens_per_request(tokenizer: Any, prompts: list[str], max_length: int) -> float | None:
    """Mean token count of ``prompts`` as the model receives them (special tokens included,
    at most ``max_length``); None without prompts."""
    if not prompts:
        return None
    ids = tokenizer(prompts, add_special_tokens=True)["input_ids"]
    return sum(min(len(i), max_length) for i in ids) / len(ids)


def _synchronize() -> None:
    # CUDA kernels run asynchronously: without this the clock stops before the work is done.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def measure_latency(
    request: Callable[[int], Any], n: int, sample: int, *, warmup: int = WARMUP
) -> tuple[float | None, int]:
    """``(median milliseconds, requests timed)`` of ``request(i)`` for the first
    ``min(sample, n)`` examples, after ``warmup`` untimed requests; ``(None, 0)`` when
    ``sample`` or ``n`` is 0."""
    count = min(sample, n)
    if count <= 0:
        return None, 0
    for i in range(warmup):
        request(i % n)
    times = []
    for i in range(count):
        _synchronize()
        start = time.perf_counter()
        request(i)
        _synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000, count


def parameter_count(model: Any) -> int:
    """Every parameter of ``model``, trainable or not."""
    return sum(p.numel() for p in model.parameters())


def outcome_cost(
    outcome: Outcome, tokenizer: Any, *, max_length: int, latency_sample: int, parameters: int
) -> dict[str, Any]:
    """The ``cost`` object of one row. Measuring the latency runs the model again on a few
    examples, one at a time; ``outcome.request`` is then dropped (it holds the model)."""
    if outcome.prompt_tokens is not None:
        tokens = (
            sum(min(t, max_length) for t in outcome.prompt_tokens) / len(outcome.prompt_tokens)
            if outcome.prompt_tokens
            else None
        )
    else:
        tokens = prompt_tokens_per_request(tokenizer, outcome.prompts, max_length)
    latency, timed = (None, 0)
    if outcome.request is not None:
        latency, timed = measure_latency(outcome.request, outcome.n, latency_sample)
        outcome.request = None
    return {
        "prompt_tokens_per_request": _round(tokens, 1),
        "latency_ms_per_request": _round(latency, 2),
        "latency_sample": timed,
        "requests_per_s": _round(outcome.examples_per_s, 2),
        "parameters": parameters,
    }


def combined_cost(costs: list[dict[str, Any]], rates: list[float]) -> dict[str, Any]:
    """The cost of asking every member of an ensemble: each request goes to all of them, one
    after the other. Tokens, latencies and parameters add up; the throughput is the harmonic
    combination ``1 / sum(1 / rate)`` of the members' ``rates`` (requests/s, unrounded). A
    figure missing from any member is None."""

    def total(key: str) -> Any:
        values = [c.get(key) for c in costs]
        return sum(values) if values and all(_is_num(v) for v in values) else None

    rate = (
        1 / sum(1 / r for r in rates)
        if rates and all(_is_num(r) and r > 0 for r in rates)
        else None
    )
    timed = [c.get("latency_sample") or 0 for c in costs]
    return {
        "prompt_tokens_per_request": _round(total("prompt_tokens_per_request"), 1),
        "latency_ms_per_request": _round(total("latency_ms_per_request"), 2),
        "latency_sample": min(timed) if timed else 0,
        "requests_per_s": _round(rate, 2),
        "parameters": total("parameters"),
    }


def _is_num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _round(value: float | None, digits: int) -> float | None:
    return round(value, digits) if value is not None else None
