"""Turning records into supervised, chat or text examples, and every way a mapping can fail."""

from __future__ import annotations

import pytest

from trimtab.data.examples import (
    SEPARATOR_CANDIDATES,
    Example,
    Mapping,
    build_examples,
    infer_mode,
    looks_like_classification,
    message_problems,
    strip_separator,
    template_fields,
)
from trimtab.data.readers import Record, read_records
from trimtab.errors import MAX_PROBLEMS, DataError

MARC_TEMPLATE = "{review_title}\n\n{review_body}"


def rec(line: int, file: str = "data.jsonl", bad_utf8: bool = False, **fields) -> Record:
    return Record(file, line, fields, bad_utf8)


def build_error(records, mapping, mode) -> DataError:
    with pytest.raises(DataError) as info:
        build_examples(records, mapping, mode)
    return info.value


# --- infer_mode ---------------------------------------------------------------------------------


def test_bare_columns_take_text_as_is_and_other_values_as_their_templates_would():
    records = [
        rec(1, prompt="hello", completion="yes"),
        rec(2, prompt="count", completion=5),
        rec(3, prompt=True, completion=2.0),
        rec(4, prompt="again", completion="no", bad_utf8=True),
    ]
    examples, unused = build_examples(records, Mapping(), "supervised", split="valid")
    assert [(ex.prompt, ex.completion) for ex in examples] == [
        ("hello", "yes"),
        ("count", "5"),
        ("true", "2"),
        ("again", "no"),
    ]
    assert [ex.bad_utf8 for ex in examples] == [False, False, False, True]
    assert {ex.split for ex in examples} == {"valid"} and unused == []


@pytest.mark.parametrize(
    ("fields", "mode"),
    [
        ({"messages": []}, "chat"),
        ({"messages": [], "prompt": "p", "completion": "c", "text": "t"}, "chat"),
        ({"prompt": "p", "completion": "c"}, "supervised"),
        ({"prompt": "p", "completion": "c", "text": "t", "id": 1}, "supervised"),
        ({"text": "t"}, "text"),
        ({"text": "t", "prompt": "only a prompt"}, "text"),
    ],
)
def test_infer_mode_from_the_fields_of_the_first_record(fields, mode):
    assert infer_mode(Mapping(), [Record("f.jsonl", 1, fields)]) == mode


def test_infer_mode_looks_only_at_the_first_record():
    records = [rec(1, text="t"), rec(2, prompt="p", completion="c")]
    assert infer_mode(Mapping(), records) == "text"


def test_infer_mode_text_field_means_text_even_when_messages_exist():
    assert infer_mode(Mapping(text_field="body"), [rec(1, messages=[], body="b")]) == "text"


@pytest.mark.parametrize(
    "mapping",
    [
        Mapping(prompt_template="{a}"),
        Mapping(completion_field="b"),
        Mapping(completion_template="{b}"),
    ],
)
def test_infer_mode_any_prompt_or_completion_option_means_supervised(mapping):
    assert mapping.explicit
    assert infer_mode(mapping, [rec(1, messages=[], text="t")]) == "supervised"


def test_mapping_with_no_options_is_not_explicit():
    assert not Mapping().explicit


def test_infer_mode_without_known_fields_lists_the_columns_and_suggests_options():
    records = [rec(7, file="reviews.csv", review_body="b", stars="5"), rec(8, text="t")]
    with pytest.raises(DataError) as info:
        infer_mode(Mapping(), records)
    message = str(info.value)
    assert message.startswith("reviews.csv:7: cannot tell how to build examples")
    assert "'review_body', 'stars'" in message
    for option in (
        "--prompt-template",
        "--completion-field",
        "--completion-template",
        "--text-field",
    ):
        assert option in message
    assert info.value.problems[0].line == 7


def test_infer_mode_with_prompt_but_no_completion_is_an_error():
    with pytest.raises(DataError, match=r"columns 'prompt'"):
        infer_mode(Mapping(), [rec(1, prompt="p")])


def test_infer_mode_on_a_record_with_no_fields_says_none():
    with pytest.raises(DataError, match=r"columns \(none\)"):
        infer_mode(Mapping(), [rec(1)])


# --- template_fields ----------------------------------------------------------------------------


def test_template_fields_lists_columns_in_order_of_first_use_without_repeats():
    assert template_fields("{b} and {a}, {b} again, {c!r} {d:>5}") == ["b", "a", "c", "d"]


@pytest.mark.parametrize("template", ["no columns", "{{escaped}} braces", ""])
def test_template_fields_of_a_template_without_columns_is_empty(template):
    assert template_fields(template) == []


def test_template_fields_allows_spaces_and_dashes_in_column_names():
    assert template_fields("{review title} {star-count}") == ["review title", "star-count"]


@pytest.mark.parametrize("template", ["{}", "x {} y", "{a.b}", "{a[0]}", "{review_body} {0.x}"])
def test_template_fields_rejects_empty_and_dotted_or_indexed_fields(template):
    with pytest.raises(ValueError, match="empty or invalid field"):
        template_fields(template)


def test_template_fields_rejects_unbalanced_braces():
    with pytest.raises(ValueError):
        template_fields("{review_body")


# --- Supervised mode ----------------------------------------------------------------------------


def test_marc_json_with_title_body_template_and_string_stars(marc):
    path = marc / "fixtures" / "dataset_en_train.json"
    records = read_records(path)
    examples, unused = build_examples(
        records, Mapping(prompt_template=MARC_TEMPLATE, completion_field="stars"), "supervised"
    )
    assert len(examples) == 5
    for ex, r in zip(examples, records, strict=True):
        assert ex.prompt == f"{r.fields['review_title']}\n\n{r.fields['review_body']}"
        assert ex.completion == r.fields["stars"]
        assert (ex.file, ex.line) == (str(path), r.line)
        assert ex.messages is None and ex.text == "" and ex.split is None
    assert examples[0].completion == "1"
    assert examples[0].prompt.startswith(
        "I'll spend twice the amount of time boxing up the whole useless thing and send it back "
        "with a 1-star review ...\n\nArrived broken. Manufacturer defect."
    )
    assert examples[0].prompt.endswith("supports that don't impede the assembly process.")
    assert unused == ["language", "product_category", "product_id", "review_id", "reviewer_id"]


def test_marc_csv_with_body_only_template(marc):
    records = read_records(marc / "en" / "test.csv")
    examples, unused = build_examples(
        records, Mapping(prompt_template="{review_body}", completion_field="stars"), "supervised"
    )
    assert len(examples) == 5000
    assert {ex.completion for ex in examples} == {"1", "2", "3", "4", "5"}
    assert [ex.line for ex in examples[:3]] == [2, 3, 4]
    assert examples[0].prompt == records[0].fields["review_body"]
    assert unused == ["row_index"]


def test_marc_csv_title_template_names_the_missing_column_and_what_the_file_has(marc):
    path = marc / "en" / "train.csv"
    records = read_records(path)
    error = build_error(
        records, Mapping(prompt_template=MARC_TEMPLATE, completion_field="stars"), "supervised"
    )
    assert len(error.problems) == 1
    assert str(error) == (
        f"{path}:2: field 'review_title': unknown column 'review_title' in "
        "--prompt-template; the file has: review_body, row_index, stars"
    )


def test_prompt_completion_fields_are_used_when_no_mapping_is_given():
    records = [rec(1, prompt="Q: 2+2?", completion=" 4", id=9)]
    examples, unused = build_examples(records, Mapping(), "supervised")
    assert (examples[0].prompt, examples[0].completion) == ("Q: 2+2?", " 4")
    assert unused == ["id"]


def test_completion_field_defaults_the_prompt_to_the_prompt_column():
    records = [rec(1, prompt="p", label="yes")]
    examples, _ = build_examples(records, Mapping(completion_field="label"), "supervised")
    assert (examples[0].prompt, examples[0].completion) == ("p", "yes")


def test_completion_template_fills_several_columns():
    records = [rec(3, body="Nice", stars=5, title="Good")]
    mapping = Mapping(
        prompt_template="Review: {body}\nRating:", completion_template=" {stars} stars ({title})"
    )
    examples, unused = build_examples(records, mapping, "supervised")
    assert examples[0].prompt == "Review: Nice\nRating:"
    assert examples[0].completion == " 5 stars (Good)"
    assert unused == []


def test_template_literal_braces_and_format_specs_are_honoured():
    records = [rec(1, body="hi", stars="5")]
    mapping = Mapping(prompt_template="{{json}} {body:>4}|", completion_field="stars")
    examples, _ = build_examples(records, mapping, "supervised")
    assert examples[0].prompt == "{json}   hi|"


def test_template_with_a_format_spec_that_does_not_fit_text_names_each_record():
    records = [rec(4, body="hi", stars="5"), rec(5, body="yo", stars="1")]
    error = build_error(
        records, Mapping(prompt_template="{body:d}", completion_field="stars"), "supervised"
    )
    assert [p.line for p in error.problems] == [4, 5]
    assert str(error.problems[0]).startswith("data.jsonl:4: cannot fill template '{body:d}'")


def test_nested_template_field_in_a_format_spec_is_a_data_error():
    records = [rec(1, body="hi", stars="5", width="4")]
    build_error(
        records, Mapping(prompt_template="{body:{width}}", completion_field="stars"), "supervised"
    )


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (5, "5"),
        (0, "0"),
        (-3, "-3"),
        (5.0, "5"),
        (4.5, "4.5"),
        (0.1, "0.1"),
        (-2.0, "-2"),
        (True, "true"),
        (False, "false"),
        ("5", "5"),
        ("", ""),
    ],
)
def test_numbers_and_booleans_become_text(value, text):
    records = [rec(1, prompt="p", label=value)]
    examples, _ = build_examples(records, Mapping(completion_field="label"), "supervised")
    assert examples[0].completion == text
    assert isinstance(examples[0].completion, str)


def test_numbers_in_templates_become_text_too():
    records = [rec(1, n=3, x=2.0, flag=True, stars=1)]
    examples, _ = build_examples(
        records, Mapping(prompt_template="{n}/{x}/{flag}", completion_field="stars"), "supervised"
    )
    assert (examples[0].prompt, examples[0].completion) == ("3/2/true", "1")


@pytest.mark.parametrize(
    ("mapping", "option", "column"),
    [
        (
            Mapping(prompt_template="{body} {titel}", completion_field="stars"),
            "--prompt-template",
            "titel",
        ),
        (Mapping(prompt_template="{body}", completion_field="star"), "--completion-field", "star"),
        (
            Mapping(prompt_template="{body}", completion_template="{stars} {note}"),
            "--completion-template",
            "note",
        ),
        (Mapping(completion_field="stars"), "--prompt-template", "prompt"),
    ],
)
def test_unknown_template_column_is_one_error_naming_column_option_and_columns(
    mapping, option, column
):
    records = [rec(n, file="r.csv", body="b", stars="5", title="t") for n in range(2, 40)]
    error = build_error(records, mapping, "supervised")
    assert len(error.problems) == 1 and error.more == 0
    problem = error.problems[0]
    assert (problem.file, problem.line, problem.field) == ("r.csv", 2, column)
    assert problem.message == (
        f"unknown column '{column}' in {option}; the file has: body, stars, title"
    )


def test_column_present_in_some_records_only_is_missing_in_the_others():
    records = [rec(1, body="a", stars="5"), rec(2, body="b"), rec(3, body="c", stars="4")]
    error = build_error(
        records, Mapping(prompt_template="{body}", completion_field="stars"), "supervised"
    )
    assert len(error.problems) == 1
    assert str(error) == "data.jsonl:2: field 'stars': missing"
    problem = error.problems[0]
    assert (problem.file, problem.line, problem.field) == ("data.jsonl", 2, "stars")


def test_null_value_is_reported_with_file_line_and_field():
    records = [rec(1, body="a", stars=None), rec(2, body=None, stars="3")]
    error = build_error(
        records, Mapping(prompt_template="{body}", completion_field="stars"), "supervised"
    )
    assert [str(p) for p in error.problems] == [
        "data.jsonl:1: field 'stars': is null; expected text",
        "data.jsonl:2: field 'body': is null; expected text",
    ]


@pytest.mark.parametrize(("value", "kind"), [({"a": 1}, "dict"), ([1, 2], "list")])
def test_non_text_value_is_reported_with_its_type(value, kind):
    records = [rec(1, body="ok", stars="1"), rec(6, body=value, stars="2")]
    error = build_error(
        records, Mapping(prompt_template="{body}", completion_field="stars"), "supervised"
    )
    assert str(error) == f"data.jsonl:6: field 'body': expected text, got {kind}"


def test_problems_across_many_records_are_listed_up_to_20_then_counted():
    records = [rec(n, prompt="p", completion=None) for n in range(1, 31)]
    error = build_error(records, Mapping(), "supervised")
    assert len(error.problems) == MAX_PROBLEMS
    assert [p.line for p in error.problems] == list(range(1, 21))
    assert error.more == 10
    assert str(error).endswith("... and 10 more problem(s) of the same kind")


def test_unused_fields_are_the_union_over_records_minus_the_mapped_ones():
    records = [rec(1, body="a", stars="1", id=1), rec(2, body="b", stars="2", note="n")]
    _, unused = build_examples(
        records, Mapping(prompt_template="{body}", completion_field="stars"), "supervised"
    )
    assert unused == ["id", "note"]


def test_examples_keep_the_split_the_bad_utf8_flag_and_their_location():
    records = [
        rec(4, file="v.csv", bad_utf8=True, prompt="p\ufffd", completion="c"),
        rec(5, file="v.csv", prompt="q", completion="d"),
    ]
    examples, _ = build_examples(records, Mapping(), "supervised", split="valid")
    assert [(e.where, e.bad_utf8, e.split) for e in examples] == [
        ("v.csv:4", True, "valid"),
        ("v.csv:5", False, "valid"),
    ]


# --- Chat mode ----------------------------------------------------------------------------------


def test_chat_messages_are_kept_as_given():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello", "weight": 1},
        {"role": "tool", "content": "{}"},
        {"role": "assistant", "content": "Done"},
    ]
    records = [rec(2, messages=messages, id="x")]
    examples, unused = build_examples(records, Mapping(), "chat", split="test")
    assert examples[0].messages == messages
    assert (examples[0].line, examples[0].split, examples[0].prompt) == (2, "test", "")
    assert unused == ["id"]


@pytest.mark.parametrize(
    ("messages", "field", "message"),
    [
        ("hello", "messages", "expected a non-empty list of messages"),
        ({"role": "user"}, "messages", "expected a non-empty list of messages"),
        ([], "messages", "expected a non-empty list of messages"),
        (None, "messages", "expected a non-empty list of messages"),
        (
            [{"role": "user", "content": "q"}, "a"],
            "messages[1]",
            "expected an object with role and content",
        ),
        (
            [{"role": "human", "content": "q"}, {"role": "assistant", "content": "a"}],
            "messages[0].role",
            "role must be one of system, user, assistant, tool, got 'human'",
        ),
        (
            [{"content": "q"}, {"role": "assistant", "content": "a"}],
            "messages[0].role",
            "role must be one of system, user, assistant, tool, got None",
        ),
        (
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": 5}],
            "messages[1].content",
            "content must be a string",
        ),
        (
            [{"role": "user", "content": "q"}, {"role": "assistant"}],
            "messages[1].content",
            "content must be a string",
        ),
        (
            [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
            "messages",
            "needs at least one assistant message to learn from",
        ),
    ],
)
def test_invalid_chat_messages_name_the_field_and_line(messages, field, message):
    records = [
        rec(1, messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]),
        rec(3, file="chat.jsonl", messages=messages),
    ]
    error = build_error(records, Mapping(), "chat")
    assert [str(p) for p in error.problems] == [f"chat.jsonl:3: field '{field}': {message}"]


def test_chat_record_without_messages_is_reported():
    error = build_error([rec(9, text="no messages here")], Mapping(), "chat")
    assert str(error) == "data.jsonl:9: field 'messages': expected a non-empty list of messages"


def test_every_bad_message_of_a_record_is_reported():
    messages = [{"role": "bot", "content": 1}, {"role": "assistant", "content": "a"}]
    error = build_error([rec(2, messages=messages)], Mapping(), "chat")
    assert [p.field for p in error.problems] == ["messages[0].role", "messages[0].content"]
    assert {p.line for p in error.problems} == {2}


# --- Text mode ----------------------------------------------------------------------------------


def test_text_mode_uses_the_text_field_by_default():
    examples, unused = build_examples([rec(1, text="hello", source="web")], Mapping(), "text")
    assert examples[0].text == "hello"
    assert (examples[0].prompt, examples[0].completion, examples[0].messages) == ("", "", None)
    assert unused == ["source"]


def test_text_mode_with_text_field_reads_that_column(marc):
    records = read_records(marc / "fixtures" / "dataset_en_train.json")
    mapping = Mapping(text_field="review_body")
    assert infer_mode(mapping, records) == "text"
    examples, unused = build_examples(records, mapping, "text")
    assert [ex.text for ex in examples] == [r.fields["review_body"] for r in records]
    assert "review_body" not in unused and "stars" in unused


def test_text_mode_unknown_text_field_names_the_option():
    error = build_error([rec(1, body="b")], Mapping(text_field="text_body"), "text")
    assert str(error) == (
        "data.jsonl:1: field 'text_body': unknown column 'text_body' in "
        "--text-field; the file has: body"
    )


def test_text_mode_numbers_become_text_and_null_is_reported():
    records = [rec(1, text=12), rec(2, text=None), rec(3, text=["a"])]
    error = build_error(records, Mapping(), "text")
    assert [str(p) for p in error.problems] == [
        "data.jsonl:2: field 'text': is null; expected text",
        "data.jsonl:3: field 'text': expected text, got list",
    ]
    examples, _ = build_examples([rec(1, text=12)], Mapping(), "text")
    assert examples[0].text == "12"


def test_example_where_is_file_and_line():
    assert Example("a/b.csv", 12).where == "a/b.csv:12"


# --- looks_like_classification: the one rule prepare, train and eval share ----------------------


def test_few_labels_each_seen_three_times_on_average_are_classification():
    assert looks_like_classification([" 1", " 2", " 3"] * 3)


def test_labels_seen_fewer_than_three_times_on_average_are_not_classification():
    # 10 examples, 5 labels: evaluation's old rule (distinct <= n // 2) called this classification.
    assert not looks_like_classification(["1", "2", "3", "4", "5"] * 2)


def test_more_than_fifty_distinct_labels_is_not_classification_however_many_examples():
    assert not looks_like_classification([str(i) for i in range(51)] * 10)
    assert looks_like_classification([str(i) for i in range(50)] * 10)


def test_labels_are_compared_without_surrounding_whitespace():
    assert looks_like_classification([" pos", "pos\n", "neg", " neg "] + ["pos", "neg"])


def test_no_completions_is_not_classification():
    assert not looks_like_classification([])


# --- strip_separator -----------------------------------------------------------------------------


def test_strip_separator_takes_the_named_separator_off_the_end_only():
    assert strip_separator("a => b =>", " =>") == "a => b"
    assert strip_separator("no separator", " =>") == "no separator"


@pytest.mark.parametrize("separator", [*SEPARATOR_CANDIDATES, "\n\n###7###\n\n"])
def test_strip_separator_without_a_name_takes_off_any_separator_prepare_writes(separator):
    assert strip_separator("Great product." + separator) == "Great product."


def test_strip_separator_without_a_name_keeps_text_that_ends_otherwise():
    assert strip_separator("ends with ###") == "ends with ###"
    assert strip_separator("two lines\n\n") == "two lines\n\n"


# --- one message validator: prepare and training's reader judge chat data alike ------------------


def test_training_reader_accepts_every_conversation_prepare_writes():
    from trimtab.data.prepared import detect_format

    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "tool", "content": "sunny"},
        {"role": "assistant", "content": "Sunny."},
    ]
    examples, _ = build_examples([rec(1, messages=messages)], Mapping(), "chat")
    assert examples[0].messages == messages
    assert detect_format([{"messages": messages}]) == "chat"  # was: role must be one of ...


def test_training_reader_reports_bad_messages_as_prepare_does():
    from trimtab.data.prepared import detect_format

    bad = [{"role": "human", "content": 3}]
    with pytest.raises(DataError) as trained:
        detect_format([rec(1, messages=bad)])
    prepared = build_error([rec(1, messages=bad)], Mapping(), "chat")
    assert [str(p) for p in trained.value.problems] == [str(p) for p in prepared.problems]
    assert message_problems(bad) == [
        ("messages[0].role", "role must be one of system, user, assistant, tool, got 'human'"),
        ("messages[0].content", "content must be a string"),
    ]
