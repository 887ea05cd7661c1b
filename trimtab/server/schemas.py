"""OpenAI's request and response bodies as pydantic models, field for field.

Requests forbid unknown fields, as OpenAI does ("Unrecognized request argument supplied").
Types are checked here; ranges and the sampling rules are :class:`SamplingParams`'s, so the
CLI, the server and the engine agree on them. Fields whose JSON may take several shapes
(``prompt``, ``stop``, message ``content``) are checked by validators that name the field
alone, instead of pydantic's one error per union branch.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# --- requests ---------------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class StreamOptions(_Body):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None  # accepted; this server never pads chunks


class JSONSchemaFormat(_Body):
    name: str
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Body):
    """``text``, ``json_object``, ``json_schema`` (OpenAI's) or ``choice`` (trimtab's
    extension: the text is exactly one of ``choices``)."""

    type: Literal["text", "json_object", "json_schema", "choice"]
    json_schema: JSONSchemaFormat | None = None
    choices: list[str] | None = None


class _Sampling(_Body):
    """The fields both endpoints share."""

    model: str
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: Any = None  # a string or a list of strings; SamplingParams checks which
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    logit_bias: dict[str, Any] | None = None  # JSON keys are token ids written as strings
    user: str | None = None  # accepted and ignored, as an end-user id is
    response_format: ResponseFormat | None = None


class CompletionRequest(_Sampling):
    """``POST /v1/completions``."""

    prompt: Any
    suffix: str | None = None
    max_tokens: int | None = None
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool | None = None
    best_of: int | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt_shape(cls, value: Any) -> Any:
        prompts(value)  # raises ValueError naming what is wrong
        return value


def prompts(value: Any) -> list[str | list[int]]:
    """The prompts of a completions request: a string, a list of strings, a list of token ids
    or a list of token-id lists, each its own prompt."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        raise ValueError(
            "must be a string, a list of strings, a list of token ids or a list of token-id "
            "lists (not empty)"
        )
    if all(isinstance(v, str) for v in value):
        return list(value)
    if all(_is_token(v) for v in value):
        return [list(value)]
    if all(isinstance(v, list) and v and all(_is_token(t) for t in v) for v in value):
        return [list(v) for v in value]
    raise ValueError(
        "a list prompt must hold only strings, only token ids (whole numbers of at least 0), "
        "or only non-empty lists of token ids"
    )


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class Message(_Body):
    """A chat message; ``content`` is a string or a list of text parts."""

    role: Literal["system", "developer", "user", "assistant"]
    content: Any
    name: str | None = None  # accepted; chat templates have no place for it

    @field_validator("content")
    @classmethod
    def _content_text(cls, value: Any) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, list) and value:
            texts = []
            for part in value:
                if not isinstance(part, dict) or part.get("type") != "text":
                    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                    raise ValueError(f"only text content parts are supported (got {kind!r})")
                if not isinstance(part.get("text"), str) or set(part) != {"type", "text"}:
                    raise ValueError('a text part is {"type": "text", "text": "..."}')
                texts.append(part["text"])
            return "\n".join(texts)
        raise ValueError("must be a string or a non-empty list of text parts")


class ChatRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = None
    max_tokens: int | None = None  # deprecated by OpenAI, still accepted
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    # OpenAI's, accepted and ignored: they change nothing a local server does.
    store: bool | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    parallel_tool_calls: bool | None = None
    # OpenAI's, not supported: refused with a 400 naming them unless null.
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    audio: Any = None
    modalities: list[str] | None = None
    prediction: Any = None
    reasoning_effort: Any = None
    web_search_options: Any = None


UNSUPPORTED_CHAT_FIELDS = (
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "audio",
    "prediction",
    "reasoning_effort",
    "web_search_options",
)


# --- responses --------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class Completion(BaseModel):
    """A ``text_completion`` object, whole or (streamed) one chunk of it."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None
    refusal: list[ChatTokenLogprob] | None = None


class ChatMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: str | None = None


class ChatChoice(BaseModel):
    index: int
    message: ChatMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str


class ChunkChoice(BaseModel):
    index: int
    delta: dict[str, Any]
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    parent: str | None = None  # extension: a fine-tune's base model
    root: str | None = None  # extension: the base model at the root of the line
    task: str = "sft"  # extension: "classify" models answer with a label


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class ModelDeleted(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool
