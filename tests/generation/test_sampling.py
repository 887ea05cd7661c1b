"""SamplingParams: OpenAI's names, defaults and ranges; every problem reported at once."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from trimtab.errors import ConfigError
from trimtab.generation import SamplingParams, add_sampling_arguments, sampling_from_args


def problems(values: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        SamplingParams.from_options(values)
    return info.value.problems


def test_defaults_are_openai_s():
    p = SamplingParams()
    assert (
        p.temperature,
        p.top_p,
        p.max_tokens,
        p.stop,
        p.frequency_penalty,
        p.presence_penalty,
        p.seed,
        p.n,
        p.logit_bias,
    ) == (1.0, 1.0, 16, None, 0.0, 0.0, None, 1, None)
    assert p.stop_sequences == []
    assert SamplingParams.from_options({}) == p


def test_every_problem_is_reported_at_once_naming_each_field():
    found = problems(
        {
            "temperature": 3.0,
            "top_p": 0,
            "max_tokens": -1,
            "n": 17,
            "frequency_penalty": "lots",
            "presence_penalty": -2.5,
            "seed": 1.5,
            "stop": ["a"] * 5,
            "logit_bias": {"7": 101},
        }
    )
    assert found == [
        "temperature: must be between 0 and 2 (got 3.0)",
        "top_p: must be greater than 0 and at most 1 (got 0)",
        "max_tokens: must be at least 0 (got -1)",
        "stop: at most 4 stop sequences (got 5)",
        "frequency_penalty: must be a number (got 'lots')",
        "presence_penalty: must be between -2 and 2 (got -2.5)",
        "seed: must be a whole number (got 1.5)",
        "n: must be between 1 and 16 (got 17)",
        "logit_bias.7: must be between -100 and 100 (got 101)",
    ]


def test_range_edges_are_allowed():
    p = SamplingParams.from_options(
        {"temperature": 0, "top_p": 1, "n": 16, "frequency_penalty": -2, "presence_penalty": 2}
    )
    assert (p.temperature, p.n, p.presence_penalty) == (0, 16, 2)


def test_str_stop_becomes_a_list():
    p = SamplingParams.from_options({"stop": "\n\n"})
    assert p.stop == ["\n\n"] and p.stop_sequences == ["\n\n"]
    assert SamplingParams(stop=["a", "b"]).stop_sequences == ["a", "b"]


def test_more_than_four_stops_are_refused():
    assert problems({"stop": ["1", "2", "3", "4", "5"]}) == [
        "stop: at most 4 stop sequences (got 5)"
    ]
    assert SamplingParams(stop=["1", "2", "3", "4"]).stop_sequences == ["1", "2", "3", "4"]


def test_empty_or_non_string_stops_are_refused():
    assert problems({"stop": ""}) == ["stop: stop sequences must not be empty"]
    assert problems({"stop": ["ok", 3]}) == [
        "stop: must be a string or a list of up to 4 strings (got ['ok', 3])"
    ]


def test_unknown_option_is_named_with_a_suggestion():
    assert problems({"top-p": 0.5, "beam_width": 2}) == [
        "top-p: unknown option; did you mean top_p?",
        "beam_width: unknown option; known: temperature, top_p, max_tokens, stop, "
        "frequency_penalty, presence_penalty, seed, n, logit_bias, best_of, logprobs, echo",
    ]


def test_null_means_the_default():
    assert SamplingParams.from_options({"temperature": None, "stop": None}) == SamplingParams()


def test_logit_bias_takes_json_string_keys_and_checks_them():
    assert SamplingParams.from_options({"logit_bias": {"50": -100}}).logit_bias == {50: -100.0}
    assert problems({"logit_bias": {"-1": 1, "x": 2}}) == [
        "logit_bias.-1: token ids must be whole numbers of at least 0",
        "logit_bias.x: token ids must be whole numbers of at least 0",
    ]


def test_options_must_be_a_mapping():
    with pytest.raises(ConfigError, match="expected a mapping"):
        SamplingParams.from_options(["temperature", 0])  # type: ignore[arg-type]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_sampling_arguments(p)
    return p


def test_argparse_helpers_round_trip():
    ns = parser().parse_args(
        [
            "--temperature",
            "0",
            "--top-p",
            "0.9",
            "--max-tokens",
            "32",
            "--stop",
            "\n",
            "--stop",
            "###",
            "--frequency-penalty",
            "0.5",
            "--presence-penalty",
            "-1",
            "--seed",
            "7",
            "--n",
            "2",
        ]
    )
    assert sampling_from_args(ns) == SamplingParams(
        temperature=0,
        top_p=0.9,
        max_tokens=32,
        stop=["\n", "###"],
        frequency_penalty=0.5,
        presence_penalty=-1,
        seed=7,
        n=2,
    )


def test_argparse_options_not_given_keep_the_defaults():
    ns = parser().parse_args([])
    assert ns.temperature is None and ns.stop is None
    assert sampling_from_args(ns) == SamplingParams()
    assert sampling_from_args(parser().parse_args(["--seed", "1"])) == SamplingParams(seed=1)


def test_argparse_problems_name_the_option():
    ns = parser().parse_args(["--temperature", "9", "--top-p", "0"])
    with pytest.raises(ConfigError) as info:
        sampling_from_args(ns)
    assert info.value.problems == [
        "--temperature: must be between 0 and 2 (got 9.0)",
        "--top-p: must be greater than 0 and at most 1 (got 0.0)",
    ]


def test_argparse_help_comes_from_the_model_fields():
    text = parser().format_help()
    assert "0 = greedy" in text and "between 0 and 2" in text and "default: 16" in text
    assert "--frequency-penalty" in text and "repeat for several" in text


def test_importing_sampling_does_not_import_torch():
    code = (
        "import sys, trimtab.generation, trimtab.generation.sampling; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_best_of_below_n_is_refused_naming_best_of():
    assert problems({"n": 3, "best_of": 2}) == ["best_of: must be at least n (3) (got 2)"]


def test_max_tokens_zero_is_allowed_only_with_echo():
    assert problems({"max_tokens": 0}) == ["max_tokens: must be at least 1 (0 only with echo)"]
    assert SamplingParams.from_options({"max_tokens": 0, "echo": True}).max_tokens == 0
