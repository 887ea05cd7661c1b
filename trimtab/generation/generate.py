"""Generation for a list of prompts (evaluation), on the engine's own continuous batching.

Not ``model.generate``: the prompts run through the same :class:`~trimtab.generation.lane.Lane`
the server uses (same sampler, same stop rules), which makes decoding cheaper: one prefill per
prompt however many completions (``n``) it asks for, rows dropped from the batch (and from the
cache) as soon as they finish, and the next prompts joining in their places.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trimtab.errors import ConfigError
from trimtab.generation.sampling import SamplingParams
from trimtab.models.batching import autocast

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions: ``trimtab.generation`` exports ``generate`` and
# must import without torch, so that the CLI starts fast.


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

    from trimtab.generation.engine import Stream
    from trimtab.generation.intake import eos_ids
    from trimtab.generation.lane import Job, Lane
    from trimtab.generation.types import Request

    if batch_size < 1:
        raise ConfigError([f"batch_size: must be at least 1 (got {batch_size})"])
    if not prompts:
        return []
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    encoded = [
        _fit(ids, params.max_tokens, max_length, start)
        for ids in tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]
    ]
    if params.logit_bias:
        vocab = model.config.get_text_config().vocab_size
        bad = sorted(t for t in params.logit_bias if t >= vocab)
        if bad:
            raise ConfigError(
                [f"logit_bias.{t}: no such token (the model has {vocab})" for t in bad]
            )
    lane = Lane(model, tokenizer, eos_ids(model, tokenizer), max_rows=batch_size)
    # The lane runs here, in the caller's thread: each stream holds its whole answer once the
    # lane is done, so reading it never waits.
    streams = [Stream(Request("", ids, params), len(ids)) for ids in encoded]
    # Longest first: similar lengths share a batch (little padding), and the batch that
    # needs the most memory runs first, so running out of it shows at once.
    for i in sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True):
        lane.waiting.append(Job(encoded[i], params, post=streams[i].post))
    was_training = model.training
    model.eval()  # no dropout; the caller's mode is restored after
    try:
        with torch.no_grad(), autocast(_device(model), bf16):
            while lane.busy:
                lane.step()
    finally:
        model.train(was_training)
    return [
        Completion(c.text, c.finish_reason, c.completion_tokens, stream.prompt_tokens)
        for stream in streams
        for c in stream.result().choices
    ]


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
