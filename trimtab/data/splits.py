"""Split into train / validation / test, balance classes, and check balance and leakage.

Splits are stratified by label for classification and grouped by normalised prompt, so that the
same prompt (up to case, spacing and punctuation) never lands on both sides of a split. Everything
random draws from one ``random.Random(seed)``, so the same input and seed give the same files.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from typing import Literal

from trimtab.data.checks import MIN_PER_CLASS, CheckResult, Fix, State, Status, locations
from trimtab.data.examples import Example

SPLITS = ("train", "valid", "test")
Balance = Literal["none", "down", "up"]


def resolve_size(size: float, n: int) -> int:
    """A size below 1 is a fraction of ``n``; 1 or more is a count of examples."""
    return round(size * n) if size < 1 else int(size)


def _allocate(total: int, weights: dict[str, int]) -> dict[str, int]:
    """Share ``total`` among strata in proportion to their sizes (largest remainder)."""
    whole = sum(weights.values())
    if whole == 0:
        return {k: 0 for k in weights}
    exact = {k: total * w / whole for k, w in weights.items()}
    shares = {k: min(weights[k], int(v)) for k, v in exact.items()}
    order = sorted(weights, key=lambda k: (-(exact[k] - int(exact[k])), k))
    left = total - sum(shares.values())
    for k in order * 2:
        if left <= 0:
            break
        if shares[k] < weights[k]:
            shares[k] += 1
            left -= 1
    return shares


def split_examples(
    state: State, valid_size: float, test_size: float, seed: int, stratify: bool
) -> dict[str, list[Example]]:
    """Assign every example without a preset split to train, valid or test, then shuffle each."""
    rng = random.Random(seed)
    splits: dict[str, list[Example]] = {name: [] for name in SPLITS}
    pool: list[Example] = []
    for ex in state.examples:
        (splits[ex.split] if ex.split else pool).append(ex)

    groups: dict[str, list[Example]] = {}
    for ex in pool:
        groups.setdefault(state.prompt_key(ex), []).append(ex)
    by_label = stratify and state.task == "classification"
    strata: dict[str, list[list[Example]]] = defaultdict(list)
    for group in groups.values():
        strata[state.label_of(group[0]) if by_label else ""].append(group)

    n = len(pool)
    weights = {k: sum(len(g) for g in v) for k, v in strata.items()}
    test_quota = _allocate(resolve_size(test_size, n), weights)
    valid_quota = _allocate(
        resolve_size(valid_size, n), {k: w - test_quota[k] for k, w in weights.items()}
    )
    for key in sorted(strata):
        stratum = strata[key]
        rng.shuffle(stratum)
        counts = {"test": test_quota[key], "valid": valid_quota[key]}
        for group in stratum:
            target = next((s for s in ("test", "valid") if counts[s] > 0), "train")
            splits[target].extend(group)
            if target != "train":
                counts[target] -= len(group)
    for name in SPLITS:
        rng.shuffle(splits[name])
    return splits


def check_leakage(state: State) -> CheckResult:
    """Prompts (normalised) found in more than one split.

    The fix removes a leaking example from train, or from a held-out split the tool made, never
    from a file given as a split: an official test set stays whole.
    """
    assert state.splits is not None
    if state.task == "open-ended-generation":
        return CheckResult(
            "leakage", "Leakage across splits", "ok", "not applicable: prompts are empty"
        )
    key = state.prompt_key
    keys = {name: {key(ex) for ex in items} for name, items in state.splits.items()}
    held_out = keys["valid"] | keys["test"]
    preset_valid = {key(ex) for ex in state.splits["valid"] if ex.split}
    removable = [ex for ex in state.splits["train"] if key(ex) in held_out]
    removable += [ex for ex in state.splits["valid"] if not ex.split and key(ex) in keys["test"]]
    removable += [ex for ex in state.splits["test"] if not ex.split and key(ex) in preset_valid]
    stuck = [ex for ex in state.splits["test"] if ex.split and key(ex) in preset_valid]
    details = {"removable": len(removable), "between_given_files": len(stuck)}
    if not removable and not stuck:
        return CheckResult(
            "leakage",
            "Leakage across splits",
            "ok",
            "no prompt appears in more than one split",
            details=details,
        )

    def remove(s: State) -> None:
        assert s.splits is not None
        drop = {id(ex) for ex in removable}
        s.splits = {
            name: [ex for ex in items if id(ex) not in drop] for name, items in s.splits.items()
        }

    message = (
        f"{len(removable)} examples share their prompt with an example of a later split "
        "(train < valid < test), which inflates held-out scores"
    )
    if stuck:
        message += (
            f"; {len(stuck)} prompts of the given test file are also in the given validation file"
        )
    fix = (
        Fix(
            "drop-leaking",
            f"Remove the {len(removable)} leaking examples from train or from "
            "the held-out splits made here (given files stay whole)",
            True,
            remove,
        )
        if removable
        else None
    )
    return CheckResult(
        "leakage",
        "Leakage across splits",
        "warning",
        message,
        len(removable) + len(stuck),
        locations(removable + stuck),
        details,
        fix,
    )


def check_class_balance(state: State) -> CheckResult | None:
    if state.task != "classification":
        return None
    counts = state.labels()
    ratio = max(counts.values()) / max(1, min(counts.values()))
    details = {"counts": dict(sorted(counts.items())), "imbalance_ratio": round(ratio, 3)}
    shown = ", ".join(f"{k!r}: {v}" for k, v in sorted(counts.items()))
    if ratio <= 1.5:
        return CheckResult(
            "class-balance",
            "Class balance",
            "ok",
            f"balanced (largest/smallest {ratio:.2f}): {shown}",
            details=details,
        )
    status: Status = "warning" if ratio > 3 else "info"
    return CheckResult(
        "class-balance",
        "Class balance",
        status,
        f"largest/smallest class {ratio:.2f}: {shown}; --balance down or up "
        "evens out the training split",
        details=details,
    )


def balance_train(state: State, how: Balance, seed: int) -> dict[str, dict[str, int]] | None:
    """Down- or up-sample the training split to equal class counts; held-out splits stay as is."""
    if how == "none" or state.task != "classification":
        return None
    assert state.splits is not None
    rng = random.Random(seed + 1)  # its own stream, so balancing doesn't shift the split
    by_label: dict[str, list[Example]] = defaultdict(list)
    for ex in state.splits["train"]:
        by_label[state.label_of(ex)].append(ex)
    if not by_label:
        return None
    before = {k: len(v) for k, v in sorted(by_label.items())}
    target = (min if how == "down" else max)(before.values())
    train: list[Example] = []
    for label in sorted(by_label):
        items = by_label[label]
        if len(items) >= target:
            train.extend(rng.sample(items, target))
        else:
            train.extend(items + [rng.choice(items) for _ in range(target - len(items))])
    rng.shuffle(train)
    state.splits["train"] = train
    return {"before": before, "after": {k: target for k in before}}


def check_class_quantity(state: State) -> CheckResult | None:
    if state.task != "classification" or state.splits is None:
        return None
    counts = Counter({label: 0 for label in state.labels()})  # a class absent from train too
    counts.update(state.label_of(ex) for ex in state.splits["train"])
    short = {k: v for k, v in sorted(counts.items()) if v < MIN_PER_CLASS}
    details = {"train_counts": dict(sorted(counts.items())), "recommended_min": MIN_PER_CLASS}
    if not short:
        return CheckResult(
            "class-quantity",
            "Examples per class",
            "ok",
            f"every class has at least {MIN_PER_CLASS} training examples "
            f"(smallest: {min(counts.values())})",
            details=details,
        )
    advice = ", ".join(f"{k!r} needs {MIN_PER_CLASS - v} more" for k, v in short.items())
    return CheckResult(
        "class-quantity",
        "Examples per class",
        "warning",
        f"{len(short)} classes have fewer than {MIN_PER_CLASS} training examples: {advice}",
        len(short),
        details=details,
    )
