"""One completion being generated: its tokens, its text, when it ends, and what may be shown.

The engine keeps one :class:`Sequence` per sampled completion. It owns the rules that are the
same whatever batch the completion runs in: incremental detokenisation, OpenAI's stop
sequences (never in the returned text; while streaming, text that could still turn into a
stop sequence is held back), eos and ``max_tokens``, and the per-token log-probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from trimtab.generation.tokens import token_decoder
from trimtab.generation.types import FinishReason, TokenLogprob, TopLogprob


@dataclass
class Sequence:
    """The state of one completion; ``push`` adds a token, ``take`` returns what may be shown."""

    tokenizer: Any
    stops: list[str]
    max_tokens: int
    eos: set[int]
    want_logprobs: bool = False
    text_base: int = 0  # characters before the completion in the choice's text (echo)
    ids: list[int] = field(default_factory=list)
    text: str = ""
    finish: FinishReason | None = None
    generated: int = 0  # tokens sampled, the eos included
    logprob_sum: float = 0.0  # of the sampled tokens: best_of ranks by the mean
    logprobs: list[TokenLogprob] = field(default_factory=list)
    _prefix: int = 0  # ids[_prefix:_read] were decoded last time: left context for the next
    _read: int = 0
    _shown: int = 0  # characters of text already handed out
    _logprobs_shown: int = 0

    def push(self, token: int, logprob: float, top: list[TopLogprob] | None = None) -> None:
        """Add a sampled token (with its log-probability); decide whether the completion ends."""
        self.generated += 1
        self.logprob_sum += logprob
        if self.want_logprobs:
            offset = self.text_base + len(self.text)
            self.logprobs.append(
                token_logprob(self.tokenizer, token, logprob, top or [], offset=offset)
            )
        if token in self.eos:  # counted, but its text is not part of the completion
            self._end("stop")
            return
        self.ids.append(token)
        new = self._decode_next()
        if self.stops and new:
            # A stop sequence can only have been completed by the new text: search its tail.
            start = max(0, len(self.text) - len(new) - max(map(len, self.stops)) + 1)
            cuts = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
            if cuts:
                self.text, self.finish = self.text[: min(cuts)], "stop"
                # The tokens of the stop sequence are not part of the completion: neither is
                # their log-probability (a token that starts before the cut stays).
                cut = self.text_base + len(self.text)
                self.logprobs = [t for t in self.logprobs if t.text_offset < cut]
                return
        if self.generated >= self.max_tokens:
            self._end("length")

    def _end(self, reason: FinishReason) -> None:
        """Finish; the bytes of a character cut in the middle are shown as U+FFFD."""
        self.finish = reason
        full = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if full.startswith(self.text):
            self.text = full

    def take(self) -> tuple[str, list[TokenLogprob]]:
        """The text and token log-probabilities not handed out yet that are safe to show.

        Until the completion ends, a tail of the text that is the start of a stop sequence is
        kept back: it is shown once the next tokens prove it is not a stop sequence."""
        end = len(self.text) if self.finish else len(self.text) - self._held_back()
        end = max(end, self._shown)
        text, self._shown = self.text[self._shown : end], end
        # A token's log-probability goes out with its text: held back while its text is.
        shown = len(self.logprobs)
        if not self.finish:
            while shown > self._logprobs_shown and (
                self.logprobs[shown - 1].text_offset >= self.text_base + end
            ):
                shown -= 1
        logprobs = self.logprobs[self._logprobs_shown : shown]
        self._logprobs_shown = shown
        return text, logprobs

    def finish_at_length(self) -> None:
        """End a completion that cannot grow: no room left in the model's context."""
        if self.finish is None:
            self._end("length")

    def _held_back(self) -> int:
        """Length of the longest tail of the text that a stop sequence starts with."""
        longest = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self.text)), longest, -1):
                if self.text.endswith(stop[:k]):
                    longest = k
                    break
        return longest

    def _decode_next(self) -> str:
        """The text the newest token adds, decoding only a few tokens (no O(n²)).

        Decoding ids[prefix:] and subtracting ids[prefix:read] keeps the spacing that
        tokenizers decide from the left context; text ending in U+FFFD is a character whose
        bytes are not all generated yet, so it waits for the next token."""
        decode = self.tokenizer.decode
        before = decode(self.ids[self._prefix : self._read], skip_special_tokens=True)
        after = decode(self.ids[self._prefix :], skip_special_tokens=True)
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        new = after[len(before) :]
        self.text += new
        self._prefix, self._read = self._read, len(self.ids)
        return new


def token_logprob(
    tokenizer: Any, token: int, logprob: float | None, top: list[TopLogprob], *, offset: int
) -> TokenLogprob:
    """A token with its text, bytes and log-probability, as OpenAI's logprobs list it."""
    text, raw = token_text(tokenizer, token)
    return TokenLogprob(
        token=text, token_id=token, logprob=logprob, bytes=raw, top=top, text_offset=offset
    )


def top_logprobs(tokenizer: Any, ids: list[int], values: list[float]) -> list[TopLogprob]:
    """The alternatives at one position, most likely first."""
    out = []
    for i, v in zip(ids, values):
        text, raw = token_text(tokenizer, i)
        out.append(TopLogprob(token=text, logprob=v, bytes=raw))
    return out


def token_text(tokenizer: Any, token: int) -> tuple[str, list[int]]:
    """A token's own text and its UTF-8 bytes.

    A byte-level BPE token may hold part of a character; its bytes are the real ones (chat's
    ``bytes`` field exists for that), its text shows the incomplete part as U+FFFD."""
    return _token_text(_tokenizer_key(tokenizer), token)


_TOKENIZERS: dict[int, Any] = {}


def _tokenizer_key(tokenizer: Any) -> int:
    _TOKENIZERS[id(tokenizer)] = tokenizer  # kept alive: the caches below are keyed by id
    return id(tokenizer)


@lru_cache(maxsize=64)
def _decoder(key: int) -> tuple[Any, frozenset[int]]:
    """The tokenizer's token-to-bytes rule and its special ids (which are shown as text)."""
    tokenizer = _TOKENIZERS[key]
    return token_decoder(tokenizer), frozenset(tokenizer.all_special_ids)


@lru_cache(maxsize=200_000)
def _token_text(key: int, token: int) -> tuple[str, list[int]]:
    tokenizer = _TOKENIZERS[key]
    to_bytes, specials = _decoder(key)
    piece = tokenizer.convert_ids_to_tokens(token)
    if token in specials or not isinstance(piece, str):
        text = tokenizer.decode([token], skip_special_tokens=False)
        return text, list(text.encode("utf-8"))
    raw = to_bytes(piece)
    return raw.decode("utf-8", errors="replace"), list(raw)
