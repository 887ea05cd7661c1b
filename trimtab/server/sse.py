"""Server-sent events as OpenAI streams them: ``data: {json}\\n\\n`` ... ``data: [DONE]\\n\\n``.

:class:`EventStream` watches the connection while it sends. When the client goes away it
cancels the event generator at once (the generator's ``finally`` then cancels the engine's
streams, freeing their batch places), whatever ASGI version the server speaks: starlette's
``StreamingResponse`` only notices a disconnect at its next write under ASGI 2.4, which for a
generation that holds text back (stop sequences) may be many tokens later.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Callable
from typing import Any

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from trimtab.errors import ConfigError
from trimtab.generation.types import EngineError
from trimtab.server.errors import from_config, from_engine, internal_error, log

DONE = b"data: [DONE]\n\n"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def event(payload: dict[str, Any]) -> bytes:
    """One event: the JSON on a ``data:`` line, then a blank line."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


def error_event(error: Exception) -> bytes:
    """An error after the stream began, as OpenAI's client expects it: an event whose JSON
    is ``{"error": {...}}`` (the status line was sent long ago)."""
    if isinstance(error, EngineError):
        api = from_engine(error)
    elif isinstance(error, ConfigError):
        api = from_config(error)
    else:
        log.error("generation failed mid-stream", exc_info=error)
        api = internal_error()
    return event(api.body())


class EventStream(Response):
    """A ``text/event-stream`` response of the byte events ``events`` yields; ``on_close`` is
    called once it ends, however it ends."""

    media_type = "text/event-stream"

    def __init__(
        self,
        events: AsyncGenerator[bytes, None],
        on_close: Callable[[], None],
        status_code: int = 200,
    ):
        self.events, self.on_close = events, on_close
        self.status_code = status_code
        self.background = None
        self.init_headers(HEADERS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def watch() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    group.cancel_scope.cancel()  # the client left: stop generating now

                group.start_soon(watch)
                await self._send_all(send)
                group.cancel_scope.cancel()
        finally:
            # Cancelled or not, the generator's finally runs now (not when collected).
            with anyio.CancelScope(shield=True):
                await self.events.aclose()
            self.on_close()  # also when the generator never started (nothing to finally)

    async def _send_all(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        async for chunk in self.events:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
