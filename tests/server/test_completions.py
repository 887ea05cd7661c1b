"""``POST /v1/completions`` on the real engine, through the official openai client."""

from __future__ import annotations

import concurrent.futures

import openai
import pytest

from tests.server.conftest import NO_EOS

PROMPT = "Great product, works"


def test_completion_is_a_text_completion_object_with_usage(client, base_id, tokenizer):
    answer = client.completions.create(model=base_id, prompt=PROMPT, max_tokens=5, temperature=0)
    assert answer.object == "text_completion" and answer.id.startswith("cmpl-")
    assert answer.model == base_id and answer.system_fingerprint
    (choice,) = answer.choices
    assert choice.index == 0 and choice.finish_reason in ("stop", "length")
    assert choice.logprobs is None and isinstance(choice.text, str)
    prompt_tokens = len(tokenizer(PROMPT)["input_ids"])
    assert answer.usage.prompt_tokens == prompt_tokens
    assert 1 <= answer.usage.completion_tokens <= 5
    assert answer.usage.total_tokens == prompt_tokens + answer.usage.completion_tokens


def test_max_tokens_defaults_to_16_as_openai(client, base_id):
    answer = client.completions.create(
        model=base_id, prompt=PROMPT, temperature=0, logit_bias=NO_EOS
    )
    assert answer.usage.completion_tokens == 16 and answer.choices[0].finish_reason == "length"


def test_greedy_completions_repeat_and_a_seed_repeats_a_sample(client, base_id):
    def text(**options) -> str:
        answer = client.completions.create(model=base_id, prompt=PROMPT, max_tokens=12, **options)
        return answer.choices[0].text

    assert text(temperature=0) == text(temperature=0)
    assert text(temperature=1, seed=7) == text(temperature=1, seed=7)
    assert text(temperature=1, seed=7) != text(temperature=1, seed=8)


def test_list_prompt_numbers_choices_prompt_by_prompt_times_n(client, base_id):
    prompts = [PROMPT, "Terrible. It broke"]
    options = {"model": base_id, "n": 2, "max_tokens": 6, "temperature": 1, "seed": 3}
    answer = client.completions.create(prompt=prompts, **options)
    assert [c.index for c in answer.choices] == [0, 1, 2, 3]
    singles = [client.completions.create(prompt=p, **options) for p in prompts]
    assert [c.text for c in answer.choices] == [c.text for s in singles for c in s.choices]
    assert answer.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in singles)
    assert answer.usage.completion_tokens == sum(s.usage.completion_tokens for s in singles)


def test_token_id_prompts_complete_like_their_text(client, base_id, tokenizer):
    ids = tokenizer(PROMPT)["input_ids"]
    by_text = client.completions.create(model=base_id, prompt=PROMPT, max_tokens=6, temperature=0)
    by_ids = client.completions.create(model=base_id, prompt=ids, max_tokens=6, temperature=0)
    batch = client.completions.create(model=base_id, prompt=[ids, ids], max_tokens=6, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    assert [c.text for c in batch.choices] == [by_text.choices[0].text] * 2
    assert by_ids.usage.prompt_tokens == len(ids)


def test_logprobs_give_tokens_offsets_and_top_alternatives(client, base_id):
    answer = client.completions.create(
        model=base_id, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3
    )
    (choice,) = answer.choices
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 6
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert chosen <= 0 and 1 <= len(top) <= 3
        assert chosen == pytest.approx(max(top.values()), abs=1e-5)  # greedy: the best one


def test_echo_returns_the_prompt_and_scores_it_with_max_tokens_0(client, base_id, tokenizer):
    answer = client.completions.create(
        model=base_id, prompt=PROMPT, max_tokens=0, echo=True, logprobs=1
    )
    (choice,) = answer.choices
    assert choice.text == PROMPT
    ids = tokenizer(PROMPT)["input_ids"]
    assert len(choice.logprobs.tokens) == len(ids)
    assert choice.logprobs.token_logprobs[0] is None  # nothing predicts the first token
    assert all(x < 0 for x in choice.logprobs.token_logprobs[1:])
    assert answer.usage.completion_tokens == 0


def test_echo_puts_the_prompt_before_the_completion(client, base_id):
    plain = client.completions.create(model=base_id, prompt=PROMPT, max_tokens=4, temperature=0)
    echoed = client.completions.create(
        model=base_id, prompt=PROMPT, max_tokens=4, temperature=0, echo=True
    )
    assert echoed.choices[0].text == PROMPT + plain.choices[0].text


def test_stop_sequence_ends_the_text_before_it(client, base_id):
    options = {"model": base_id, "prompt": PROMPT, "temperature": 1, "seed": 11}
    full = client.completions.create(max_tokens=16, **options).choices[0].text
    assert len(full) >= 8, f"the sample is too short to cut: {full!r}"
    stop = full[6:8]
    cut = client.completions.create(max_tokens=16, stop=[stop], **options).choices[0]
    assert cut.text == full[: full.index(stop)] and cut.finish_reason == "stop"


def test_logit_bias_keys_are_token_ids_as_strings(client, base_id, tokenizer):
    token = tokenizer.convert_tokens_to_ids("t")
    answer = client.completions.create(
        model=base_id, prompt=PROMPT, max_tokens=5, temperature=1, logit_bias={str(token): 100}
    )
    assert answer.choices[0].text == "t" * 5


def test_best_of_returns_n_choices_and_counts_every_sample(client, base_id):
    answer = client.completions.create(
        model=base_id,
        prompt=PROMPT,
        max_tokens=5,
        temperature=1,
        seed=1,
        best_of=3,
        n=1,
        logit_bias=NO_EOS,
    )
    assert len(answer.choices) == 1
    assert answer.usage.completion_tokens == 15  # three samples of 5 tokens, billed as OpenAI


def test_best_of_below_n_is_a_400_naming_best_of(client, base_id):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=base_id, prompt=PROMPT, n=3, best_of=2)
    assert e.value.param == "best_of" and e.value.type == "invalid_request_error"


def test_best_of_above_n_cannot_stream(client, base_id):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=base_id, prompt=PROMPT, best_of=2, stream=True)
    assert e.value.param == "best_of"


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"temperature": 3}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 0}, "n"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),  # 0 only with echo
        ({"logprobs": 6}, "logprobs"),  # completions allow 0..5, as OpenAI's
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"logit_bias": {"x": 1}}, "logit_bias"),
        ({"logit_bias": {"5": 101}}, "logit_bias"),
        ({"logit_bias": {"99999": 1}}, "logit_bias"),  # no such token in this model
        ({"suffix": "the end"}, "suffix"),
        ({"prompt": []}, "prompt"),
        ({"prompt": [1, "two"]}, "prompt"),
        ({"prompt": [99999]}, "prompt"),  # no such token
        ({"temperature": "hot"}, "temperature"),
        ({"max_tokens": 10_000}, "max_tokens"),  # beyond the model's 256 positions
        ({"stream_options": {"include_usage": True}}, "stream_options"),  # without stream
    ],
)
def test_a_bad_value_is_a_400_naming_its_parameter(client, base_id, options, param):
    request = {"model": base_id, "prompt": PROMPT, **options}
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(**request)
    assert e.value.status_code == 400
    assert e.value.type == "invalid_request_error" and e.value.param == param
    assert e.value.message


def test_a_too_long_stream_is_refused_before_it_starts(client, base_id):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=base_id, prompt=PROMPT, max_tokens=10_000, stream=True)
    assert e.value.param == "max_tokens" and "context" in e.value.message


def test_an_unrecognized_argument_is_a_400_as_openai(client, base_id):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=base_id, prompt=PROMPT, extra_body={"foo": 1})
    assert e.value.body["message"] == "Unrecognized request argument supplied: foo"
    assert e.value.param == "foo"


def test_an_unknown_model_is_a_404_model_not_found(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="no-such-model", prompt=PROMPT)
    assert e.value.code == "model_not_found" and e.value.param == "model"
    assert e.value.type == "invalid_request_error"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="ft:tiny:trimtab:gone:00000000", prompt=PROMPT)


def test_a_classification_run_answers_with_one_of_its_labels(client, run_ids):
    answer = client.completions.create(
        model=run_ids["classes"], prompt="review 3: great love", logprobs=2, temperature=0
    )
    (choice,) = answer.choices
    assert choice.text in ("1", "5") and choice.finish_reason == "stop"
    assert set(choice.logprobs.top_logprobs[0]) == {"1", "5"}


def test_adapters_and_their_base_decode_in_one_batch_with_their_own_weights(
    client, live, base_id, run_ids, slow_decoding
):
    models = [base_id, run_ids["lora-a"], run_ids["lora-b"]]

    def ask(model: str):
        answer = client.completions.create(
            model=model, prompt=PROMPT, max_tokens=8, temperature=0, logprobs=0
        )
        return answer.choices[0].logprobs.token_logprobs

    alone = [ask(m) for m in models]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(ask, m) for m in models]
        most = 0
        while not all(f.done() for f in futures):
            most = max(most, live.engine.live_rows())
        together = [f.result() for f in futures]
    assert most == 3  # the three requests were decoded side by side
    for mine, theirs in zip(together, alone):
        assert mine == pytest.approx(theirs, abs=1e-4)
    assert alone[0] != pytest.approx(alone[1], abs=1e-3)  # each adapter counts
    assert alone[1] != pytest.approx(alone[2], abs=1e-3)
