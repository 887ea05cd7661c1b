"""A request made ready to run: its prompt as token ids, its checks, its compiled constraint.

Everything here runs in the caller's thread before the request is queued, so a mistake comes
back as an error naming the request field, never as a failure in the middle of a batch.
"""

from __future__ import annotations

from typing import Any

from trimtab.generation.lane import Job
from trimtab.generation.pool import Target
from trimtab.generation.types import EngineError, Request


def prepare(request: Request, target: Target, tokenizer: Any) -> Job:
    """The job of a request for ``target`` (whose tokenizer is ``tokenizer``)."""
    params = request.params
    ids = prompt_ids(request, tokenizer)
    vocab = len(tokenizer)
    bad = sorted(t for t in params.logit_bias or {} if t >= vocab)
    if bad:
        raise EngineError(
            f"logit_bias: no token {bad[0]} (the model has {vocab} tokens)", param="logit_bias"
        )
    grammar = None
    if request.constraint is not None and target.task != "classify":
        from trimtab.generation.constraint import compile_constraint

        eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
        grammar = compile_constraint(tokenizer, request.constraint, vocab, eos)
    text = request.prompt
    if not isinstance(text, str):
        text = tokenizer.decode(text, skip_special_tokens=False)
    return Job(
        ids=ids,
        params=params,
        post=_unset,
        prompt_text=text,
        adapter=target.adapter_name,
        grammar=grammar,
        clip_to_context=request.clip_to_context,
    )


def prompt_ids(request: Request, tokenizer: Any) -> list[int]:
    """The prompt's token ids; an empty prompt starts from the bos (or eos) token, as OpenAI's
    models start from <|endoftext|>."""
    prompt = request.prompt
    if isinstance(prompt, str):
        ids = tokenizer(prompt, add_special_tokens=request.add_special_tokens)["input_ids"]
    else:
        ids = list(prompt)
        bad = [t for t in ids if not isinstance(t, int) or not 0 <= t < len(tokenizer)]
        if bad:
            raise EngineError(
                f"prompt: token {bad[0]!r} is not a token id of this model "
                f"(0..{len(tokenizer) - 1})",
                param="prompt",
            )
    if not ids:
        start = tokenizer.bos_token_id
        start = start if start is not None else tokenizer.eos_token_id
        if start is None:
            raise EngineError(
                "prompt: empty, and the model has no bos or eos token", param="prompt"
            )
        ids = [start]
    return ids


def eos_ids(model: Any, tokenizer: Any) -> set[int]:
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


def _unset(items: Any) -> None:
    raise RuntimeError("the job was not attached to a stream")
