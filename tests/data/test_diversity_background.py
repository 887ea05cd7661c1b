"""The diversity check as prepare runs it: in a worker process from BACKGROUND prompts on, with
the same result and figure as the in-process check, on a bounded sample that the report states,
and with the bag-of-words vectors when they are asked for."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trimtab.data import PrepareOptions, prepare
from trimtab.data import diversity as dv
from trimtab.data import diversity_plot as dp
from trimtab.data.checks import State
from trimtab.data.examples import Example

WORDS = [f"w{i}" for i in range(400)] + "battery story shoes screen plot size fit".split()


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) for _ in range(n)]


def state_of(texts: list[str]) -> State:
    examples = [
        Example(file="d.jsonl", line=i, prompt=t, completion=str(i % 3))
        for i, t in enumerate(texts, 1)
    ]
    return State(examples, "supervised", "prompt-completion", task="classification")


def test_the_worker_gives_the_in_process_result_and_figure() -> None:
    state = state_of(sentences(dv.BACKGROUND + 40))
    pending = dv.PendingDiversity(state, "bow", plot_seed=7)
    assert pending.worker is not None  # this many prompts go to a worker process
    background = pending.result()
    here = dv.check_diversity(state, "bow")
    assert background is pending.placeholder  # filled in place: prepare's list holds it
    assert background.to_json() == here.to_json()
    assert background.png == dp.plot_diversity(here, 7)
    assert pending.folder is None  # its files are gone


def test_a_few_prompts_are_embedded_in_process() -> None:
    state = state_of(sentences(30))
    pending = dv.PendingDiversity(state, "bow")
    assert pending.worker is None and pending.folder is None
    assert pending.result().to_json() == dv.check_diversity(state, "bow").to_json()


def failing_worker(folder: Path, job: Any) -> subprocess.Popen[bytes]:
    (folder / "log").write_text("worker: no MiniLM here\n", encoding="utf-8")
    return subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])


def test_a_failed_worker_falls_back_to_bag_of_words_unless_minilm_was_asked_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dv, "_start_worker", failing_worker)
    state = state_of(sentences(dv.BACKGROUND + 10))
    result = dv.PendingDiversity(state, "auto").result()
    assert result.details["embeddings"] == "bow"
    assert "bag of words; MiniLM is not installed" in result.message
    with pytest.raises(RuntimeError, match="no MiniLM here"):
        dv.PendingDiversity(state, "minilm").result()


def test_cancel_stops_the_worker_and_removes_its_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    def sleeping(folder: Path, job: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])

    monkeypatch.setattr(dv, "_start_worker", sleeping)
    pending = dv.PendingDiversity(state_of(sentences(dv.BACKGROUND)), "auto")
    worker, folder = pending.worker, pending.folder
    assert worker is not None and folder is not None and folder.is_dir()
    pending.cancel()
    assert worker.poll() is not None and not folder.exists()


def test_class_lengths_are_measured_on_the_stated_sample() -> None:
    state = state_of(sentences(300))
    result = dv.check_diversity(state, "bow", sample=40, seed=1)
    assert result.details["sampled"] == 40
    words: dict[str, list[int]] = {}
    for ex in dv._sample(state.examples, 40, 1):  # the check's seeded sample
        words.setdefault(ex.completion, []).append(len(ex.prompt.split()))
    assert result.details["prompt_words_by_class"] == {
        label: dict(zip(("p10", "p50", "p90"), map(int, np.percentile(n, [10, 50, 90]))))
        for label, n in sorted(words.items())
    }


def write_rows(path: Path, texts: list[str]) -> Path:
    rows = [{"prompt": t, "completion": str(i % 3)} for i, t in enumerate(texts)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_prepare_states_the_diversity_sample_size_and_says_bag_of_words_when_asked(
    tmp_path: Path,
) -> None:
    data = write_rows(tmp_path / "d.jsonl", sentences(dv.SAMPLE + 200, seed=3))
    options = PrepareOptions.parse(
        {"inputs": [data], "out": tmp_path / "out", "model": "none", "diversity_embedder": "bow"}
    )
    result = prepare(options)
    check = next(c for c in result.report["checks"] if c["id"] == "diversity")
    assert check["details"]["sampled"] == dv.SAMPLE
    assert check["details"]["of"] == dv.SAMPLE + 200
    assert f"of {dv.SAMPLE:,} of {dv.SAMPLE + 200:,} examples" in check["message"]
    assert "(cosine >= 0.95, bag of words)" in check["message"]  # asked for: no excuse given
    assert check["details"]["plot"] == dv.PLOT
    assert (tmp_path / "out" / dv.PLOT).read_bytes().startswith(b"\x89PNG")
    assert "--diversity-embedder bow" in result.report["command"]
    assert result.report["options"]["diversity_embedder"] == "bow"


def test_prepare_stops_the_worker_when_the_stage_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trimtab.data import preparation

    started: list[dv.PendingDiversity] = []
    workers: list[subprocess.Popen[bytes]] = []
    real = dv.PendingDiversity

    def tracked(*args: Any, **kw: Any) -> dv.PendingDiversity:
        started.append(real(*args, **kw))
        assert started[-1].worker is not None
        workers.append(started[-1].worker)
        return started[-1]

    def broken(*args: Any, **kw: Any) -> None:
        raise RuntimeError("split failed")

    monkeypatch.setattr(dv, "PendingDiversity", tracked)
    monkeypatch.setattr(preparation, "_split", broken)
    data = write_rows(tmp_path / "d.jsonl", sentences(dv.BACKGROUND + 10, seed=4))
    options = PrepareOptions.parse(
        {"inputs": [data], "out": tmp_path / "out", "model": "none", "diversity_embedder": "bow"}
    )
    with pytest.raises(RuntimeError, match="split failed"):
        prepare(options)
    assert workers and workers[0].poll() is not None  # stopped (or done), not left running
    assert started[0].worker is None and started[0].folder is None
    assert not (tmp_path / "out").exists()
