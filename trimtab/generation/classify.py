"""Answering a completion request with a classification model: the text is a label.

A run fine-tuned with a classification head has no language-model head to generate with; it
answers with one of its labels. Its log-probabilities are the class distribution, so
``logprobs`` shows how sure it is, and sampling (temperature, top_p, seed, n) draws labels
from that distribution just as a decoder draws tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trimtab.generation.types import Delta, TokenLogprob, TopLogprob

if TYPE_CHECKING:
    from trimtab.generation.lane import RowEnd
    from trimtab.generation.sampling import SamplingParams


def answer(
    model: Any, tokenizer: Any, labels: list[str], text: str, params: SamplingParams
) -> list[Delta | RowEnd]:
    """One label per sampled completion, with the class distribution as log-probabilities."""

    from trimtab.generation.lane import RowEnd
    from trimtab.generation.sampler import row_generator, sample, seed_for
    from trimtab.models.scoring import classify_logits

    context = getattr(model.config, "max_position_embeddings", 512)
    logp = classify_logits(model, tokenizer, [text], max_length=min(512, context))[0]
    seed = seed_for(params)
    items: list[Delta | RowEnd] = []
    for i in range(params.samples):
        if params.temperature == 0:
            choice = int(logp.argmax())
        else:
            choice = sample(logp, params, row_generator(seed, i))
        label = labels[choice]
        prefix = text if params.echo else ""
        logprobs = []
        if params.logprobs is not None:
            logprobs = [_label_logprob(labels, logp, choice, params.logprobs, len(prefix))]
        items.append(Delta(i, prefix + label, logprobs, "stop"))
        items.append(RowEnd(i, 1, float(logp[choice])))
    return items


def _label_logprob(labels: list[str], logp: Any, choice: int, k: int, offset: int) -> TokenLogprob:
    values, order = logp.topk(min(k, len(labels)))
    top = [
        TopLogprob(labels[j], float(v), list(labels[j].encode()))
        for v, j in zip(values.tolist(), order.tolist())
    ]
    label = labels[choice]
    return TokenLogprob(
        token=label,
        token_id=choice,
        logprob=float(logp[choice]),
        bytes=list(label.encode()),
        top=top,
        text_offset=offset,
    )
