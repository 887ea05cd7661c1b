"""The app: routes, the API-key and body-size guard, error handlers, and ``serve``.

``create_app`` wraps an engine and pool already built (tests hand in their own); ``serve``
builds them from the command line's options, runs uvicorn until interrupted, and closes the
engine on the way out.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from trimtab import __version__
from trimtab.server import chat, completions, models
from trimtab.server.common import Backend
from trimtab.server.errors import APIError, install, internal_error, log

if TYPE_CHECKING:
    from trimtab.generation.engine import Engine
    from trimtab.generation.pool import ModelPool

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
OPEN_PATHS = frozenset({"/health"})  # answered without an API key


def create_app(
    engine: Engine,
    pool: ModelPool,
    *,
    api_key: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> FastAPI:
    """An OpenAI-compatible app over ``engine`` and ``pool``; with ``api_key``, every route
    but ``/health`` needs ``Authorization: Bearer <api_key>``."""
    app = FastAPI(
        title="trimtab",
        version=__version__,
        description="OpenAI-compatible completions, chat and models over trimtab's engine.",
        docs_url=None,
        redoc_url=None,
        strict_content_type=False,  # a JSON body without a Content-Type is still read
    )
    app.state.backend = Backend(engine, pool)
    install(app)
    app.include_router(completions.router)
    app.include_router(chat.router)
    app.include_router(models.router)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    app.add_middleware(Guard, api_key=api_key, max_body_bytes=max_body_bytes)
    return app


class Guard:
    """ASGI middleware before the routes: checks the API key, refuses bodies over
    ``max_body_bytes`` (by Content-Length, and by counting what arrives), and turns an
    unexpected exception into a logged 500 in OpenAI's shape."""

    def __init__(self, app: ASGIApp, *, api_key: str | None, max_body_bytes: int):
        self.app = app
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is None:
            body, refusal = await self._read_body(receive)
        if refusal is not None:
            await _send_error(send, refusal)
            return
        await self._run(scope, _replay(body, receive), send)

    def _refusal(self, scope: Scope) -> APIError | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.api_key is not None and scope["path"] not in OPEN_PATHS:
            refusal = _check_key(headers.get("authorization"), self.api_key)
            if refusal is not None:
                return refusal
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body_bytes:
            return _too_large(self.max_body_bytes)
        return None

    async def _read_body(self, receive: Receive) -> tuple[bytes, APIError | None]:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"", None  # gone before the body arrived; the app sees the disconnect
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return b"", _too_large(self.max_body_bytes)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), None

    async def _run(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unexpected error answering %s %s", scope["method"], scope["path"])
            if not started:
                await _send_error(send, internal_error())


def _check_key(header: str | None, api_key: str) -> APIError | None:
    scheme, _, given = (header or "").partition(" ")
    if not header or scheme.lower() != "bearer" or not given.strip():
        message = (
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        )
    elif not hmac.compare_digest(given.strip().encode(), api_key.encode()):
        message = "Incorrect API key provided."
    else:
        return None
    return APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def _too_large(limit: int) -> APIError:
    return APIError(
        413,
        f"The request body is larger than this server accepts ({limit} bytes).",
        code="request_too_large",
    )


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the app the body read already, then the connection's messages
    (its disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send_error(send: Send, error: APIError) -> None:
    payload = json.dumps(error.body()).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in error.headers.items()),
    ]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload, "more_body": False})


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    runs_dir: Path | None = None,
    api_key: str | None = None,
    org: str = "trimtab",
    max_adapters: int = 8,
    max_models: int = 4,
    max_batch_size: int = 16,
    max_queue: int = 64,
    preload: Sequence[str] = (),
    log_level: str = "info",
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    dtype: str = "fp32",
) -> None:
    """Serve the models of ``runs_dir`` (and the base models ready offline) until interrupted."""
    import uvicorn

    from trimtab.generation.engine import Engine
    from trimtab.generation.pool import ModelPool

    pool = ModelPool(
        runs_dir,
        org=org,
        max_adapters=max_adapters,
        max_models=max_models,
        preload=list(preload),
        dtype=dtype,
    )
    engine = Engine(pool, max_batch_size=max_batch_size, max_queue=max_queue)
    try:
        app = create_app(engine, pool, api_key=api_key, max_body_bytes=max_body_bytes)
        config: dict[str, Any] = {"log_level": log_level, "timeout_graceful_shutdown": 5}
        uvicorn.Server(uvicorn.Config(app, host=host, port=port, **config)).run()
    finally:
        engine.close()
