"""Quality checks on a dataset, each with an optional fix, run in order like OpenAI's prepare_data.

A check looks at the current examples and returns a :class:`CheckResult`: a status, counts, example
locations (``file:line``) and, when something can be done about it, a :class:`Fix`. The caller
decides whether to apply each fix (flags, a question in a terminal, or the recommended default)
before the next check runs, so later checks see the data as fixed so far.

Checks of how prompts and completions begin and end (separator, stop sequence, leading space)
live in :mod:`trimtab.data.affixes`; checks that need the base model's tokenizer in
:mod:`trimtab.data.tokens`; checks that need the split (leakage) in :mod:`trimtab.data.splits`.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from trimtab.data.examples import Example, Mode, looks_like_classification
from trimtab.models.tasks import ModelKind

Status = Literal["ok", "info", "warning", "error"]
Task = Literal[
    "classification", "conditional-generation", "open-ended-generation", "language-modeling"
]
OutputFormat = Literal["prompt-completion", "chat", "text"]

MAX_LOCATIONS = 5  # example locations shown per check
MIN_PER_CLASS = 100  # OpenAI's advice: at least ~100 examples per class

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_ASCII_PUNCT = string.punctuation.replace("_", "").encode()  # \w keeps the underscore
# Normalising replaces every character outside [\w\s] by a space: the ASCII ones (punctuation
# and control characters) by bytes.translate, the others by a regex that skips ASCII quickly.
_ASCII_OTHER = _ASCII_PUNCT + bytes(range(0x00, 0x09)) + bytes(range(0x0E, 0x1C)) + b"\x7f"
_ASCII_TO_SPACE = bytes.maketrans(_ASCII_OTHER, b" " * len(_ASCII_OTHER))
_NON_ASCII_OTHER = re.compile(r"[^\x00-\x7f\w\s]")
_ASCII_UPPER = string.ascii_uppercase.encode()
_ASCII_LOWER = string.ascii_lowercase.encode()
_ASCII_FOLD = bytes.maketrans(
    string.ascii_uppercase.encode() + _ASCII_PUNCT,
    string.ascii_lowercase.encode() + b" " * len(_ASCII_PUNCT),
)


@dataclass
class Fix:
    """Something a check offers to do; ``apply`` changes the state in place."""

    id: str
    description: str
    recommended: bool
    apply: Callable[[State], None]


@dataclass
class CheckResult:
    """The outcome of one check, as shown in the terminal report and saved in report.json."""

    id: str
    title: str
    status: Status
    message: str
    count: int = 0
    locations: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    fix: Fix | None = None
    applied: bool | None = None
    decided_by: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "title": self.title,
            "status": self.status,
            "count": self.count,
            "message": self.message,
            "examples": self.locations,
        }
        if self.details:
            out["details"] = self.details
        if self.fix is not None:
            out["fix"] = {
                "id": self.fix.id,
                "description": self.fix.description,
                "recommended": self.fix.recommended,
                "applied": self.applied,
                "decided_by": self.decided_by,
            }
        return out


@dataclass
class State:
    """The dataset as it moves through the checks."""

    examples: list[Example]
    mode: Mode
    format: OutputFormat
    task: Task | None = None
    separator: str | None = None  # appended to prompts (prompt-completion format)
    stop: str | None = None  # appended to completions (generation tasks)
    leading_space: bool = False  # completions start with whitespace
    requested_separator: str | None = None
    requested_stop: str | None = None
    system: str | None = None  # system message when supervised data is written as chat
    model: str | None = None  # the base model named by --model (None: --model none)
    model_kind: ModelKind | None = None  # its kind; None when unknown (decoder conventions)
    unused_fields: list[str] = field(default_factory=list)
    splits: dict[str, list[Example]] | None = None  # set once the data is split
    _norm: dict[str, str] = field(default_factory=dict, repr=False)
    # prompt as held (separator included) -> its key, for the separator the keys were made with
    _keys: dict[str, str] = field(default_factory=dict, repr=False)
    _keys_separator: str | None = field(default=None, repr=False)

    def prompt_of(self, ex: Example) -> str:
        if self.mode == "text":
            return ex.text
        if self.mode == "chat":
            return json.dumps(_context(ex.messages or []), ensure_ascii=False, sort_keys=True)
        return ex.prompt

    def completion_of(self, ex: Example) -> str:
        if self.mode == "text":
            return ""
        if self.mode == "chat":
            return _last_assistant(ex.messages or [])
        return ex.completion

    def label_of(self, ex: Example) -> str:
        return self.completion_of(ex).strip()

    def prompt_key(self, ex: Example) -> str:
        """The normalised prompt: equal keys mean the same input for dedupe, splits, leakage."""
        prompt = self.prompt_of(ex)
        if self._keys_separator != self.separator:
            self._keys.clear()  # a key depends on the separator taken off
            self._keys_separator = self.separator
        key = self._keys.get(prompt)  # the prompt's hash is cached: no copy, no rehash
        if key is None:
            bare = prompt
            if self.separator and self.mode == "supervised":
                # Without the separator the key is the one already cached before it was appended.
                bare = prompt.removesuffix(self.separator)
            key = self._keys[prompt] = self.normalized(bare)
        return key

    def normalized(self, text: str) -> str:
        """Lower case, no punctuation, single spaces: the key for near-duplicates."""
        norm = self._norm.get(text)
        if norm is None:
            if text.isascii():  # bytes.translate does the same as the regex, twice as fast
                norm = " ".join(text.encode().translate(_ASCII_FOLD).decode().split())
            else:  # the regex for the non-ASCII characters only, bytes.translate for the rest
                low = text.lower().encode("utf-8", "surrogatepass").translate(_ASCII_TO_SPACE)
                norm = " ".join(
                    _NON_ASCII_OTHER.sub(" ", low.decode("utf-8", "surrogatepass")).split()
                )
            self._norm[text] = norm
        return norm

    def labels(self) -> Counter[str]:
        return Counter(self.label_of(ex) for ex in self.examples)

    @property
    def encoder(self) -> bool:
        """The base model is an encoder: it classifies with a head, reading the text whole."""
        return self.model_kind == "encoder"


def _context(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=-1)
    return messages[:last] if last >= 0 else messages


def _last_assistant(messages: list[dict[str, Any]]) -> str:
    for m in reversed(messages):
        if m.get("role") == "assistant":
            return m.get("content") or ""
    return ""


def locations(examples: list[Example]) -> list[str]:
    return [ex.where for ex in examples[:MAX_LOCATIONS]]


def drop(bad: list[Example]) -> Callable[[State], None]:
    ids = {id(ex) for ex in bad}
    return lambda s: setattr(s, "examples", [ex for ex in s.examples if id(ex) not in ids])


def _texts(state: State, ex: Example) -> list[str]:
    """Every free-text field of an example, for character-level checks."""
    if state.mode == "chat":
        return [m["content"] for m in ex.messages or []]
    if state.mode == "text":
        return [ex.text]
    return [ex.prompt, ex.completion]


def check_quantity(state: State) -> CheckResult:
    n = len(state.examples)
    if n < 100:
        return CheckResult(
            "quantity",
            "Number of examples",
            "warning",
            f"{n} examples: fine-tuning needs at least a few hundred; "
            "quality grows roughly linearly with each doubling of the data",
            n,
        )
    advice = (
        "enough to start; each doubling of the data tends to raise quality linearly"
        if n < 1000
        else "a healthy amount of data"
    )
    return CheckResult("quantity", "Number of examples", "ok", f"{n:,} examples: {advice}", n)


def check_extra_fields(state: State) -> CheckResult:
    extra = state.unused_fields
    if not extra:
        return CheckResult("extra-fields", "Extra fields", "ok", "no unused fields")
    return CheckResult(
        "extra-fields",
        "Extra fields",
        "info",
        "not used by the mapping and not written: " + ", ".join(extra),
        len(extra),
        details={"fields": extra},
    )


def check_invalid_utf8(state: State) -> CheckResult:
    bad = [ex for ex in state.examples if ex.bad_utf8]
    if not bad:
        return CheckResult("invalid-utf8", "Invalid UTF-8", "ok", "all text is valid UTF-8")
    return CheckResult(
        "invalid-utf8",
        "Invalid UTF-8",
        "warning",
        f"{len(bad)} examples contain bytes that are not valid UTF-8 (decoded as U+FFFD)",
        len(bad),
        locations(bad),
        fix=Fix(
            "drop-invalid-utf8",
            f"Remove the {len(bad)} examples with invalid UTF-8",
            True,
            drop(bad),
        ),
    )


def check_control_characters(state: State) -> CheckResult:
    bad = [ex for ex in state.examples if any(_CONTROL.search(t) for t in _texts(state, ex))]
    if not bad:
        return CheckResult(
            "control-characters", "Control characters", "ok", "no control characters"
        )

    def strip(s: State) -> None:
        ids = {id(ex) for ex in bad}
        for ex in s.examples:
            if id(ex) in ids:
                ex.prompt = _CONTROL.sub("", ex.prompt)
                ex.completion = _CONTROL.sub("", ex.completion)
                ex.text = _CONTROL.sub("", ex.text)
                for m in ex.messages or []:
                    m["content"] = _CONTROL.sub("", m["content"])

    return CheckResult(
        "control-characters",
        "Control characters",
        "warning",
        f"{len(bad)} examples contain control characters (other than tab and newline)",
        len(bad),
        locations(bad),
        fix=Fix(
            "strip-control-characters",
            f"Strip control characters from {len(bad)} examples",
            True,
            strip,
        ),
    )


def check_empty_fields(state: State) -> CheckResult:
    if state.mode == "supervised":
        empty_completion = [ex for ex in state.examples if not ex.completion.strip()]
        all_prompts_empty = all(not ex.prompt.strip() for ex in state.examples)
        empty_prompt = (
            [] if all_prompts_empty else [ex for ex in state.examples if not ex.prompt.strip()]
        )
        bad = empty_completion + [ex for ex in empty_prompt if ex.completion.strip()]
        details = {"empty_completions": len(empty_completion), "empty_prompts": len(empty_prompt)}
        what = (
            f"{len(empty_completion)} empty or whitespace-only completions, "
            f"{len(empty_prompt)} empty prompts"
        )
    elif state.mode == "chat":
        bad = [
            ex for ex in state.examples if any(not m["content"].strip() for m in ex.messages or [])
        ]
        details = {"empty_messages": len(bad)}
        what = f"{len(bad)} conversations with an empty message"
    else:
        bad = [ex for ex in state.examples if not ex.text.strip()]
        details = {"empty_texts": len(bad)}
        what = f"{len(bad)} empty or whitespace-only texts"
    if not bad:
        return CheckResult(
            "empty-fields", "Empty fields", "ok", "no empty fields", 0, details=details
        )
    return CheckResult(
        "empty-fields",
        "Empty fields",
        "warning",
        what,
        len(bad),
        locations(bad),
        details,
        Fix("drop-empty", f"Remove the {len(bad)} examples with empty fields", True, drop(bad)),
    )


def infer_task(state: State) -> Task:
    """The task the data looks like; classification by the shared `looks_like_classification`."""
    if state.mode == "text":
        return "language-modeling"
    if all(not state.prompt_of(ex).strip() for ex in state.examples):
        return "open-ended-generation"
    if looks_like_classification([state.completion_of(ex) for ex in state.examples]):
        return "classification"
    return "conditional-generation"


def check_task_type(state: State, requested: Task | None) -> CheckResult:
    inferred = infer_task(state)
    state.task = requested or inferred
    labels = state.labels()
    details: dict[str, Any] = {"inferred": inferred, "task": state.task}
    message = f"{state.task}"
    if state.task == "classification":
        message += (
            f" with {len(labels)} label{'s' if len(labels) != 1 else ''}: "
            + ", ".join(repr(k) for k in sorted(labels)[:10])
            + (" ..." if len(labels) > 10 else "")
        )
        details["labels"] = sorted(labels)
    if requested and requested != inferred:
        message += f" (as requested; the data looks like {inferred})"
    return CheckResult("task-type", "Task type", "info", message, details=details)


def _held_out_first(examples: list[Example]) -> list[Example]:
    """Examples of preset held-out files first: a repeat is then always found in train, and
    dropping it there keeps an official validation or test set whole."""
    return [ex for ex in examples if ex.split] + [ex for ex in examples if not ex.split]


def check_duplicates(state: State) -> CheckResult:
    seen: set[tuple[str, str]] = set()
    dups: list[Example] = []
    for ex in _held_out_first(state.examples):
        key = (state.prompt_of(ex), state.completion_of(ex))
        if key in seen and not ex.split:
            dups.append(ex)
        else:
            seen.add(key)
    if not dups:
        return CheckResult("duplicates", "Duplicates", "ok", "no duplicate examples")
    return CheckResult(
        "duplicates",
        "Duplicates",
        "warning",
        f"{len(dups)} examples repeat an earlier one exactly",
        len(dups),
        locations(dups),
        fix=Fix(
            "drop-duplicates",
            f"Remove {len(dups)} duplicates, keeping the first",
            True,
            drop(dups),
        ),
    )


def check_near_duplicates(state: State) -> CheckResult:
    first: dict[tuple[str, str], tuple[str, str]] = {}  # key -> its first exact text
    variants: dict[tuple[str, str], set[tuple[str, str]]] = {}  # only for keys seen twice
    near: list[Example] = []
    norm = state.normalized
    for ex in _held_out_first(state.examples):
        exact = (state.prompt_of(ex), state.completion_of(ex))
        key = (norm(exact[0]), norm(exact[1]))
        seen = first.setdefault(key, exact)
        if seen is exact:
            continue
        if (texts := variants.get(key)) is None:
            texts = variants[key] = {seen}
        # An exact repeat belongs to the duplicates check (and may have been kept on purpose).
        if exact not in texts and not ex.split:
            near.append(ex)
        texts.add(exact)
    if not near:
        return CheckResult(
            "near-duplicates",
            "Near-duplicates",
            "ok",
            "no near-duplicates after normalising case, spaces and punctuation",
        )
    return CheckResult(
        "near-duplicates",
        "Near-duplicates",
        "warning",
        f"{len(near)} examples differ from an earlier one only in case, spaces or punctuation",
        len(near),
        locations(near),
        fix=Fix(
            "drop-near-duplicates",
            f"Remove {len(near)} near-duplicates, keeping the first",
            True,
            drop(near),
        ),
    )


def check_contradictions(state: State) -> CheckResult:
    if state.task in ("open-ended-generation", "language-modeling"):
        return CheckResult(
            "contradictions", "Contradictions", "ok", "not applicable: no prompts to contradict"
        )
    first: dict[str, Example] = {}
    groups: dict[str, list[Example]] = {}  # only prompts seen more than once
    for ex in state.examples:
        key = state.prompt_key(ex)
        if (seen := first.setdefault(key, ex)) is not ex:
            groups.setdefault(key, [seen]).append(ex)
    conflicting = [
        groups[key]
        for key in first  # in the order the prompts first appear
        if key in groups
        and len({state.normalized(state.completion_of(ex)) for ex in groups[key]}) > 1
    ]
    if not conflicting:
        return CheckResult(
            "contradictions", "Contradictions", "ok", "no prompt appears with different completions"
        )
    bad = [ex for g in conflicting for ex in g if not ex.split]  # held-out files stay whole
    return CheckResult(
        "contradictions",
        "Contradictions",
        "warning",
        f"{len(conflicting)} prompts appear with different completions ({len(bad)} examples)",
        len(bad),
        locations(bad),
        {"prompts": len(conflicting)},
        Fix(
            "drop-contradictions",
            f"Remove all {len(bad)} contradicting examples",
            False,
            drop(bad),
        ),
    )


def _shouts(text: str) -> bool:
    return len(text) >= 8 and text.isupper()


def _letter_cases(texts: list[str]) -> tuple[int, int]:
    """Upper- and lower-case letters in the texts: ASCII ones counted in bulk by bytes.translate
    (the same letters as str.isupper and str.islower), the others one by one."""
    ascii_bytes = "".join(t for t in texts if t.isascii()).encode()
    upper = len(ascii_bytes) - len(ascii_bytes.translate(None, _ASCII_UPPER))
    lower = len(ascii_bytes) - len(ascii_bytes.translate(None, _ASCII_LOWER))
    for text in texts:
        if not text.isascii():
            upper += sum(map(str.isupper, text))
            lower += sum(map(str.islower, text))
    return upper, lower


def check_uppercase(state: State) -> CheckResult:
    if state.mode == "supervised":  # the common case without a list per example
        shouting = [ex for ex in state.examples if _shouts(ex.prompt) or _shouts(ex.completion)]
    else:
        shouting = [ex for ex in state.examples if any(map(_shouts, _texts(state, ex)))]
    # The dataset-wide share is estimated on an even sample: counting every character of a
    # large file in Python would dominate the run time, and the advice only needs the ratio.
    step = max(1, len(state.examples) // 20_000)
    upper, lower = _letter_cases([t for ex in state.examples[::step] for t in _texts(state, ex)])
    share = upper / max(1, upper + lower)
    details = {"uppercase_share": round(share, 4), "all_caps_examples": len(shouting)}
    if share <= 1 / 3:
        status: Status = "info" if shouting else "ok"
        return CheckResult(
            "uppercase",
            "Upper-case text",
            status,
            f"{share:.1%} of letters are upper case; {len(shouting)} examples are all capitals",
            len(shouting),
            locations(shouting),
            details,
        )

    def lowercase(s: State) -> None:
        for ex in s.examples:
            ex.prompt, ex.completion, ex.text = (
                ex.prompt.lower(),
                ex.completion.lower(),
                ex.text.lower(),
            )
            for m in ex.messages or []:
                m["content"] = m["content"].lower()

    return CheckResult(
        "uppercase",
        "Upper-case text",
        "warning",
        f"{share:.1%} of letters are upper case: upper-case text tends to train "
        "worse than normal mixed case",
        len(shouting),
        locations(shouting),
        details,
        Fix("lowercase", "Lower-case all text", False, lowercase),
    )
