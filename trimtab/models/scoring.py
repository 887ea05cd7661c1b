"""Label scoring: classify by comparing the model's log-probability of each label after the prompt.

No text is generated. The labels' token sequences are split into the prefix they all share and
what follows: with the leading-space convention every star label is ``' '`` + digit for SmolLM2,
so one forward pass over prompt + ``' '`` gives every label's score from the last position's
distribution. Labels that differ in more than their last token are scored with one sequence
per label, batched. ``classify``-task models (a classification head) use their head's logits.
:func:`language_model_loss` scores held-out tokens (evaluation's loss and perplexity).

Few-shot prompts repeat the same instruction and solved examples before every text. When the
prompts of a call share at least :data:`MIN_SHARED_TOKENS` leading tokens, that prefix runs once
and its key/value cache is reused by every batch, which then runs only the rest of each prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from trimtab.models.batching import IGNORE, autocast, chunks, left_pad


def label_token_ids(tokenizer: Any, labels: list[str]) -> list[list[int]]:
    """Each label as the tokens a completion would hold (labels include their leading space)."""
    return [tokenizer(label, add_special_tokens=False)["input_ids"] for label in labels]


def _shared_prefix(sequences: list[list[int]]) -> list[int]:
    prefix = list(sequences[0])
    for seq in sequences[1:]:
        n = 0
        while n < min(len(prefix), len(seq)) and prefix[n] == seq[n]:
            n += 1
        prefix = prefix[:n]
    return prefix


MIN_SHARED_TOKENS = 32
"""Shortest shared prompt prefix worth a key/value cache: below it, the tokens saved are few next
to the prefix's own pass and the copy of its cache into every batch."""


@torch.no_grad()
def score_labels(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    labels: list[str],
    *,
    batch_size: int = 16,
    max_length: int = 512,
    bf16: bool = False,
    reuse_prefix: bool = True,
) -> torch.Tensor:
    """``[len(prompts), len(labels)]`` log-probabilities of each label after each prompt.

    Prompts longer than ``max_length`` lose tokens from their start (their end is kept). With
    ``reuse_prefix``, a long token prefix that all prompts share (few-shot examples) is run once
    and its key/value cache reused (see :data:`MIN_SHARED_TOKENS`); the scores are the same.
    """
    model.eval()
    seqs = label_token_ids(tokenizer, labels)
    if any(not s for s in seqs):
        raise ValueError("a label tokenizes to no tokens")
    shared = _shared_prefix(seqs)
    prompt_ids = tokenizer(prompts, add_special_tokens=True)["input_ids"]
    out = torch.empty(len(prompts), len(labels))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if not all(len(s) == len(shared) + 1 for s in seqs):
        _score_per_label(model, prompt_ids, seqs, out, pad, batch_size, max_length, bf16)
        return out
    # One sequence per prompt: prompt + the labels' shared tokens; the last position ranks them.
    rows = [_fit(p, shared, max_length) for p in prompt_ids]
    whole = [i for i, p in enumerate(prompt_ids) if len(p) + len(shared) <= max_length]
    prefix = None
    if reuse_prefix and len(whole) > 1:
        with autocast(next(model.parameters()).device, bf16):
            prefix = _Prefix.of(model, [rows[i] for i in whole], len(shared) + 1)
    # Rows that kept their start go with the cache; rows cut to max_length run whole, as before.
    cached = set(whole) if prefix is not None else set()
    _score_rows(model, rows, sorted(cached), seqs, shared, out, pad, batch_size, bf16, prefix)
    rest = [i for i in range(len(rows)) if i not in cached]
    _score_rows(model, rows, rest, seqs, shared, out, pad, batch_size, bf16, None)
    return out


def _score_rows(
    model: Any,
    rows: list[list[int]],
    which: list[int],
    seqs: list[list[int]],
    shared: list[int],
    out: torch.Tensor,
    pad: int,
    batch_size: int,
    bf16: bool,
    prefix: _Prefix | None,
) -> None:
    """Fill ``out[which]`` from one sequence per row, shortest rows first (less padding);
    with ``prefix``, only each row's tokens after it are run."""
    skip = prefix.length if prefix is not None else 0
    device = next(model.parameters()).device
    for idx in chunks(sorted(which, key=lambda i: len(rows[i])), batch_size):
        with autocast(device, bf16):
            logp = _tail_logprobs(
                model, [rows[i][skip:] for i in idx], len(shared) + 1, pad, prefix
            )
        last = logp[:, -1, [s[-1] for s in seqs]]
        if shared:  # the shared tokens' log-probabilities add to every label's score
            last = last + torch.stack([logp[:, j, t] for j, t in enumerate(shared)]).sum(0)[:, None]
        out[idx] = last


def _score_per_label(
    model: Any,
    prompt_ids: list[list[int]],
    seqs: list[list[int]],
    out: torch.Tensor,
    pad: int,
    batch_size: int,
    max_length: int,
    bf16: bool,
) -> None:
    """Labels that differ before their last token: one sequence per prompt and label."""
    device = next(model.parameters()).device
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    for idx in chunks(order, batch_size):
        for col, seq in enumerate(seqs):
            rows = [_fit(prompt_ids[i], seq, max_length) for i in idx]
            with autocast(device, bf16):
                logp = _tail_logprobs(model, rows, len(seq) + 1, pad)
            out[idx, col] = sum(logp[:, j, t] for j, t in enumerate(seq))


def _fit(prompt: list[int], tail: list[int], max_length: int) -> list[int]:
    """Prompt + tail, dropping prompt tokens from the start if too long (the end is kept)."""
    keep = max(1, max_length - len(tail))
    return prompt[-keep:] + tail


@dataclass(frozen=True, slots=True)
class _Prefix:
    """The key/value cache of the tokens that every row starts with, computed once."""

    length: int
    # Per layer: keys and values, [1, key/value heads, length, head dim].
    layers: list[tuple[torch.Tensor, torch.Tensor]]

    @classmethod
    def of(cls, model: Any, rows: list[list[int]], k: int) -> _Prefix | None:
        """The cache of ``rows``' common prefix, short of the last ``k`` tokens of the shortest
        row (whose logits are needed); None when too short, or when the model's cache is not a
        plain full-attention one (sliding windows keep only part of the prefix)."""
        from transformers.cache_utils import DynamicLayer

        length = min(len(_shared_prefix(rows)), min(len(r) for r in rows) - k)
        if length < MIN_SHARED_TOKENS:
            return None
        ids = torch.tensor([rows[0][:length]], device=next(model.parameters()).device)
        cache = model(input_ids=ids, use_cache=True, logits_to_keep=1).past_key_values
        layers = getattr(cache, "layers", None)
        if not layers or any(type(layer) is not DynamicLayer for layer in layers):
            return None
        return cls(length, [(layer.keys, layer.values) for layer in layers])

    def expanded(self, batch: int) -> Any:
        """A fresh cache holding the prefix for ``batch`` rows (the model appends to it)."""
        from transformers import DynamicCache

        return DynamicCache(
            ddp_cache_data=[
                (k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in self.layers
            ]
        )


def _tail_logprobs(
    model: Any, rows: list[list[int]], k: int, pad: int, prefix: _Prefix | None = None
) -> torch.Tensor:
    """Log-probabilities at the last ``k`` positions of each row, ``[rows, k, vocab]``.

    Rows are left-padded so that their ends line up: the model then computes logits for the
    last ``k`` positions only (``logits_to_keep``), never the vocabulary at every token.
    Position ids follow the mask, so padding does not shift the real tokens' positions. With
    ``prefix``, the rows continue its cached tokens: the mask covers prefix + rows (the padding
    sits between the two, masked) and positions count on from the prefix's length.
    """
    ids, mask, positions = left_pad(rows, pad, next(model.parameters()).device)
    extra: dict[str, Any] = {}
    if prefix is not None:
        mask = torch.cat([mask.new_ones(len(rows), prefix.length), mask], dim=1)
        positions = positions + prefix.length
        extra = {"past_key_values": prefix.expanded(len(rows)), "use_cache": True}
    logits = model(
        input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=k, **extra
    ).logits
    return F.log_softmax(logits[:, -k:].float(), dim=-1).cpu()


@torch.no_grad()
def classify_logits(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    *,
    batch_size: int = 32,
    max_length: int = 512,
    bf16: bool = False,
) -> torch.Tensor:
    """Class log-probabilities from a classification head, ``[len(texts), num_labels]``.

    Texts go in length order (less padding) and come back in the input order.
    """
    model.eval()
    device = next(model.parameters()).device
    out = torch.empty(len(texts), model.config.num_labels)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for idx in chunks(order, batch_size):
        enc = tokenizer(
            [texts[i] for i in idx],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        ).to(device)
        with autocast(device, bf16):
            logits = model(**enc).logits
        out[idx] = F.log_softmax(logits.float(), dim=-1).cpu()
    return out


def backbone_and_head(model: Any) -> tuple[Any, Any]:
    """A causal LM's trunk (hidden states) and output head, through a PEFT wrapper if any:
    run apart, the head only sees the positions a loss needs."""
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(hf, hf.base_model_prefix), hf.get_output_embeddings()


def next_token_losses(
    head: Any, hidden: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token cross-entropy of next-token prediction, whether each was the argmax, and the
    mask of scored positions (``labels[:, 1:] != IGNORE``). ``labels`` are aligned with the
    inputs; the head runs on scored positions only, never the vocabulary at every token."""
    targets = labels[:, 1:]
    keep = targets != IGNORE
    logits = head(hidden[:, :-1][keep]).float()
    targets = targets[keep]
    losses = F.cross_entropy(logits, targets, reduction="none")
    return losses, logits.argmax(-1) == targets, keep


@dataclass(frozen=True, slots=True)
class LanguageModelLoss:
    """Summed cross-entropy of the scored tokens, how many were right, and how many there were."""

    loss_sum: float
    correct: int
    tokens: int

    @property
    def loss(self) -> float:
        """Mean loss per scored token (nats)."""
        return self.loss_sum / max(self.tokens, 1)

    @property
    def token_accuracy(self) -> float:
        """Share of scored tokens that were the model's most likely next token."""
        return self.correct / max(self.tokens, 1)


@torch.no_grad()
def language_model_loss(
    model: Any,
    sequences: Sequence[tuple[list[int], list[int]]],
    pad_id: int | None,
    *,
    batch_size: int = 16,
    bf16: bool = False,
) -> LanguageModelLoss:
    """Next-token loss of ``(input_ids, labels)`` sequences, labels :data:`IGNORE` where unscored.

    Labels are aligned with the inputs (position ``t`` is predicted from the tokens before
    it), as Hugging Face models take them. Only the positions that are scored go through the
    output head, never the whole vocabulary at every token. Sequences run in length order.
    """
    model.eval()
    backbone, head = backbone_and_head(model)
    device = next(model.parameters()).device
    pad = 0 if pad_id is None else pad_id
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]))
    loss_sum, correct, tokens = 0.0, 0, 0
    for idx in chunks(order, batch_size):
        ids, mask, labels = _pad_right([sequences[i] for i in idx], pad, device)
        with autocast(device, bf16):
            hidden = backbone(input_ids=ids, attention_mask=mask)[0]
            losses, hits, _ = next_token_losses(head, hidden, labels)
        loss_sum += float(losses.sum())
        correct += int(hits.sum())
        tokens += int(losses.numel())
    return LanguageModelLoss(loss_sum, correct, tokens)


def _pad_right(
    rows: list[tuple[list[int], list[int]]], pad: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (row, row_labels) in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        labels[i, : len(row_labels)] = torch.tensor(row_labels)
    return ids.to(device), mask.to(device), labels.to(device)
