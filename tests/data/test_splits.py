"""Tests for splitting, balancing and the split-level checks (trimtab.data.splits)."""

from __future__ import annotations

from collections import Counter

import pytest

from trimtab.data.checks import State, infer_task
from trimtab.data.examples import Example, Mapping, build_examples
from trimtab.data.readers import read_records
from trimtab.data.splits import (
    SPLITS,
    _allocate,
    balance_train,
    check_class_balance,
    check_class_quantity,
    check_leakage,
    resolve_size,
    split_examples,
)


def supervised(
    pairs: list[tuple[str, str]],
    task: str | None = "classification",
    splits: list[str | None] | None = None,
) -> State:
    examples = [
        Example(file="d.jsonl", line=i, prompt=p, completion=c) for i, (p, c) in enumerate(pairs, 1)
    ]
    for ex, split in zip(examples, splits or []):
        ex.split = split
    return State(examples, "supervised", "prompt-completion", task=task)


def labelled(counts: dict[str, int]) -> State:
    """A classification state with ``counts[label]`` examples per label, distinct prompts."""
    pairs = [(f"review {label} {i}", f" {label}") for label, n in counts.items() for i in range(n)]
    return supervised(pairs)


def labels(state: State, examples: list[Example]) -> Counter[str]:
    return Counter(state.label_of(ex) for ex in examples)


def where(splits: dict[str, list[Example]]) -> dict[int, str]:
    """Example line → the split it landed in (every example at most once)."""
    out: dict[int, str] = {}
    for name, items in splits.items():
        for ex in items:
            assert ex.line not in out, f"d.jsonl:{ex.line} in two splits"
            out[ex.line] = name
    return out


def sizes(splits: dict[str, list[Example]]) -> dict[str, int]:
    return {name: len(items) for name, items in splits.items()}


# --- sizes and allocation --------------------------------------------------------------------


def test_size_below_one_is_a_fraction_and_from_one_a_count():
    assert resolve_size(0.1, 1000) == 100
    assert resolve_size(0.25, 10) == 2  # round half to even: 2.5 -> 2
    assert resolve_size(0.15, 10) == 2
    assert resolve_size(0, 1000) == 0
    assert resolve_size(1, 1000) == 1
    assert resolve_size(50, 1000) == 50
    assert resolve_size(50.0, 10) == 50  # a count is not capped here


def test_allocate_sums_exactly_and_is_proportional():
    weights = {"a": 53, "b": 31, "c": 16}
    for total in range(0, 101):
        shares = _allocate(total, weights)
        assert sum(shares.values()) == total
        for k, w in weights.items():
            assert abs(shares[k] - total * w / 100) < 1
            assert 0 <= shares[k] <= w


def test_allocate_gives_remainders_to_the_largest_fractions():
    assert _allocate(10, {"a": 50, "b": 30, "c": 20}) == {"a": 5, "b": 3, "c": 2}
    # exact shares 1.75, 1.0, 0.25: the floors leave 1 over, which goes to 'a' (.75)
    assert _allocate(3, {"a": 7, "b": 4, "c": 1}) == {"a": 2, "b": 1, "c": 0}
    assert _allocate(5, {"a": 0, "b": 0}) == {"a": 0, "b": 0}


def test_allocate_never_gives_a_stratum_more_than_it_has():
    assert _allocate(10, {"a": 2, "b": 3}) == {"a": 2, "b": 3}


# --- split_examples --------------------------------------------------------------------------


def test_split_sizes_from_fractions():
    state = supervised(
        [(f"question {i}", f" answer {i}") for i in range(100)], "conditional-generation"
    )
    splits = split_examples(state, 0.1, 0.2, seed=1, stratify=True)
    assert sizes(splits) == {"train": 70, "valid": 10, "test": 20}
    assert sorted(where(splits)) == list(range(1, 101))  # every example exactly once


def test_split_sizes_from_counts():
    state = supervised(
        [(f"question {i}", f" answer {i}") for i in range(50)], "conditional-generation"
    )
    splits = split_examples(state, 7, 3, seed=1, stratify=False)
    assert sizes(splits) == {"train": 40, "valid": 7, "test": 3}


def test_zero_sizes_keep_everything_in_train():
    state = labelled({"a": 5, "b": 5})
    splits = split_examples(state, 0, 0, seed=1, stratify=True)
    assert sizes(splits) == {"train": 10, "valid": 0, "test": 0}


def test_stratified_split_keeps_each_label_share():
    counts = {"a": 530, "b": 310, "c": 127, "d": 33}
    state = labelled(counts)
    splits = split_examples(state, 0.1, 0.15, seed=3, stratify=True)
    assert sizes(splits) == {"train": 750, "valid": 100, "test": 150}
    n = sum(counts.values())
    for name in ("valid", "test"):
        got = labels(state, splits[name])
        for label, total in counts.items():
            expected = total / n * len(splits[name])
            assert abs(got[label] - expected) <= 1, (name, label, got[label], expected)
    assert labels(state, splits["train"]) + labels(state, splits["valid"]) + labels(
        state, splits["test"]
    ) == Counter(counts)


def test_stratification_only_for_classification():
    state = labelled({"a": 90, "b": 10})
    state.task = "conditional-generation"
    strat = split_examples(state, 0.2, 0, seed=0, stratify=True)
    state.task = "classification"
    plain = split_examples(state, 0.2, 0, seed=0, stratify=False)
    # without label strata both are the same single shuffle of one stratum
    assert [ex.line for ex in strat["valid"]] == [ex.line for ex in plain["valid"]]


def test_same_normalised_prompt_never_lands_in_two_splits():
    pairs = []
    for i in range(40):
        pairs += [
            (f"Review {i}: great!", " pos"),
            (f"review {i} GREAT", " pos"),
            (f"  REVIEW {i}:   great...", " pos"),
        ]
    for i in range(40):
        pairs.append((f"unique {i}", " neg"))
    state = supervised(pairs)
    for seed in range(5):
        splits = split_examples(state, 0.2, 0.2, seed=seed, stratify=True)
        at = where(splits)
        for start in range(1, 121, 3):
            group = {at[start], at[start + 1], at[start + 2]}
            assert len(group) == 1, (seed, start, group)
        assert check_leakage_after(state, splits).status == "ok"


def check_leakage_after(state: State, splits: dict[str, list[Example]]):
    state.splits = splits
    return check_leakage(state)


def test_preset_splits_stay_in_their_split():
    pairs = [(f"review {i}", [" a", " b"][i % 2]) for i in range(40)]
    presets = [None] * 40
    presets[0] = "test"
    presets[1] = "test"
    presets[2] = "valid"
    state = supervised(pairs, splits=presets)
    splits = split_examples(state, 0.1, 0.0, seed=5, stratify=True)
    at = where(splits)
    assert (at[1], at[2], at[3]) == ("test", "test", "valid")
    # sizes are computed on the 37 unassigned examples: round(3.7) = 4 more in valid
    assert sizes(splits) == {"train": 33, "valid": 5, "test": 2}


def test_same_seed_gives_the_same_split_and_order():
    state = labelled({"a": 30, "b": 20, "c": 10})
    first = split_examples(state, 0.2, 0.2, seed=42, stratify=True)
    second = split_examples(state, 0.2, 0.2, seed=42, stratify=True)
    for name in SPLITS:
        assert [ex.line for ex in first[name]] == [ex.line for ex in second[name]]
        assert all(a is b for a, b in zip(first[name], second[name]))


def test_another_seed_gives_another_split():
    state = labelled({"a": 30, "b": 20, "c": 10})
    first = split_examples(state, 0.2, 0.2, seed=42, stratify=True)
    other = split_examples(state, 0.2, 0.2, seed=43, stratify=True)
    assert {ex.line for ex in first["test"]} != {ex.line for ex in other["test"]}
    assert [ex.line for ex in first["train"]] != [ex.line for ex in other["train"]]
    assert sizes(first) == sizes(other)


def test_splits_are_shuffled_not_in_input_order():
    state = labelled({"a": 30, "b": 30})
    splits = split_examples(state, 0.2, 0.2, seed=0, stratify=True)
    assert [ex.line for ex in splits["train"]] != sorted(ex.line for ex in splits["train"])


# --- leakage ---------------------------------------------------------------------------------


def test_no_leakage_after_an_internal_split():
    state = supervised([(f"Review {i % 30}!", [" a", " b"][i % 30 % 2]) for i in range(90)])
    state.splits = split_examples(state, 0.2, 0.2, seed=7, stratify=True)
    r = check_leakage(state)
    assert (r.id, r.status, r.count, r.fix) == ("leakage", "ok", 0, None)
    assert r.details == {"removable": 0, "between_given_files": 0}


def test_preset_test_prompt_in_train_is_leakage_and_fix_drops_it_from_train_only():
    pairs = [(f"review {i}", " a") for i in range(10)] + [("Review 3!", " a")]
    state = supervised(pairs, splits=[None] * 10 + ["test"])
    state.splits = split_examples(state, 0, 0, seed=0, stratify=True)
    assert sizes(state.splits) == {"train": 10, "valid": 0, "test": 1}
    r = check_leakage(state)
    assert (r.status, r.count, r.locations) == ("warning", 1, ["d.jsonl:4"])
    assert r.details == {"removable": 1, "between_given_files": 0}
    assert r.message.startswith("1 examples share their prompt")
    assert (r.fix.id, r.fix.recommended) == ("drop-leaking", True)
    r.fix.apply(state)
    assert sorted(ex.line for ex in state.splits["train"]) == [1, 2, 3, 5, 6, 7, 8, 9, 10]
    assert [ex.line for ex in state.splits["test"]] == [11]
    assert check_leakage(state).status == "ok"


def test_test_prompt_also_in_valid_is_reported():
    pairs = [("same prompt", " a"), ("Same prompt.", " a"), ("other", " b")]
    state = supervised(pairs, splits=["valid", "test", None])
    state.splits = split_examples(state, 0, 0, seed=0, stratify=True)
    r = check_leakage(state)
    assert (r.status, r.count, r.locations) == ("warning", 1, ["d.jsonl:2"])
    assert r.details == {"removable": 0, "between_given_files": 1}
    assert "1 prompts of the given test file are also in the given validation file" in r.message
    assert r.fix is None  # both files were given as they are: nothing may be removed


def test_internal_valid_example_leaking_into_a_given_test_file_is_removed_from_valid():
    pairs = [("same prompt", " a"), ("Same prompt.", " b")] + [(f"p{i}", " a") for i in range(8)]
    state = supervised(pairs, splits=[None, "test"] + [None] * 8)
    state.splits = split_examples(state, 0, 0, seed=0, stratify=False)
    state.splits["valid"].append(
        state.splits["train"].pop(
            next(i for i, ex in enumerate(state.splits["train"]) if ex.line == 1)
        )
    )
    r = check_leakage(state)
    assert (r.status, r.details["removable"], r.locations) == ("warning", 1, ["d.jsonl:1"])
    r.fix.apply(state)
    assert [ex.line for ex in state.splits["valid"]] == []
    assert [ex.line for ex in state.splits["test"]] == [2]


def test_leakage_not_applicable_for_open_ended_generation():
    state = supervised(
        [("", " story")] * 4, "open-ended-generation", splits=["test", None, None, None]
    )
    state.splits = split_examples(state, 0, 0, seed=0, stratify=False)
    r = check_leakage(state)
    assert (r.status, r.count) == ("ok", 0)
    assert r.message.startswith("not applicable")


# --- balancing -------------------------------------------------------------------------------


def split_state(counts: dict[str, int], valid: float = 0.2, seed: int = 0) -> State:
    state = labelled(counts)
    state.splits = split_examples(state, valid, 0.1, seed=seed, stratify=True)
    return state


def test_balance_down_samples_every_class_to_the_smallest():
    state = split_state({"a": 50, "b": 20, "c": 10})
    held_out = {name: list(state.splits[name]) for name in ("valid", "test")}
    before = labels(state, state.splits["train"])
    train_before = {id(ex) for ex in state.splits["train"]}
    result = balance_train(state, "down", seed=0)
    smallest = min(before.values())
    assert result == {
        "before": dict(sorted(before.items())),
        "after": {k: smallest for k in sorted(before)},
    }
    assert labels(state, state.splits["train"]) == {k: smallest for k in before}
    assert len({id(ex) for ex in state.splits["train"]}) == len(state.splits["train"])
    assert {id(ex) for ex in state.splits["train"]} <= train_before
    for name, items in held_out.items():
        assert state.splits[name] == items


def test_balance_up_repeats_examples_to_the_largest():
    state = split_state({"a": 50, "b": 20, "c": 10})
    held_out = {name: list(state.splits[name]) for name in ("valid", "test")}
    before = labels(state, state.splits["train"])
    train_before = {id(ex) for ex in state.splits["train"]}
    result = balance_train(state, "up", seed=0)
    largest = max(before.values())
    assert result["after"] == {k: largest for k in sorted(before)}
    assert labels(state, state.splits["train"]) == {k: largest for k in before}
    assert {id(ex) for ex in state.splits["train"]} == train_before  # all kept, some repeated
    for name, items in held_out.items():
        assert state.splits[name] == items


def test_balance_is_deterministic():
    runs = []
    for _ in range(2):
        state = split_state({"a": 30, "b": 10})
        balance_train(state, "down", seed=9)
        runs.append([ex.line for ex in state.splits["train"]])
    assert runs[0] == runs[1]


def test_no_balance_for_none_or_non_classification():
    state = split_state({"a": 30, "b": 10})
    train = list(state.splits["train"])
    assert balance_train(state, "none", seed=0) is None
    assert state.splits["train"] == train
    state.task = "conditional-generation"
    assert balance_train(state, "down", seed=0) is None
    assert state.splits["train"] == train


# --- class balance and quantity --------------------------------------------------------------


@pytest.mark.parametrize(
    ("counts", "status", "ratio"),
    [
        ({"a": 3, "b": 3}, "ok", 1.0),
        ({"a": 3, "b": 2}, "ok", 1.5),
        ({"a": 4, "b": 2, "c": 3}, "info", 2.0),
        ({"a": 9, "b": 3}, "info", 3.0),
        ({"a": 7, "b": 2}, "warning", 3.5),
    ],
)
def test_class_balance_thresholds(counts, status, ratio):
    r = check_class_balance(labelled(counts))
    assert (r.id, r.status, r.fix) == ("class-balance", status, None)
    assert r.details == {"counts": dict(sorted(counts.items())), "imbalance_ratio": ratio}
    assert ("--balance" in r.message) == (status != "ok")


def test_class_balance_message_lists_counts():
    r = check_class_balance(labelled({"b": 2, "a": 7}))
    assert r.message == (
        "largest/smallest class 3.50: 'a': 7, 'b': 2; --balance down or up "
        "evens out the training split"
    )


def test_class_balance_only_for_classification():
    state = labelled({"a": 9, "b": 1})
    state.task = "conditional-generation"
    assert check_class_balance(state) is None


def test_classes_with_few_training_examples_get_advice():
    state = labelled({"a": 120, "b": 40, "c": 99})
    state.splits = split_examples(state, 0, 0, seed=0, stratify=True)
    r = check_class_quantity(state)
    assert (r.id, r.status, r.count) == ("class-quantity", "warning", 2)
    assert r.details == {"train_counts": {"a": 120, "b": 40, "c": 99}, "recommended_min": 100}
    assert r.message == (
        "2 classes have fewer than 100 training examples: 'b' needs 60 more, 'c' needs 1 more"
    )


def test_classes_with_enough_training_examples_are_ok():
    state = labelled({"a": 150, "b": 100})
    state.splits = split_examples(state, 0, 0, seed=0, stratify=True)
    r = check_class_quantity(state)
    assert (r.status, r.count) == ("ok", 0)
    assert r.message == "every class has at least 100 training examples (smallest: 100)"


def test_class_quantity_counts_the_training_split_only():
    state = labelled({"a": 110, "b": 110})
    state.splits = split_examples(state, 0.1, 0.1, seed=0, stratify=True)
    r = check_class_quantity(state)
    assert r.details["train_counts"] == {"a": 88, "b": 88}
    assert (r.status, r.count) == ("warning", 2)


def test_class_quantity_needs_classification_and_a_split():
    state = labelled({"a": 5, "b": 5})
    assert check_class_quantity(state) is None  # not split yet
    state.splits = split_examples(state, 0, 0, seed=0, stratify=True)
    state.task = "conditional-generation"
    assert check_class_quantity(state) is None


def test_class_with_no_training_examples_is_reported():
    state = labelled({"w": 6, "u": 1, "x": 1, "y": 1, "z": 1})
    state.splits = split_examples(state, 0, 0.2, seed=42, stratify=True)
    assert labels(state, state.splits["train"])["u"] == 0  # the split took its only example
    r = check_class_quantity(state)
    assert "'u' needs 100 more" in r.message


# --- real data -------------------------------------------------------------------------------


def test_marc_train_split_is_stratified_across_five_labels(marc):
    records = read_records(marc / "en" / "train.csv")
    examples, unused = build_examples(
        records, Mapping(prompt_template="{review_body}", completion_field="stars"), "supervised"
    )
    assert unused == ["row_index"]
    state = State(examples, "supervised", "prompt-completion")
    assert infer_task(state) == "classification"
    state.task = "classification"
    totals = state.labels()
    assert sorted(totals) == ["1", "2", "3", "4", "5"]
    splits = split_examples(state, 0.1, 0.1, seed=42, stratify=True)
    assert sum(sizes(splits).values()) == len(examples)
    assert abs(len(splits["valid"]) - 0.1 * len(examples)) <= 5
    valid = labels(state, splits["valid"])
    for label, total in totals.items():
        assert abs(valid[label] / total - 0.1) < 0.005, (label, valid[label], total)
    state.splits = splits
    assert check_leakage(state).status == "ok"
