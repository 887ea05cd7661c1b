"""What the engine takes and gives: requests, streamed deltas, finished results, its errors.

These plain dataclasses are the contract between the engine (``engine.py``), the server
(``trimtab.server``), the CLI and evaluation. They import no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from trimtab.errors import TrimtabError
from trimtab.generation.sampling import SamplingParams

FinishReason = Literal["stop", "length"]


class EngineError(TrimtabError):
    """A request the engine refuses; ``param`` names the request field at fault (or None)."""

    status = 400
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message)
        self.param = param


class ModelNotFound(EngineError):
    """No base model, run or ``ft:`` id of that name."""

    status = 404
    code = "model_not_found"


class QueueFull(EngineError):
    """More requests wait than the engine queues; the client should retry later (429)."""

    status = 429
    code = "rate_limit_exceeded"


@dataclass(frozen=True)
class Constraint:
    """What a completion must look like, decoded by constrained sampling.

    Exactly one of: ``json_schema`` (a JSON Schema dict; ``{}``-like schemas allowed),
    ``json_object`` (any JSON object), ``choices`` (the text is exactly one of these strings).
    """

    json_schema: dict[str, Any] | None = None
    json_object: bool = False
    choices: tuple[str, ...] | None = None


@dataclass
class Request:
    """One completion request: a prompt for one model, sampled ``params.n`` times."""

    model: str  # a model id as the pool names it (known name, folder, run name or ft: id)
    prompt: str | list[int]  # text, or token ids as OpenAI's completions API accepts
    params: SamplingParams = field(default_factory=SamplingParams)
    constraint: Constraint | None = None
    # Chat prompts come from the chat template, which writes its own special tokens.
    add_special_tokens: bool = True
    # True: a prompt plus max_tokens longer than the model's context gets fewer tokens (chat
    # without max_completion_tokens, as OpenAI's); False: it is refused naming max_tokens.
    clip_to_context: bool = False


@dataclass
class TopLogprob:
    """An alternative token at one position, with its log-probability."""

    token: str
    logprob: float
    bytes: list[int]


@dataclass
class TokenLogprob:
    """A token of the text with its log-probability and the most likely alternatives.

    ``logprob`` is None for the first prompt token when echoed (nothing predicts it)."""

    token: str
    token_id: int
    logprob: float | None
    bytes: list[int]
    top: list[TopLogprob] = field(default_factory=list)
    text_offset: int = 0  # where the token starts in the choice's text (prompt included if echo)


@dataclass
class Delta:
    """A streamed piece of one choice: new text and the tokens generated since the last delta.

    Text that could still become a stop sequence is held back until it cannot; the last delta
    of a choice carries its ``finish_reason``."""

    index: int
    text: str
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: FinishReason | None = None


@dataclass
class Choice:
    """One finished completion."""

    index: int
    text: str
    finish_reason: FinishReason
    logprobs: list[TokenLogprob] | None = None  # when params.logprobs is not None
    completion_tokens: int = 0


@dataclass
class Result:
    """A finished request: its choices (``n`` of them, the best of ``best_of``) and usage."""

    model: str
    choices: list[Choice]
    prompt_tokens: int
    completion_tokens: int  # over every sampled completion, best_of ones included


@dataclass
class ModelInfo:
    """A model the pool can serve, as ``/v1/models`` lists it."""

    id: str
    created: int  # unix seconds
    owned_by: str
    parent: str | None = None  # a fine-tune's base model id
    root: str | None = None
    fine_tuned: bool = False
    task: str = "sft"  # "classify" models answer with a label
    path: str | None = None
