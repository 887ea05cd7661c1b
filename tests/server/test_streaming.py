"""Streaming as server-sent events, and clients that leave: on the real engine."""

from __future__ import annotations

import json
import time

import httpx2
import openai
import pytest

from tests.server.conftest import API_KEY, NO_EOS

PROMPT = "Great product, works"
HELLO = [{"role": "user", "content": "Is it any good?"}]
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def raw_events(url: str, body: dict) -> tuple[httpx2.Response, str]:
    with httpx2.Client(timeout=60) as http:
        response = http.post(url, json=body, headers=AUTH)
    return response, response.text


def test_streamed_completion_adds_up_to_the_whole_one(client, base_id):
    options = {"model": base_id, "prompt": PROMPT, "max_tokens": 10, "temperature": 0}
    whole = client.completions.create(**options)
    chunks = list(client.completions.create(stream=True, **options))
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id.startswith("cmpl-")
    assert all(c.object == "text_completion" and c.usage is None for c in chunks)
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks][-1] == whole.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_include_usage_adds_a_last_chunk_without_choices(client, base_id):
    options = {"model": base_id, "prompt": PROMPT, "max_tokens": 6, "temperature": 0}
    whole = client.completions.create(**options)
    chunks = list(
        client.completions.create(stream=True, stream_options={"include_usage": True}, **options)
    )
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])


def test_a_streamed_batch_ends_every_choice_once(client, base_id):
    chunks = list(
        client.completions.create(
            model=base_id, prompt=[PROMPT, "It is okay"], n=2, max_tokens=5, seed=2, stream=True
        )
    )
    ended = [c.choices[0].index for c in chunks if c.choices[0].finish_reason]
    assert sorted(ended) == [0, 1, 2, 3]


def test_streamed_logprobs_and_echo_match_the_whole_completion(client, base_id):
    options = {
        "model": base_id,
        "prompt": PROMPT,
        "max_tokens": 5,
        "temperature": 0,
        "logprobs": 2,
        "echo": True,
    }
    whole = client.completions.create(**options).choices[0]
    chunks = [c.choices[0] for c in client.completions.create(stream=True, **options)]
    assert "".join(c.text for c in chunks) == whole.text and whole.text.startswith(PROMPT)
    tokens = [t for c in chunks for t in c.logprobs.tokens]
    offsets = [o for c in chunks for o in c.logprobs.text_offset]
    assert tokens == whole.logprobs.tokens and offsets == whole.logprobs.text_offset


def test_streamed_chat_starts_with_the_role_and_ends_with_an_empty_delta(client, base_id):
    options = {"model": base_id, "messages": HELLO, "max_completion_tokens": 8, "temperature": 0}
    whole = client.chat.completions.create(**options)
    chunks = list(
        client.chat.completions.create(
            stream=True, stream_options={"include_usage": True}, **options
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    first, *middle, finish, usage = chunks
    assert first.choices[0].delta.role == "assistant" and first.choices[0].delta.content == ""
    assert all(c.choices[0].finish_reason is None for c in middle)
    assert "".join(c.choices[0].delta.content for c in middle) == whole.choices[0].message.content
    assert finish.choices[0].finish_reason == whole.choices[0].finish_reason
    assert finish.choices[0].delta.content is None and finish.choices[0].delta.role is None
    assert usage.choices == [] and usage.usage == whole.usage


def test_streamed_chat_choices_each_get_a_role_and_a_finish(client, base_id):
    chunks = list(
        client.chat.completions.create(
            model=base_id, messages=HELLO, n=2, max_completion_tokens=5, seed=3, stream=True
        )
    )
    roles = [c.choices[0].index for c in chunks if c.choices[0].delta.role == "assistant"]
    ends = [c.choices[0].index for c in chunks if c.choices[0].finish_reason]
    assert sorted(roles) == [0, 1] and sorted(ends) == [0, 1]


def test_streamed_chat_logprobs_come_with_their_tokens(client, base_id):
    chunks = list(
        client.chat.completions.create(
            model=base_id,
            messages=HELLO,
            max_completion_tokens=4,
            temperature=0,
            logprobs=True,
            top_logprobs=1,
            logit_bias=NO_EOS,
            stream=True,
        )
    )
    tokens = [t for c in chunks if c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert len(tokens) == 4 and "".join(t.token for t in tokens) == text


def test_event_stream_framing_is_data_lines_then_done(live, base_id):
    body = {"model": base_id, "messages": HELLO, "max_completion_tokens": 4, "stream": True}
    response, text = raw_events(f"{live.v1}/chat/completions", body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert text.endswith("\n\n")
    events = text[:-2].split("\n\n")
    assert all(e.startswith("data: ") and "\n" not in e for e in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert chunks[-1]["choices"][0]["delta"] == {} and chunks[-1]["choices"][0]["finish_reason"]
    assert all("usage" not in c for c in chunks)  # only with include_usage


def test_an_error_before_the_stream_starts_is_an_http_error(live, base_id):
    body = {"model": base_id, "messages": HELLO, "max_completion_tokens": 9999, "stream": True}
    response, _ = raw_events(f"{live.v1}/chat/completions", body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "max_completion_tokens"


def wait_for_no_rows(engine, seconds: float) -> float:
    """Seconds until the engine decodes nothing, failing after ``seconds``."""
    start = time.monotonic()
    while engine.live_rows():
        assert time.monotonic() - start < seconds, f"{engine.live_rows()} rows still decoding"
        time.sleep(0.01)
    return time.monotonic() - start


LONG = {"max_completion_tokens": 200, "logit_bias": NO_EOS}  # 200 steps of 20 ms: 4 s at least


def test_a_client_leaving_a_stream_frees_its_rows_at_once(live, base_id, slow_decoding):
    body = {"model": base_id, "messages": HELLO, "n": 2, "stream": True, **LONG}
    with httpx2.Client(timeout=30) as http:
        with http.stream("POST", f"{live.v1}/chat/completions", json=body, headers=AUTH) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: ") and '"content":"' in line and '"role"' not in line:
                    break  # the first generated text
            assert live.engine.live_rows() == 2
        # leaving the block closes the connection mid-stream
    assert wait_for_no_rows(live.engine, 1.0) < 1.0


def test_a_client_leaving_a_non_streamed_request_frees_its_rows(
    client, live, base_id, slow_decoding
):
    impatient = client.with_options(timeout=1.0)
    with pytest.raises(openai.APITimeoutError):
        impatient.chat.completions.create(model=base_id, messages=HELLO, **LONG)
    assert wait_for_no_rows(live.engine, 1.0) < 1.0


def test_a_client_leaving_a_streamed_batch_frees_every_prompt(client, live, base_id, slow_decoding):
    stream = client.completions.create(
        model=base_id,
        prompt=[PROMPT, "It is okay", "I love it"],
        max_tokens=200,
        logit_bias=NO_EOS,
        stream=True,
    )
    next(iter(stream))
    assert live.engine.live_rows() == 3
    stream.close()
    wait_for_no_rows(live.engine, 1.0)
    # and the server goes on serving
    answer = client.completions.create(model=base_id, prompt=PROMPT, max_tokens=2)
    assert len(answer.choices) == 1
