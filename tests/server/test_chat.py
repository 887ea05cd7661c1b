"""``POST /v1/chat/completions`` on the real engine, through the official openai client."""

from __future__ import annotations

import json

import openai
import pytest

from tests.server.conftest import NO_EOS

HELLO = [{"role": "user", "content": "Is it any good?"}]


def test_chat_completion_answers_as_the_assistant_with_usage(client, live, base_id, tokenizer):
    answer = client.chat.completions.create(
        model=base_id, messages=HELLO, max_completion_tokens=5, temperature=0
    )
    assert answer.object == "chat.completion" and answer.id.startswith("chatcmpl-")
    assert answer.model == base_id and answer.system_fingerprint
    (choice,) = answer.choices
    assert choice.index == 0 and choice.finish_reason in ("stop", "length")
    assert choice.message.role == "assistant" and choice.message.refusal is None
    assert isinstance(choice.message.content, str) and choice.logprobs is None
    prompt = live.pool.render_chat(base_id, HELLO)  # the template, with the reply's start
    assert answer.usage.prompt_tokens == len(
        tokenizer(prompt, add_special_tokens=False)["input_ids"]
    )
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


def test_chat_is_the_completion_of_its_rendered_prompt(client, live, base_id):
    chat = client.chat.completions.create(
        model=base_id, messages=HELLO, max_completion_tokens=8, temperature=0
    )
    prompt = live.pool.render_chat(base_id, HELLO)
    plain = client.completions.create(model=base_id, prompt=prompt, max_tokens=8, temperature=0)
    assert chat.choices[0].message.content == plain.choices[0].text


def test_text_parts_and_developer_messages_read_as_strings_and_system(client, base_id):
    def content(messages) -> str:
        answer = client.chat.completions.create(
            model=base_id, messages=messages, max_completion_tokens=6, temperature=0
        )
        return answer.choices[0].message.content

    parts = [{"role": "user", "content": [{"type": "text", "text": "Is it any good?"}]}]
    assert content(parts) == content(HELLO)
    developer = [{"role": "developer", "content": "Be brief."}, *HELLO]
    system = [{"role": "system", "content": "Be brief."}, *HELLO]
    assert content(developer) == content(system)


def test_legacy_max_tokens_limits_a_chat_too(client, base_id):
    answer = client.chat.completions.create(
        model=base_id, messages=HELLO, max_tokens=3, temperature=0, logit_bias=NO_EOS
    )
    assert answer.usage.completion_tokens == 3 and answer.choices[0].finish_reason == "length"


def test_chat_without_a_token_limit_runs_up_to_the_context(client, base_id):
    answer = client.chat.completions.create(model=base_id, messages=HELLO, logit_bias=NO_EOS)
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage.total_tokens == 256


def test_n_gives_that_many_choices_and_a_seed_repeats_them(client, base_id):
    def texts(seed: int) -> list[str]:
        answer = client.chat.completions.create(
            model=base_id, messages=HELLO, n=3, max_completion_tokens=8, seed=seed
        )
        assert [c.index for c in answer.choices] == [0, 1, 2]
        return [c.message.content for c in answer.choices]

    first = texts(5)
    assert first == texts(5) and len(set(first)) > 1


def test_logprobs_list_each_token_with_its_top_alternatives(client, base_id):
    answer = client.chat.completions.create(
        model=base_id,
        messages=HELLO,
        max_completion_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
        logit_bias=NO_EOS,
    )
    content = answer.choices[0].logprobs.content
    assert len(content) == 4
    for token in content:
        assert token.logprob <= 0 and token.bytes == list(token.token.encode())
        assert len(token.top_logprobs) == 2
        assert token.logprob == pytest.approx(token.top_logprobs[0].logprob, abs=1e-5)


def test_top_logprobs_without_logprobs_is_a_400(client, base_id):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=base_id, messages=HELLO, top_logprobs=2)
    assert e.value.param == "top_logprobs"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=base_id, messages=HELLO, logprobs=True, top_logprobs=21
        )
    assert e.value.param == "top_logprobs"


def test_stop_ends_a_chat_before_the_sequence(client, base_id):
    options = {"model": base_id, "messages": HELLO, "temperature": 1, "seed": 4}
    full = client.chat.completions.create(max_completion_tokens=16, **options)
    text = full.choices[0].message.content
    assert len(text) >= 7, f"the sample is too short to cut: {text!r}"
    stop = text[5:7]
    cut = client.chat.completions.create(max_completion_tokens=16, stop=stop, **options)
    assert cut.choices[0].message.content == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_json_object_response_format_gives_a_json_object(client, base_id):
    answer = client.chat.completions.create(
        model=base_id,
        messages=HELLO,
        response_format={"type": "json_object"},
        max_completion_tokens=60,
        temperature=0,
    )
    if answer.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(answer.choices[0].message.content), dict)
    else:  # cut by the limit: still the start of a JSON object
        assert answer.choices[0].message.content.startswith("{")


def test_json_schema_response_format_follows_the_schema(client, base_id):
    schema = {
        "type": "object",
        "properties": {"label": {"type": "string", "enum": ["good", "bad"]}},
        "required": ["label"],
        "additionalProperties": False,
    }
    answer = client.chat.completions.create(
        model=base_id,
        messages=HELLO,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "verdict", "schema": schema, "strict": True},
        },
        max_completion_tokens=40,
        temperature=1,
        seed=2,
    )
    assert json.loads(answer.choices[0].message.content)["label"] in ("good", "bad")


def test_choice_response_format_answers_with_one_choice(client, base_id):
    answer = client.chat.completions.create(
        model=base_id,
        messages=HELLO,
        extra_body={"response_format": {"type": "choice", "choices": ["yes", "no"]}},
        max_completion_tokens=10,
        seed=1,
    )
    assert answer.choices[0].message.content in ("yes", "no")


def test_a_classification_run_chats_with_a_label(client, run_ids):
    answer = client.chat.completions.create(
        model=run_ids["classes"],
        messages=[{"role": "user", "content": "terrible awful"}],
        max_completion_tokens=5,
    )
    assert answer.choices[0].message.content in ("1", "5")


def test_a_lora_run_chats_by_its_ft_id(client, base_id, run_ids):
    options = {"messages": HELLO, "max_completion_tokens": 6, "temperature": 0, "logprobs": True}
    tuned = client.chat.completions.create(model=run_ids["lora-a"], **options)
    base = client.chat.completions.create(model=base_id, **options)
    assert tuned.model == run_ids["lora-a"]
    tuned_lp = [t.logprob for t in tuned.choices[0].logprobs.content]
    base_lp = [t.logprob for t in base.choices[0].logprobs.content]
    assert tuned_lp != pytest.approx(base_lp, abs=1e-3)


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.[0].role"),
        ({"messages": [{"role": "user"}]}, "messages.[0].content"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages.[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages.[0].content",
        ),
        ({"temperature": -1}, "temperature"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": 10_000}, "max_completion_tokens"),  # beyond the context
        ({"n": 17}, "n"),
        ({"stop": 5}, "stop"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ],
)
def test_a_bad_chat_request_is_a_400_naming_its_parameter(client, base_id, options, param):
    request = {"model": base_id, "messages": HELLO, **options}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(**request)
    assert e.value.type == "invalid_request_error" and e.value.param == param


def test_an_unknown_chat_model_is_a_404(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=HELLO)
    assert e.value.code == "model_not_found"
