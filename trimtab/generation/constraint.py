"""Constrained decoding: masks that keep a completion inside a JSON schema or a set of choices.

OpenAI's ``response_format`` (``json_object``, ``json_schema``) and a classification model's
label set are all turned into one regular expression, which outlines-core compiles into an
index over the tokenizer's vocabulary (for each automaton state, which tokens may come next).
The engine then asks a per-completion :class:`Matcher` for the allowed-token mask at each step.

outlines-core matches *bytes*, so the vocabulary is given to it as the bytes each token stands
for: byte-level BPE tokens (GPT-2's ``Ġ`` alphabet, as in SmolLM2) are mapped back through that
alphabet, SentencePiece-style tokens have ``▁`` read as a space and ``<0xNN>`` as one byte.
Special tokens are left out, except that the end-of-sequence ids are allowed once the text is
complete. Nothing is ever downloaded: the vocabulary comes from the tokenizer in hand.

Building an index over a 49k-token vocabulary takes a noticeable time, so compiled grammars are
kept in a small LRU keyed by the tokenizer's identity and the constraint.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np
import torch
from outlines_core import Guide, Index, Vocabulary
from outlines_core.json_schema import build_regex_from_schema

from trimtab.generation.tokens import token_decoder
from trimtab.generation.types import Constraint, EngineError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["Grammar", "Matcher", "compile_constraint"]

# At most one space between JSON tokens: unbounded whitespace would let a model loop on spaces
# (or newlines) until it runs out of tokens, and a space is all readable JSON needs.
WHITESPACE = r"[ ]?"
# outlines' default; nesting of schema-less values (an object without properties) stops here.
MAX_RECURSION_DEPTH = 3
_SCALARS: list[dict[str, Any]] = [{"type": t} for t in ("string", "number", "boolean", "null")]
_RECORD = {"type": "object", "additionalProperties": {"anyOf": _SCALARS}}
# "Any JSON object" for json_object, two levels deep: values are scalars, flat objects, or arrays
# of those. outlines' own {"type": "object"} nests three levels, and indexing it over SmolLM2's
# vocabulary takes 5-10 s against about 1 s for this; deeper JSON is rare from small models.
JSON_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": {
        "anyOf": [*_SCALARS, _RECORD, {"type": "array", "items": {"anyOf": [*_SCALARS, _RECORD]}}]
    },
}
_GRAMMARS_CACHED = 32
_VOCABULARIES_CACHED = 4

V = TypeVar("V")


class _IdentityLRU(Generic[V]):
    """An LRU keyed by an object's identity plus a hashable key, safe across threads.

    The object is held weakly, and checked on every hit, so a tokenizer freed and another one
    allocated at the same address never gets the old one's entries."""

    def __init__(self, maxsize: int):
        self._maxsize = maxsize
        self._items: OrderedDict[tuple[int, Any], tuple[weakref.ref[Any], V]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, owner: object, key: Any) -> V | None:
        with self._lock:
            item = self._items.get((id(owner), key))
            if item is None:
                return None
            if item[0]() is not owner:
                del self._items[(id(owner), key)]
                return None
            self._items.move_to_end((id(owner), key))
            return item[1]

    def put(self, owner: object, key: Any, value: V) -> None:
        with self._lock:
            self._items[(id(owner), key)] = (weakref.ref(owner), value)
            self._items.move_to_end((id(owner), key))
            while len(self._items) > self._maxsize:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


@dataclass(frozen=True)
class _TokenBytes:
    """The tokenizer's vocabulary as outlines-core takes it, plus what checks choices need."""

    vocabulary: Vocabulary
    pieces: frozenset[bytes]  # every byte string some allowed token spells
    longest: int


_GRAMMARS: _IdentityLRU[Grammar] = _IdentityLRU(_GRAMMARS_CACHED)
_VOCABULARIES: _IdentityLRU[_TokenBytes] = _IdentityLRU(_VOCABULARIES_CACHED)


def compile_constraint(
    tokenizer: PreTrainedTokenizerBase, constraint: Constraint, vocab_size: int, eos_ids: set[int]
) -> Grammar:
    """Compile ``constraint`` for ``tokenizer`` into a :class:`Grammar` (cached, see module doc).

    ``vocab_size`` is the model's logits width (it may exceed ``len(tokenizer)``); ``eos_ids``
    are the ids that end a completion, allowed exactly when the text is complete.

    Raises :class:`EngineError` with ``param="response_format"`` for a malformed or unsupported
    schema, and ``param="choices"`` for empty choices or a choice no token sequence spells.
    """
    param = "choices" if constraint.choices is not None else "response_format"
    # Key order is kept, not sorted: outlines writes properties in the schema's order, so two
    # schemas that differ only in key order compile to different grammars.
    try:
        canonical = json.dumps(_constraint_fields(constraint), separators=(",", ":"))
    except (TypeError, ValueError) as exc:  # a schema built in Python, not parsed from JSON
        raise EngineError(f"the {param} is not plain JSON: {exc}", param=param) from exc
    key = (canonical, vocab_size, frozenset(eos_ids))
    grammar = _GRAMMARS.get(tokenizer, key)
    if grammar is not None:
        return grammar
    regex = _regex_for(constraint)
    vocab_eos = min((i for i in eos_ids if 0 <= i < vocab_size), default=vocab_size)
    tokens = _VOCABULARIES.get(tokenizer, key[1:])
    if tokens is None:
        tokens = _token_bytes(tokenizer, vocab_size, eos_ids, vocab_eos)
        _VOCABULARIES.put(tokenizer, key[1:], tokens)
    if constraint.choices is not None:
        for choice in constraint.choices:
            if not _spellable(choice.encode(), tokens):
                raise EngineError(f"no token sequence spells the choice {choice!r}", param=param)
    try:
        index = Index(regex, tokens.vocabulary)
    except ValueError as exc:  # outlines-core reports an unbuildable regex or vocabulary so
        raise EngineError(
            f"cannot constrain the output to this {param}: {exc}", param=param
        ) from exc
    grammar = Grammar(index, vocab_size, eos_ids, vocab_eos)
    _GRAMMARS.put(tokenizer, key, grammar)
    return grammar


def clear_cache() -> None:
    """Forget every compiled grammar and vocabulary (for tests and memory pressure)."""
    _GRAMMARS.clear()
    _VOCABULARIES.clear()


def _constraint_fields(constraint: Constraint) -> dict[str, Any]:
    return {
        "json_schema": constraint.json_schema,
        "json_object": constraint.json_object,
        "choices": list(constraint.choices) if constraint.choices is not None else None,
    }


def _regex_for(constraint: Constraint) -> str:
    """The regular expression a completion must match in full."""
    kinds = (constraint.json_schema is not None) + constraint.json_object
    kinds += constraint.choices is not None
    if kinds != 1:
        raise EngineError(
            "give exactly one of a JSON schema, a JSON object or choices", param="response_format"
        )
    if constraint.choices is not None:
        choices = constraint.choices
        if not choices or not all(isinstance(c, str) for c in choices):
            raise EngineError("choices must be a non-empty list of strings", param="choices")
        # outlines-core's automaton prefers the earliest alternative that matches and then
        # drops the others, so with "1|12" nothing may follow "1": longer choices come first.
        ordered = sorted(set(choices), key=len, reverse=True)
        return "|".join(f"({_escape(c)})" for c in ordered)
    schema: Any = constraint.json_schema if constraint.json_schema is not None else {}
    if constraint.json_object:
        schema = JSON_OBJECT_SCHEMA
    if not isinstance(schema, dict):
        raise EngineError("the JSON schema must be an object", param="response_format")
    try:
        return str(build_regex_from_schema(json.dumps(schema), WHITESPACE, MAX_RECURSION_DEPTH))
    except (ValueError, TypeError) as exc:
        raise EngineError(f"unsupported JSON schema: {exc}", param="response_format") from exc


def _escape(text: str) -> str:
    """``text`` as a regex literal for outlines-core's (Rust) regex syntax.

    Every ASCII character that is not a letter or digit is written ``\\x{..}``: that form means
    the character itself whatever it is, where Python's ``re.escape`` writes escapes
    (``\\<newline>``) that Rust's syntax need not accept. Non-ASCII characters are literal."""
    return "".join(c if c.isalnum() or not c.isascii() else f"\\x{{{ord(c):02X}}}" for c in text)


def _spellable(target: bytes, tokens: _TokenBytes) -> bool:
    """Whether some sequence of allowed tokens spells exactly ``target`` (word-break DP)."""
    reachable = [True] + [False] * len(target)
    for start in range(len(target)):
        if not reachable[start]:
            continue
        for end in range(start + 1, min(len(target), start + tokens.longest) + 1):
            if target[start:end] in tokens.pieces:
                reachable[end] = True
    return reachable[len(target)]


def _token_bytes(
    tokenizer: PreTrainedTokenizerBase, vocab_size: int, eos_ids: set[int], vocab_eos: int
) -> _TokenBytes:
    """Map the tokenizer's ordinary tokens to the bytes they decode to."""
    specials = set(tokenizer.all_special_ids) | set(eos_ids)
    added = getattr(tokenizer, "added_tokens_decoder", {})
    specials |= {i for i, t in added.items() if getattr(t, "special", True)}
    to_bytes = token_decoder(tokenizer)
    by_bytes: dict[bytes, list[int]] = {}
    for token, token_id in tokenizer.get_vocab().items():
        if token_id in specials or not 0 <= token_id < vocab_size:
            continue
        # Non-special added tokens are plain text, not written in the tokenizer's alphabet.
        piece = token.encode() if token_id in added else to_bytes(token)
        if piece:  # an empty token spells nothing and would only let a model stall
            by_bytes.setdefault(piece, []).append(token_id)
    return _TokenBytes(
        vocabulary=Vocabulary(vocab_eos, by_bytes),
        pieces=frozenset(by_bytes),
        longest=max(map(len, by_bytes), default=0),
    )


class Grammar:
    """A constraint compiled for one tokenizer; shared by every completion that uses it."""

    def __init__(self, index: Index, vocab_size: int, eos_ids: set[int], vocab_eos: int):
        self.index = index
        self.vocab_size = vocab_size
        self.eos_ids = frozenset(eos_ids)
        # The one eos id outlines-core knows (a phantom id past the vocabulary if there is none).
        self.ends = self.eos_ids | {vocab_eos}
        self.eos_array = np.array(sorted(i for i in eos_ids if 0 <= i < vocab_size), dtype=np.intp)
        self.words = (vocab_size + 31) // 32  # 32-bit words of outlines-core's token bitmask

    def start(self) -> Matcher:
        """A fresh matcher for one completion, at the start of the text."""
        return Matcher(self)


class Matcher:
    """Where one completion stands in its grammar: which tokens may come next."""

    def __init__(self, grammar: Grammar):
        self._grammar = grammar
        self._guide = Guide(grammar.index)
        self._ended = False  # an eos token was taken
        # Little-endian words, so that unpacking their bytes low bit first gives token order.
        self._words = np.zeros(grammar.words, dtype="<u4")

    def allowed_mask(self) -> torch.Tensor:
        """Bool tensor ``[vocab_size]`` on CPU: True for each token allowed next.

        Eos tokens are allowed exactly when the text is complete (and are all that is allowed
        once nothing else can follow). Each call returns a new tensor."""
        grammar = self._grammar
        if self._ended:
            bits = np.zeros(grammar.vocab_size, dtype=np.bool_)
        else:
            # outlines-core writes the allowed set as a bitmask (it zeroes the words first).
            # numpy unpacks it in one single-threaded pass: torch's thread pool costs
            # milliseconds per step for this 50k-element work when the cores are busy.
            self._guide.write_mask_into(self._words.ctypes.data, grammar.words, 4)
            unpacked = np.unpackbits(self._words.view(np.uint8), bitorder="little")
            bits = unpacked[: grammar.vocab_size].view(np.bool_)
        # outlines allows its one eos id in final states; the model may have several.
        bits[grammar.eos_array] = self._ended or self._guide.is_finished()
        return torch.from_numpy(bits)

    def advance(self, token_id: int) -> None:
        """Take ``token_id`` as the next token; ValueError if the grammar does not allow it."""
        if self._ended:
            raise ValueError("the completion has already ended with an eos token")
        if token_id in self._grammar.eos_ids:
            if not self._guide.is_finished():
                raise ValueError(f"eos token {token_id} before the text is complete")
            self._ended = True
            return
        if not 0 <= token_id < self._grammar.vocab_size:
            raise ValueError(f"token {token_id} is outside the vocabulary")
        try:
            self._guide.advance(token_id, False)
        except ValueError as exc:
            raise ValueError(f"token {token_id} is not allowed here ({exc})") from exc

    def is_finished(self) -> bool:
        """True when nothing but eos may follow (the text is complete and cannot go on)."""
        if self._ended:
            return True
        if not self._guide.is_finished():
            return False
        return all(t in self._grammar.ends for t in self._guide.get_tokens())

    def is_complete(self) -> bool:
        """True when the text so far is a whole match, so eos is allowed (more may follow)."""
        return self._ended or bool(self._guide.is_finished())
