"""What ``trimtab prepare`` would say about a fine-tuning file, without changing or writing it.

The checks are prepare's own, run in its order on the file's examples as they are: a fix is
described (and whether it is recommended) but never applied, so every check sees the file
itself, and a check that would stop prepare is reported like the others. The file is trained on
whole, so the checks of a split (leakage) are left out and the examples-per-class check counts
the whole file as training data.

Token lengths are counted with a model's tokenizer when one is given (as prepare counts them),
else as whitespace-separated words: a rough size, with no tokenizer to load.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trimtab.data import checks as c
from trimtab.data import splits as sp
from trimtab.data import tokens as tk
from trimtab.data.examples import Example, Mapping, build_examples, infer_mode
from trimtab.data.preparation import Checks, PrepareOptions, check_content
from trimtab.data.readers import read_records
from trimtab.models.tasks import ModelKind

WHITESPACE = "whitespace"  # the tokenizer named in a report counted without a model
MAX_BINS = 20  # bars of the token-length histogram
DEFAULT_MAX_LENGTH: int = PrepareOptions.model_fields["max_length"].default
FORMATS: dict[str, c.OutputFormat] = {
    "supervised": "prompt-completion",
    "chat": "chat",
    "text": "text",
}
_SKIPPED = "skipped: no model given to count tokens with (lengths below are whitespace words)"


class _Observed(Checks):
    """Prepare's sequence of checks, observed only: every result kept, no fix applied, no
    error raised (reusing prepare's own order, so the report cannot drift from it)."""

    def run(self, result: c.CheckResult | None) -> None:
        if result is not None:
            self.results.append(result)


@dataclass
class Tokenizing:
    """The model whose tokenizer counts tokens: its id, the tokenizer, its kind (an encoder
    gets no decoder conventions) and the positions it takes (None: unknown)."""

    model: str
    tokenizer: Any
    kind: ModelKind | None = None
    context_length: int | None = None


def inspect_file(
    path: Path, tokenizing: Tokenizing | None = None, *, max_length: int = DEFAULT_MAX_LENGTH
) -> dict[str, Any]:
    """Prepare's checks on the fine-tuning file ``path``, as JSON: ``examples``, ``format``,
    ``task``, ``checks``, ``labels`` (classification) and ``token_lengths`` (a histogram).

    Locations are ``"line N"`` of the file. Raises DataError when the file cannot be read as
    examples at all (as prepare would).
    """
    records = read_records(path)
    mode = infer_mode(Mapping(), records)
    examples, unused = build_examples(records, Mapping(), mode)
    state = c.State(
        examples,
        mode,
        FORMATS[mode],
        model=tokenizing.model if tokenizing else None,
        model_kind=tokenizing.kind if tokenizing else None,
        unused_fields=unused,
    )
    model = tokenizing.model if tokenizing else "none"
    options = PrepareOptions.model_validate(
        {"inputs": [path], "out": path.parent, "model": model, "max_length": max_length}
    )
    checks = _Observed(state, options, None)
    check_content(checks, None)
    lengths = _check_tokens(checks, tokenizing, max_length)
    # The whole file trains: its class counts are the training split's.
    state.splits = {"train": state.examples, "valid": [], "test": []}
    checks.run(sp.check_class_quantity(state))
    labels = state.labels() if state.task == "classification" else None
    return {
        "examples": len(examples),
        "format": state.format,
        "task": state.task,
        "checks": [check_json(r) for r in checks.results],
        "labels": dict(sorted(labels.items())) if labels is not None else None,
        "token_lengths": lengths,
    }


def _check_tokens(
    checks: _Observed, tokenizing: Tokenizing | None, max_length: int
) -> dict[str, Any]:
    """Prepare's token checks (skipped without a tokenizer), and the lengths' histogram."""
    state, model = checks.state, checks.options.model
    tokenizer = tokenizing.tokenizer if tokenizing else None
    counts = tk.measure(state, tokenizer, max_length) if tokenizer is not None else None
    for result in (
        tk.check_token_lengths(model, max_length, counts),
        tk.check_long_examples(state, max_length, counts),
        tk.check_multi_token_labels(state, tokenizer, model),
    ):
        if result is not None and counts is None:
            result.message = _SKIPPED  # prepare's own words name its --model flag
        checks.run(result)
    checks.run(sp.check_class_balance(state))
    if tokenizing is None or counts is None:
        words = [sum(len(t.split()) for t in _texts(state, ex)) for ex in state.examples]
        return histogram(words, WHITESPACE, max(words, default=0), None, None)
    context = tokenizing.context_length
    over = None if context is None else _over(counts, max_length, context)
    return histogram(counts.totals, tokenizing.model, counts.max_total, over, counts.sampled)


def _over(counts: tk.TokenCounts, max_length: int, context: int) -> int:
    """Examples longer than the model's context: exact from the long ones when the context is
    at least ``max_length`` (every longer example is counted), else from the lengths measured
    (scaled up from a sample)."""
    if context >= max_length:
        return sum(1 for _, total in counts.long if total > context)
    over = sum(1 for total in counts.totals if total > context)
    return round(over * counts.n / max(1, len(counts.totals)))


def _texts(state: c.State, ex: Example) -> list[str]:
    if state.mode == "chat":
        return [str(m.get("content") or "") for m in ex.messages or []]
    if state.mode == "text":
        return [ex.text]
    return [ex.prompt, ex.completion]


def histogram(
    values: list[int], tokenizer: str, most: int, over: int | None, sampled: int | None
) -> dict[str, Any]:
    """Lengths as up to :data:`MAX_BINS` equal bars from 0 to the longest (the last bar
    includes its right edge), with their mean and maximum."""
    bins = max(1, min(MAX_BINS, most))
    width = most / bins if most else 1.0
    counts = [0] * bins
    for value in values:
        counts[min(bins - 1, int(value / width))] += 1
    return {
        "tokenizer": tokenizer,
        "edges": [round(i * width, 3) for i in range(bins + 1)],
        "counts": counts,
        "mean": round(sum(values) / len(values), 2) if values else 0.0,
        "max": most,
        "over_context": over,
        "sampled": sampled,
    }


def check_json(result: c.CheckResult) -> dict[str, Any]:
    """A check as the report shows it: locations as lines of the file, the fix offered."""
    fix = result.fix
    return {
        "id": result.id,
        "title": result.title,
        "status": result.status,
        "message": result.message,
        "count": result.count,
        "locations": [f"line {where.rpartition(':')[2]}" for where in result.locations],
        "fix": {"id": fix.id, "description": fix.description, "recommended": fix.recommended}
        if fix is not None
        else None,
    }


__all__ = ["Tokenizing", "check_json", "histogram", "inspect_file"]
