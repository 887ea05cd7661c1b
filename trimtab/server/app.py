"""The app: routes, the API-key and body-size guard, error handlers, and ``serve``.

``create_app`` wraps an engine and pool already built (tests hand in their own), and the jobs
and evaluations services when there are some; ``serve`` builds them from the command line's
options, runs a job scheduler and uvicorn until interrupted, and closes everything on the way
out. The web console's files are served at ``/`` and ``/console/`` without the API key.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from trimtab import __version__
from trimtab.errors import TrimtabError
from trimtab.jobs.service import DEFAULT_MAX_FILE_BYTES
from trimtab.server import chat, completions, console, files, fine_tuning, models
from trimtab.server import evaluations as evaluations_routes
from trimtab.server.common import Backend
from trimtab.server.errors import APIError, install, internal_error, log

if TYPE_CHECKING:
    from trimtab.generation.engine import Engine
    from trimtab.generation.pool import ModelPool
    from trimtab.jobs.evaluations import EvaluationService
    from trimtab.jobs.executors import Executor
    from trimtab.jobs.scheduler import Scheduler
    from trimtab.jobs.service import JobsService

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
MULTIPART_OVERHEAD = 1024 * 1024  # room for the form's headers and other fields
OPEN_PATHS = frozenset({"/health"})  # answered without an API key (and the console's files)
UPLOAD_PATH = "/v1/files"  # POST: streamed through, not buffered


def create_app(
    engine: Engine,
    pool: ModelPool,
    *,
    api_key: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    jobs: JobsService | None = None,
    max_upload_bytes: int | None = None,
    evaluations: EvaluationService | None = None,
    console_dir: Path | None = None,
) -> FastAPI:
    """An OpenAI-compatible app over ``engine`` and ``pool``; with ``api_key``, every route
    but ``/health`` and the console's files needs ``Authorization: Bearer <api_key>``.

    With ``jobs``, the app also serves ``/v1/files`` (and trimtab's file reports) and
    ``/v1/fine_tuning/jobs``; an upload may be ``max_upload_bytes`` long (default: the
    service's ``max_file_bytes`` plus room for the multipart form), every other body
    ``max_body_bytes``. With ``evaluations``, trimtab's ``/v1/evaluations``. The web console
    is served from ``console_dir`` (default: the package's built console).
    """
    app = FastAPI(
        title="trimtab",
        version=__version__,
        description="OpenAI-compatible completions, chat, models, files and fine-tuning jobs "
        "over trimtab's engine.",
        docs_url=None,
        redoc_url=None,
        strict_content_type=False,  # a JSON body without a Content-Type is still read
    )
    app.state.backend = Backend(engine, pool)
    install(app)
    app.include_router(completions.router)
    app.include_router(chat.router)
    app.include_router(models.router)
    if jobs is not None:
        from trimtab.jobs.reports import FileReports

        app.state.jobs = jobs
        app.state.reports = FileReports(jobs, pool)
        app.include_router(files.router)
        app.include_router(fine_tuning.router)
        if max_upload_bytes is None:
            max_upload_bytes = jobs.max_file_bytes + MULTIPART_OVERHEAD
    if evaluations is not None:
        app.state.evaluations = evaluations
        app.include_router(evaluations_routes.router)
    console.install(app, console_dir or console.STATIC)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    app.add_middleware(
        Guard, api_key=api_key, max_body_bytes=max_body_bytes, max_upload_bytes=max_upload_bytes
    )
    return app


class Guard:
    """ASGI middleware before the routes: checks the API key, refuses bodies over
    ``max_body_bytes`` (by Content-Length, and by counting what arrives), and turns an
    unexpected exception into a logged 500 in OpenAI's shape.

    A JSON body is read whole before the app sees it. An upload (``POST /v1/files``, when
    ``max_upload_bytes`` is set) may be hundreds of megabytes, so it is streamed through to the
    app instead, counted as it passes, and cut off with a 413 past ``max_upload_bytes``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        api_key: str | None,
        max_body_bytes: int,
        max_upload_bytes: int | None = None,
    ):
        self.app = app
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope["method"] == "POST" and scope["path"] == UPLOAD_PATH
        limit = self.max_upload_bytes if upload else self.max_body_bytes
        if limit is None:  # no jobs service: no upload route either
            limit, upload = self.max_body_bytes, False
        refusal = self._refusal(scope, limit, upload)
        if refusal is None and upload:
            await self._run(scope, _Metered(receive, limit), send)
            return
        if refusal is None:
            body, refusal = await self._read_body(receive)
        if refusal is not None:
            await _send_error(send, refusal)
            return
        await self._run(scope, _replay(body, receive), send)

    def _refusal(self, scope: Scope, limit: int, upload: bool) -> APIError | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.api_key is not None and not _is_open(scope):
            refusal = _check_key(headers.get("authorization"), self.api_key)
            if refusal is not None:
                return refusal
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            return _too_large(limit, upload)
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
        metered = receive if isinstance(receive, _Metered) else None

        def cut() -> bool:
            return metered is not None and metered.over

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if cut():
                return  # the app's answer to a body cut short: the 413 below replaces it
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            if not cut():
                log.exception("unexpected error answering %s %s", scope["method"], scope["path"])
                if not started:
                    await _send_error(send, internal_error())
                return
        if metered is not None and metered.over and not started:
            await _send_error(send, _too_large(metered.limit, upload=True))


class _Metered:
    """The receive of a streamed body: counts the body as the app reads it and, past
    ``limit``, tells the app the client left, so that it stops reading (and writing the
    upload's temporary file) at once."""

    def __init__(self, receive: Receive, limit: int):
        self.receive, self.limit = receive, limit
        self.size, self.over = 0, False

    async def __call__(self) -> Message:
        if self.over:
            return {"type": "http.disconnect"}
        message = await self.receive()
        if message["type"] == "http.request":
            self.size += len(message.get("body", b""))
            if self.size > self.limit:
                self.over = True
                return {"type": "http.disconnect"}
        return message


def _is_open(scope: Scope) -> bool:
    return scope["path"] in OPEN_PATHS or console.is_public(scope["method"], scope["path"])


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


def _too_large(limit: int, upload: bool = False) -> APIError:
    if upload:
        return APIError(
            413,
            f"The upload is larger than this server accepts ({limit} bytes, with the form).",
            param="file",
            code="file_too_large",
        )
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
    home: Path | None = None,
    database: str | None = None,
    executor: str = "local",
    ray_address: str | None = None,
    jobs_concurrency: int = 1,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    owner_ttl: float = 10.0,
) -> None:
    """Serve the models of ``runs_dir`` (default ``home/runs``; and the base models ready
    offline) and run fine-tuning jobs and evaluations until interrupted.

    The jobs' store is ``database`` (a URL; default the SQLite file ``home/jobs.db``), their
    files are kept under ``home`` (default: trimtab's cache folder), and each job trains into
    ``runs_dir``: the folder served, so a job's fine-tuned model is served as soon as it ends.
    Evaluations are kept under ``home/evaluations``.
    """
    import uvicorn

    from trimtab.generation.engine import Engine
    from trimtab.generation.pool import ModelPool
    from trimtab.jobs.evaluations import EvaluationService
    from trimtab.jobs.service import JobsService
    from trimtab.jobs.store import Store
    from trimtab.models.registry import cache_dir

    # Absolute: a job records its run folder, and whoever runs it may start elsewhere.
    home = Path(home).absolute() if home is not None else cache_dir()
    runs = (Path(runs_dir) if runs_dir is not None else home / "runs").absolute()
    run_jobs = make_executor(executor, ray_address)  # a bad choice fails before anything opens
    store = Store(database or home / "jobs.db")
    service = JobsService(store, home, runs, org=org, max_file_bytes=max_file_bytes)
    # the jobs folder is the server's too: a sweep trial linked into runs/ is deleted whole
    pool = ModelPool(runs, org=org, max_adapters=max_adapters, max_models=max_models,
                     preload=list(preload), dtype=dtype,
                     managed_dirs=[service.jobs_dir])  # fmt: skip
    engine = Engine(pool, max_batch_size=max_batch_size, max_queue=max_queue)
    # Evaluations run as processes of their own, kept under home/evaluations like the jobs'.
    evaluating = EvaluationService(home, pool, service)
    app = create_app(engine, pool, api_key=api_key, max_body_bytes=max_body_bytes,
                     jobs=service, evaluations=evaluating)  # fmt: skip
    config: dict[str, Any] = {"log_level": log_level, "timeout_graceful_shutdown": 5}
    try:
        with _scheduling(service, run_jobs, jobs_concurrency, owner_ttl):
            uvicorn.Server(uvicorn.Config(app, host=host, port=port, **config)).run()
    finally:
        engine.close()
        store.close()


@contextmanager
def _scheduling(
    service: JobsService, executor: Executor, concurrency: int, ttl: float
) -> Iterator[Scheduler]:
    """A job scheduler ticking for the block. Running jobs go on after it: the next scheduler
    on the store adopts them."""
    from trimtab.jobs.scheduler import Scheduler

    scheduler = Scheduler(service, executor, concurrency=concurrency, owner_ttl=ttl)
    scheduler.start()
    try:
        yield scheduler
    finally:
        scheduler.stop()


def make_executor(name: str, ray_address: str | None = None) -> Executor:
    """The executor that starts jobs: ``local`` (a process group here) or ``ray`` (a Ray
    cluster's job API at ``ray_address``, default ``$RAY_ADDRESS``)."""
    if name == "local":
        from trimtab.jobs.executors import LocalExecutor

        return LocalExecutor()
    if name == "ray":
        address = ray_address or os.environ.get("RAY_ADDRESS")
        if not address:
            raise TrimtabError(
                "executor ray: give the cluster's dashboard address with --ray-address "
                "(e.g. http://head:8265) or $RAY_ADDRESS"
            )
        from trimtab.jobs.cluster import RayExecutor

        return RayExecutor(address)
    raise TrimtabError(f"executor: 'local' or 'ray' (got {name!r})")
