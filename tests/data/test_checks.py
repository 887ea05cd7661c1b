"""Tests for the dataset quality checks and their fixes (trimtab.data.checks).

Every check is run on a small hand-built State, once where it is quiet and once where it fires;
fixes are applied and the state is inspected afterwards, as ``prepare`` does.
"""

from __future__ import annotations

from typing import Any

import pytest

from trimtab.data.affixes import (
    STOP_CANDIDATES,
    check_completion_prefix,
    check_completion_suffix,
    check_leading_space,
    check_prompt_prefix,
    check_prompt_suffix,
    choose_separator,
)
from trimtab.data.checks import (
    MAX_LOCATIONS,
    State,
    check_contradictions,
    check_control_characters,
    check_duplicates,
    check_empty_fields,
    check_extra_fields,
    check_invalid_utf8,
    check_near_duplicates,
    check_quantity,
    check_task_type,
    check_uppercase,
    infer_task,
)
from trimtab.data.examples import SEPARATOR_CANDIDATES, Example

SEP = SEPARATOR_CANDIDATES[0]  # "\n\n###\n\n"


def supervised(pairs: list[tuple[str, str]], task: str | None = None, **kw: Any) -> State:
    """A prompt-completion State; example n (1-based) sits at d.jsonl:n."""
    examples = [
        Example(file="d.jsonl", line=i, prompt=p, completion=c) for i, (p, c) in enumerate(pairs, 1)
    ]
    return State(examples, "supervised", "prompt-completion", task=task, **kw)


def texts(items: list[str], **kw: Any) -> State:
    examples = [Example(file="d.jsonl", line=i, text=t) for i, t in enumerate(items, 1)]
    return State(examples, "text", "text", **kw)


def chats(conversations: list[list[tuple[str, str]]], **kw: Any) -> State:
    examples = [
        Example(file="d.jsonl", line=i, messages=[{"role": r, "content": c} for r, c in conv])
        for i, conv in enumerate(conversations, 1)
    ]
    return State(examples, "chat", "chat", **kw)


def prompts(state: State) -> list[str]:
    return [ex.prompt for ex in state.examples]


def completions(state: State) -> list[str]:
    return [ex.completion for ex in state.examples]


def lines(state: State) -> list[int]:
    return [ex.line for ex in state.examples]


# --- quantity and extra fields ---------------------------------------------------------------


def test_quantity_below_100_is_a_warning_with_advice():
    r = check_quantity(supervised([(f"p{i}", " c") for i in range(99)]))
    assert (r.id, r.status, r.count) == ("quantity", "warning", 99)
    assert r.message.startswith("99 examples:")
    assert "at least a few hundred" in r.message and "doubling" in r.message
    assert r.fix is None


def test_quantity_from_100_is_ok_and_advice_depends_on_size():
    r = check_quantity(supervised([(f"p{i}", " c") for i in range(100)]))
    assert (r.status, r.count) == ("ok", 100)
    assert r.message == (
        "100 examples: enough to start; each doubling of the data tends to raise quality linearly"
    )
    big = check_quantity(supervised([(f"p{i}", " c") for i in range(1000)]))
    assert (big.status, big.count) == ("ok", 1000)
    assert big.message == "1,000 examples: a healthy amount of data"


def test_extra_fields_none_is_ok():
    r = check_extra_fields(supervised([("a", " b")]))
    assert (r.id, r.status, r.count, r.details) == ("extra-fields", "ok", 0, {})


def test_extra_fields_are_listed_as_info():
    r = check_extra_fields(supervised([("a", " b")], unused_fields=["id", "lang"]))
    assert (r.status, r.count) == ("info", 2)
    assert r.details == {"fields": ["id", "lang"]}
    assert r.message.endswith("id, lang")
    assert r.fix is None


# --- invalid UTF-8 and control characters ----------------------------------------------------


def test_invalid_utf8_clean_data_is_ok():
    r = check_invalid_utf8(supervised([("a", " b"), ("c", " d")]))
    assert (r.id, r.status, r.count, r.fix) == ("invalid-utf8", "ok", 0, None)


def test_invalid_utf8_is_flagged_and_fix_drops_only_flagged_examples():
    state = supervised([("a", " 1"), ("b\ufffd", " 2"), ("c", " 3"), ("d\ufffd", " 4")])
    state.examples[1].bad_utf8 = True
    state.examples[3].bad_utf8 = True
    r = check_invalid_utf8(state)
    assert (r.status, r.count, r.locations) == ("warning", 2, ["d.jsonl:2", "d.jsonl:4"])
    assert (r.fix.id, r.fix.recommended) == ("drop-invalid-utf8", True)
    r.fix.apply(state)
    assert lines(state) == [1, 3]
    assert check_invalid_utf8(state).status == "ok"


def test_tab_newline_and_carriage_return_are_not_control_characters():
    state = supervised([("col1\tcol2\nnext", " yes\r\n"), ("plain", " no")])
    r = check_control_characters(state)
    assert (r.id, r.status, r.count, r.fix) == ("control-characters", "ok", 0, None)


@pytest.mark.parametrize("char", ["\x00", "\x07", "\x0b", "\x1b", "\x7f", "\x85"])
def test_control_characters_are_detected(char):
    state = supervised([("clean", " yes"), (f"bad{char}prompt", " no")])
    r = check_control_characters(state)
    assert (r.status, r.count, r.locations) == ("warning", 1, ["d.jsonl:2"])


def test_control_character_fix_strips_prompt_and_completion_only_in_flagged_examples():
    state = supervised([("a\x00b\x07c", " x\x7fy"), ("tab\tkept", " newline\nkept")])
    r = check_control_characters(state)
    assert (r.status, r.count, r.locations) == ("warning", 1, ["d.jsonl:1"])
    assert (r.fix.id, r.fix.recommended) == ("strip-control-characters", True)
    r.fix.apply(state)
    assert prompts(state) == ["abc", "tab\tkept"]
    assert completions(state) == [" xy", " newline\nkept"]
    assert check_control_characters(state).status == "ok"


def test_control_character_fix_strips_text():
    state = texts(["bell\x07 here", "fine text", "\x00nul"])
    r = check_control_characters(state)
    assert (r.count, r.locations) == (2, ["d.jsonl:1", "d.jsonl:3"])
    r.fix.apply(state)
    assert [ex.text for ex in state.examples] == ["bell here", "fine text", "nul"]


def test_control_character_fix_strips_chat_content():
    state = chats(
        [
            [("system", "be\x00 nice"), ("user", "hi\x7f"), ("assistant", "hello\x07!")],
            [("user", "ok"), ("assistant", "fine")],
        ]
    )
    r = check_control_characters(state)
    assert (r.status, r.count, r.locations) == ("warning", 1, ["d.jsonl:1"])
    r.fix.apply(state)
    assert [m["content"] for m in state.examples[0].messages] == ["be nice", "hi", "hello!"]
    assert [m["content"] for m in state.examples[1].messages] == ["ok", "fine"]


def test_locations_are_capped():
    state = supervised([(f"p{i}\x00", " c") for i in range(MAX_LOCATIONS + 3)])
    r = check_control_characters(state)
    assert r.count == MAX_LOCATIONS + 3
    assert r.locations == [f"d.jsonl:{i}" for i in range(1, MAX_LOCATIONS + 1)]


# --- empty fields ----------------------------------------------------------------------------


def test_empty_fields_none_is_ok():
    r = check_empty_fields(supervised([("a", " b"), ("c", " d")]))
    assert (r.id, r.status, r.count, r.fix) == ("empty-fields", "ok", 0, None)
    assert r.details == {"empty_completions": 0, "empty_prompts": 0}


def test_empty_and_whitespace_completions_and_prompts_are_flagged():
    state = supervised(
        [("a", " ok"), ("b", ""), ("c", " \n\t"), ("", " lonely"), ("  ", " x"), ("f", " fine")]
    )
    r = check_empty_fields(state)
    assert (r.status, r.count) == ("warning", 4)
    assert r.locations == ["d.jsonl:2", "d.jsonl:3", "d.jsonl:4", "d.jsonl:5"]
    assert r.details == {"empty_completions": 2, "empty_prompts": 2}
    assert r.message == "2 empty or whitespace-only completions, 2 empty prompts"
    assert (r.fix.id, r.fix.recommended) == ("drop-empty", True)
    r.fix.apply(state)
    assert lines(state) == [1, 6]


def test_example_with_both_fields_empty_is_counted_once():
    state = supervised([("a", " ok"), ("", ""), ("b", " fine")])
    r = check_empty_fields(state)
    assert (r.count, r.locations) == (1, ["d.jsonl:2"])
    assert r.details == {"empty_completions": 1, "empty_prompts": 1}


def test_all_prompts_empty_is_open_ended_generation_not_a_problem():
    state = supervised([("", "Once upon a time"), ("", "It was a dark night"), (" ", "Hi")])
    r = check_empty_fields(state)
    assert (r.status, r.count) == ("ok", 0)
    assert r.details == {"empty_completions": 0, "empty_prompts": 0}


def test_open_ended_generation_still_flags_empty_completions():
    state = supervised([("", "story"), ("", "  "), ("", "poem")])
    r = check_empty_fields(state)
    assert (r.status, r.count, r.locations) == ("warning", 1, ["d.jsonl:2"])
    r.fix.apply(state)
    assert completions(state) == ["story", "poem"]


def test_empty_chat_message_is_flagged():
    state = chats(
        [
            [("user", "hi"), ("assistant", "hello")],
            [("user", "   "), ("assistant", "what?")],
            [("user", "q"), ("assistant", "")],
        ]
    )
    r = check_empty_fields(state)
    assert (r.status, r.count, r.locations) == ("warning", 2, ["d.jsonl:2", "d.jsonl:3"])
    assert r.details == {"empty_messages": 2}
    assert r.message == "2 conversations with an empty message"
    r.fix.apply(state)
    assert lines(state) == [1]


def test_chat_without_empty_messages_is_ok():
    r = check_empty_fields(chats([[("user", "hi"), ("assistant", "hello")]]))
    assert (r.status, r.details) == ("ok", {"empty_messages": 0})


def test_empty_texts_are_flagged():
    state = texts(["some text", "", " \n "])
    r = check_empty_fields(state)
    assert (r.status, r.count, r.locations) == ("warning", 2, ["d.jsonl:2", "d.jsonl:3"])
    assert r.details == {"empty_texts": 2}
    r.fix.apply(state)
    assert [ex.text for ex in state.examples] == ["some text"]


# --- task type -------------------------------------------------------------------------------


def classification_pairs(n: int = 12) -> list[tuple[str, str]]:
    return [(f"review {i}", [" pos", " neg"][i % 2]) for i in range(n)]


def test_few_distinct_completions_is_classification():
    assert infer_task(supervised(classification_pairs())) == "classification"


def test_classification_needs_three_examples_per_label_on_average():
    # 2 labels: 6 examples is enough (2 * 3 <= 6), 5 is not.
    assert infer_task(supervised(classification_pairs(6))) == "classification"
    assert infer_task(supervised(classification_pairs(5))) == "conditional-generation"


def test_more_than_50_labels_is_generation():
    pairs = [(f"q{i}", f" label{i % 51}") for i in range(51 * 4)]
    assert infer_task(supervised(pairs)) == "conditional-generation"
    pairs = [(f"q{i}", f" label{i % 50}") for i in range(50 * 4)]
    assert infer_task(supervised(pairs)) == "classification"


def test_distinct_completions_is_conditional_generation():
    pairs = [(f"question {i}", f" answer number {i}") for i in range(10)]
    assert infer_task(supervised(pairs)) == "conditional-generation"


def test_all_prompts_empty_is_open_ended_generation():
    state = supervised([("", " a"), ("", " a"), ("", " a"), (" ", " b")])
    assert infer_task(state) == "open-ended-generation"


def test_text_is_language_modeling():
    assert infer_task(texts(["a", "a", "a"])) == "language-modeling"


def test_task_type_reports_inferred_classification_with_labels():
    state = supervised(classification_pairs())
    r = check_task_type(state, None)
    assert (r.id, r.status, r.fix) == ("task-type", "info", None)
    assert state.task == "classification"
    assert r.message == "classification with 2 labels: 'neg', 'pos'"
    assert r.details == {
        "inferred": "classification",
        "task": "classification",
        "labels": ["neg", "pos"],
    }


def test_requested_task_overrides_and_message_says_what_data_looks_like():
    state = supervised(classification_pairs())
    r = check_task_type(state, "conditional-generation")
    assert state.task == "conditional-generation"
    assert r.details == {"inferred": "classification", "task": "conditional-generation"}
    assert r.message == "conditional-generation (as requested; the data looks like classification)"


def test_requested_task_equal_to_inferred_adds_no_note():
    state = texts(["a b", "c d"])
    r = check_task_type(state, "language-modeling")
    assert r.message == "language-modeling"
    assert r.details == {"inferred": "language-modeling", "task": "language-modeling"}


# --- duplicates, near-duplicates, contradictions ---------------------------------------------


def test_no_duplicates_is_ok():
    r = check_duplicates(supervised([("a", " 1"), ("a", " 2"), ("b", " 1")]))
    assert (r.id, r.status, r.count, r.fix) == ("duplicates", "ok", 0, None)


def test_exact_duplicates_are_dropped_keeping_the_first():
    state = supervised([("a", " 1"), ("b", " 2"), ("a", " 1"), ("A", " 1"), ("a", " 1")])
    r = check_duplicates(state)
    assert (r.status, r.count, r.locations) == ("warning", 2, ["d.jsonl:3", "d.jsonl:5"])
    assert (r.fix.id, r.fix.recommended) == ("drop-duplicates", True)
    r.fix.apply(state)
    assert lines(state) == [1, 2, 4]


def test_exact_duplicate_texts_and_conversations():
    state = texts(["same", "other", "same"])
    r = check_duplicates(state)
    assert (r.count, r.locations) == (1, ["d.jsonl:3"])
    conv = [("user", "hi"), ("assistant", "hello")]
    state = chats([conv, [("user", "hi"), ("assistant", "hey")], conv])
    r = check_duplicates(state)
    assert (r.count, r.locations) == (1, ["d.jsonl:3"])


def test_near_duplicates_ignore_case_spacing_and_punctuation():
    state = supervised(
        [
            ("Is it good?", " Yes."),
            ("is  it GOOD", " yes"),
            ("Is it good?!", "Yes!"),
            ("Is it bad?", " Yes."),
        ]
    )
    r = check_near_duplicates(state)
    assert (r.id, r.status, r.count) == ("near-duplicates", "warning", 2)
    assert r.locations == ["d.jsonl:2", "d.jsonl:3"]
    assert (r.fix.id, r.fix.recommended) == ("drop-near-duplicates", True)
    r.fix.apply(state)
    assert lines(state) == [1, 4]


def test_different_words_are_not_near_duplicates():
    r = check_near_duplicates(
        supervised([("good movie", " pos"), ("bad movie", " pos"), ("good movie", " neg")])
    )
    assert (r.status, r.count) == ("ok", 0)


def test_no_contradictions_is_ok():
    state = supervised([("Good!", " pos"), ("good", " Pos."), ("bad", " neg")], "classification")
    r = check_contradictions(state)
    assert (r.id, r.status, r.count, r.fix) == ("contradictions", "ok", 0, None)


def test_contradictions_same_normalised_prompt_different_completion():
    state = supervised(
        [
            ("Great product!", " pos"),
            ("fine", " pos"),
            ("great  PRODUCT", " neg"),
            ("meh", " neg"),
            ("Fine.", " pos"),
            ("great product", " pos"),
        ],
        "classification",
    )
    r = check_contradictions(state)
    assert (r.status, r.count) == ("warning", 3)
    assert r.locations == ["d.jsonl:1", "d.jsonl:3", "d.jsonl:6"]
    assert r.details == {"prompts": 1}
    assert r.message == "1 prompts appear with different completions (3 examples)"
    assert (r.fix.id, r.fix.recommended) == ("drop-contradictions", False)
    r.fix.apply(state)
    assert lines(state) == [2, 4, 5]


@pytest.mark.parametrize("task", ["open-ended-generation", "language-modeling"])
def test_contradictions_not_applicable_without_prompts(task):
    state = supervised([("", " a"), ("", " b")], task)
    r = check_contradictions(state)
    assert (r.status, r.count, r.fix) == ("ok", 0, None)
    assert r.message.startswith("not applicable")


# --- upper case ------------------------------------------------------------------------------


def test_mixed_case_is_ok():
    r = check_uppercase(supervised([("This is a Normal review", " pos"), ("another one", " neg")]))
    assert (r.id, r.status, r.count, r.fix) == ("uppercase", "ok", 0, None)
    assert r.details["all_caps_examples"] == 0
    assert r.details["uppercase_share"] < 0.1


def test_uppercase_share_counts_every_letter_of_ascii_and_other_text():
    pairs = [
        ("Plain ASCII Review", " pos"),
        ("ÉCOLE très Bien 👍 ΣΑΣ", " neg"),
        ("it’s fine — Ça Va", " pos"),
        ("1234 !!", " x"),
    ]
    r = check_uppercase(supervised(pairs))
    letters = "".join(p + c for p, c in pairs)
    upper = sum(ch.isupper() for ch in letters)
    lower = sum(ch.islower() for ch in letters)
    assert r.details["uppercase_share"] == round(upper / (upper + lower), 4)


def test_a_few_all_caps_examples_are_info_without_fix():
    state = supervised(
        [
            ("THIS IS TERRIBLE", " neg"),
            ("a normal mixed case review", " pos"),
            ("another quite long review here", " pos"),
            ("OK", " pos"),
        ]
    )
    r = check_uppercase(state)
    assert (r.status, r.count, r.locations) == ("info", 1, ["d.jsonl:1"])
    assert r.details["all_caps_examples"] == 1
    assert r.fix is None


def test_mostly_upper_case_is_a_warning_with_optional_lowercase_fix():
    state = supervised([("THIS IS TERRIBLE", " NEG"), ("GREAT PRODUCT", " POS"), ("Fine", " pos")])
    r = check_uppercase(state)
    assert r.status == "warning"
    assert r.details["uppercase_share"] > 1 / 3
    assert (r.count, r.locations) == (2, ["d.jsonl:1", "d.jsonl:2"])
    assert r.details["all_caps_examples"] == 2
    assert (r.fix.id, r.fix.recommended) == ("lowercase", False)
    r.fix.apply(state)
    assert prompts(state) == ["this is terrible", "great product", "fine"]
    assert completions(state) == [" neg", " pos", " pos"]
    assert check_uppercase(state).status == "ok"


def test_lowercase_fix_covers_text_and_chat():
    state = texts(["SHOUTING ALL THE TIME", "AND AGAIN"])
    r = check_uppercase(state)
    assert r.status == "warning"
    r.fix.apply(state)
    assert [ex.text for ex in state.examples] == ["shouting all the time", "and again"]
    state = chats([[("user", "HELLO THERE"), ("assistant", "HI HOW ARE YOU")]])
    r = check_uppercase(state)
    assert (r.status, r.count) == ("warning", 1)
    r.fix.apply(state)
    assert [m["content"] for m in state.examples[0].messages] == ["hello there", "hi how are you"]


# --- prompt prefix and separator -------------------------------------------------------------


def test_prompt_prefix_not_applicable_for_one_example_or_text():
    assert check_prompt_prefix(supervised([("Review: a", " b")])) is None
    assert check_prompt_prefix(texts(["Review: a", "Review: b"])) is None


def test_prompts_without_common_prefix_are_ok():
    r = check_prompt_prefix(supervised([("good", " pos"), ("bad", " neg")]))
    assert (r.id, r.status, r.fix) == ("prompt-prefix", "ok", None)
    # a shared space is not a prefix worth removing
    r = check_prompt_prefix(supervised([(" good", " pos"), (" bad", " neg")]))
    assert r.status == "ok"


def test_common_prompt_prefix_is_info_with_optional_fix():
    state = supervised(
        [
            ("Classify: good movie", " pos"),
            ("Classify: bad film", " neg"),
            ("Classify: okay", " pos"),
        ]
    )
    r = check_prompt_prefix(state)
    assert (r.status, r.count) == ("info", 3)
    assert r.details == {"prefix": "Classify: "}
    assert (r.fix.id, r.fix.recommended) == ("remove-prompt-prefix", False)
    r.fix.apply(state)
    assert prompts(state) == ["good movie", "bad film", "okay"]


def test_prompt_prefix_stops_at_a_word_boundary():
    state = supervised(
        [
            ("Classify: good movie", " pos"),
            ("Classify: great film", " pos"),
            ("Classify: garbage", " neg"),
        ]
    )
    r = check_prompt_prefix(state)
    assert r.details == {"prefix": "Classify: "}


def test_default_separator_is_appended_to_every_prompt():
    state = supervised([("good", " pos"), ("bad", " neg")], "classification")
    r = check_prompt_suffix(state)
    assert (r.id, r.status, r.count) == ("prompt-suffix", "info", 2)
    assert r.details == {"separator": SEP}
    assert "occurs in the data" not in r.message
    assert (r.fix.id, r.fix.recommended) == ("add-separator", True)
    assert state.separator is None  # only set when the fix is applied
    r.fix.apply(state)
    assert state.separator == SEP
    assert prompts(state) == ["good" + SEP, "bad" + SEP]


def test_separator_in_the_data_picks_a_candidate_that_occurs_nowhere():
    # the default appears in one prompt, the second candidate in one completion
    state = supervised(
        [(f"a{SEP}b", " x"), ("c", f" y{SEPARATOR_CANDIDATES[1]}z"), ("d", " w")],
        "conditional-generation",
    )
    assert choose_separator(state) == SEPARATOR_CANDIDATES[2]
    r = check_prompt_suffix(state)
    assert r.details == {"separator": SEPARATOR_CANDIDATES[2]}
    assert f"({SEP!r} occurs in the data)" in r.message
    r.fix.apply(state)
    assert all(p.endswith(SEPARATOR_CANDIDATES[2]) for p in prompts(state))
    assert all(SEPARATOR_CANDIDATES[2] not in c for c in completions(state))


def test_numbered_separators_are_used_when_all_candidates_occur():
    state = supervised([("".join(SEPARATOR_CANDIDATES), " x"), ("b", " y")])
    assert choose_separator(state) == "\n\n###1###\n\n"


def test_prepared_prompts_are_recognised_and_not_suffixed_twice():
    state = supervised(
        [("good movie", " pos"), ("bad film", " neg"), ("okay", " pos")], "classification"
    )
    check_prompt_suffix(state).fix.apply(state)
    prepared = prompts(state)
    # a second prepare of the written data: fresh state, same prompts
    again = supervised([(p, c) for p, c in zip(prepared, completions(state))], "classification")
    r = check_prompt_suffix(again)
    assert (r.status, r.fix) == ("ok", None)
    assert again.separator == SEP
    assert prompts(again) == prepared


def test_existing_common_suffix_is_used_as_separator():
    state = supervised(
        [("Review: fine\nSentiment:", " pos"), ("Review: bad\nSentiment:", " neg")],
        "classification",
    )
    r = check_prompt_suffix(state)
    assert (r.status, r.fix) == ("ok", None)
    assert state.separator == "\nSentiment:"


def test_common_suffix_that_also_occurs_inside_a_prompt_is_not_a_separator():
    state = supervised([("a ### b ###", " x"), ("c ###", " y")], "conditional-generation")
    r = check_prompt_suffix(state)
    assert r.status == "info"
    assert r.details == {"separator": SEP}


def test_recognised_separator_is_not_extended_by_a_shared_last_character():
    state = supervised(
        [
            ("What is 2+2?" + SEP, " 4"),
            ("Who wrote Hamlet?" + SEP, " Shakespeare"),
            ("Capital of France?" + SEP, " Paris"),
        ],
        "conditional-generation",
    )
    check_prompt_suffix(state)
    assert state.separator == SEP


def test_requested_separator_is_appended():
    state = supervised(
        [("good", " pos"), ("bad", " neg")], "classification", requested_separator=" ->"
    )
    r = check_prompt_suffix(state)
    assert (r.status, r.details) == ("info", {"separator": " ->"})
    r.fix.apply(state)
    assert prompts(state) == ["good ->", "bad ->"]
    assert state.separator == " ->"


def test_requested_separator_already_present_is_ok():
    state = supervised(
        [("good ->", " pos"), ("bad ->", " neg")], "classification", requested_separator=" ->"
    )
    r = check_prompt_suffix(state)
    assert (r.status, r.fix) == ("ok", None)
    assert state.separator == " ->"
    assert prompts(state) == ["good ->", "bad ->"]


def test_requested_separator_inside_the_data_is_an_error():
    state = supervised(
        [("good", " pos"), ("a -> b", " neg"), ("c", " x -> y")],
        "classification",
        requested_separator=" ->",
    )
    r = check_prompt_suffix(state)
    assert (r.status, r.count, r.locations) == ("error", 2, ["d.jsonl:2", "d.jsonl:3"])
    assert r.fix is None
    assert prompts(state) == ["good", "a -> b", "c"]


def test_no_separator_for_chat_text_or_open_ended_generation():
    assert check_prompt_suffix(chats([[("user", "a"), ("assistant", "b")]])) is None
    assert check_prompt_suffix(texts(["a"])) is None
    assert check_prompt_suffix(supervised([("", "a")], "open-ended-generation")) is None


# --- completion prefix and stop sequence -----------------------------------------------------


def test_completion_prefix_not_applicable_for_one_example_or_chat():
    assert check_completion_prefix(supervised([("a", " Answer: b")])) is None
    assert check_completion_prefix(chats([[("user", "a"), ("assistant", "b")]] * 2)) is None


def test_completions_without_common_prefix_are_ok():
    r = check_completion_prefix(supervised([("a", " pos"), ("b", " neg")]))
    assert (r.id, r.status, r.fix) == ("completion-prefix", "ok", None)


def test_completion_prefix_fix_keeps_leading_whitespace():
    state = supervised([("a", " Answer: yes"), ("b", " Answer: no"), ("c", " Answer: maybe")])
    r = check_completion_prefix(state)
    assert (r.status, r.count) == ("info", 3)
    assert r.details == {"prefix": " Answer: "}
    assert (r.fix.id, r.fix.recommended) == ("remove-completion-prefix", False)
    r.fix.apply(state)
    assert completions(state) == [" yes", " no", " maybe"]


def test_completion_prefix_stops_at_a_word_boundary():
    state = supervised([("a", " Topic: sports"), ("b", " Topic: science"), ("c", " Topic: sports")])
    r = check_completion_prefix(state)
    assert r.details == {"prefix": " Topic: "}


def test_classification_needs_no_stop_sequence():
    state = supervised([("a", " pos"), ("b", " neg")], "classification")
    r = check_completion_suffix(state)
    assert (r.id, r.status, r.fix) == ("completion-suffix", "ok", None)
    assert state.stop is None
    assert completions(state) == [" pos", " neg"]


def test_generation_gets_newline_stop_when_no_completion_has_one():
    state = supervised([("q1", " Hello there"), ("q2", " Fine thanks")], "conditional-generation")
    r = check_completion_suffix(state)
    assert (r.status, r.count, r.details) == ("info", 2, {"stop": "\n"})
    assert (r.fix.id, r.fix.recommended) == ("add-stop", True)
    r.fix.apply(state)
    assert state.stop == "\n"
    assert completions(state) == [" Hello there\n", " Fine thanks\n"]


def test_generation_stop_skips_candidates_found_in_completions():
    state = supervised([("q1", " line one\nline two"), ("q2", " short")], "conditional-generation")
    r = check_completion_suffix(state)
    assert r.details == {"stop": " END"}
    assert "' END' occurs nowhere in the data" in r.message
    r.fix.apply(state)
    assert completions(state) == [" line one\nline two END", " short END"]
    assert state.stop == " END"


def test_stop_falls_back_to_a_numbered_marker_when_every_candidate_occurs():
    state = supervised(
        [("q1", " line one\nline two"), ("q2", " the END of it"), ("q3", " other ###END? no")],
        "conditional-generation",
    )
    r = check_completion_suffix(state)
    assert r.details == {"stop": STOP_CANDIDATES[-1] + "1"} == {"stop": " ###END1"}


def test_existing_common_stop_is_recognised():
    state = supervised(
        [("q1", " Hello there END"), ("q2", " Fine thanks END")], "conditional-generation"
    )
    r = check_completion_suffix(state)
    assert (r.status, r.fix) == ("ok", None)
    assert state.stop == " END"
    assert completions(state) == [" Hello there END", " Fine thanks END"]


def test_prepared_newline_stop_is_recognised_and_not_appended_twice():
    state = supervised(
        [("q1", " Hello there"), ("q2", " Fine thanks"), ("q3", " ok then")],
        "conditional-generation",
    )
    check_completion_suffix(state).fix.apply(state)
    prepared = completions(state)
    assert prepared == [" Hello there\n", " Fine thanks\n", " ok then\n"]
    again = supervised(list(zip(prompts(state), prepared)), "conditional-generation")
    r = check_completion_suffix(again)
    assert again.stop == "\n"
    assert r.fix is None


def test_common_suffix_that_occurs_inside_completions_is_not_the_stop():
    state = supervised(
        [("q1", " Hello there. How are you."), ("q2", " Fine. Thanks.")], "conditional-generation"
    )
    check_completion_suffix(state)
    assert state.stop is None or not any(
        state.stop in ex.completion[: -len(state.stop)] for ex in state.examples
    )


def test_requested_stop_is_appended_even_for_classification():
    state = supervised([("a", " pos"), ("b", " neg")], "classification", requested_stop=" END")
    r = check_completion_suffix(state)
    assert (r.status, r.details) == ("info", {"stop": " END"})
    r.fix.apply(state)
    assert completions(state) == [" pos END", " neg END"]
    assert state.stop == " END"


def test_requested_stop_already_present_is_ok():
    state = supervised(
        [("a", " pos END"), ("b", " neg END")], "conditional-generation", requested_stop=" END"
    )
    r = check_completion_suffix(state)
    assert (r.status, r.fix) == ("ok", None)
    assert state.stop == " END"


def test_requested_stop_inside_completions_is_an_error():
    state = supervised(
        [("a", " the END is near"), ("b", " fine")], "conditional-generation", requested_stop=" END"
    )
    r = check_completion_suffix(state)
    assert (r.status, r.count, r.locations, r.fix) == ("error", 1, ["d.jsonl:1"], None)
    assert completions(state) == [" the END is near", " fine"]


def test_no_stop_check_for_chat_or_text():
    assert check_completion_suffix(chats([[("user", "a"), ("assistant", "b")]])) is None
    assert check_completion_suffix(texts(["a"])) is None


# --- leading space ---------------------------------------------------------------------------


def test_completions_starting_with_whitespace_are_ok():
    state = supervised([("a", " pos"), ("b", "\nneg")])
    r = check_leading_space(state)
    assert (r.id, r.status, r.fix) == ("leading-space", "ok", None)
    assert state.leading_space is True


def test_leading_space_fix_adds_exactly_one_space():
    state = supervised([("a", "pos"), ("b", " neg"), ("c", "  two"), ("d", "")])
    r = check_leading_space(state)
    assert (r.status, r.count, r.locations) == ("info", 1, ["d.jsonl:1"])
    assert (r.fix.id, r.fix.recommended) == ("add-leading-space", True)
    assert state.leading_space is False
    r.fix.apply(state)
    assert completions(state) == [" pos", " neg", "  two", ""]
    assert state.leading_space is True
    r.fix.apply(state)  # applying twice must not add a second space
    assert completions(state) == [" pos", " neg", "  two", ""]
    assert check_leading_space(state).status == "ok"


def test_no_leading_space_check_for_chat_or_text():
    assert check_leading_space(chats([[("user", "a"), ("assistant", "b")]])) is None
    assert check_leading_space(texts(["a"])) is None


# --- the sequence prepare runs ---------------------------------------------------------------

FORMAT_CHECKS = (
    check_prompt_prefix,
    check_prompt_suffix,
    check_completion_prefix,
    check_completion_suffix,
    check_leading_space,
)


def run_format_checks(state: State) -> list[str]:
    """Apply every recommended fix, in prepare's order; return the ids of the fixes applied."""
    applied = []
    for check in FORMAT_CHECKS:
        r = check(state)
        if r is not None and r.fix is not None and r.fix.recommended:
            r.fix.apply(state)
            applied.append(r.fix.id)
    return applied


def test_preparing_prepared_classification_data_changes_nothing():
    raw = [
        ("great movie", "pos"),
        ("bad film", "neg"),
        ("okay", "pos"),
        ("awful", "neg"),
        ("lovely", "pos"),
        ("boring", "neg"),
    ]
    state = supervised(raw, "classification")
    assert run_format_checks(state) == ["add-separator", "add-leading-space"]
    prepared = list(zip(prompts(state), completions(state)))
    assert prepared[0] == ("great movie" + SEP, " pos")
    again = supervised(prepared, "classification")
    assert run_format_checks(again) == []
    assert list(zip(prompts(again), completions(again))) == prepared
    assert (again.separator, again.stop, again.leading_space) == (SEP, None, True)


def test_preparing_prepared_generation_data_with_end_stop_changes_nothing():
    raw = [("q1", "line one\nand two"), ("q2", "an answer"), ("q3", "more text")]
    state = supervised(raw, "conditional-generation")
    assert run_format_checks(state) == ["add-separator", "add-stop", "add-leading-space"]
    assert state.stop == " END"
    prepared = list(zip(prompts(state), completions(state)))
    assert prepared[1] == ("q2" + SEP, " an answer END")
    again = supervised(prepared, "conditional-generation")
    assert run_format_checks(again) == []
    assert list(zip(prompts(again), completions(again))) == prepared
    assert (again.separator, again.stop) == (SEP, " END")


@pytest.mark.parametrize(
    "text",
    [
        "Didn't WORK -- at all!!",
        "snake_case stays, (brackets) go",
        "Tabs\tand\nnewlines  ",
        "Ünïcode’s “quotes” fold too",
        "UPPER lower MiXeD 123",
    ],
)
def test_ascii_fast_path_normalises_like_the_general_one(text):
    import re as _re

    state = supervised([("a", " b")])
    expected = " ".join(_re.sub(r"[^\w\s]+", " ", text.lower()).split())
    assert state.normalized(text) == expected
