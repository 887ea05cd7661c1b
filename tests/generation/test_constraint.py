"""Constrained decoding: every walk through the allowed tokens spells text that fits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from trimtab.generation.constraint import Grammar, Matcher, compile_constraint
from trimtab.generation.types import Constraint, EngineError

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer"},
        "happy": {"type": "boolean"},
        "grade": {"enum": ["low", "high"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 3},
    },
    "required": ["name", "age", "happy", "grade", "tags"],
}


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


def compile_for(tokenizer, constraint: Constraint, extra: int = 0) -> Grammar:
    """Compile with the tokenizer's eos and a logits width ``extra`` ids past its vocabulary."""
    return compile_constraint(
        tokenizer, constraint, len(tokenizer) + extra, {tokenizer.eos_token_id}
    )


def walk(tokenizer, grammar: Grammar, seed: int, max_steps: int = 3000) -> str:
    """Sample uniformly among the allowed tokens until an eos is taken; return the text."""
    generator = torch.Generator().manual_seed(seed)
    matcher = grammar.start()
    ids: list[int] = []
    for _ in range(max_steps):
        allowed = matcher.allowed_mask().nonzero().flatten()
        assert len(allowed) > 0, "a matcher must never leave the model without a token"
        token = int(allowed[torch.randint(len(allowed), (1,), generator=generator)])
        matcher.advance(token)
        if token in grammar.eos_ids:
            assert matcher.is_finished()
            return tokenizer.decode(ids)
        ids.append(token)
    raise AssertionError(f"no eos after {max_steps} steps: {tokenizer.decode(ids)!r}")


def token_id(tokenizer, token: str) -> int:
    found = tokenizer.convert_tokens_to_ids(token)
    assert isinstance(found, int) and found != tokenizer.unk_token_id, token
    return found


def allowed_tokens(matcher: Matcher, tokenizer) -> set[str]:
    return set(tokenizer.convert_ids_to_tokens(matcher.allowed_mask().nonzero().flatten().tolist()))


def test_random_walks_through_a_schema_always_decode_to_json_matching_it(tokenizer):
    grammar = compile_for(tokenizer, Constraint(json_schema=SCHEMA))
    for seed in range(12):
        value = json.loads(walk(tokenizer, grammar, seed))
        assert list(value) == ["name", "age", "happy", "grade", "tags"]  # the schema's order
        assert isinstance(value["name"], str) and len(value["name"]) <= 8
        assert isinstance(value["age"], int) and not isinstance(value["age"], bool)
        assert isinstance(value["happy"], bool)
        assert value["grade"] in ("low", "high")
        assert isinstance(value["tags"], list) and len(value["tags"]) <= 3
        assert all(isinstance(t, str) and len(t) <= 4 for t in value["tags"])


def test_random_walks_for_json_object_always_decode_to_a_json_object(tokenizer):
    grammar = compile_for(tokenizer, Constraint(json_object=True))
    for seed in range(8):
        assert isinstance(json.loads(walk(tokenizer, grammar, seed)), dict)


def test_random_walks_over_choices_always_yield_one_of_them(tokenizer):
    choices = ("1", "2", " 5", "great", "12")
    grammar = compile_for(tokenizer, Constraint(choices=choices), extra=7)
    seen = {walk(tokenizer, grammar, seed) for seed in range(60)}
    assert seen <= set(choices)
    assert " 5" in seen and len(seen) >= 3


def test_a_choice_starting_with_a_space_is_spelled_by_the_byte_level_space_token(tokenizer):
    matcher = compile_for(tokenizer, Constraint(choices=(" 5",))).start()
    assert allowed_tokens(matcher, tokenizer) == {"Ġ"}  # the tiny tokenizer has no "Ġ5"
    matcher.advance(token_id(tokenizer, "Ġ"))
    matcher.advance(token_id(tokenizer, "5"))
    assert matcher.is_finished()


def test_eos_is_allowed_exactly_when_the_text_is_complete(tokenizer):
    eos = tokenizer.eos_token_id
    matcher = compile_for(tokenizer, Constraint(choices=("1", "12"))).start()
    assert not matcher.allowed_mask()[eos] and not matcher.is_complete()
    matcher.advance(token_id(tokenizer, "1"))
    # "1" is a whole choice but "12" may still follow: eos and "2" are both allowed.
    assert allowed_tokens(matcher, tokenizer) == {"2", tokenizer.eos_token}
    assert matcher.is_complete() and not matcher.is_finished()
    matcher.advance(token_id(tokenizer, "2"))
    assert allowed_tokens(matcher, tokenizer) == {tokenizer.eos_token}
    assert matcher.is_finished()
    matcher.advance(eos)
    assert matcher.is_finished() and allowed_tokens(matcher, tokenizer) == {tokenizer.eos_token}


def test_every_eos_id_is_allowed_at_the_end_and_none_before(tokenizer):
    other_eos = len(tokenizer) + 2  # e.g. a chat end-of-turn id, here in the logits padding
    eos_ids = {tokenizer.eos_token_id, other_eos}
    grammar = compile_constraint(tokenizer, Constraint(choices=("1",)), len(tokenizer) + 5, eos_ids)
    matcher = grammar.start()
    mask = matcher.allowed_mask()
    assert mask.shape == (len(tokenizer) + 5,) and mask.dtype == torch.bool
    assert not mask[list(eos_ids)].any()
    matcher.advance(token_id(tokenizer, "1"))
    mask = matcher.allowed_mask()
    assert mask[list(eos_ids)].all() and int(mask.sum()) == 2
    matcher.advance(other_eos)
    assert matcher.is_finished()


def test_a_forbidden_token_raises_and_leaves_the_state_unchanged(tokenizer):
    matcher = compile_for(tokenizer, Constraint(json_object=True)).start()
    with pytest.raises(ValueError, match="not allowed"):
        matcher.advance(token_id(tokenizer, "a"))
    with pytest.raises(ValueError, match="eos"):
        matcher.advance(tokenizer.eos_token_id)
    with pytest.raises(ValueError, match="outside"):
        matcher.advance(len(tokenizer) + 100)
    matcher.advance(token_id(tokenizer, "{"))  # the matcher still stands at the start
    assert not matcher.allowed_mask()[token_id(tokenizer, "{")]


def test_special_tokens_other_than_eos_are_never_allowed(tokenizer):
    grammar = compile_for(tokenizer, Constraint(json_schema={"type": "string"}))
    matcher = grammar.start()
    matcher.advance(token_id(tokenizer, '"'))
    assert allowed_tokens(matcher, tokenizer) >= {"a", "Ġ"}  # inside a string almost all goes
    assert tokenizer.eos_token not in allowed_tokens(matcher, tokenizer)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "no-such-type"},
        {"type": "object", "properties": {"a": {"$ref": "#/missing"}}},
        {"type": "string", "pattern": "("},
    ],
)
def test_a_bad_or_unsupported_schema_is_an_error_about_response_format(tokenizer, schema):
    with pytest.raises(EngineError) as info:
        compile_for(tokenizer, Constraint(json_schema=schema))
    assert info.value.param == "response_format"


def test_empty_choices_are_an_error_about_choices(tokenizer):
    with pytest.raises(EngineError) as info:
        compile_for(tokenizer, Constraint(choices=()))
    assert info.value.param == "choices"


def test_a_choice_no_token_sequence_spells_is_an_error_about_choices(tmp_path: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    # Trained without the full byte alphabet: "z" is in no token.
    raw = Tokenizer(models.BPE(unk_token=None))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(["abc abc cab"], trainers.BpeTrainer(special_tokens=["<eos>"]))
    narrow = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>")
    assert compile_for(narrow, Constraint(choices=("cab",))) is not None
    with pytest.raises(EngineError, match="'abz'") as info:
        compile_for(narrow, Constraint(choices=("cab", "abz")))
    assert info.value.param == "choices"


def test_sentencepiece_tokens_map_the_metaspace_to_a_space_and_byte_tokens_to_bytes():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "</s>": 1, "<0x0A>": 2, "▁": 3, "5": 4, "▁5": 5, "a": 6, "<0x35>": 7}
    raw = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    raw.pre_tokenizer = pre_tokenizers.Metaspace()
    raw.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    sp = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>", unk_token="<unk>")
    matcher = compile_for(sp, Constraint(choices=(" 5", "\n"))).start()
    assert allowed_tokens(matcher, sp) == {"▁", "▁5", "<0x0A>"}
    matcher.advance(vocab["▁"])
    assert allowed_tokens(matcher, sp) == {"5", "<0x35>"}  # the byte "5" spells it too


def test_the_same_constraint_returns_the_cached_grammar_and_a_fresh_matcher(tokenizer):
    first = compile_for(tokenizer, Constraint(json_schema=SCHEMA))
    again = compile_for(tokenizer, Constraint(json_schema=json.loads(json.dumps(SCHEMA))))
    assert again is first
    assert compile_for(tokenizer, Constraint(json_object=True)) is not first
    assert compile_for(tokenizer, Constraint(json_schema=SCHEMA), extra=3) is not first
    one, two = first.start(), first.start()
    one.advance(token_id(tokenizer, "{"))
    assert two.allowed_mask()[token_id(tokenizer, "{")]  # completions do not share a state


def test_a_different_tokenizer_instance_gets_its_own_grammar(tokenizer, tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    other = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    constraint = Constraint(choices=("1", "2"))
    assert compile_for(other, constraint) is not compile_for(tokenizer, constraint)


@pytest.mark.real_model
def test_real_smollm2_tokenizer_walks_a_schema_and_label_choices():
    from trimtab.models.registry import load_tokenizer

    try:
        smol = load_tokenizer("smollm2-135m")
    except Exception as exc:  # the package is not installed here: nothing to test with
        pytest.skip(f"SmolLM2's tokenizer cannot be loaded offline: {exc}")
    width = 49152
    labels = compile_constraint(smol, Constraint(choices=(" 1", " 5")), width, {0, 2})
    matcher = labels.start()
    assert allowed_tokens(matcher, smol) == {"Ġ"}  # SmolLM2 splits every digit off
    matcher.advance(smol.convert_tokens_to_ids("Ġ"))
    matcher.advance(smol.convert_tokens_to_ids("5"))
    assert matcher.is_finished() and matcher.allowed_mask()[[0, 2]].all()
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    grammar = compile_constraint(smol, Constraint(json_schema=schema), width, {0, 2})
    for seed in range(3):
        assert isinstance(json.loads(walk(smol, grammar, seed))["n"], int)
