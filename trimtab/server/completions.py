"""``POST /v1/completions``: OpenAI's (legacy) text completions over the engine.

Each prompt of a batched ``prompt`` is its own engine request; choice ``j`` of prompt ``i``
has index ``i * n + j``, as OpenAI numbers them. ``suffix`` is refused (no fill-in-the-middle
models here); ``response_format`` is trimtab's extension (constrained decoding).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from typing import TYPE_CHECKING

from fastapi import APIRouter, Response
from fastapi import Request as HTTPRequest
from fastapi.responses import JSONResponse

from trimtab.generation.types import Request, TokenLogprob
from trimtab.server import running, sse
from trimtab.server.common import (
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
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    prompts,
)

if TYPE_CHECKING:
    from trimtab.generation.engine import Stream
    from trimtab.generation.pool import ModelPool

router = APIRouter()


@router.post("/v1/completions")
async def create_completion(body: CompletionRequest, http: HTTPRequest) -> Response:
    engine, pool = backend(http).engine, backend(http).pool
    usage_chunk = include_usage(body.stream, body.stream_options)
    requests = await _requests(body, pool)
    params = requests[0].params
    head = Head(new_id("cmpl"), now(), requests[0].model, params.n)
    with request_errors():
        streams = await running.submit_all(engine, requests)
    if body.stream:
        return await _stream(http, streams, head, usage_chunk)
    try:
        with request_errors():
            results = await running.results(http, streams)
    except running.ClientGone:
        return Response(status_code=499)
    finally:
        running.cancel_all(streams)
    choices = [
        CompletionChoice(
            text=c.text,
            index=i * head.n + c.index,
            logprobs=_logprobs(c.logprobs) if c.logprobs is not None else None,
            finish_reason=c.finish_reason,
        )
        for i, result in enumerate(results)
        for c in result.choices
    ]
    answer = head.build(Completion, choices)
    answer.usage = usage(results)
    return JSONResponse(answer.model_dump())


async def _requests(body: CompletionRequest, pool: ModelPool) -> list[Request]:
    """The engine requests of a body (one per prompt), or a 400/404."""
    if body.suffix is not None:
        raise bad_request("suffix is not supported by this server", "suffix")
    n = body.n or 1
    if body.stream and body.best_of is not None and body.best_of > n:
        raise bad_request("best_of greater than n cannot be streamed", "best_of")
    params = sampling(
        {
            "temperature": body.temperature,
            "top_p": body.top_p,
            "n": body.n,
            "best_of": body.best_of,
            "max_tokens": body.max_tokens,
            "stop": body.stop,
            "presence_penalty": body.presence_penalty,
            "frequency_penalty": body.frequency_penalty,
            "seed": body.seed,
            "logit_bias": body.logit_bias,
            "logprobs": body.logprobs,
            "echo": body.echo,
        }
    )
    wanted = constraint(body.response_format)
    info = await running.in_thread(lambda: pool.info(body.model))
    return [
        Request(model=info.id, prompt=p, params=params, constraint=wanted)
        for p in prompts(body.prompt)
    ]


def _logprobs(tokens: list[TokenLogprob]) -> CompletionLogprobs:
    return CompletionLogprobs(
        tokens=[t.token for t in tokens],
        token_logprobs=[t.logprob for t in tokens],
        top_logprobs=[
            {a.token: a.logprob for a in t.top} if t.logprob is not None else None for t in tokens
        ],
        text_offset=[t.text_offset for t in tokens],
    )


async def _stream(
    http: HTTPRequest, streams: list[Stream], head: Head, usage_chunk: bool
) -> Response:
    """The event stream, once every prompt has its first delta (so that an error found when
    the engine admits a request is still an HTTP error)."""
    try:
        with request_errors():
            opened = await running.opened(http, streams)
    except running.ClientGone:
        running.cancel_all(streams)
        return Response(status_code=499)
    except BaseException:
        running.cancel_all(streams)
        raise
    wants_logprobs = streams[0].request.params.logprobs is not None
    events = _events(opened, head, usage_chunk, wants_logprobs)
    return sse.EventStream(events, on_close=lambda: running.cancel_all(streams))


async def _events(
    streams: Sequence[running.Opened], head: Head, usage_chunk: bool, wants_logprobs: bool
) -> AsyncGenerator[bytes, None]:
    """The chunks of a streamed completion, then (include_usage) the usage chunk, then
    ``[DONE]``; an error after the first chunk ends the stream with an error event."""
    exclude = None if usage_chunk else {"usage"}
    try:
        async with aclosing(running.merge(streams)) as deltas:  # its tasks end with it
            async for i, delta in deltas:
                if not (delta.text or delta.logprobs or delta.finish_reason):
                    continue
                choice = CompletionChoice(
                    text=delta.text,
                    index=i * head.n + delta.index,
                    logprobs=_logprobs(delta.logprobs) if wants_logprobs else None,
                    finish_reason=delta.finish_reason,
                )
                yield sse.event(head.build(Completion, [choice]).model_dump(exclude=exclude))
        if usage_chunk:
            final = head.build(Completion, [])
            final.usage = usage([await o.stream.aresult() for o in streams])
            yield sse.event(final.model_dump())
        yield sse.DONE
    except Exception as e:
        yield sse.error_event(e)
    finally:
        running.cancel_all([o.stream for o in streams])
