"""The HTTP mapping alone, over a scripted engine: error shapes, body limits, status codes,
failures mid-stream. (Every API behaviour is tested on the real engine elsewhere.)"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx2
import openai
import pytest

from tests.server.conftest import run_server
from trimtab.generation.types import (
    Choice,
    Delta,
    EngineError,
    ModelInfo,
    ModelNotFound,
    QueueFull,
    Request,
    Result,
)
from trimtab.models.registry import cache_dir

LIMIT = 2048
JSON = {"content-type": "application/json"}


@dataclass
class ScriptedStream:
    request: Request
    deltas: list[Delta]
    fail: Exception | None = None
    prompt_tokens: int = 3
    cancelled: bool = False

    async def _run(self):
        for delta in self.deltas:
            yield delta
        if self.fail is not None:
            raise self.fail

    def __aiter__(self):
        return self._run()

    async def aresult(self) -> Result:
        if self.fail is not None:
            raise self.fail
        text = "".join(d.text for d in self.deltas)
        return Result(self.request.model, [Choice(0, text, "stop", None, 2)], 3, 2)

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class ScriptedEngine:
    answer: Callable[[Request], ScriptedStream] = lambda r: ScriptedStream(r, [])
    streams: list[ScriptedStream] = field(default_factory=list)

    def submit(self, request: Request) -> ScriptedStream:
        stream = self.answer(request)
        self.streams.append(stream)
        return stream


class ScriptedPool:
    def info(self, model_id: str) -> ModelInfo:
        if model_id != "m":
            raise ModelNotFound(f"The model '{model_id}' does not exist", param="model")
        return ModelInfo(id="m", created=1, owned_by="trimtab")

    def list(self) -> list[ModelInfo]:
        raise RuntimeError("the disk is on fire")

    def render_chat(self, model_id: str, messages: list[dict[str, Any]]) -> str:
        return "user: hi\nassistant: "


HELLO = [Delta(0, "hel"), Delta(0, "lo", finish_reason="stop")]


@pytest.fixture(scope="module")
def engine() -> ScriptedEngine:
    return ScriptedEngine()


@pytest.fixture(scope="module")
def url(engine: ScriptedEngine):
    from trimtab.server.app import create_app

    with run_server(create_app(engine, ScriptedPool(), max_body_bytes=LIMIT)) as url:
        yield url


@pytest.fixture
def answer(engine: ScriptedEngine):
    """Set what the engine answers for this test."""

    def set_answer(make: Callable[[Request], ScriptedStream]) -> None:
        engine.answer = make

    yield set_answer
    engine.answer = lambda r: ScriptedStream(r, [])
    engine.streams.clear()


@pytest.fixture
def client(url: str):
    with openai.OpenAI(base_url=f"{url}/v1", api_key="anything", max_retries=0) as c:
        yield c


def post(url: str, path: str, **kwargs: Any) -> httpx2.Response:
    with httpx2.Client(timeout=30) as http:
        return http.post(f"{url}{path}", **kwargs)


def assert_openai_error(response: httpx2.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


def test_a_body_over_the_limit_is_a_413(url):
    big = {"model": "m", "prompt": "x" * LIMIT}
    error = assert_openai_error(post(url, "/v1/completions", json=big), 413)
    assert error["type"] == "invalid_request_error" and str(LIMIT) in error["message"]


def test_a_chunked_body_over_the_limit_is_a_413_too(url):
    def pieces():
        yield b'{"model": "m", "prompt": "'
        for _ in range(LIMIT // 100 + 1):
            yield b"x" * 100
        yield b'"}'

    response = post(
        url, "/v1/completions", content=pieces(), headers={"content-type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert_openai_error(response, 413)


def test_a_body_under_the_limit_is_served(url, answer):
    answer(lambda r: ScriptedStream(r, HELLO))
    response = post(url, "/v1/completions", json={"model": "m", "prompt": "x" * (LIMIT - 100)})
    assert response.status_code == 200 and response.json()["choices"][0]["text"] == "hello"


def test_unknown_routes_and_methods_answer_in_openai_shape(url):
    with httpx2.Client() as http:
        error = assert_openai_error(http.get(f"{url}/v1/engines"), 404)
        assert error["message"] == "Invalid URL (GET /v1/engines)"
        assert_openai_error(http.get(f"{url}/v1/completions"), 405)


def test_a_body_that_is_not_json_is_a_400(url):
    response = post(
        url, "/v1/completions", content=b"{nope", headers={"content-type": "application/json"}
    )
    error = assert_openai_error(response, 400)
    assert "JSON" in error["message"] and error["param"] is None
    error = assert_openai_error(post(url, "/v1/completions", json=[1, 2]), 400)
    assert error["type"] == "invalid_request_error"


def test_a_missing_field_is_a_400_naming_it(url):
    error = assert_openai_error(post(url, "/v1/chat/completions", json={"model": "m"}), 400)
    assert error["param"] == "messages" and "Missing required parameter" in error["message"]


def test_a_full_queue_is_a_429_with_retry_after(client, answer):
    def full(request: Request) -> ScriptedStream:
        raise QueueFull("64 requests are already waiting; retry in a moment")

    answer(full)
    with pytest.raises(openai.RateLimitError) as e:
        client.completions.create(model="m", prompt="x")
    assert e.value.code == "rate_limit_exceeded"
    assert e.value.response.headers["retry-after"] == "1"


def test_an_engine_refusal_is_a_400_naming_its_field(client, answer):
    def refuse(request: Request) -> ScriptedStream:
        raise EngineError("the model's chat template refuses it", param="messages")

    answer(refuse)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert e.value.param == "messages"


def test_an_unexpected_failure_is_a_logged_500_saying_nothing_inside(client, answer, caplog):
    def crash(request: Request) -> ScriptedStream:
        raise RuntimeError("secret internals")

    answer(crash)
    with caplog.at_level(logging.ERROR, logger="trimtab.server"):
        with pytest.raises(openai.InternalServerError) as e:
            client.completions.create(model="m", prompt="x")
    assert e.value.status_code == 500 and e.value.type == "server_error"
    assert "secret" not in e.value.message
    assert any(r.exc_info and "secret internals" in str(r.exc_info[1]) for r in caplog.records)
    with pytest.raises(openai.InternalServerError):
        client.models.list()  # the pool failing is the server's fault too


def test_a_failure_mid_stream_ends_it_with_an_error_event(url, client, answer, engine):
    answer(lambda r: ScriptedStream(r, HELLO[:1], fail=RuntimeError("boom")))
    stream = client.completions.create(model="m", prompt="x", stream=True)
    first = next(iter(stream))
    assert first.choices[0].text == "hel"
    with pytest.raises(openai.APIError) as e:
        list(stream)
    assert "boom" not in str(e.value)
    raw = post(url, "/v1/completions", json={"model": "m", "prompt": "x", "stream": True})
    assert raw.status_code == 200 and '"type":"server_error"' in raw.text
    assert "[DONE]" not in raw.text
    assert all(s.cancelled for s in engine.streams)


def test_every_engine_stream_is_cancelled_when_its_request_ends(url, answer, engine):
    answer(lambda r: ScriptedStream(r, HELLO))
    post(url, "/v1/completions", json={"model": "m", "prompt": ["a", "b"]})
    post(url, "/v1/completions", json={"model": "m", "prompt": "a", "stream": True})
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
    post(url, "/v1/chat/completions", json=body)
    assert len(engine.streams) == 4 and all(s.cancelled for s in engine.streams)


def test_without_an_api_key_any_client_is_served(url, answer):
    answer(lambda r: ScriptedStream(r, HELLO))
    response = post(url, "/v1/completions", json={"model": "m", "prompt": "x"})
    assert response.status_code == 200


def test_serve_runs_uvicorn_on_the_engine_and_closes_it_after(monkeypatch, tmp_path):
    import uvicorn

    import trimtab.generation.engine as engine_module
    import trimtab.generation.pool as pool_module
    from trimtab.server.app import serve

    made: dict[str, Any] = {}

    class Pool:
        def __init__(self, runs_dir, **options):
            made["pool"] = (runs_dir, options)

    class Engine:
        def __init__(self, pool, **options):
            made["engine"] = options
            made["closed"] = False

        def close(self) -> None:
            made["closed"] = True

    def run(server: uvicorn.Server) -> None:
        made["config"] = (server.config.host, server.config.port, server.config.log_level)
        made["app"] = server.config.app
        raise KeyboardInterrupt  # the server stops however it stops

    monkeypatch.setattr(pool_module, "ModelPool", Pool)
    monkeypatch.setattr(engine_module, "Engine", Engine)
    monkeypatch.setattr(uvicorn.Server, "run", run)
    with pytest.raises(KeyboardInterrupt):
        serve(
            "127.0.0.1",
            8123,
            runs_dir=tmp_path,
            api_key="k",
            max_batch_size=4,
            max_queue=9,
            preload=["tiny"],
            org="acme",
            max_adapters=2,
            log_level="warning",
        )
    assert made["pool"] == (
        tmp_path,
        {
            "org": "acme",
            "max_adapters": 2,
            "max_models": 4,
            "preload": ["tiny"],
            "dtype": "fp32",
            # the jobs folder is the server's too: a sweep trial linked from it is deletable
            "managed_dirs": [cache_dir() / "jobs"],
        },
    )
    assert made["engine"] == {"max_batch_size": 4, "max_queue": 9}
    assert made["config"] == ("127.0.0.1", 8123, "warning") and made["closed"] is True
