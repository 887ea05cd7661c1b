"""Tests for the token-counting checks (trimtab.data.tokens) with a tiny real tokenizer.

The tokenizer (from conftest) is a byte-level BPE like SmolLM2's: it splits " 5" into a space and a
digit but keeps frequent words such as " the" whole, and it adds no special tokens.
"""

from __future__ import annotations

from typing import Any

import pytest
from transformers import AutoTokenizer

from trimtab.data.checks import State
from trimtab.data.examples import Example
from trimtab.data.tokens import (
    TokenCounts,
    _stats,
    check_long_examples,
    check_multi_token_labels,
    check_token_lengths,
    count_tokens,
    example_lengths,
    measure,
    token_pieces,
)


@pytest.fixture
def tok(tiny_tokenizer_dir):
    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


def ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def n_tokens(tokenizer: Any, text: str) -> int:
    return len(ids(tokenizer, text))


def supervised(
    pairs: list[tuple[str, str]], task: str | None = None, fmt: str = "prompt-completion", **kw: Any
) -> State:
    examples = [
        Example(file="d.jsonl", line=i, prompt=p, completion=c) for i, (p, c) in enumerate(pairs, 1)
    ]
    return State(examples, "supervised", fmt, task=task, **kw)


def texts(items: list[str]) -> State:
    return State(
        [Example(file="d.jsonl", line=i, text=t) for i, t in enumerate(items, 1)],
        "text",
        "text",
        task="language-modeling",
    )


def chats(conversations: list[list[tuple[str, str]]]) -> State:
    examples = [
        Example(file="d.jsonl", line=i, messages=[{"role": r, "content": c} for r, c in conv])
        for i, conv in enumerate(conversations, 1)
    ]
    return State(examples, "chat", "chat", task="conditional-generation")


class SlowTokenizer:
    """Wraps a tokenizer behind its Python call only (no Rust backend), with extra specials."""

    chat_template = None

    def __init__(self, inner: Any, specials: int = 0) -> None:
        self.inner = inner
        self.specials = specials
        self.calls: list[Any] = []

    def __call__(self, texts: Any, add_special_tokens: bool = True, **kw: Any) -> Any:
        self.calls.append(texts)
        return self.inner(texts, add_special_tokens=add_special_tokens, **kw)

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return self.specials


REVIEWS = [
    "Great product, works as described.",
    "Terrible. It broke after one day.",
    "",
    "I love it!",
    "Great product, works as described.",
    "ünïcödé ✓ 🙂",
]


# --- count_tokens ----------------------------------------------------------------------------

PAD_TO = 32  # like MiniLM's tokenizer.json (pads to 128 and truncates at 128), made small
CUT_AT = 12


@pytest.fixture
def padding_dir(tiny_tokenizer_dir, tmp_path):
    """The tiny tokenizer with padding and truncation switched on in its tokenizer.json."""
    from tokenizers import Tokenizer

    rust = Tokenizer.from_file(str(tiny_tokenizer_dir / "tokenizer.json"))
    rust.enable_padding(length=PAD_TO, pad_id=0, pad_token="<|endoftext|>")
    rust.enable_truncation(CUT_AT)
    for f in tiny_tokenizer_dir.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    rust.save(str(tmp_path / "tokenizer.json"))
    return tmp_path


LONG = "the quick brown fox jumps over the lazy dog " * 4


@pytest.mark.parametrize("kind", ["rust", "transformers", "python-only"])
def test_count_tokens_ignores_padding_and_truncation_in_the_tokenizer_file(tok, padding_dir, kind):
    from tokenizers import Tokenizer

    if kind == "rust":
        padded: Any = Tokenizer.from_file(str(padding_dir / "tokenizer.json"))
        assert len(padded.encode("I love it!").ids) == PAD_TO  # the file really pads
    else:
        padded = AutoTokenizer.from_pretrained(padding_dir)
        if kind == "python-only":
            padded = SlowTokenizer(padded)
    texts = ["I love it!", LONG]
    assert n_tokens(tok, LONG) > PAD_TO
    assert count_tokens(padded, texts) == [n_tokens(tok, t) for t in texts]


def test_token_pieces_of_a_padding_tokenizer_are_the_label_tokens_only(tok, padding_dir):
    from tokenizers import Tokenizer

    padded = Tokenizer.from_file(str(padding_dir / "tokenizer.json"))
    assert token_pieces(padded, " 5") == [" ", "5"]


def test_long_examples_are_found_with_a_truncating_tokenizer(tok, padding_dir):
    from tokenizers import Tokenizer

    padded = Tokenizer.from_file(str(padding_dir / "tokenizer.json"))
    state = supervised([("I love it!", " 5"), (LONG, " 1")] * 3, task="classification")
    counts = measure(state, padded, max_length=PAD_TO)
    short = n_tokens(tok, "I love it!") + n_tokens(tok, " 5")
    assert counts.prompt[0] + counts.completion[0] == short < PAD_TO
    assert [ex.line for ex, _ in counts.long] == [2, 4, 6]
    assert counts.max_total == n_tokens(tok, LONG) + n_tokens(tok, " 1")


def test_count_tokens_matches_the_tokenizer_per_text_with_duplicates(tok):
    counts = count_tokens(tok, REVIEWS)
    assert counts == [n_tokens(tok, t) for t in REVIEWS]
    assert len(counts) == len(REVIEWS)
    assert counts[0] == counts[4] > 0
    assert counts[2] == 0


def test_count_tokens_without_rust_backend_matches_and_encodes_each_text_once(tok):
    slow = SlowTokenizer(tok)
    assert count_tokens(slow, REVIEWS) == [n_tokens(tok, t) for t in REVIEWS]
    assert len(slow.calls) == 1
    assert slow.calls[0] == list(dict.fromkeys(REVIEWS))  # distinct texts, first-seen order


def test_label_with_leading_space_is_two_tokens(tok):
    assert count_tokens(tok, [" 5", "5", " the"]) == [2, 1, 1]


# --- example_lengths -------------------------------------------------------------------------


def test_example_lengths_supervised_counts_prompt_and_completion(tok):
    state = supervised([("Great product\n\n###\n\n", " 5"), ("It broke.\n\n###\n\n", " 1")])
    prompts, completions = example_lengths(state, tok)
    assert prompts == [
        n_tokens(tok, "Great product\n\n###\n\n"),
        n_tokens(tok, "It broke.\n\n###\n\n"),
    ]
    assert completions == [2, 2]


def test_example_lengths_add_special_tokens_to_the_prompt(tok):
    state = supervised([("Great product", " 5")])
    prompts, completions = example_lengths(state, SlowTokenizer(tok, specials=2))
    assert prompts == [n_tokens(tok, "Great product") + 2]
    assert completions == [2]


def test_example_lengths_text_has_no_completion(tok):
    state = texts(["I love it! My daughter uses it every day.", "short"])
    prompts, completions = example_lengths(state, tok)
    assert prompts == [
        n_tokens(tok, "I love it! My daughter uses it every day."),
        n_tokens(tok, "short"),
    ]
    assert completions == [0, 0]


def test_example_lengths_chat_context_without_template(tok):
    state = chats(
        [
            [
                ("system", "Be brief."),
                ("user", "Hi"),
                ("assistant", "Hello!"),
                ("user", "Rate it"),
                ("assistant", "It is okay"),
            ]
        ]
    )
    prompts, completions = example_lengths(state, tok)
    # the generation prompt training puts before the answer is counted too
    context = "system: Be brief.\nuser: Hi\nassistant: Hello!\nuser: Rate it\nassistant: "
    assert prompts == [n_tokens(tok, context)]
    assert completions == [n_tokens(tok, "It is okay")]


def test_example_lengths_chat_uses_the_chat_template(tok):
    tok.chat_template = (
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    state = chats([[("user", "Hi there"), ("assistant", "Hello!")]])
    prompts, completions = example_lengths(state, tok)
    assert prompts == [n_tokens(tok, "<user>Hi there<assistant>")]
    assert completions == [n_tokens(tok, "Hello!")]


def test_example_lengths_supervised_written_as_chat_wraps_the_prompt_in_a_user_turn(tok):
    state = supervised([("Great product", " 5")], fmt="chat")
    prompts, completions = example_lengths(state, tok)
    assert prompts == [n_tokens(tok, "user: Great product\nassistant: ")]
    assert completions == [2]


def test_example_lengths_supervised_written_as_text_counts_the_plain_prompt(tok):
    state = supervised([("Great product", " 5")], fmt="text")
    prompts, completions = example_lengths(state, tok)
    assert prompts == [n_tokens(tok, "Great product")]
    assert completions == [2]


# --- check_token_lengths ---------------------------------------------------------------------


def counted(state, lengths, max_length):
    """Exact TokenCounts from (prompt, completion) token lists."""
    return TokenCounts.exact(state.examples, *lengths, max_length=max_length)


def test_stats_are_nearest_rank_percentiles():
    assert _stats([]) == {"p50": 0, "p95": 0, "max": 0}
    assert _stats([7]) == {"p50": 7, "p95": 7, "max": 7}
    assert _stats(list(range(1, 21))[::-1]) == {"p50": 11, "p95": 19, "max": 20}
    assert _stats(list(range(1, 102))) == {"p50": 51, "p95": 96, "max": 101}


def test_token_lengths_within_max_length_is_ok(tok):
    state = supervised(
        [("Great product", " 5"), ("It broke", " 1"), ("I love it", " 5")], "classification"
    )
    lengths = example_lengths(state, tok)
    r = check_token_lengths("tiny", 512, counted(state, lengths, 512))
    assert (r.id, r.status, r.count, r.fix) == ("token-lengths", "ok", 0, None)
    totals = sorted(p + c for p, c in zip(*lengths))
    assert r.details["total"] == {"p50": totals[1], "p95": totals[2], "max": totals[2]}
    assert r.details["prompt"]["max"] == max(lengths[0])
    assert r.details["completion"] == {"p50": 2, "p95": 2, "max": 2}
    assert r.details["tokens"] == sum(totals)
    assert (r.details["model"], r.details["max_length"], r.details["over_max_length"]) == (
        "tiny",
        512,
        0,
    )
    assert r.message == (
        f"tiny: p50 {totals[1]}, p95 {totals[2]}, max {totals[2]} tokens per "
        "example; 0 of 3 exceed --max-length 512"
    )


def test_token_lengths_over_max_length_is_a_warning():
    state = supervised([(f"p{i}", " c") for i in range(20)])
    lengths = (list(range(1, 21)), [1] * 20)  # totals 2..21
    r = check_token_lengths("tiny", 15, counted(state, lengths, 15))
    assert (r.status, r.count) == ("warning", 6)  # 16..21
    assert r.details["over_max_length"] == 6
    assert r.details["total"] == {"p50": 12, "p95": 20, "max": 21}
    assert r.details["prompt"] == {"p50": 11, "p95": 19, "max": 20}
    assert r.details["tokens"] == sum(range(2, 22))
    assert r.message.endswith("6 of 20 exceed --max-length 15")


def test_token_lengths_skipped_without_tokenizer():
    r = check_token_lengths("none", 512, None)
    assert (r.status, r.count, r.details) == ("info", 0, {})
    assert r.message == "skipped: no tokenizer (--model none)"


def test_large_data_counts_every_example_exactly(tok):
    long_text = "Terrible. It broke after one day and the seller never answered. " * 3
    pairs = [(f"short {i}", " 5") for i in range(300)]
    for i in (7, 123, 299):
        pairs[i] = (long_text + str(i), " 1")
    state = supervised(pairs, "classification")
    limit = 20
    counts = measure(state, tok, limit)
    assert counts.prompt == [n_tokens(tok, p) for p, _ in pairs]
    assert counts.completion == [n_tokens(tok, c) for _, c in pairs]
    assert [ex.line for ex, _ in counts.long] == [8, 124, 300]
    assert counts.sampled is None
    r = check_token_lengths("tiny", limit, counts)
    assert r.details["sampled"] is None and "tokens_estimated" not in r.details
    assert r.details["tokens"] == sum(n_tokens(tok, p) + n_tokens(tok, c) for p, c in pairs)
    assert "sample" not in r.message and r.count == 3


# --- check_long_examples ---------------------------------------------------------------------


def test_no_long_examples_is_ok():
    state = supervised([("a", " b"), ("c", " d")], "conditional-generation")
    r = check_long_examples(state, 10, counted(state, ([3, 4], [1, 6]), 10))
    assert (r.id, r.status, r.count, r.fix) == ("long-examples", "ok", 0, None)
    assert r.message == "every example fits in 10 tokens"


def test_long_generation_examples_are_dropped_by_default():
    state = supervised([("a", " b"), ("c", " d"), ("e", " f")], "conditional-generation")
    r = check_long_examples(state, 10, counted(state, ([3, 9, 4], [1, 2, 7]), 10))
    assert (r.status, r.count, r.locations) == ("warning", 2, ["d.jsonl:2", "d.jsonl:3"])
    assert "cutting off the completion" in r.message
    assert (r.fix.id, r.fix.recommended) == ("drop-long", True)
    r.fix.apply(state)
    assert [ex.line for ex in state.examples] == [1]


def test_long_classification_examples_are_kept_by_default():
    state = supervised([("a", " b"), ("c", " d")], "classification")
    r = check_long_examples(state, 10, counted(state, ([30, 3], [2, 2]), 10))
    assert (r.status, r.count, r.locations) == ("warning", 1, ["d.jsonl:1"])
    assert "the label is kept" in r.message
    assert (r.fix.id, r.fix.recommended) == ("drop-long", False)


def test_long_texts_are_info_for_language_modeling(tok):
    state = texts(["I love it! My daughter uses it every day.", "short"])
    lengths = example_lengths(state, tok)
    r = check_long_examples(state, 5, counted(state, lengths, 5))
    assert (r.status, r.count, r.locations, r.fix) == ("info", 1, ["d.jsonl:1"], None)
    assert "split into chunks" in r.message


def test_long_examples_skipped_without_tokenizer():
    r = check_long_examples(supervised([("a", " b")]), 10, None)
    assert (r.status, r.fix) == ("info", None)
    assert r.message.startswith("skipped")


def test_long_examples_with_the_real_tokenizer(tok):
    long_prompt = "Terrible. It broke after one day and the seller never answered."
    state = supervised([(long_prompt, " a story follows"), ("Hi", " ok")], "conditional-generation")
    lengths = example_lengths(state, tok)
    limit = n_tokens(tok, long_prompt)  # the first example is over by its completion
    r = check_long_examples(state, limit, counted(state, lengths, limit))
    assert (r.count, r.locations) == (1, ["d.jsonl:1"])


# --- check_multi_token_labels ----------------------------------------------------------------


def test_labels_with_leading_space_are_two_tokens(tok):
    state = supervised([(f"r{i}", f" {i % 5 + 1}") for i in range(15)], "classification")
    r = check_multi_token_labels(state, tok, "tiny")
    assert (r.id, r.status, r.count, r.fix) == ("multi-token-labels", "info", 5, None)
    assert r.details == {"tokens": {f" {k}": [" ", str(k)] for k in range(1, 6)}}
    assert r.message.startswith(
        "5 of 5 labels are more than one tiny token (e.g. ' 1' → [' ', '1'])"
    )


def test_labels_the_tokenizer_keeps_whole_are_ok(tok):
    state = supervised(
        [("a", " the"), ("b", " it"), ("c", " the"), ("d", " it"), ("e", " the"), ("f", " it")],
        "classification",
    )
    r = check_multi_token_labels(state, tok, "tiny")
    assert (r.status, r.count) == ("ok", 0)
    assert r.details == {"tokens": {" it": [" it"], " the": [" the"]}}
    assert r.message == "every label is a single tiny token"


def test_only_the_multi_token_labels_are_counted(tok):
    state = supervised([("a", " the"), ("b", " 5"), ("c", " the"), ("d", " 5")], "classification")
    r = check_multi_token_labels(state, tok, "tiny")
    assert (r.status, r.count) == ("info", 1)
    assert r.details == {"tokens": {" 5": [" ", "5"], " the": [" the"]}}


def test_label_tokens_exclude_the_stop_sequence(tok):
    state = supervised([("a", " the END"), ("b", " it END")], "classification")
    state.stop = " END"
    r = check_multi_token_labels(state, tok, "tiny")
    assert r.status == "ok"
    assert r.details == {"tokens": {" it": [" it"], " the": [" the"]}}


def test_multi_token_labels_only_for_classification(tok):
    state = supervised([("a", " 5"), ("b", " 4")], "conditional-generation")
    assert check_multi_token_labels(state, tok, "tiny") is None
    assert check_multi_token_labels(texts(["a"]), tok, "tiny") is None


def test_multi_token_labels_skipped_without_tokenizer():
    state = supervised([("a", " 5"), ("b", " 4")], "classification")
    r = check_multi_token_labels(state, None, "none")
    assert (r.status, r.message) == ("info", "skipped: no tokenizer (--model none)")
