"""``POST /v1/chat/completions``: OpenAI's chat completions over the engine.

The prompt is the model's chat template with its generation prompt (``pool.render_chat``),
tokenized without extra special tokens (the template writes its own). ``developer`` messages
are given to the template as ``system`` ones, as OpenAI treats them. Without
``max_completion_tokens`` (or the older ``max_tokens``) a completion runs up to the model's
context, as OpenAI's do, and at most :data:`DEFAULT_MAX_TOKENS`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Response
from fastapi import Request as HTTPRequest
from fastapi.responses import JSONResponse

from trimtab.generation.types import Request, TokenLogprob
from trimtab.server import running, sse
from trimtab.server.common import (
    SYSTEM_FINGERPRINT,
    Head,
    backend,
    constraint,
    include_usage,
    new_id,
    now,
    request_errors,
    sampling,
    usage,
)
from trimtab.server.errors import bad_request
from trimtab.server.schemas import (
    UNSUPPORTED_CHAT_FIELDS,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatLogprobs,
    ChatMessage,
    ChatRequest,
    ChatTokenLogprob,
    ChunkChoice,
    TopLogprob,
)

if TYPE_CHECKING:
    from trimtab.generation.engine import Stream
    from trimtab.generation.pool import ModelPool

DEFAULT_MAX_TOKENS = 4096  # no limit given: the engine clips it to what the context leaves
router = APIRouter()


@router.post("/v1/chat/completions")
async def create_chat_completion(body: ChatRequest, http: HTTPRequest) -> Response:
    engine, pool = backend(http).engine, backend(http).pool
    usage_chunk = include_usage(body.stream, body.stream_options)
    request = await _request(body, pool)
    head = Head(new_id("chatcmpl"), now(), request.model)
    with request_errors(_names(body)):
        (stream,) = await running.submit_all(engine, [request])
    if body.stream:
        return await _stream(http, body, stream, head, usage_chunk)
    try:
        with request_errors(_names(body)):
            (result,) = await running.results(http, [stream])
    except running.ClientGone:
        return Response(status_code=499)
    finally:
        stream.cancel()
    answer = ChatCompletion(
        id=head.id,
        created=head.created,
        model=head.model,
        choices=[
            ChatChoice(
                index=c.index,
                message=ChatMessage(content=c.text),
                logprobs=_logprobs(c.logprobs) if c.logprobs is not None else None,
                finish_reason=c.finish_reason,
            )
            for c in result.choices
        ],
        usage=usage([result]),
        system_fingerprint=SYSTEM_FINGERPRINT,
    )
    return JSONResponse(answer.model_dump())


def _names(body: ChatRequest) -> dict[str, str]:
    """SamplingParams' names for the chat request's own."""
    given = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    return {"max_tokens": given, "logprobs": "top_logprobs"}


async def _request(body: ChatRequest, pool: ModelPool) -> Request:
    """The engine request of a chat body, or a 400/404."""
    _refuse_unsupported(body)
    if body.top_logprobs is not None and not body.logprobs:
        raise bad_request("top_logprobs needs logprobs set to true", "top_logprobs")
    max_tokens = body.max_completion_tokens
    if max_tokens is None:
        max_tokens = body.max_tokens
    unlimited = max_tokens is None
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS
    options: dict[str, Any] = {
        "temperature": body.temperature,
        "top_p": body.top_p,
        "n": body.n,
        "max_tokens": max_tokens,
        "stop": body.stop,
        "presence_penalty": body.presence_penalty,
        "frequency_penalty": body.frequency_penalty,
        "seed": body.seed,
        "logit_bias": body.logit_bias,
        "logprobs": (body.top_logprobs or 0) if body.logprobs else None,
    }
    params = sampling(options, _names(body))
    wanted = constraint(body.response_format)
    messages = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.content}
        for m in body.messages
    ]

    def render() -> tuple[str, str]:
        info = pool.info(body.model)
        return info.id, pool.render_chat(info.id, messages)

    with request_errors():
        model, prompt = await running.in_thread(render)
    return Request(
        model=model,
        prompt=prompt,
        params=params,
        constraint=wanted,
        add_special_tokens=False,
        clip_to_context=unlimited,
    )


def _refuse_unsupported(body: ChatRequest) -> None:
    for name in UNSUPPORTED_CHAT_FIELDS:
        if getattr(body, name) is not None:
            raise bad_request(f"{name} is not supported by this server", name)
    if body.modalities is not None and body.modalities != ["text"]:
        raise bad_request("only the text modality is supported", "modalities")


def _logprobs(tokens: list[TokenLogprob]) -> ChatLogprobs:
    return ChatLogprobs(
        content=[
            ChatTokenLogprob(
                token=t.token,
                logprob=t.logprob if t.logprob is not None else 0.0,
                bytes=t.bytes,
                top_logprobs=[
                    TopLogprob(token=a.token, logprob=a.logprob, bytes=a.bytes) for a in t.top
                ],
            )
            for t in tokens
        ]
    )


async def _stream(
    http: HTTPRequest, body: ChatRequest, stream: Stream, head: Head, usage_chunk: bool
) -> Response:
    """The event stream, once the first delta came (so that an error found when the engine
    admits the request is still an HTTP error)."""
    try:
        with request_errors(_names(body)):
            (opened,) = await running.opened(http, [stream])
    except running.ClientGone:
        stream.cancel()
        return Response(status_code=499)
    except BaseException:
        stream.cancel()
        raise
    return sse.EventStream(_events(opened, head, usage_chunk), on_close=stream.cancel)


async def _events(
    opened: running.Opened, head: Head, usage_chunk: bool
) -> AsyncGenerator[bytes, None]:
    """Chunks as OpenAI streams them: each choice's role chunk, its content chunks, its
    finish chunk (empty delta); then (include_usage) a usage chunk without choices; [DONE]."""
    stream, request = opened.stream, opened.stream.request
    exclude = None if usage_chunk else {"usage"}
    wants_logprobs = request.params.logprobs is not None

    def chunk(choice: ChunkChoice) -> bytes:
        return sse.event(head.build(ChatCompletionChunk, [choice]).model_dump(exclude=exclude))

    try:
        for j in range(request.params.n):
            role = {"role": "assistant", "content": "", "refusal": None}
            yield chunk(ChunkChoice(index=j, delta=role))
        async for delta in opened:
            if delta.text or delta.logprobs:
                yield chunk(
                    ChunkChoice(
                        index=delta.index,
                        delta={"content": delta.text},
                        logprobs=_logprobs(delta.logprobs) if wants_logprobs else None,
                    )
                )
            if delta.finish_reason is not None:
                yield chunk(
                    ChunkChoice(index=delta.index, delta={}, finish_reason=delta.finish_reason)
                )
        if usage_chunk:
            final = head.build(ChatCompletionChunk, [])
            final.usage = usage([await stream.aresult()])
            yield sse.event(final.model_dump())
        yield sse.DONE
    except Exception as e:
        yield sse.error_event(e)
    finally:
        stream.cancel()
