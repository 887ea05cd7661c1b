"""Checks of how prompts and completions begin and end: common prefixes, the prompt separator,
the stop sequence and the completion's leading space (OpenAI's prompt-completion conventions).

The separator and the leading space are decoder conventions: a model that continues text needs to
see where the prompt ends and where the answer's first word starts. An encoder with a
classification head reads the text whole, so for one neither is added
(:func:`check_model_conventions` says so in the report).
"""

from __future__ import annotations

import os

from trimtab.data.checks import CheckResult, Fix, State, locations
from trimtab.data.examples import SEPARATOR_CANDIDATES, SEPARATOR_NUMBERED
from trimtab.errors import DataError, Problem

STOP_CANDIDATES = ("\n", " END", " ###END")
STOP_NUMBERED = " ###END{}"


def _word_prefix(texts: list[str]) -> str:
    """The common prefix, cut back to a word boundary so that no word is split."""
    prefix = os.path.commonprefix(texts)
    if any(len(t) > len(prefix) and t[len(prefix)].isalnum() for t in texts):
        while prefix and prefix[-1].isalnum():
            prefix = prefix[:-1]
    return prefix


def _free_of(marker: str, texts: list[str]) -> bool:
    return not any(marker in t for t in texts)


def _existing_suffix(
    texts: list[str], others: list[str], candidates: tuple[str, ...]
) -> str | None:
    """A suffix every text already ends with and that occurs nowhere else: a separator or stop
    written by an earlier prepare. Known candidates first; else the common suffix from its first
    whitespace on, so a shared last character (``?``, ``o``) is not taken for part of it."""

    def fits(suffix: str) -> bool:
        return (
            all(t.endswith(suffix) for t in texts)
            and _free_of(suffix, [t[: -len(suffix)] for t in texts])
            and _free_of(suffix, others)
        )

    for candidate in candidates:
        if fits(candidate):
            return candidate
    if len(texts) < 2:
        return None
    common = os.path.commonprefix([t[::-1] for t in texts])[::-1]
    start = next((i for i, ch in enumerate(common) if ch.isspace()), None)
    if start is None:
        return None
    suffix = common[start:]
    # Whitespace alone is a separator only when it is distinctive (a newline), not a space.
    if not suffix.strip() and "\n" not in suffix:
        return None
    return suffix if fits(suffix) else None


def _free_marker(candidates: tuple[str, ...], texts: list[str], numbered: str) -> str:
    """The first candidate that occurs in none of the texts, then numbered variants."""
    for candidate in list(candidates) + [numbered.format(i) for i in range(1, 1000)]:
        if _free_of(candidate, texts):
            return candidate
    raise DataError(
        Problem(
            "every candidate separator or stop occurs in the data; "
            "pass one with --separator or --stop"
        )
    )


def choose_separator(state: State) -> str:
    """A prompt separator that occurs in no prompt or completion."""
    return _free_marker(
        SEPARATOR_CANDIDATES,
        [t for ex in state.examples for t in (ex.prompt, ex.completion)],
        SEPARATOR_NUMBERED,
    )


def check_prompt_prefix(state: State) -> CheckResult | None:
    if state.mode != "supervised" or len(state.examples) < 2:
        return None
    prefix = _word_prefix([ex.prompt for ex in state.examples])
    if not prefix.strip():
        return CheckResult(
            "prompt-prefix", "Common prompt prefix", "ok", "prompts share no common prefix"
        )

    def remove(s: State) -> None:
        for ex in s.examples:
            ex.prompt = ex.prompt[len(prefix) :]

    return CheckResult(
        "prompt-prefix",
        "Common prompt prefix",
        "info",
        f"every prompt starts with {prefix!r}: fine-tuning needs no instructions or "
        "examples in the prompt, only the input",
        len(state.examples),
        details={"prefix": prefix},
        fix=Fix(
            "remove-prompt-prefix", f"Remove the prefix {prefix!r} from every prompt", False, remove
        ),
    )


def _suffix_check(
    state: State,
    *,
    id: str,
    title: str,
    field_name: str,
    others: list[str],
    requested: str | None,
    candidates: tuple[str, ...],
    numbered: str,
    why: str,
    fix_id: str,
    target: str,
) -> CheckResult:
    """Shared logic of the separator (prompts) and stop sequence (completions) checks."""
    texts = [getattr(ex, field_name) for ex in state.examples]
    existing = _existing_suffix(texts, others, (requested,) if requested else candidates)
    if existing is not None:
        setattr(state, target, existing)
        return CheckResult(
            id,
            title,
            "ok",
            f"every {field_name} already ends with {existing!r}, which occurs nowhere else",
            details={target: existing},
        )
    if requested:
        inside = [
            ex
            for ex, t, o in zip(state.examples, texts, others or [""] * len(texts))
            if requested in t or requested in o
        ]
        if inside:
            return CheckResult(
                id,
                title,
                "error",
                f"{requested!r} occurs inside {len(inside)} examples, so {why}; "
                "choose another or leave it unset",
                len(inside),
                locations(inside),
            )
        marker = requested
    else:
        marker = _free_marker(candidates, texts + others, numbered)
    note = (
        "" if requested or marker == candidates[0] else f" ({candidates[0]!r} occurs in the data)"
    )

    def append(s: State) -> None:
        setattr(s, target, marker)
        for ex in s.examples:
            setattr(ex, field_name, getattr(ex, field_name) + marker)

    return CheckResult(
        id,
        title,
        "info",
        f"every {field_name} needs the same ending, else "
        f"{why}; {marker!r} occurs nowhere in the data{note}",
        len(texts),
        details={target: marker},
        fix=Fix(fix_id, f"Append {marker!r} to every {field_name}", True, append),
    )


def check_model_conventions(state: State) -> CheckResult | None:
    """Say that an encoder gets no decoder conventions (separator, leading space), and why."""
    if not state.encoder or state.format != "prompt-completion":
        return None
    return CheckResult(
        "model-conventions",
        "Model conventions",
        "info",
        f"separator and leading space not added: {state.model} is an encoder (classification head)",
        details={"model": state.model, "kind": state.model_kind},
    )


def check_prompt_suffix(state: State) -> CheckResult | None:
    """Every prompt must end with a separator that occurs nowhere else in the data.

    A decoder convention: it tells a model that continues text where the prompt ends. An encoder
    reads the text whole, so it gets no separator unless one is asked for (an existing one is
    still recognised, so that training and evaluation can take it off).
    """
    if state.format != "prompt-completion" or state.task == "open-ended-generation":
        return None
    result = _separator_check(state)
    if state.encoder and result.fix is not None and state.requested_separator is None:
        return None
    return result


def _separator_check(state: State) -> CheckResult:
    return _suffix_check(
        state,
        id="prompt-suffix",
        title="Prompt separator",
        field_name="prompt",
        others=[ex.completion for ex in state.examples],
        requested=state.requested_separator,
        candidates=SEPARATOR_CANDIDATES,
        numbered=SEPARATOR_NUMBERED,
        why="the model cannot tell where a prompt ends",
        fix_id="add-separator",
        target="separator",
    )


def check_completion_prefix(state: State) -> CheckResult | None:
    if state.mode != "supervised" or len(state.examples) < 2:
        return None
    completions = [ex.completion for ex in state.examples]
    prefix = _word_prefix(completions)
    # A prefix that is a whole completion is an answer (one label), not boilerplate.
    if not prefix.strip() or any(len(c.strip()) <= len(prefix.strip()) for c in completions):
        return CheckResult(
            "completion-prefix",
            "Common completion prefix",
            "ok",
            "completions share no common prefix",
        )
    lead = prefix[: len(prefix) - len(prefix.lstrip())]

    def remove(s: State) -> None:
        for ex in s.examples:
            ex.completion = lead + ex.completion[len(prefix) :]

    return CheckResult(
        "completion-prefix",
        "Common completion prefix",
        "info",
        f"every completion starts with {prefix!r}: the completion should hold only the output",
        len(state.examples),
        details={"prefix": prefix},
        fix=Fix(
            "remove-completion-prefix",
            f"Remove {prefix.strip()!r} from the start of every completion",
            False,
            remove,
        ),
    )


def check_completion_suffix(state: State) -> CheckResult | None:
    """Generation needs a stop sequence at the end of every completion; classification does not."""
    if state.format != "prompt-completion":
        return None
    if state.task == "classification" and state.requested_stop is None:
        return CheckResult(
            "completion-suffix",
            "Stop sequence",
            "ok",
            "classification: the answer is the label, no stop sequence needed",
        )
    return _suffix_check(
        state,
        id="completion-suffix",
        title="Stop sequence",
        field_name="completion",
        others=[],
        requested=state.requested_stop,
        candidates=STOP_CANDIDATES,
        numbered=STOP_NUMBERED,
        why="generation cannot tell when to stop",
        fix_id="add-stop",
        target="stop",
    )


def check_leading_space(state: State) -> CheckResult | None:
    """A completion should start with a space, as a decoder's next word would (not encoders)."""
    if state.format != "prompt-completion":
        return None
    missing = [ex for ex in state.examples if ex.completion and not ex.completion[0].isspace()]
    if not missing:
        state.leading_space = True
        return CheckResult(
            "leading-space", "Leading space", "ok", "every completion starts with a space"
        )
    if state.encoder:  # a head's labels are classes, not text that continues the prompt
        return None

    def add(s: State) -> None:
        s.leading_space = True
        for ex in s.examples:
            if ex.completion and not ex.completion[0].isspace():
                ex.completion = " " + ex.completion

    return CheckResult(
        "leading-space",
        "Leading space",
        "info",
        f"{len(missing):,} completions do not start with a space; tokenizers "
        "usually attach the space to the next word, so a leading space matches "
        "how text continues",
        len(missing),
        locations(missing),
        fix=Fix("add-leading-space", "Start every completion with a space", True, add),
    )
