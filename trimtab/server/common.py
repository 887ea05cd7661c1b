"""What the routes share: the engine and the jobs service behind the app, sampling options,
constraints, ids, usage and integer query parameters."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import Request as HTTPRequest
from pydantic import BaseModel

from trimtab import __version__
from trimtab.errors import ConfigError
from trimtab.generation.sampling import SamplingParams
from trimtab.generation.types import Constraint, EngineError, Result
from trimtab.jobs.objects import ApiProblem
from trimtab.server.errors import bad_request, from_config, from_engine
from trimtab.server.schemas import ResponseFormat, StreamOptions, Usage

if TYPE_CHECKING:
    from trimtab.generation.engine import Engine
    from trimtab.generation.pool import ModelPool
    from trimtab.jobs.service import JobsService

SYSTEM_FINGERPRINT = f"fp_trimtab_{__version__}"
_Built = TypeVar("_Built", bound=BaseModel)


@dataclass
class Backend:
    """The engine and model pool an app serves."""

    engine: Engine
    pool: ModelPool


def backend(request: HTTPRequest) -> Backend:
    served: Backend = request.app.state.backend
    return served


def include_usage(stream: bool | None, options: StreamOptions | None) -> bool:
    """Whether a stream ends with a usage chunk; ``stream_options`` without ``stream`` is a
    400, as OpenAI answers it."""
    if options is not None and not stream:
        raise bad_request("stream_options is only allowed when stream is true", "stream_options")
    return bool(options and options.include_usage)


@contextmanager
def request_errors(names: Mapping[str, str] | None = None) -> Iterator[None]:
    """Engine and option errors as OpenAI's 4xx, named by the request's fields (``names`` maps
    SamplingParams' field names to the request's where they differ)."""
    try:
        yield
    except ConfigError as e:
        raise from_config(e, names) from None
    except EngineError as e:
        raise from_engine(e, names) from None


def sampling(options: dict[str, Any], names: Mapping[str, str] | None = None) -> SamplingParams:
    """SamplingParams from a request's options (None = the default), or a 400 naming the
    request field at fault."""
    with request_errors(names):
        return SamplingParams.from_options(options)


def constraint(response_format: ResponseFormat | None) -> Constraint | None:
    """The constraint a ``response_format`` asks for (None for plain text)."""
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return Constraint(json_object=True)
    if response_format.type == "json_schema":
        spec = response_format.json_schema
        if spec is None:
            raise bad_request(
                "response_format: type json_schema needs a json_schema object",
                "response_format.json_schema",
            )
        return Constraint(json_schema=spec.schema_ if spec.schema_ is not None else {})
    if not response_format.choices or any(c == "" for c in response_format.choices):
        raise bad_request(
            "response_format: type choice needs a non-empty list of non-empty choices",
            "response_format.choices",
        )
    return Constraint(choices=tuple(response_format.choices))


@dataclass
class Head:
    """The fields every object (or chunk) of one response repeats; ``n`` completions per prompt
    (a choice's index is prompt * n + its own)."""

    id: str
    created: int
    model: str
    n: int = 1

    def build(self, kind: type[_Built], choices: list[Any]) -> _Built:
        """A response object (``Completion``, ``ChatCompletionChunk``...) with these choices."""
        return kind(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=choices,
            system_fingerprint=SYSTEM_FINGERPRINT,
        )


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(results: list[Result]) -> Usage:
    prompt = sum(r.prompt_tokens for r in results)
    completion = sum(r.completion_tokens for r in results)
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


def jobs_service(request: HTTPRequest) -> JobsService:
    """The jobs service the app was built with."""
    service: JobsService = request.app.state.jobs
    return service


def query_int(request: HTTPRequest, name: str, default: int) -> int:
    """An integer query parameter, or a 400 naming it (FastAPI's own would name 'query.x')."""
    value = request.query_params.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ApiProblem(
            400, f"Invalid value for '{name}': expected an integer, got {value!r}.", param=name
        ) from None
