"""What a vocabulary entry stands for, as bytes: the one token-to-bytes rule.

Constrained decoding (which bytes each token adds) and logprobs (each token's ``bytes``) both
need it. Byte-level BPE entries (GPT-2's alphabet, ``Ġ`` is a space: SmolLM2, Llama 3, Qwen)
map back through that alphabet; SentencePiece entries read ``▁`` as a space and ``<0xNN>`` as
one byte; anything else (WordPiece...) falls back to the tokenizer's own text for the token.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from functools import cache
from typing import Any

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def token_decoder(tokenizer: Any) -> Callable[[str], bytes]:
    """A function from a vocabulary entry to its bytes, chosen by the tokenizer's decoder."""
    kinds = _decoder_kinds(tokenizer)
    if "ByteLevel" in kinds:
        return _byte_level_bytes
    if kinds & {"Metaspace", "ByteFallback", "Replace"}:
        return _metaspace_bytes
    if not kinds and any(t.startswith("▁") for t in tokenizer.get_vocab()):
        return _metaspace_bytes  # a slow SentencePiece tokenizer without a decoder to read
    # Anything else (WordPiece...): the tokenizer's own text for the token, approximately right.
    return lambda token: tokenizer.convert_tokens_to_string([token]).encode()


def _decoder_kinds(tokenizer: Any) -> set[str]:
    """The types of the fast tokenizer's decoders (those inside a Sequence included)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return set()
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    return {d.get("type", "") for d in _flatten(decoder)}


def _flatten(decoder: dict[str, Any]) -> Iterable[dict[str, Any]]:
    yield decoder
    for inner in decoder.get("decoders") or ():
        yield from _flatten(inner)


def _byte_level_bytes(token: str) -> bytes:
    table = _unicode_to_byte()
    if all(c in table for c in token):
        return bytes(table[c] for c in token)
    return token.encode()  # not in the byte alphabet: a token written as plain text


def _metaspace_bytes(token: str) -> bytes:
    byte = _BYTE_TOKEN.fullmatch(token)
    if byte is not None:
        return bytes([int(byte.group(1), 16)])
    return token.replace("▁", " ").encode()


@cache
def _unicode_to_byte() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: printable bytes stand for themselves, the others
    were shifted to code points from 256 up (so a space is ``Ġ``)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    shifted = [b for b in range(256) if b not in printable]
    table = {chr(b): b for b in printable}
    table.update({chr(256 + n): b for n, b in enumerate(shifted)})
    return table
