"""Baseline prompts (zero- and few-shot) and reading labels out of generated answers."""

from trimtab.evaluation.prompts import (
    Shot,
    baseline_prompts,
    parse_label,
    pick_shots,
)

LABELS = ["1", "2", "3", "4", "5"]


class PlainTokenizer:
    chat_template = None


class ChatTokenizer:
    chat_template = "{{ messages }}"

    def apply_chat_template(self, turns, tokenize, add_generation_prompt):
        assert not tokenize and add_generation_prompt
        return "".join(f"<{t['role']}>{t['content']}</>" for t in turns) + "<assistant>"


def test_exact_answer_is_the_label():
    assert parse_label(" 4", LABELS) == "4"


def test_first_label_named_as_a_word_wins():
    assert parse_label("Rating: 4 stars, not 5", LABELS) == "4"


def test_digits_inside_numbers_are_not_labels():
    assert parse_label("I give it 45 points", LABELS) is None
    assert parse_label("10/10", ["1", "10"]) == "10"


def test_answer_naming_no_label_is_invalid():
    assert parse_label("It is a great product!", LABELS) is None
    assert parse_label("", LABELS) is None


def test_text_labels_are_found_case_sensitively_as_words():
    assert parse_label("The answer: positive.", ["negative", "positive"]) == "positive"
    assert parse_label("unpositive", ["negative", "positive"]) is None


def test_shots_cover_every_label_before_repeating_one():
    examples = [(f"text {label} {i}", label) for label in LABELS for i in range(10)]
    shots = pick_shots(examples, LABELS, 7, seed=1)
    labels = [s.label for s in shots]
    assert len(shots) == 7 and set(labels) == set(LABELS)
    assert all(labels.count(label) <= 2 for label in LABELS)


def test_shots_are_seeded_and_prefer_short_examples():
    examples = [("x" * n, "1") for n in range(1, 21)] + [("y" * n, "2") for n in range(1, 21)]
    first = pick_shots(examples, ["1", "2"], 4, seed=3)
    assert first == pick_shots(examples, ["1", "2"], 4, seed=3)
    assert all(len(s.text) <= 10 for s in first)  # from the shorter half


def test_shots_stop_when_the_examples_run_out():
    assert len(pick_shots([("a", "1"), ("b", "2")], LABELS, 5)) == 2


def test_zero_shot_chat_prompt_puts_the_instruction_in_the_system_turn():
    prompts, labels = baseline_prompts(
        ChatTokenizer(), ["Great!"], LABELS, instruction="Rate it: {labels}."
    )
    assert prompts == ["<system>Rate it: 1, 2, 3, 4, 5.</><user>Great!</><assistant>"]
    assert labels == LABELS  # the assistant's answer starts with the bare label


def test_few_shot_chat_prompt_shows_each_example_as_an_exchange():
    prompts, _ = baseline_prompts(
        ChatTokenizer(), ["Meh"], LABELS, shots=[Shot("Bad", "1"), Shot("Good", "5")]
    )
    assert prompts[0].endswith(
        "<user>Bad</><assistant>1</><user>Good</><assistant>5</><user>Meh</><assistant>"
    )


def test_plain_prompt_follows_the_training_format():
    prompts, labels = baseline_prompts(
        PlainTokenizer(),
        ["Meh"],
        ["1", "5"],
        instruction="Rate.",
        shots=[Shot("Bad", "1")],
        separator="\n###\n",
        leading_space=True,
    )
    assert prompts == ["Rate.\n\nBad\n###\n 1\n\nMeh\n###\n"]
    assert labels == [" 1", " 5"]
