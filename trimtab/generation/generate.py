"""Batched text generation with a KV cache: trimtab's own decoding loop on the model's forward.

Not ``model.generate``: this loop is the one the server shares (same sampler, same stop rules),
and it is where trimtab makes decoding cheaper: batches of similar prompt lengths, one prefill
per prompt however many completions (``n``) it asks for, and rows dropped from the batch (and
from the cache) as soon as they finish.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from trimtab.errors import ConfigError
from trimtab.generation.sampling import SamplingParams
from trimtab.models.batching import left_pad

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions: ``trimtab.generation`` exports ``generate`` and
# must import without torch, so that the CLI starts fast.

_SEED_MIX = 0x9E3779B97F4A7C15  # spreads (seed, copy) pairs over the generator's seed space


@dataclass
class Completion:
    """One generated completion, as OpenAI's API reports it."""

    text: str
    finish_reason: str  # "stop" (eos or a stop sequence) or "length" (max_tokens reached)
    tokens: int  # tokens generated, up to and including the eos or the stop sequence's last
    prompt_tokens: int  # tokens of the prompt the model saw (after max_length truncation)


def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    params: SamplingParams,
    *,
    batch_size: int = 16,
    max_length: int | None = None,
    bf16: bool = False,
    add_special_tokens: bool = True,
) -> list[Completion]:
    """Complete each prompt ``params.n`` times; returns prompt 0's n completions, then prompt
    1's, and so on (the input order, whatever order the batches ran in).

    ``batch_size`` counts completions decoded together. ``max_length`` caps prompt plus
    ``max_tokens``: longer prompts lose tokens from the start (the end, where the question
    is, is kept). ``bf16`` runs the model under bfloat16 autocast on its own device.
    Temperature 0 is greedy and deterministic; otherwise the same ``seed`` gives the same text
    whatever the batch size or the other prompts.
    """
    import torch

    if batch_size < 1:
        raise ConfigError([f"batch_size: must be at least 1 (got {batch_size})"])
    if not prompts:
        return []
    device = _device(model)
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    encoded = [
        _fit(ids, params.max_tokens, max_length, start)
        for ids in tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]
    ]
    base_seed = params.seed
    if base_seed is None and params.temperature > 0:  # follows torch.manual_seed, if set
        base_seed = int(torch.randint(0, 2**62, ()).item())
    decoder = _Decoder(model, tokenizer, params, device, base_seed or 0)
    # Longest first: similar lengths share a batch (little padding), and the batch that
    # needs the most memory runs first, so running out of it shows at once.
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
    per_batch = max(1, batch_size // params.n)  # prompts per batch; each brings n rows
    results: list[Completion | None] = [None] * (len(encoded) * params.n)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    )
    was_training = model.training
    model.eval()  # no dropout; the caller's mode is restored after
    try:
        with torch.no_grad(), autocast:
            for b in range(0, len(order), per_batch):
                chunk = order[b : b + per_batch]
                done = decoder.run([encoded[i] for i in chunk])
                for k, i in enumerate(chunk):
                    results[i * params.n : (i + 1) * params.n] = done[
                        k * params.n : (k + 1) * params.n
                    ]
    finally:
        model.train(was_training)
    return results  # type: ignore[return-value]


def _device(model: Any) -> torch.device:
    import torch

    device = getattr(model, "device", None)
    return device if isinstance(device, torch.device) else next(model.parameters()).device


def _fit(ids: list[int], max_tokens: int, max_length: int | None, start: int | None) -> list[int]:
    """The prompt ids that fit before ``max_tokens`` new ones within ``max_length``."""
    if not ids:  # an empty prompt still needs one position to predict from, as OpenAI's does
        if start is None:
            raise ConfigError(
                ["prompt: empty, and the tokenizer has no bos or eos token to start from"]
            )
        ids = [start]
    if max_length is None or len(ids) + max_tokens <= max_length:
        return ids
    room = max_length - max_tokens
    if room < 1:
        raise ConfigError(
            [
                f"max_tokens: {max_tokens} leaves no room for the prompt within "
                f"max_length {max_length}"
            ]
        )
    # Keep a leading BOS: models trained with it degrade without it.
    if start is not None and ids[0] == start and room > 1:
        return [start] + ids[len(ids) - room + 1 :]
    return ids[len(ids) - room :]


@dataclass
class _Row:
    """One completion being decoded: its tokens, its text so far, and why it ended."""

    prompt_tokens: int
    generator: torch.Generator | None
    ids: list[int] = field(default_factory=list)
    text: str = ""  # decoded incrementally, for the stop-sequence check
    prefix: int = 0  # ids[prefix:read] were decoded last step: context for the next piece
    read: int = 0
    generated: int = 0
    finish: str | None = None


class _Decoder:
    """Runs batches of prompts through prefill and the decode loop with shared settings."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        params: SamplingParams,
        device: torch.device,
        base_seed: int,
    ):
        self.model, self.tokenizer, self.params, self.device = model, tokenizer, params, device
        self.base_seed = base_seed
        self.eos = _eos_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        self.pad = pad if pad is not None else next(iter(self.eos), 0)
        self.stops = params.stop_sequences
        self.bias: torch.Tensor | None = None

    def run(self, prompts: list[list[int]]) -> list[Completion]:
        """Decode ``n`` completions of each prompt; prompt 0's rows first."""
        import torch
        from transformers import DynamicCache

        p, n, dev = self.params, self.params.n, self.device
        ids, mask, positions = left_pad(prompts, self.pad, dev)
        cache = DynamicCache(config=self.model.config)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits = out.logits[:, -1]
        cache = out.past_key_values
        following = positions[:, -1:] + 1
        if n > 1:  # one prefill per prompt; its cache is copied for the n completions
            cache.batch_repeat_interleave(n)
            logits, mask, following = (
                t.repeat_interleave(n, dim=0) for t in (logits, mask, following)
            )
        rows = [
            _Row(
                len(prompts[r]),
                None
                if p.temperature == 0
                else torch.Generator().manual_seed((self.base_seed * _SEED_MIX + j) % 2**63),
            )
            for r in range(len(prompts))
            for j in range(n)
        ]
        live = list(rows)  # the rows still in the batch, in batch order
        penalised = p.frequency_penalty != 0 or p.presence_penalty != 0
        counts = torch.zeros(logits.shape, dtype=torch.float32, device=dev) if penalised else None
        for _ in range(p.max_tokens):
            tokens = self._choose(logits, counts, live)
            for row, token in zip(live, tokens.tolist()):
                self._push(row, token)
            keep = [k for k, row in enumerate(live) if row.finish is None]
            if not keep:
                break
            tokens = tokens.to(dev)
            if counts is not None:
                counts.scatter_add_(1, tokens[:, None], torch.ones_like(counts[:, :1]))
            if len(keep) < len(live):  # finished rows leave the batch and the cache
                index = torch.tensor(keep, device=dev)
                cache.batch_select_indices(index)
                mask, following, tokens = mask[index], following[index], tokens[index]
                counts = counts[index] if counts is not None else None
                live = [live[k] for k in keep]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = self.model(
                input_ids=tokens[:, None],
                attention_mask=mask,
                position_ids=following,
                past_key_values=cache,
                use_cache=True,
            )
            logits, cache, following = out.logits[:, -1], out.past_key_values, following + 1
        return [self._completion(row) for row in rows]

    def _choose(
        self, logits: torch.Tensor, counts: torch.Tensor | None, live: list[_Row]
    ) -> torch.Tensor:
        """The next token of every live row (on the CPU), after penalties and bias."""
        import torch

        p = self.params
        scores = logits.float()
        if counts is not None:  # OpenAI's formula; counts hold generated tokens only
            scores = scores - counts * p.frequency_penalty - (counts > 0) * p.presence_penalty
        if p.logit_bias:
            scores = scores + self._bias(scores.shape[-1])
        if p.temperature == 0:
            return scores.argmax(-1).cpu()
        probs = torch.softmax(scores / p.temperature, dim=-1)
        if p.top_p < 1:
            # Nucleus: drop a token once the likelier ones already reach top_p; that always
            # keeps the top token, and the smallest set whose mass reaches top_p.
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            sorted_probs[(sorted_probs.cumsum(-1) - sorted_probs) >= p.top_p] = 0
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
        # Each row draws from its own generator on the CPU: a row's sample depends on its
        # seed only, not on the batch it ran in or the device.
        probs = probs.cpu()
        return torch.tensor(
            [
                int(torch.multinomial(probs[k], 1, generator=row.generator))
                for k, row in enumerate(live)
            ]
        )

    def _bias(self, vocab: int) -> torch.Tensor:
        import torch

        if self.bias is None:
            bad = sorted(t for t in self.params.logit_bias or {} if t >= vocab)
            if bad:
                raise ConfigError(
                    [f"logit_bias.{t}: no such token (the model has {vocab})" for t in bad]
                )
            self.bias = torch.zeros(vocab, device=self.device)
            for token, value in (self.params.logit_bias or {}).items():
                self.bias[token] = value
        return self.bias

    def _push(self, row: _Row, token: int) -> None:
        """Add a token to a row; end the row on eos, a stop sequence or max_tokens."""
        row.generated += 1
        if token in self.eos:  # counted, but its text is not part of the completion
            row.finish = "stop"
            return
        row.ids.append(token)
        if self.stops:
            new = self._decode_next(row)
            # A stop sequence can only have been completed by the new text: look at the tail.
            tail = row.text[max(0, len(row.text) - len(new) - max(map(len, self.stops)) + 1) :]
            if new and any(s in tail for s in self.stops):
                row.finish = "stop"
                return
        if row.generated >= self.params.max_tokens:
            row.finish = "length"

    def _decode_next(self, row: _Row) -> str:
        """The text the row's newest token adds, decoding only a few tokens (no O(n²)).

        Decoding ids[prefix:] and subtracting ids[prefix:read] keeps the spacing that
        tokenizers decide from the left context; text ending in U+FFFD is a character whose
        bytes are not all generated yet, so it waits for the next token."""
        decode = self.tokenizer.decode
        before = decode(row.ids[row.prefix : row.read], skip_special_tokens=True)
        after = decode(row.ids[row.prefix :], skip_special_tokens=True)
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        row.text += after[len(before) :]
        row.prefix, row.read = row.read, len(row.ids)
        return after[len(before) :]

    def _completion(self, row: _Row) -> Completion:
        text = self.tokenizer.decode(row.ids, skip_special_tokens=True)
        finish = row.finish or "length"
        # OpenAI: the text ends before the first stop sequence, which is not included.
        cuts = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if cuts:
            text, finish = text[: min(cuts)], "stop"
        return Completion(
            text=text, finish_reason=finish, tokens=row.generated, prompt_tokens=row.prompt_tokens
        )


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """Tokens that end a completion: the tokenizer's eos and the model's (chat models often
    list several, e.g. an end-of-turn token besides end-of-text)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    config = getattr(model, "generation_config", None)
    extra = getattr(config, "eos_token_id", None)
    if isinstance(extra, int):
        ids.add(extra)
    elif extra:
        ids.update(int(i) for i in extra)
    return ids
