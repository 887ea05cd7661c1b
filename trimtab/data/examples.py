"""Turn raw records into training examples: prompt/completion pairs, chat messages or raw text.

The mapping from a file's columns to an example is explicit (templates and field names) or, when
none is given, inferred from the fields the records carry (``prompt``/``completion``, ``messages``
or ``text``). Every missing field or unknown template column is reported with its file and line.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from trimtab.data.readers import Record
from trimtab.errors import DataError, Problem, ProblemList

Mode = Literal["supervised", "chat", "text"]
CHAT_ROLES = ("system", "user", "assistant", "tool")

# Prompt separators prepare appends, in order of preference, then numbered variants.
SEPARATOR_CANDIDATES = ("\n\n###\n\n", "\n\n-->\n\n", "\n\n===\n\n", "\n\n@@@\n\n")
SEPARATOR_NUMBERED = "\n\n###{}###\n\n"
_NUMBERED_SEPARATOR = re.compile(r"\n\n###\d+###\n\n\Z")

MAX_LABELS = 50  # more distinct completions than this is open-ended text, not a set of classes
MIN_PER_LABEL = 3  # a label must be seen this often on average for the set to be "a few labels"


def looks_like_classification(completions: list[str]) -> bool:
    """Whether these completions are class labels: the one rule prepare, train and eval share.

    OpenAI's rule, made explicit: completions (compared stripped of surrounding whitespace) are
    labels when there are at most ``MAX_LABELS`` distinct values and each is seen, on average, at
    least ``MIN_PER_LABEL`` times (``distinct * 3 <= n``). The average matters because a
    handful of free-text answers are also "few distinct values"; three uses per label on average
    is what separates a label set from prose. No completions means nothing to classify.
    """
    if not completions:
        return False
    distinct = len(label_set(completions))
    return distinct <= MAX_LABELS and distinct * MIN_PER_LABEL <= len(completions)


def label_set(completions: list[str]) -> set[str]:
    """The distinct labels of these completions: each stripped of surrounding whitespace."""
    return {c.strip() for c in completions}


def strip_separator(prompt: str, separator: str | None = None) -> str:
    """The prompt without the separator ``trimtab prepare`` appended to it.

    ``separator`` is the one the data's report.json names; without it, any separator prepare
    writes (``SEPARATOR_CANDIDATES`` and their numbered variants) is taken off the end. A
    classification head reads the whole text, so a decoder's separator left on it ("###") would
    be read as part of every input.
    """
    if separator:
        return prompt.removesuffix(separator)
    for candidate in SEPARATOR_CANDIDATES:
        if prompt.endswith(candidate):
            return prompt[: -len(candidate)]
    numbered = _NUMBERED_SEPARATOR.search(prompt)
    return prompt[: numbered.start()] if numbered else prompt


@dataclass(slots=True)
class Example:
    """One training example and where it came from.

    ``prompt``/``completion`` are set in supervised mode, ``messages`` in chat mode and ``text``
    in text mode. ``split`` is preset when the example came from a file given as a fixed split.
    """

    file: str
    line: int
    prompt: str = ""
    completion: str = ""
    messages: list[dict[str, Any]] | None = None
    text: str = ""
    bad_utf8: bool = False
    split: str | None = None

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True, slots=True)
class Mapping:
    """How records become examples. ``None`` fields are inferred from the data."""

    prompt_template: str | None = None
    completion_field: str | None = None
    completion_template: str | None = None
    text_field: str | None = None

    @property
    def explicit(self) -> bool:
        return any(
            v is not None
            for v in (
                self.prompt_template,
                self.completion_field,
                self.completion_template,
                self.text_field,
            )
        )


def template_fields(template: str) -> list[str]:
    """The column names a ``{column}`` template refers to, in order of first use."""
    names: list[str] = []
    for _, name, _, _ in string.Formatter().parse(template):
        if name is not None:
            if not name or any(c in name for c in ".[]"):
                raise ValueError(
                    f"template {template!r} has an empty or invalid field "
                    f"'{{{name}}}'; name a column, e.g. {{review_body}}"
                )
            if name not in names:
                names.append(name)
    return names


def infer_mode(mapping: Mapping, records: list[Record]) -> Mode:
    """Pick the mode from the mapping, or from the fields of the first record."""
    if mapping.text_field is not None:
        return "text"
    if mapping.explicit:
        return "supervised"
    first = records[0]
    keys = first.fields.keys()
    if "messages" in keys:
        return "chat"
    if "prompt" in keys and "completion" in keys:
        return "supervised"
    if "text" in keys:
        return "text"
    columns = ", ".join(repr(k) for k in keys) or "(none)"
    raise DataError(
        Problem(
            f"cannot tell how to build examples from the columns {columns}: give "
            "--prompt-template and --completion-field (or --completion-template) for labelled "
            "data, or --text-field for raw text; files with prompt/completion, messages or text "
            "fields need no mapping",
            file=first.file,
            line=first.line,
        )
    )


def build_examples(
    records: list[Record], mapping: Mapping, mode: Mode, split: str | None = None
) -> tuple[list[Example], list[str]]:
    """Map records to examples; return them with the record fields the mapping left unused."""
    problems = ProblemList()
    problem = problems.add
    examples: list[Example] = []
    used: set[str]
    if mode == "chat":
        used = {"messages"}
        for r in records:
            messages = _validate_messages(r, problem)
            if messages is not None:
                examples.append(
                    Example(r.file, r.line, messages=messages, bad_utf8=r.bad_utf8, split=split)
                )
    elif mode == "text":
        name = mapping.text_field or "text"
        used = {name}
        _check_columns(records, [name], "--text-field")
        for r in records:
            value = _text_value(r, name, problem)
            if value is not None:
                examples.append(
                    Example(r.file, r.line, text=value, bad_utf8=r.bad_utf8, split=split)
                )
    else:
        used = _build_supervised(records, mapping, split, problem, examples)
    problems.raise_if_any()
    unused = sorted(_columns(records) - used)
    return examples, unused


def _build_supervised(
    records: list[Record],
    mapping: Mapping,
    split: str | None,
    problem: Callable[[Problem], None],
    examples: list[Example],
) -> set[str]:
    """Append the prompt/completion examples of ``records``; return the fields they use."""
    prompt_template = mapping.prompt_template or "{prompt}"
    if mapping.completion_template is not None:
        completion_template = mapping.completion_template
    else:
        completion_template = "{" + (mapping.completion_field or "completion") + "}"
    prompt_fields = template_fields(prompt_template)
    completion_fields = template_fields(completion_template)
    present = _columns(records)
    _check_columns(records, prompt_fields, "--prompt-template", present)
    completion_option = (
        "--completion-template" if mapping.completion_template is not None else "--completion-field"
    )
    _check_columns(records, completion_fields, completion_option, present)
    # Two bare columns holding text (the usual prompt/completion file): no template to fill.
    bare = [
        fields[0]
        for t, fields in (
            (prompt_template, prompt_fields),
            (completion_template, completion_fields),
        )
        if len(fields) == 1 and t == "{" + fields[0] + "}"
    ]
    for r in records:
        if len(bare) == 2:
            prompt, completion = r.fields.get(bare[0]), r.fields.get(bare[1])
            if type(prompt) is str and type(completion) is str:
                examples.append(
                    Example(r.file, r.line, prompt, completion, None, "", r.bad_utf8, split)
                )
                continue
        prompt = _render(r, prompt_template, prompt_fields, problem)
        completion = _render(r, completion_template, completion_fields, problem)
        if prompt is not None and completion is not None:
            examples.append(
                Example(
                    r.file,
                    r.line,
                    prompt=prompt,
                    completion=completion,
                    bad_utf8=r.bad_utf8,
                    split=split,
                )
            )
    return set(prompt_fields) | set(completion_fields)


def _columns(records: list[Record]) -> set[str]:
    """Every field name any record has."""
    present: set[str] = set()
    for r in records:
        present.update(r.fields)
    return present


def _check_columns(
    records: list[Record], names: list[str], option: str, present: set[str] | None = None
) -> None:
    """A template column absent from every record is a typo, not a missing value: say so once."""
    present = _columns(records) if present is None else present
    for name in names:
        if name not in present:
            first = records[0]
            raise DataError(
                Problem(
                    f"unknown column '{name}' in {option}; the file has: "
                    + ", ".join(sorted(present)),
                    file=first.file,
                    line=first.line,
                    field=name,
                )
            )


def _text_value(r: Record, name: str, problem) -> str | None:
    if name not in r.fields:
        problem(Problem("missing", file=r.file, line=r.line, field=name))
        return None
    value = r.fields[name]
    if value is None:
        problem(Problem("is null; expected text", file=r.file, line=r.line, field=name))
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:  # NaN: how pandas and parquet files spell a missing value
            problem(Problem("is empty (NaN); expected text", file=r.file, line=r.line, field=name))
            return None
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    problem(
        Problem(f"expected text, got {type(value).__name__}", file=r.file, line=r.line, field=name)
    )
    return None


def _render(r: Record, template: str, names: list[str], problem) -> str | None:
    values: dict[str, str] = {}
    for name in names:
        value = _text_value(r, name, problem)
        if value is None:
            return None
        values[name] = value
    if len(names) == 1 and template == "{" + names[0] + "}":
        return values[names[0]]  # the common case: one bare column, no formatting
    try:
        return template.format_map(values)
    except (ValueError, IndexError, KeyError) as e:
        problem(Problem(f"cannot fill template {template!r}: {e}", file=r.file, line=r.line))
        return None


def _validate_messages(r: Record, problem) -> list[dict[str, Any]] | None:
    messages = r.fields.get("messages")
    found = message_problems(messages)
    for field, message in found:
        problem(Problem(message, file=r.file, line=r.line, field=field))
    return messages if not found else None


def head_text(prompt: str) -> str:
    """The text a classification head reads: the prompt without a separator prepare appends.

    Training and evaluation both call this, so a head sees the same text at both stages; a
    separator asked for by name (``--separator``) is not one prepare picks and stays.
    """
    return strip_separator(prompt)


def message_problems(messages: Any, *, need_assistant: bool = True) -> list[tuple[str, str]]:
    """Every problem of a chat example's ``messages`` value, as (field, message) pairs.

    The one validator of chat data, for prepare and for training's reader alike: a non-empty
    list of objects, each with a ``role`` from ``CHAT_ROLES`` and a string ``content``, and (when
    ``need_assistant``) an assistant message to learn from. Fields read like
    ``messages[2].role``; an empty list means the messages are valid.
    """
    if not isinstance(messages, list) or not messages:
        return [("messages", "expected a non-empty list of messages")]
    found: list[tuple[str, str]] = []
    for i, m in enumerate(messages):
        at = f"messages[{i}]"
        if not isinstance(m, dict):
            found.append((at, "expected an object with role and content"))
            continue
        role = m.get("role")
        if role not in CHAT_ROLES:
            found.append(
                (f"{at}.role", f"role must be one of {', '.join(CHAT_ROLES)}, got {role!r}")
            )
        if not isinstance(m.get("content"), str):
            found.append((f"{at}.content", "content must be a string"))
    if need_assistant and not found and not any(m["role"] == "assistant" for m in messages):
        found.append(("messages", "needs at least one assistant message to learn from"))
    return found
