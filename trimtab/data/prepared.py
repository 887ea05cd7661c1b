"""Prepared JSONL examples, read and checked, and encoded into token sequences.

``trimtab prepare`` writes prompt/completion, chat (``messages``) or raw ``text`` examples;
:func:`read_examples` and :func:`detect_format` read them back with file/line errors;
:func:`encode_sft` (loss on completions only), :func:`encode_lm` (every token, packed) and
:func:`encode_classify` (tokens + class index) encode them. Training batches these sequences
(:mod:`trimtab.training.batches`); evaluation scores them. Tokenization is batched (Rust, both
cores): a Python loop of single calls would cost several times more.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from trimtab.data.examples import head_text, message_problems
from trimtab.data.readers import Record, read_records
from trimtab.errors import DataError, Problem, ProblemList
from trimtab.models.batching import IGNORE
from trimtab.models.chat import TemplateRefused, has_chat_template, render_chat

Format = Literal["prompt-completion", "chat", "text"]
Records = Sequence[Record | Mapping[str, Any]]  # records from read_examples, or plain dicts
MIN_LAST_CHUNK = 4  # packing keeps a final partial chunk of at least max_length // 4 tokens


@dataclass(slots=True)
class Encoded:
    """One training sequence. ``labels`` are aligned with ``input_ids`` (Hugging Face models
    shift them), -100 where nothing is learnt; classification leaves them empty and sets
    ``label``, the class index."""

    input_ids: list[int]
    labels: list[int]
    weights: list[float] | None = None  # per-token loss weight; None = 1 on every trained label
    label: int | None = None
    features: Any = None  # left for the loop: a frozen trunk's cached output (slots need a field)


class _Problems(ProblemList):
    """Problems located by the record they are about."""

    def add(self, message: str, record: Record, field: str | None = None) -> None:  # type: ignore[override]
        super().add(Problem(message, record.file, record.line, field))


# --- reading and checking -------------------------------------------------------------------


def read_examples(path: str | Path) -> list[Record]:
    """Read a prepared JSONL file and check its format; each record keeps its file and line."""
    records = read_records(path)
    detect_format(records)
    return records


def _records(records: Records) -> list[Record]:
    """Accept plain dicts too (tests, in-memory data); they are numbered from line 1."""
    return [
        r if isinstance(r, Record) else Record("<examples>", i, dict(r))
        for i, r in enumerate(records, start=1)
    ]


def _format_of(fields: Mapping[str, Any]) -> Format | None:
    if "messages" in fields:
        return "chat"
    if "prompt" in fields or "completion" in fields:
        return "prompt-completion"
    return "text" if "text" in fields else None


def detect_format(records: Records) -> Format:
    """The format of the first record; every record must share it and have well-typed fields,
    else DataError names the file, line and field of each bad record (up to 20)."""
    records = _records(records)
    if not records:
        raise DataError(Problem("no examples"))
    first = records[0]
    fmt = _format_of(first.fields)
    if fmt is None:
        raise DataError(
            Problem(
                f"unknown format: expected 'prompt' and 'completion', 'messages', or 'text', got "
                f"{', '.join(map(repr, first.fields)) or 'no fields'}",
                first.file,
                first.line,
            )
        )
    problems = _Problems()
    for r in records:
        this = _format_of(r.fields)
        if this != fmt:
            problems.add(
                f"{this or 'unknown'} format, but line {first.line} of {first.file} "
                f"is {fmt}; a file must hold one format",
                r,
            )
        elif fmt == "chat":
            _check_messages(r, problems)
        else:
            for name in ("prompt", "completion") if fmt == "prompt-completion" else ("text",):
                value = r.fields.get(name)
                if not isinstance(value, str):
                    problems.add("missing" if value is None else "must be a string", r, name)
    problems.raise_if_any()
    return fmt


def _check_messages(r: Record, problems: _Problems) -> None:
    # prepare's validator: the same roles and messages (an assistant turn is checked on use)
    for field, message in message_problems(r.fields["messages"], need_assistant=False):
        problems.add(message, r, field)


def _last_assistant(r: Record, problems: _Problems) -> int | None:
    turns = [i for i, m in enumerate(r.fields["messages"]) if m["role"] == "assistant"]
    if not turns:
        problems.add("needs at least one assistant message to learn from", r, "messages")
        return None
    return turns[-1]


def _needs_pairs(records: list[Record], fmt: Format, task: str) -> None:
    if fmt == "text":
        first = records[0]
        raise DataError(
            Problem(
                f"{task} needs prompt/completion or chat examples, but this file "
                "holds raw text; use the language-modeling task for text",
                first.file,
                first.line,
                "text",
            )
        )


# --- tokenizing -----------------------------------------------------------------------------


def _tokenize(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Ids of each text without special tokens: distinct texts once, in one batch call.
    Duplicates share one list, so callers must not change these in place."""
    distinct = list(dict.fromkeys(texts))
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch_fast"):
        # The Rust tokenizer directly: no offsets and no Python-side bookkeeping, twice as fast
        ids = [e.ids for e in backend.encode_batch_fast(distinct, add_special_tokens=False)]
    else:
        ids = tokenizer(distinct, add_special_tokens=False)["input_ids"] if distinct else []
    by_text = dict(zip(distinct, ids))
    return [by_text[t] for t in texts]


def _added_specials(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special ids the tokenizer puts before and after a text (BOS; [CLS] ... [SEP])."""
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x")["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    return [], []


def _chat_segments(tokenizer: Any, r: Record, problems: _Problems) -> list[tuple[str, bool]]:
    """Split a conversation into (text, trained) pieces; the assistant answers are trained.

    Rendering up to an answer with the generation prompt gives what the model reads; rendering
    with the answer gives one more piece, which is exactly what the model must write (answer and
    end-of-turn marker). Templates that rewrite earlier turns (e.g. strip old reasoning) break
    this for all but the last answer; then only the last answer is trained.
    """
    messages = r.fields["messages"]
    last = _last_assistant(r, problems)
    if last is None:
        return []
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    try:
        for candidates in (turns, [last]):
            pieces: list[tuple[str, bool]] = []
            done = ""
            for i in candidates:
                prefix = render_chat(tokenizer, messages[:i], True)
                full = render_chat(tokenizer, messages[: i + 1], False)
                if not (prefix.startswith(done) and full.startswith(prefix)):
                    break
                pieces += [(prefix[len(done) :], False), (full[len(prefix) :], True)]
                done = full
            else:
                whole = render_chat(tokenizer, messages, False)
                if whole.startswith(done):
                    pieces.append((whole[len(done) :], False))
                return [(text, trained) for text, trained in pieces if text]
    except TemplateRefused as e:
        problems.add(str(e), r, "messages")
        return []
    problems.add(
        "the chat template renders this conversation so that the answer cannot be told "
        "apart from the prompt",
        r,
        f"messages[{last}]",
    )
    return []


def _sequence(
    head: list[int], parts: list[tuple[list[int], bool]], max_length: int, prompt_loss_weight: float
) -> Encoded:
    """Join the parts after ``head`` (BOS, always kept); label the trained ones; truncate.

    Over ``max_length``, tokens go from the start, after ``head``: the end of the prompt (its
    separator) and the last trained part stay. A last trained part longer than the room by
    itself is kept from its start, and everything before it is dropped.
    """
    ids = list(head)
    labels = [IGNORE] * len(head)
    weights = [0.0] * len(head)
    keep_from = len(head)  # where the last trained part starts
    for part, trained in parts:
        if trained:
            keep_from = len(ids)
        ids += part
        if trained or prompt_loss_weight > 0:
            labels += part
        else:
            labels += [IGNORE] * len(part)
        weights += [1.0 if trained else prompt_loss_weight] * len(part)
    if len(ids) > max_length:
        room = max_length - len(head)
        start = len(ids) - room if len(ids) - keep_from <= room else keep_from
        keep = slice(start, start + room)
        ids, labels, weights = (
            head + ids[keep],
            labels[: len(head)] + labels[keep],
            weights[: len(head)] + weights[keep],
        )
    return Encoded(ids, labels, weights if prompt_loss_weight > 0 else None)


def _check_max_length(max_length: int, tokenizer: Any) -> None:
    before, after = _added_specials(tokenizer)
    if max_length < len(before) + len(after) + 1:
        raise ValueError(f"max_length {max_length} leaves no room for any token")


# --- the three tasks ------------------------------------------------------------------------


def encode_sft(
    records: Records,
    tokenizer: Any,
    max_length: int,
    prompt_loss_weight: float = 0.0,
    *,
    add_eos: bool = False,
) -> list[Encoded]:
    """Encode prompt/completion or chat examples with the loss on the completion tokens.

    Prompt and completion are tokenized separately so the boundary is exact; the tokenizer's
    BOS (if it adds one) comes first. ``add_eos`` (for generation data) appends EOS to each
    completion so the model learns to stop; a chat template's end-of-turn marker does that job,
    so there it applies only to the ``role: content`` fallback. ``prompt_loss_weight > 0`` also
    trains the prompt tokens, with that weight (``weights``, OpenAI's legacy semantics).
    Over ``max_length``, the start of the prompt goes: its end (the separator) and the whole
    completion stay; a completion too long by itself keeps its start and loses the prompt.
    """
    if prompt_loss_weight < 0:
        raise ValueError(f"prompt_loss_weight must be >= 0, got {prompt_loss_weight}")
    _check_max_length(max_length, tokenizer)
    records = _records(records)
    fmt = detect_format(records)
    _needs_pairs(records, fmt, "supervised fine-tuning")
    eos = [tokenizer.eos_token_id] if add_eos and tokenizer.eos_token_id is not None else []
    bos = _added_specials(tokenizer)[0]
    if fmt == "prompt-completion":
        prompts = _tokenize(tokenizer, [r.fields["prompt"] for r in records])
        completions = _tokenize(tokenizer, [r.fields["completion"] for r in records])
        return [
            _sequence(bos, [(p, False), (c + eos, True)], max_length, prompt_loss_weight)
            for p, c in zip(prompts, completions)
        ]
    problems = _Problems()
    segments = [_chat_segments(tokenizer, r, problems) for r in records]
    problems.raise_if_any()
    flat = _tokenize(tokenizer, [text for pieces in segments for text, _ in pieces])
    templated = has_chat_template(tokenizer)
    head = [] if templated else bos  # a template writes its own BOS into the text
    bos_id = tokenizer.bos_token_id
    out: list[Encoded] = []
    at = 0
    for pieces in segments:
        parts = [
            (flat[at + k] + (eos if trained and not templated else []), trained)
            for k, (_, trained) in enumerate(pieces)
        ]
        at += len(pieces)
        first = head
        if templated and bos_id is not None and parts and parts[0][0][:1] == [bos_id]:
            first, parts[0] = [bos_id], (parts[0][0][1:], parts[0][1])  # keep BOS on truncation
        out.append(_sequence(first, parts, max_length, prompt_loss_weight))
    return out


def _texts(records: list[Record], fmt: Format, tokenizer: Any) -> list[str]:
    if fmt == "text":
        return [r.fields["text"] for r in records]
    if fmt == "prompt-completion":
        return [r.fields["prompt"] + r.fields["completion"] for r in records]
    problems = _Problems()
    texts = []
    for r in records:
        try:
            texts.append(render_chat(tokenizer, r.fields["messages"], False))
        except TemplateRefused as e:
            problems.add(str(e), r, "messages")
    problems.raise_if_any()
    return texts


def encode_lm(
    records: Records, tokenizer: Any, max_length: int, pack: bool = True
) -> list[Encoded]:
    """Encode texts for language modelling: every token is trained (``labels == input_ids``).

    Each document is BOS (if the tokenizer adds one) + text + EOS. ``pack=True`` joins all
    documents into one stream cut into chunks of exactly ``max_length`` tokens, so no step pads;
    the final partial chunk is kept if it holds at least ``max_length // 4`` tokens (shorter
    ones cost a step for little text) or if it is the only chunk. ``pack=False`` gives one
    sequence per document, cut at ``max_length`` (then without its EOS: the text goes on).
    Prompt/completion examples are trained as prompt + completion; chat as its full rendering.
    """
    _check_max_length(max_length, tokenizer)
    records = _records(records)
    fmt = detect_format(records)
    bos = _added_specials(tokenizer)[0] if fmt != "chat" or not has_chat_template(tokenizer) else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    docs = [bos + ids + eos for ids in _tokenize(tokenizer, _texts(records, fmt, tokenizer))]
    if not pack:
        return [Encoded(d[:max_length], d[:max_length]) for d in docs]
    stream = [t for d in docs for t in d]
    chunks = [stream[s : s + max_length] for s in range(0, len(stream), max_length)]
    if len(chunks) > 1 and len(chunks[-1]) < max(1, max_length // MIN_LAST_CHUNK):
        chunks.pop()
    return [Encoded(c, list(c)) for c in chunks]


def _answer_of(r: Record, fmt: Format, problems: _Problems) -> tuple[str, str, int] | None:
    """(the answer as written, its field, index of its message or -1) of an example: its
    completion, or a chat's last assistant message."""
    if fmt == "prompt-completion":
        return r.fields["completion"], "completion", -1
    last = _last_assistant(r, problems)
    if last is None:
        return None
    return r.fields["messages"][last]["content"], f"messages[{last}].content", last


def completions(records: Records, task: str = "supervised fine-tuning") -> list[str]:
    """What the model learns to answer, as written (leading space kept): each completion, or a
    chat's last assistant message; a DataError names every example without one."""
    records = _records(records)
    fmt = detect_format(records)
    _needs_pairs(records, fmt, task)
    problems = _Problems()
    found = [_answer_of(r, fmt, problems) for r in records]
    problems.raise_if_any()
    return [f[0] for f in found if f is not None]


def label_names(records: Records) -> list[str]:
    """The class names: sorted distinct stripped completions (chat: last assistant message)."""
    return sorted({answer.strip() for answer in completions(records, "classification")})


def encode_classify(
    records: Records, tokenizer: Any, max_length: int, labels: list[str]
) -> list[Encoded]:
    """Encode the prompt with the tokenizer's special tokens (e.g. [CLS] ... [SEP]) and the
    index of its stripped completion in ``labels``; ``Encoded.labels`` stays empty.

    Long prompts keep their start and the special tokens, as the tokenizer's own truncation
    does. Chat: the last assistant message is the label; the turns before it, rendered with
    the generation prompt, are the text (and a template writes its own special tokens).
    """
    _check_max_length(max_length, tokenizer)
    records = _records(records)
    fmt = detect_format(records)
    _needs_pairs(records, fmt, "classification")
    index = {name: i for i, name in enumerate(labels)}
    shown = ", ".join(map(repr, labels[:10])) + (", ..." if len(labels) > 10 else "")
    problems = _Problems()
    texts: list[str] = []
    classes: list[int] = []
    for r in records:
        found = _answer_of(r, fmt, problems)
        if found is None:
            continue
        answer, field, last = found[0].strip(), found[1], found[2]
        if answer not in index:
            problems.add(f"label {answer!r} is not one of the known labels ({shown})", r, field)
        try:
            texts.append(
                head_text(r.fields["prompt"])  # the same text evaluation gives the head
                if last < 0
                else render_chat(tokenizer, r.fields["messages"][:last], True)
            )
        except TemplateRefused as e:
            problems.add(str(e), r, "messages")
        classes.append(index.get(answer, -1))
    problems.raise_if_any()
    templated = fmt == "chat" and has_chat_template(tokenizer)
    before, after = ([], []) if templated else _added_specials(tokenizer)
    room = max_length - len(before) - len(after)
    return [
        Encoded(before + ids[:room] + after, [], None, c)
        for ids, c in zip(_tokenize(tokenizer, texts), classes)
    ]


__all__ = [
    "Encoded",
    "Format",
    "Records",
    "completions",
    "detect_format",
    "encode_classify",
    "encode_lm",
    "encode_sft",
    "label_names",
    "read_examples",
]
