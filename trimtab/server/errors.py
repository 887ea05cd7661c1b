"""Errors as OpenAI writes them: ``{"error": {"message", "type", "param", "code"}}``.

Every refusal the server sends has this shape and a status that says whose fault it is: 400
(a bad value, naming the request field), 401 (the API key), 403 (deleting a base model), 404
(an unknown model, file, job or URL), 413 (a body or file too large), 429 (the engine's queue
is full). Only an unexpected failure is a 500, with a generic message; its traceback goes to
the log.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from trimtab.errors import ConfigError, TrimtabError
from trimtab.generation.types import EngineError, ModelNotFound, QueueFull
from trimtab.jobs.objects import ApiProblem

log = logging.getLogger("trimtab.server")

INTERNAL_MESSAGE = "The server had an error while processing your request. Sorry about that!"


class APIError(Exception):
    """A refusal to send as OpenAI's error JSON with this HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_body(
    message: str, *, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param)


def internal_error() -> APIError:
    return APIError(500, INTERNAL_MESSAGE, type="server_error")


def from_engine(error: EngineError, names: Mapping[str, str] | None = None) -> APIError:
    """An engine refusal: unknown model (404), full queue (429), a bad value (400)."""
    param = _rename(error.param, names) if error.param else None
    if isinstance(error, ModelNotFound):
        return APIError(404, str(error), param=param or "model", code="model_not_found")
    if isinstance(error, QueueFull):
        return APIError(
            429, str(error), type="requests", code=error.code, headers={"Retry-After": "1"}
        )
    return APIError(error.status, str(error), param=param, code=error.code)


def from_config(error: ConfigError, names: Mapping[str, str] | None = None) -> APIError:
    """Problems ``"field: message"`` (SamplingParams' names) as a 400 naming the request
    field of the first; ``names`` maps SamplingParams' names to the request's."""
    lines = []
    for problem in error.problems:
        field, sep, rest = problem.partition(":")
        if sep and field and " " not in field:
            head, dot, tail = field.partition(".")
            field = _rename(head, names) + dot + tail
            problem = f"{field}:{rest}"
        lines.append(problem)
    first = lines[0] if lines else str(error)
    field, sep, _ = first.partition(":")
    param = field.partition(".")[0] if sep and " " not in field else None
    return bad_request("; ".join(lines) or str(error), param)


def from_validation(error: RequestValidationError) -> APIError:
    """A body that is not JSON, misses a field, has an unknown one or a value of a wrong type."""
    problems = [_problem(e) for e in error.errors()]
    param = problems[0][0] if problems else None
    return bad_request("; ".join(m for _, m in problems) or "Invalid request body.", param)


def _problem(err: Mapping[str, Any]) -> tuple[str | None, str]:
    loc = [p for p in err.get("loc", ()) if p != "body"]
    kind = err.get("type", "")
    if kind == "json_invalid":
        return None, (
            "We could not parse the JSON body of your request: "
            f"{err.get('ctx', {}).get('error', 'invalid JSON')}. "
            "(The API expects a JSON payload.)"
        )
    if not loc:
        return None, "The request body must be a JSON object."
    param = _param_path(loc)
    if kind == "extra_forbidden":
        return param, f"Unrecognized request argument supplied: {param}"
    if kind == "missing":
        return param, f"Missing required parameter: '{param}'."
    message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    return param, f"Invalid value for '{param}': {message} (got {_short(err.get('input'))})."


def _param_path(loc: list[Any]) -> str:
    # OpenAI names list items as "messages.[0].content".
    return ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _rename(name: str, names: Mapping[str, str] | None) -> str:
    return (names or {}).get(name, name)


def install(app: FastAPI) -> None:
    """Register the handlers that turn exceptions into OpenAI's error JSON."""

    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, APIError)
        return exc.response()

    async def validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return from_validation(exc).response()

    async def engine(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, EngineError)
        return from_engine(exc).response()

    async def config(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ConfigError)
        return from_config(exc).response()

    async def api_problem(request: Request, exc: Exception) -> JSONResponse:
        # The jobs service's refusals carry their own status and fields (a subclass of
        # TrimtabError, so this handler must win over trimtab_error's 400: Starlette picks the
        # most specific class).
        assert isinstance(exc, ApiProblem)
        error = APIError(exc.status, exc.message, type=exc.type, param=exc.param, code=exc.code)
        return error.response()

    async def trimtab_error(request: Request, exc: Exception) -> JSONResponse:
        return bad_request(str(exc)).response()

    async def http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        if exc.status_code in (404, 405):
            message = f"Invalid URL ({request.method} {request.url.path})"
        else:
            message = str(exc.detail)
        return APIError(exc.status_code, message, headers=exc.headers).response()

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(EngineError, engine)
    app.add_exception_handler(ConfigError, config)
    app.add_exception_handler(ApiProblem, api_problem)
    app.add_exception_handler(TrimtabError, trimtab_error)
    app.add_exception_handler(HTTPException, http)
