"""Label scoring: classify by comparing the model's log-probability of each label after the prompt.

No text is generated. The labels' token sequences are split into the prefix they all share and
what follows: with the leading-space convention every star label is ``' '`` + digit for SmolLM2,
so one forward pass over prompt + ``' '`` gives every label's score from the last position's
distribution. Labels that differ in more than their last token are scored with one sequence
per label, batched. ``classify``-task models (a classification head) use their head's logits.
:func:`language_model_loss` scores held-out tokens (evaluation's loss and perplexity).
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
) -> torch.Tensor:
    """``[len(prompts), len(labels)]`` log-probabilities of each label after each prompt."""
    model.eval()
    seqs = label_token_ids(tokenizer, labels)
    if any(not s for s in seqs):
        raise ValueError("a label tokenizes to no tokens")
    shared = _shared_prefix(seqs)
    one_pass = all(len(s) == len(shared) + 1 for s in seqs)
    prompt_ids = tokenizer(prompts, add_special_tokens=True)["input_ids"]
    out = torch.empty(len(prompts), len(labels))
    order = sorted(range(len(prompts)), key=lambda i: len(prompt_ids[i]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    for idx in chunks(order, batch_size):
        if one_pass:  # one sequence per prompt: prompt + shared prefix; the last position ranks
            rows = [_fit(prompt_ids[i], shared, max_length) for i in idx]
            with autocast(device, bf16):
                logp = _tail_logprobs(model, rows, len(shared) + 1, pad)
            last = logp[:, -1, [s[-1] for s in seqs]]
            if shared:  # the shared tokens' log-probabilities add to every label's score
                last = (
                    last
                    + torch.stack([logp[:, j, t] for j, t in enumerate(shared)]).sum(0)[:, None]
                )
            out[idx] = last
        else:
            for col, seq in enumerate(seqs):
                rows = [_fit(prompt_ids[i], seq, max_length) for i in idx]
                with autocast(device, bf16):
                    logp = _tail_logprobs(model, rows, len(seq) + 1, pad)
                out[idx, col] = sum(logp[:, j, t] for j, t in enumerate(seq))
    return out


def _fit(prompt: list[int], tail: list[int], max_length: int) -> list[int]:
    """Prompt + tail, dropping prompt tokens from the start if too long (the end is kept)."""
    keep = max(1, max_length - len(tail))
    return prompt[-keep:] + tail


def _tail_logprobs(model: Any, rows: list[list[int]], k: int, pad: int) -> torch.Tensor:
    """Log-probabilities at the last ``k`` positions of each row, ``[rows, k, vocab]``.

    Rows are left-padded so that their ends line up: the model then computes logits for the
    last ``k`` positions only (``logits_to_keep``), never the vocabulary at every token.
    Position ids follow the mask, so padding does not shift the real tokens' positions.
    """
    ids, mask, positions = left_pad(rows, pad, next(model.parameters()).device)
    logits = model(
        input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=k
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
