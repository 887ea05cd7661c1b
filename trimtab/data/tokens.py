"""Checks that count tokens with the chosen base model's real tokenizer.

Character counts are a poor proxy: SmolLM2 spends two tokens on the label ``" 5"``, and a review
of 2,000 characters can be 400 or 700 tokens. These checks tokenize every example exactly as it
will be written (separator, leading space and stop included), on any size of data.

Counting is fast because a tokenizer's model never looks across the pieces its pre-tokenizer cuts
a text into: a text's count is the sum of its pieces' counts. For the two pipelines of trimtab's
models (byte-level BPE behind GPT-2's split, as SmolLM2 and GPT-2 have; WordPiece behind BERT's
split, as MiniLM and MPNet have) the texts are cut in Python with the same split, its character
classes read from the tokenizer itself, and each distinct piece is tokenized once. Any other
tokenizer, and any text the split is not exact for, goes through the Rust tokenizer in batches.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trimtab.data.checks import CheckResult, Fix, State, drop, locations
from trimtab.data.examples import Example
from trimtab.models.chat import render_chat


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
        counts = _count_rust(rust, distinct)
    else:
        counts = []
        for start in range(0, len(distinct), CHUNK):
            encoded = tokenizer(
                distinct[start : start + CHUNK],
                add_special_tokens=False,
                padding=False,
                truncation=False,
            )
            counts += [len(ids) for ids in encoded["input_ids"]]
    by_text = dict(zip(distinct, counts))
    return [by_text[t] for t in texts]


# --- counting by pieces ----------------------------------------------------------------------

# Texts per call into the Rust tokenizer: each call encodes its batch on every core with the GIL
# released, and a bounded batch keeps the Encoding objects it returns (ids, tokens, offsets) small.
CHUNK = 4096

# GPT-2's split as tokenizers' ByteLevel pre-tokenizer hard-codes it, its classes spelt out: L
# letters, N numbers, S white space, each filled with the characters the tokenizer itself puts
# there (Python's Unicode tables and Oniguruma's, which tokenizers uses, differ at the edges).
_BYTE_LEVEL = r"'s|'t|'re|'ve|'m|'ll|'d| ?[{L}]+| ?[{N}]+| ?[^{S}{L}{N}]+|[{S}]+(?![^{S}])|[{S}]+"
# (class, text before the character, text after it, pieces): the character is in the class when
# the tokenizer cuts the probe into that many pieces. "a" is a letter, "0" a number, "!" neither.
_PROBES = (("L", "a", "", 1), ("N", "0", "", 1), ("O", "!", "", 1), ("S", "\t", "", 1))
# BERT's split of lower-cased ASCII text: letters and digits run together, every other printable
# character (all ASCII punctuation to BERT) stands alone, white space goes.
_BERT = re.compile(r"[a-z0-9]+|[^a-z0-9\t\n\r ]")
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_SELF_CHECK = (
    "It's 12 o'clock -- the 3RD time!!  Really?\n\n###\n\n",
    "a\t\tb  c \n d_e 'S 'll x' ''s 1234567 ...   ",
    " ",
)

Split = Callable[[str], "list[str] | None"]  # a text's pieces, or None where not exact for it
Count = Callable[[str], "int | None"]  # a text's tokens, or None where the split is not exact


def _count_rust(rust: Any, texts: list[str]) -> list[int]:
    """Counts of distinct texts: by pieces where the split is exact, the rest (and every text of
    another pipeline) with the Rust tokenizer in batches."""
    count = _counter(rust, texts)
    found: list[int | None] = [None] * len(texts) if count is None else list(map(count, texts))
    slow = [i for i, n in enumerate(found) if n is None]
    for start in range(0, len(slow), CHUNK):
        part = slow[start : start + CHUNK]
        encoded = rust.encode_batch_fast([texts[i] for i in part], add_special_tokens=False)
        for i, encoding in zip(part, encoded):
            found[i] = len(encoding)
    return [n or 0 for n in found]


class _Counts(dict[str, int]):
    """Token counts of strings, each worked out by ``count`` the first time it is asked for."""

    def __init__(self, count: Callable[[str], int]) -> None:
        super().__init__()
        self.count = count

    def __missing__(self, key: str) -> int:
        value = self[key] = self.count(key)
        return value


def _counter(rust: Any, texts: list[str]) -> Count | None:
    """A text's count as the sum of its words' counts, each word's the sum of its pieces'.

    Words (what ``str.split`` cuts) repeat far more than texts, so most texts are a split and
    a few dictionary look-ups. The split is exact: BERT cuts at every white space, and GPT-2's
    split cuts before every space that follows a character other than white space (no piece
    runs on across such a space, and no match looks behind). A text with a space right after
    white space is summed by its pieces instead; one holding an added token's text (e.g.
    ``<|im_start|>``, which the tokenizer keeps whole) is left to the tokenizer. None for a
    pipeline of another kind.
    """
    split = _splitter(rust, texts)
    if split is None:
        return None
    pieces = _Counts(lambda piece: len(rust.encode(piece, add_special_tokens=False)))
    get = pieces.__getitem__
    lower = _lowercases(rust)
    added = _added_tokens(rust, lower)

    def by_pieces(text: str) -> int:
        return sum(map(get, split(text) or ()))  # text the split refuses never gets here

    if isinstance(split, _ByteLevel):
        first, spaced = _Counts(by_pieces), _Counts(lambda word: by_pieces(" " + word))
        get_spaced = spaced.__getitem__
        # one search for both: an added token (group 1) or a space right after white space
        odd = re.compile(f"({added})|{split.glued.pattern}" if added else split.glued.pattern)

        def count(text: str) -> int | None:
            if split.refuses(text):
                return None
            if found := odd.search(text):
                if added and (found.group(1) is not None or re.search(added, text)):
                    return None
                return by_pieces(text)  # words do not add up at that space
            words = text.split(" ")
            return first[words[0]] + sum(map(get_spaced, words[1:]))

        return count
    words = _Counts(by_pieces).__getitem__
    control = _ASCII_CONTROL.pattern
    odd_bert = re.compile(f"{added}|{control}" if added else control, re.I if lower else 0)

    def count_bert(text: str) -> int | None:
        if not text.isascii() or odd_bert.search(text):
            return None
        return sum(map(words, (text.lower() if lower else text).split()))

    return count_bert


def _component(part: Any) -> dict[str, Any] | None:
    """A tokenizer component's settings as tokenizer.json has them (None when there is none)."""
    return None if part is None else json.loads(part.__getstate__())


def _lowercases(rust: Any) -> bool:
    normalizer = _component(rust.normalizer)
    return bool(normalizer and normalizer.get("lowercase"))


def _splitter(rust: Any, texts: list[str]) -> Split | None:
    """The split of this tokenizer's pipeline when it is one of the two known to be a regex
    split followed by a per-piece model (and the split agrees with the tokenizer's on sample
    texts); None otherwise."""
    normalizer, pre = _component(rust.normalizer), _component(rust.pre_tokenizer) or {}
    model = type(rust.model).__name__
    split: Split | None = None
    if (
        pre.get("type") == "ByteLevel"
        and pre.get("use_regex", True)
        and not pre.get("add_prefix_space")
        and normalizer is None
        and model == "BPE"
        and rust.model.dropout is None
    ):
        split = _ByteLevel(rust.pre_tokenizer, texts)
    elif (
        pre.get("type") == "BertPreTokenizer"
        and normalizer is not None
        and normalizer.get("type") == "BertNormalizer"
        and model == "WordPiece"
    ):
        split = _bert_split(bool(normalizer.get("lowercase")))
    if split is None or not _agrees(rust, split, texts):
        return None
    return split


class _ByteLevel:
    """GPT-2's split with the classes the tokenizer gives each character of the texts; a text
    with a character no probe places (one in two classes, or one the tokenizer refuses) is
    left to the tokenizer."""

    def __init__(self, pre: Any, texts: list[str]) -> None:
        found = set(_NON_ASCII.findall("".join(t for t in texts if not t.isascii())))
        classes: dict[str, list[str]] = {"L": [], "N": [], "S": [], "O": []}
        unknown: list[str] = []
        for char in [chr(i) for i in range(128)] + sorted(found):
            try:
                hits = [
                    name
                    for name, before, after, n in _PROBES
                    if len(pre.pre_tokenize_str(before + char + after)) == n
                ]
            except Exception:  # noqa: BLE001 - e.g. a lone surrogate: the tokenizer decides
                hits = []
            (classes[hits[0]] if len(hits) == 1 else unknown).append(char)
        spelt = {name: "".join(map(re.escape, chars)) for name, chars in classes.items()}
        self.findall = re.compile(_BYTE_LEVEL.format(**spelt)).findall
        self.refuse = re.compile(f"[{''.join(map(re.escape, unknown))}]") if unknown else None
        self.glued = re.compile(f"[{spelt['S']}] ")  # a space right after white space

    def refuses(self, text: str) -> bool:
        return self.refuse is not None and not text.isascii() and bool(self.refuse.search(text))

    def __call__(self, text: str) -> list[str] | None:
        return None if self.refuses(text) else self.findall(text)


def _bert_split(lower: bool) -> Split:
    """BERT's split for ASCII text without control characters; other text is left to the
    tokenizer (its normaliser strips accents and splits Chinese characters)."""
    findall = _BERT.findall

    def split(text: str) -> list[str] | None:
        if not text.isascii() or _ASCII_CONTROL.search(text):
            return None
        return findall(text.lower() if lower else text)

    return split


def _agrees(rust: Any, split: Split, texts: list[str]) -> bool:
    """The split gives the tokenizer's own pieces on fixed tricky texts and a spread of the data."""
    step = max(1, len(texts) // 64)
    for text in (*_SELF_CHECK, *texts[::step]):
        pieces = split(text)
        if pieces is None:
            continue
        normalized = text if rust.normalizer is None else rust.normalizer.normalize_str(text)
        offsets = rust.pre_tokenizer.pre_tokenize_str(normalized)
        if pieces != [normalized[a:b] for _, (a, b) in offsets]:
            return False
    return True


def _added_tokens(rust: Any, lower: bool) -> str | None:
    """A regex of the added tokens' texts (any case, where the normaliser lowercases), longest
    first; None when there are none."""
    contents = {t.content for t in rust.get_added_tokens_decoder().values() if t.content}
    if lower:
        contents = {c.lower() for c in contents}
    return "|".join(map(re.escape, sorted(contents, key=len, reverse=True))) or None


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
    """Token counts of every example of a dataset, with every example over the limit."""

    prompt: list[int]
    completion: list[int]
    long: list[tuple[Example, int]]  # every example over max_length, with its total
    max_total: int
    n: int
    sampled: int | None = None  # always None now that every example is counted (for readers)

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
    """Count the tokens of every example exactly, on any size of data."""
    return TokenCounts.exact(state.examples, *example_lengths(state, tokenizer), max_length)


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
        "sampled": None,  # every example counted (readers of older reports look for a sample)
        "tokens": sum(totals),
    }
    message = (
        f"{model}: p50 {t['p50']}, p95 {t['p95']}, max {t['max']} tokens per example; "
        f"{over} of {counts.n} exceed --max-length {max_length}"
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
