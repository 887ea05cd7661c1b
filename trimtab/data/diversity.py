"""How varied the data is: lexical diversity, near-repeats by meaning, and topic clusters.

Fine-tuning learns what the data shows; a set of prompts that say the same thing in the same words
teaches less than its size suggests. :func:`check_diversity` reports

- the share of distinct word 1-, 2- and 3-grams (distinct / total), a classic lexical figure;
- near-repeats by meaning: the share of examples whose nearest neighbour has cosine >= 0.95, on
  MiniLM sentence embeddings (``minilm-l6``, read offline from its package; mean-pooled and
  normalised), or on TF-IDF bag-of-words vectors when MiniLM is not installed;
- a seeded k-means clustering of those vectors (numpy only) and, for classification data, each
  class's prompt lengths and the classes that are thin in a cluster, so that the advice names what
  to add.

Everything is measured on a seeded sample of at most :data:`SAMPLE` examples (the report says
how many of how many), so the check costs the same on any size of data.
:mod:`trimtab.data.diversity_plot` draws the figure prepare writes to :data:`PLOT`: the sample's
vectors in two dimensions coloured by cluster, the classes of each cluster, and the prompt
lengths per class.
"""

from __future__ import annotations

import functools
import os
import pickle
import random
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from trimtab.data.checks import MAX_LOCATIONS, CheckResult, State, Status
from trimtab.data.examples import Example

Embedder = Literal["auto", "minilm", "bow"]

# Examples embedded and compared, on any size of data: 1,000 MiniLM embeddings take about 12 s
# on 2 CPU cores (and load torch), which prepare spends in a worker process meanwhile (see
# PendingDiversity); shares and clusters are stable well below that.
SAMPLE = 1_000
NEAR = 0.95  # cosine from which two prompts are near-repeats by meaning
NEAR_WARN = 0.20  # warn when more than this share of examples has a near-repeat
NGRAM_WARN = 0.3  # warn when the distinct 3-gram share is below this
THIN_IN_CLUSTER = 0.05  # a class under this share of a cluster ...
THIN_OVERALL = 0.15  # ... while it has at least this share overall is thin there
MIN_CLUSTER = 20  # examples per cluster (k = n // MIN_CLUSTER, at most MAX_CLUSTERS)
MAX_CLUSTERS = 8
BATCH = 16  # prompts per MiniLM forward pass (in length order: little padding)
MAX_TOKENS = 128  # MiniLM reads at most this many tokens of a prompt
VOCAB = 4_096  # bag-of-words dimensions (the most frequent words)
PAIRS = 5  # near-repeat pairs kept in the details
BACKGROUND = 256  # from this many prompts, prepare runs the check in a worker process
PLOT = "plots/diversity.png"  # the figure, relative to prepare's output folder
MAX_LEGEND = 12  # classes named in the bars' legend (more: the length panel names them)

_WORD = re.compile(r"\w+")


@dataclass
class ClusterMap:
    """What the figure draws and report.json leaves out: the compared sample's vectors, each
    row's cluster number (1 is the largest; None when the sample was too small to cluster) and
    class (None unless classification)."""

    vectors: np.ndarray
    embeddings: str
    clusters: np.ndarray | None
    labels: list[str] | None


@dataclass
class DiversityResult(CheckResult):
    """The check's result, with the vectors its figure needs (kept out of ``to_json``)."""

    map: ClusterMap | None = field(default=None, repr=False, compare=False)
    png: bytes | None = field(default=None, repr=False, compare=False)  # drawn by a worker


def check_diversity(
    state: State, embedder: Embedder = "auto", sample: int = SAMPLE, seed: int = 0
) -> DiversityResult:
    """Lexical diversity, near-repeats by meaning and clusters of a seeded sample of prompts."""
    seen = _Sampled.of(state, sample, seed)
    if len(seen.examples) < 2:
        return seen.too_few()
    return seen.result(*_embed(seen.texts, embedder), seed, embedder)


@dataclass
class _Sampled:
    """The compared sample as the check saw it, and the figures that need no vectors. Kept
    apart from the examples, which later fixes change, so the vectors may come later."""

    examples: list[Example]
    texts: list[str]
    words: list[list[str]]
    labels: list[str] | None  # each example's class (classification only)
    lengths: dict[str, dict[str, int]] | None  # each class's prompt words
    details: dict[str, Any]

    @classmethod
    def of(cls, state: State, sample: int, seed: int) -> _Sampled:
        examples = _sample(state.examples, sample, seed)
        texts = [_text_of(state, ex) for ex in examples]
        words = [_WORD.findall(t.lower()) for t in texts]
        details: dict[str, Any] = {
            "sampled": len(examples),
            "of": len(state.examples),
            **{f"distinct_{n}": _distinct(words, n) for n in (1, 2, 3)},
        }
        if state.task != "classification":
            return cls(examples, texts, words, None, None, details)
        labels = [state.label_of(ex) for ex in examples]
        return cls(examples, texts, words, labels, _lengths_by_class(labels, texts), details)

    def too_few(self) -> DiversityResult:
        return DiversityResult(
            "diversity", "Diversity", "info", "too few examples to compare", details=self.details
        )

    def result(
        self, vectors: np.ndarray, used: str, seed: int, asked: Embedder = "auto"
    ) -> DiversityResult:
        """The check's result from the sample's normalised vectors (made by ``used``, where
        ``asked`` was asked for)."""
        details = {**self.details, "embeddings": used}
        nearest, similarity = _nearest(vectors)
        near = similarity >= NEAR
        near_share = float(near.mean())
        pairs = _pairs(self.examples, self.texts, nearest, similarity, near)
        details["near_repeats"] = int(near.sum())
        details["near_repeat_share"] = round(near_share, 4)
        details["near_repeat_pairs"] = pairs
        k = min(MAX_CLUSTERS, len(self.examples) // MIN_CLUSTER)
        thin: list[dict[str, Any]] = []
        clusters: list[dict[str, Any]] = []
        numbers = None
        if k >= 2:
            numbers = _numbered(_kmeans(vectors, k, seed))
            clusters = _clusters(numbers, self.words, self.labels)
            if self.labels is not None:
                thin = _thin(clusters, Counter(self.labels), len(self.labels))
        details["clusters"] = clusters
        if self.lengths is not None:
            details["prompt_words_by_class"] = self.lengths
        details["thin"] = thin
        narrow = details["distinct_3"] < NGRAM_WARN
        repeated = near_share > NEAR_WARN
        status: Status = "warning" if narrow or repeated else "info"
        where = [p["at"][1] for p in pairs]  # the later example of each pair
        return DiversityResult(
            "diversity",
            "Diversity",
            status,
            _message(details, _how(used, asked), narrow, repeated),
            int(near.sum()),
            where[:MAX_LOCATIONS],
            details,
            map=ClusterMap(vectors, used, numbers, self.labels),
        )


class PendingDiversity:
    """:func:`check_diversity` finished meanwhile in a worker process, figure included.

    Embedding the sample is the check's one big cost (about 12 s for 1,000 prompts with MiniLM
    on 2 CPU cores, torch's import and MiniLM's loading included; the figure, matplotlib's
    import included, about 1 s) and nothing later depends on it. So from :data:`BACKGROUND`
    prompts a worker makes the vectors, the result and the figure on another core while prepare
    counts tokens, splits and serialises, and :meth:`result` waits for it. A process, not a
    thread: torch's Python-side code would queue for the GIL behind prepare's own Python work.
    The figures are those of the in-process check.
    """

    def __init__(
        self,
        state: State,
        embedder: Embedder = "auto",
        sample: int = SAMPLE,
        seed: int = 0,
        plot_seed: int | None = None,
    ) -> None:
        self.seen, self.embedder, self.seed = _Sampled.of(state, sample, seed), embedder, seed
        self.placeholder = DiversityResult("diversity", "Diversity", "info", "not yet measured")
        self.folder: Path | None = None  # the worker's job, result and log
        self.worker: subprocess.Popen[bytes] | None = None
        self.vectors: tuple[np.ndarray, str] | None = None
        if len(self.seen.examples) < 2:
            return
        if len(self.seen.texts) < BACKGROUND:  # a few: now, with the model this process holds
            self.vectors = _embed(self.seen.texts, embedder)
        else:
            self.folder = Path(tempfile.mkdtemp(prefix="trimtab-diversity-"))
            job = (self.seen, embedder, seed, plot_seed)
            self.worker = _start_worker(self.folder, job)

    def result(self) -> DiversityResult:
        """Wait for the worker and fill in the placeholder (the object prepare's list holds);
        its ``png`` is the figure when the worker drew it."""
        try:
            final = self._final()
        finally:
            self.cancel()
        vars(self.placeholder).update(vars(final))
        return self.placeholder

    def _final(self) -> DiversityResult:
        if len(self.seen.examples) < 2:
            return self.seen.too_few()
        if self.vectors is not None:
            return self.seen.result(*self.vectors, self.seed, self.embedder)
        assert self.worker is not None and self.folder is not None
        if self.worker.wait() == 0:
            with open(self.folder / "result.pickle", "rb") as f:
                final: DiversityResult = pickle.load(f)
            return final
        log = (self.folder / "log").read_text(encoding="utf-8", errors="replace")[-2000:]
        if self.embedder == "minilm":  # asked for by name: no quiet fallback
            raise RuntimeError(f"the diversity check's worker process failed:\n{log}")
        return self.seen.result(_bag_of_words(self.seen.texts), "bow", self.seed, self.embedder)

    def cancel(self) -> None:
        """Stop the worker if it still runs (prepare failed before it was needed); clean up."""
        if self.worker is not None and self.worker.poll() is None:
            self.worker.kill()
            self.worker.wait()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.worker = self.folder = None


def _start_worker(folder: Path, job: tuple[Any, ...]) -> subprocess.Popen[bytes]:
    """A child Python running :func:`run_job` on ``job`` (passed through ``folder``)."""
    import trimtab

    with open(folder / "job.pickle", "wb") as f:
        pickle.dump(job, f)
    root = str(Path(trimtab.__file__).resolve().parents[1])  # importable from a source tree too
    env = {"PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    # torch's threads (unless set): the cores prepare leaves free. More wait on each other at
    # every step (three times slower on 2 cores, where prepare keeps one busy).
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS") or str(max(1, (cores or 1) - 1))
    code = "import sys; from trimtab.data.diversity import run_job; run_job(sys.argv[1])"
    with open(folder / "log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-c", code, str(folder)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=os.environ | env,
        )


def run_job(folder: str) -> None:
    """The worker's body: the result of the check (and its figure, when a seed for it is given)
    for the job :class:`PendingDiversity` left in ``folder``, left there as result.pickle."""
    with open(Path(folder) / "job.pickle", "rb") as f:
        seen, embedder, seed, plot_seed = pickle.load(f)
    result = seen.result(*_embed(seen.texts, embedder), seed, embedder)
    if plot_seed is not None:
        from trimtab.data.diversity_plot import plot_diversity  # it imports this module

        result.png = plot_diversity(result, plot_seed)
    result.map = None  # drawn already (or not wanted): the vectors need not travel back
    with open(Path(folder) / "result.pickle", "wb") as f:
        pickle.dump(result, f)


# --- the figures ----------------------------------------------------------------------------


def _sample(examples: list[Example], size: int, seed: int) -> list[Example]:
    if len(examples) <= size:
        return list(examples)
    keep = sorted(random.Random(seed).sample(range(len(examples)), size))
    return [examples[i] for i in keep]


def _text_of(state: State, ex: Example) -> str:
    """The prompt, or the completion where there is no prompt (open-ended generation)."""
    prompt = state.prompt_of(ex)
    if state.separator and state.mode == "supervised":
        prompt = prompt.removesuffix(state.separator)
    return prompt if prompt.strip() else state.completion_of(ex)


def _distinct(words: list[list[str]], n: int) -> float:
    grams = [tuple(w[i : i + n]) for w in words for i in range(len(w) - n + 1)]
    return round(len(set(grams)) / len(grams), 4) if grams else 1.0


def _nearest(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's nearest other row and their cosine (the rows are normalised)."""
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    nearest = sims.argmax(axis=1)
    return nearest, sims[np.arange(len(sims)), nearest]


def _pairs(
    examples: list[Example],
    texts: list[str],
    nearest: np.ndarray,
    similarity: np.ndarray,
    near: np.ndarray,
) -> list[dict[str, Any]]:
    seen: set[tuple[int, int]] = set()
    out: list[dict[str, Any]] = []
    for i in np.flatnonzero(near):
        a, b = sorted((int(i), int(nearest[i])))
        if (a, b) in seen:
            continue
        seen.add((a, b))
        out.append(
            {
                "at": [examples[a].where, examples[b].where],
                "cosine": round(float(similarity[i]), 4),
                "texts": [_short(texts[a]), _short(texts[b])],
            }
        )
        if len(out) == PAIRS:
            break
    return out


def _short(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _kmeans(vectors: np.ndarray, k: int, seed: int, rounds: int = 25) -> np.ndarray:
    """Seeded k-means (k-means++ start) on normalised rows; the cluster of each row."""
    rng = np.random.default_rng(seed)
    x = vectors.astype(np.float64)
    centres = [x[rng.integers(len(x))]]
    dist = ((x - centres[0]) ** 2).sum(axis=1)
    for _ in range(1, k):
        total = dist.sum()
        pick = rng.choice(len(x), p=dist / total) if total > 0 else rng.integers(len(x))
        centres.append(x[pick])
        dist = np.minimum(dist, ((x - x[pick]) ** 2).sum(axis=1))
    c = np.array(centres)
    assignment = np.zeros(len(x), dtype=np.int64)
    for _ in range(rounds):
        d = (x**2).sum(axis=1)[:, None] - 2 * x @ c.T + (c**2).sum(axis=1)[None, :]
        new = d.argmin(axis=1)
        if _ > 0 and np.array_equal(new, assignment):
            break
        assignment = new
        for j in range(k):
            members = x[assignment == j]
            if len(members):
                c[j] = members.mean(axis=0)
    return assignment


def _numbered(assignment: np.ndarray) -> np.ndarray:
    """The k-means clusters renumbered from 1, largest first (ties: the earlier one first)."""
    found, sizes = np.unique(assignment, return_counts=True)
    order = sorted(range(len(found)), key=lambda i: -sizes[i])
    number = {int(found[i]): rank for rank, i in enumerate(order, 1)}
    return np.array([number[int(j)] for j in assignment], dtype=np.int64)


def _clusters(
    numbers: np.ndarray, words: list[list[str]], labels: list[str] | None
) -> list[dict[str, Any]]:
    """The clusters in number order (largest first) with their telling words and classes."""
    overall = Counter(w for ws in words for w in set(ws))
    n = len(words)
    out: list[dict[str, Any]] = []
    for number in range(1, int(numbers.max()) + 1):
        members = np.flatnonzero(numbers == number)
        inside = Counter(w for i in members for w in set(words[i]))
        # words much more common in the cluster than in the data: what the cluster is about
        lift = {
            w: (c / len(members)) / (overall[w] / n)
            for w, c in inside.items()
            if c >= max(2, len(members) // 10) and len(w) > 2
        }
        top = sorted(lift, key=lambda w: (-lift[w], -inside[w], w))[:3]
        entry: dict[str, Any] = {"cluster": number, "size": len(members), "words": top}
        if labels is not None:
            entry["labels"] = dict(sorted(Counter(labels[i] for i in members).items()))
        out.append(entry)
    return out


def _thin(clusters: list[dict[str, Any]], labels: Counter[str], n: int) -> list[dict[str, Any]]:
    out = []
    for cluster in clusters:
        size = cluster["size"]
        if size < MIN_CLUSTER:
            continue
        for label, total in sorted(labels.items()):
            have = cluster["labels"].get(label, 0)
            if total / n >= THIN_OVERALL and have / size < THIN_IN_CLUSTER:
                out.append(
                    {"label": label, "cluster": cluster["cluster"], "count": have, "size": size}
                )
    return out


def _lengths_by_class(labels: list[str], texts: list[str]) -> dict[str, dict[str, int]]:
    """Each class's prompt words (p10, p50, p90) in the sample."""
    lengths: dict[str, list[int]] = {}
    for label, text in zip(labels, texts):
        lengths.setdefault(label, []).append(len(text.split()))
    return {
        label: dict(
            zip(("p10", "p50", "p90"), map(int, np.percentile(v, [10, 50, 90])), strict=True)
        )
        for label, v in sorted(lengths.items())
    }


def _how(used: str, asked: Embedder) -> str:
    """How the vectors were made, as the message says it."""
    if used == "minilm":
        return "MiniLM"
    return "bag of words" if asked == "bow" else "bag of words; MiniLM is not installed"


def _message(details: dict[str, Any], how: str, narrow: bool, repeated: bool) -> str:
    d1, d2, d3 = (details[f"distinct_{n}"] for n in (1, 2, 3))
    share = details["near_repeat_share"]
    sampled = details["sampled"]
    of = f" of {details['of']:,}" if details["of"] > sampled else ""
    parts = [
        f"distinct 1/2/3-grams {d1:.2f}/{d2:.2f}/{d3:.2f}",
        f"{share:.1%} of {sampled:,}{of} examples have a near-repeat by meaning "
        f"(cosine >= {NEAR}, {how})",
    ]
    if details["clusters"]:
        sizes = [c["size"] for c in details["clusters"]]
        parts.append(f"{len(sizes)} clusters of {min(sizes)}-{max(sizes)} examples")
    thin = details["thin"]
    for t in thin[:3]:
        words = next(c["words"] for c in details["clusters"] if c["cluster"] == t["cluster"])
        about = f" ({', '.join(words)})" if words else ""
        parts.append(
            f"class {t['label']!r} is thin in cluster {t['cluster']}{about} "
            f"({t['count']} of {t['size']})"
        )
    if len(thin) > 3:
        parts.append(f"{len(thin) - 3} more thin class/cluster pairs")
    todo = []
    if repeated:
        todo.append("remove near-repeats")
    if narrow:
        todo.append("add examples in varied wording: the prompts reuse the same phrases")
    if thin:
        todo.append("add varied examples of each thin class like its cluster's")
    text = "; ".join(parts)
    return text + (": " + "; ".join(todo) if todo else "")


# --- the vectors ----------------------------------------------------------------------------


def _embed(texts: list[str], embedder: Embedder) -> tuple[np.ndarray, str]:
    """Normalised vectors of the texts and how they were made ("minilm" or "bow")."""
    if embedder != "bow":
        try:
            return _minilm(texts), "minilm"
        except Exception:  # not installed or not loadable: the fallback says so
            if embedder == "minilm":
                raise
    return _bag_of_words(texts), "bow"


def _minilm(texts: list[str]) -> np.ndarray:
    """Mean-pooled, normalised MiniLM embeddings, read offline from the model's package."""
    import torch

    tokenizer, model = _load_minilm()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), BATCH):
            batch = tokenizer(
                [texts[i] for i in order[start : start + BATCH]],
                padding=True,
                truncation=True,
                max_length=MAX_TOKENS,
                return_tensors="pt",
            )
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).float().numpy())
    vectors = np.empty((len(texts), out[0].shape[1]), dtype=np.float32)
    vectors[order] = np.concatenate(out)
    return vectors


@functools.cache
def _load_minilm() -> tuple[Any, Any]:
    """MiniLM's tokenizer and encoder, loaded once per process from the installed package."""
    from transformers import AutoModel, AutoTokenizer

    from trimtab.models.registry import DEFAULT_ENCODER, quiet_transformers, resolve_model

    folder = resolve_model(DEFAULT_ENCODER).path
    assert folder is not None
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModel.from_pretrained(folder, local_files_only=True)
    return tokenizer, model.eval()


def _bag_of_words(texts: list[str]) -> np.ndarray:
    """TF-IDF vectors over the most frequent words (sublinear counts, smoothed idf), normalised."""
    docs = [Counter(_WORD.findall(t.lower())) for t in texts]
    df = Counter(w for d in docs for w in d)
    vocab = {
        w: i for i, (w, _) in enumerate(sorted(df.items(), key=lambda x: (-x[1], x[0]))[:VOCAB])
    }
    n = len(texts)
    idf = np.zeros(len(vocab), dtype=np.float32)
    for w, i in vocab.items():
        idf[i] = np.log((1 + n) / (1 + df[w])) + 1
    x = np.zeros((n, len(vocab)), dtype=np.float32)
    for row, d in enumerate(docs):
        for w, count in d.items():
            col = vocab.get(w)
            if col is not None:
                x[row, col] = 1 + np.log(count)
    x *= idf
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


# --- the report -----------------------------------------------------------------------------


def render(details: dict[str, Any]) -> list[str]:
    """The terminal block of the check: clusters (by class) and near-repeat pairs."""
    out: list[str] = []
    clusters = details.get("clusters") or []
    if clusters:
        labels = sorted({k for c in clusters for k in c.get("labels", {})})
        head = "".join(f"{label!r:>8}" for label in labels)
        out += ["", "Diversity: clusters", f"  {'cluster':<9}{'size':>6}{head}  words"]
        for c in clusters:
            row = "".join(f"{c.get('labels', {}).get(label, 0):>8,}" for label in labels)
            out.append(f"  {c['cluster']:<9}{c['size']:>6,}{row}  {', '.join(c['words'])}")
    pairs = details.get("near_repeat_pairs") or []
    if pairs:
        out += ["", "Diversity: near-repeats by meaning"]
        for p in pairs:
            out.append(f"  {p['cosine']:.3f}  {p['at'][0]}  {p['texts'][0]}")
            out.append(f"  {'':<5}  {p['at'][1]}  {p['texts'][1]}")
    if details.get("plot"):
        out += ["", f"Diversity: plot in {details['plot']} of the output folder"]
    return out
