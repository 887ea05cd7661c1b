"""Picking the next token of every row of a batch, each row with its own sampling parameters.

Rows of one batch belong to different requests (continuous batching), so temperature, top_p,
penalties, logit_bias, constraints and seeds are per row. The work is vectorised over the rows
that share a rule (all greedy rows: one argmax) and per row only where it must be (each row
draws from its own seeded generator, so its text does not depend on the batch it ran in).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trimtab.generation.sampling import SamplingParams

if TYPE_CHECKING:
    import torch

SEED_MIX = 0x9E3779B97F4A7C15  # spreads (seed, copy) pairs over the generator's seed space


@dataclass
class Picker:
    """How one row picks its tokens: the request's parameters and the row's own state."""

    params: SamplingParams
    generator: torch.Generator | None  # None for greedy rows
    matcher: Any = None  # a constraint's Matcher (allowed_mask/advance), or None
    counts: torch.Tensor | None = None  # generated-token counts, for the penalties
    bias: torch.Tensor | None = None  # the logit_bias as a dense row

    @classmethod
    def make(
        cls, params: SamplingParams, seed: int, copy: int, vocab: int, matcher: Any = None
    ) -> Picker:
        """A row's picker; copy ``copy`` of a seeded request gets its own reproducible draws."""
        import torch

        generator = row_generator(seed, copy) if params.temperature > 0 else None
        counts = None
        if params.frequency_penalty or params.presence_penalty:
            counts = torch.zeros(vocab, dtype=torch.float32)
        bias = None
        if params.logit_bias:
            bias = torch.zeros(vocab, dtype=torch.float32)
            for token, value in params.logit_bias.items():
                bias[token] = value
        return cls(params, generator, matcher, counts, bias)

    def record(self, token: int) -> None:
        """Count a sampled token for the penalties and move the constraint past it."""
        if self.counts is not None and token < self.counts.shape[0]:
            self.counts[token] += 1
        if self.matcher is not None and not self.matcher.is_finished():
            self.matcher.advance(token)


def row_generator(seed: int, copy: int) -> torch.Generator:
    """The generator of copy ``copy`` of a request seeded ``seed`` (its own reproducible draws,
    whatever else runs in the batch)."""
    import torch

    return torch.Generator().manual_seed((seed * SEED_MIX + copy) % 2**63)


def seed_for(params: SamplingParams) -> int:
    """The request's seed; without one, a fresh one (that follows ``torch.manual_seed``)."""
    import torch

    if params.seed is not None:
        return params.seed
    return int(torch.randint(0, 2**62, ()).item()) if params.temperature > 0 else 0


@dataclass
class Picked:
    """The chosen tokens of a step, with the model's log-probabilities of them."""

    tokens: list[int]
    logprobs: list[float]  # log p(token) under the model (0.0 where not asked for)
    top_ids: list[list[int]]  # the most likely alternatives, per row (empty where not asked)
    top_values: list[list[float]]


def pick(logits: torch.Tensor, pickers: list[Picker], *, want_logprobs: bool) -> Picked:
    """The next token of every row of ``logits`` [rows, vocab], by its row's picker.

    Log-probabilities are those of the model's own distribution (before penalties, bias,
    temperature and top_p), as OpenAI reports them; they are computed only when asked for."""
    import torch

    logits = logits.float().cpu()
    scores = _processed(logits, pickers)
    tokens = [0] * len(pickers)
    greedy = [k for k, p in enumerate(pickers) if p.generator is None]
    if greedy:
        best = scores[greedy].argmax(-1).tolist()
        for k, t in zip(greedy, best):
            tokens[k] = t
    for k, p in enumerate(pickers):
        if p.generator is not None:
            tokens[k] = sample(scores[k], p.params, p.generator)
    if not want_logprobs:
        return Picked(tokens, [0.0] * len(tokens), [[] for _ in tokens], [[] for _ in tokens])
    logp = torch.log_softmax(logits, dim=-1)
    chosen = logp.gather(1, torch.tensor(tokens)[:, None])[:, 0].tolist()
    k_top = max((p.params.logprobs or 0) for p in pickers)
    top_ids: list[list[int]] = [[] for _ in tokens]
    top_values: list[list[float]] = [[] for _ in tokens]
    if k_top:
        values, ids = logp.topk(k_top, dim=-1)
        for k, p in enumerate(pickers):
            n = p.params.logprobs or 0
            top_ids[k], top_values[k] = ids[k, :n].tolist(), values[k, :n].tolist()
    return Picked(tokens, chosen, top_ids, top_values)


def _processed(logits: torch.Tensor, pickers: list[Picker]) -> torch.Tensor:
    """The logits after each row's penalties (OpenAI's formula), bias and constraint."""
    scores = logits
    copied = False
    for k, p in enumerate(pickers):
        params = p.params
        if p.counts is None and p.bias is None and p.matcher is None:
            continue
        if not copied:
            scores, copied = logits.clone(), True
        row = scores[k]
        if p.counts is not None:  # counts hold generated tokens only, never the prompt's
            row -= p.counts * params.frequency_penalty + (p.counts > 0) * params.presence_penalty
        if p.bias is not None:
            row += p.bias
        if p.matcher is not None:
            allowed = p.matcher.allowed_mask()
            row[: allowed.shape[0]].masked_fill_(~allowed, float("-inf"))
            row[allowed.shape[0] :] = float("-inf")
    return scores


def sample(scores: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """One draw from softmax(scores / temperature), restricted to the top_p nucleus."""
    import torch

    probs = torch.softmax(scores / params.temperature, dim=-1)
    if params.top_p < 1:
        # Nucleus: drop a token once the likelier ones already reach top_p; that always keeps
        # the top token, and the smallest set whose mass reaches top_p.
        sorted_probs, order = probs.sort(descending=True)
        sorted_probs[(sorted_probs.cumsum(-1) - sorted_probs) >= params.top_p] = 0
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))
