"""Evaluate one model on one prepared file: the measurements behind ``trimtab eval``.

- classification: label scoring (one forward pass per example, no text generated) for language
  models, fine-tuned or base; the head's logits for ``classify`` runs; or generation with the
  serving sampler, parsed back to a label (answers that name no label count as invalid);
- language modelling: loss and perplexity on held-out text (the completion tokens of
  prompt/completion data, every token of plain text);
- open-ended generation: exact match and ROUGE-L against the reference completions.

Which of these apply follows from the data (:func:`load_eval_data`) and the model
(:func:`load_for_eval`); :mod:`trimtab.evaluation.comparison` runs them for many models.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from trimtab.data.examples import head_text, looks_like_classification, strip_separator
from trimtab.errors import TrimtabError
from trimtab.evaluation.metrics import (
    ClassificationReport,
    GenerationScores,
    classification_report,
    generation_scores,
    sort_labels,
)
from trimtab.evaluation.prompts import Shot, baseline_prompts, parse_label
from trimtab.models.batching import bf16_available
from trimtab.models.scoring import classify_logits, language_model_loss, score_labels
from trimtab.models.tasks import Task


@dataclass
class EvalModel:
    """A model ready to score: where it came from and what it was trained for."""

    model: Any
    tokenizer: Any
    name: str
    task: Task  # sft / lm (a language model: label scoring) or classify (a head)
    labels: list[str] | None  # the head's labels, in its order (classify)
    base_model: str | None = None  # for a fine-tuned run: the model it started from
    method: str | None = None  # for a fine-tuned run: full, freeze or lora
    run: Path | None = None  # the run folder (metrics, run.json) of a fine-tuned model

    @property
    def fine_tuned(self) -> bool:
        return self.run is not None


@dataclass
class EvalData:
    """A labelled file to evaluate on, and what ``trimtab prepare`` recorded about it."""

    path: Path
    records: list[Any]
    format: str  # prompt-completion, chat or text
    labels: list[str] | None  # classification labels; None for open-ended or plain text
    separator: str | None = None
    stop: list[str] = field(default_factory=list)
    leading_space: bool = True
    train: Path | None = None  # the training file beside it (few-shot examples)

    @property
    def prompts(self) -> list[str]:
        return [r.fields["prompt"] for r in self.records]

    @property
    def completions(self) -> list[str]:
        return [r.fields["completion"] for r in self.records]

    @property
    def gold(self) -> list[str]:
        return [c.strip() for c in self.completions]


def load_eval_data(data: Path, *, limit: int | None = None) -> EvalData:
    """A prepared folder (its ``test.jsonl``, else ``valid.jsonl``) or a JSONL file."""
    from trimtab.data.prepared import detect_format, read_examples

    data = Path(data)
    folder = data if data.is_dir() else data.parent
    if data.is_dir():
        for name in ("test.jsonl", "valid.jsonl"):
            if (data / name).is_file():
                data = data / name
                break
        else:
            raise TrimtabError(
                f"{data}: no test.jsonl or valid.jsonl in this folder "
                "(give a folder written by trimtab prepare, or a .jsonl file)"
            )
    if not data.is_file():
        raise TrimtabError(f"{data}: file not found")
    records = read_examples(data)
    if not records:
        raise TrimtabError(f"{data}: no examples")
    records = records[:limit] if limit else records
    fmt = detect_format(records)
    meta: dict[str, Any] = {}
    if (folder / "report.json").is_file():
        meta = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    labels = None
    if fmt == "prompt-completion":
        completions = [r.fields["completion"] for r in records]
        if meta.get("task") == "classification" or looks_like_classification(completions):
            labels = sort_labels({c.strip() for c in completions})
    stop = meta.get("stop")
    completions = [r.fields["completion"] for r in records] if fmt == "prompt-completion" else []
    train = folder / "train.jsonl"
    return EvalData(
        path=data,
        records=records,
        format=fmt,
        labels=labels,
        separator=meta.get("separator"),
        stop=[stop] if isinstance(stop, str) else list(stop or []),
        leading_space=all(c[:1].isspace() for c in completions) if completions else True,
        train=train if train.is_file() and train != data else None,
    )


def load_for_eval(name_or_run: str | Path, *, device: str | None = None) -> EvalModel:
    """A fine-tuned run (its folder or ``final/``), or a base model by name or folder.

    A LoRA run is evaluated as its adapter on the base model (PEFT, not merged), as trained.
    """
    from trimtab.models.loading import load_model
    from trimtab.models.registry import resolve_model

    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    resolved = resolve_model(name_or_run)
    if resolved.run_meta is None:  # a base model: a language model scored zero- or few-shot
        loaded = load_model(name_or_run, "lm")
        return EvalModel(
            loaded.model.to(target).eval(),
            loaded.tokenizer,
            str(name_or_run),
            "lm",
            None,
            base_model=str(name_or_run),
        )
    meta = resolved.run_meta
    loaded = load_model(name_or_run, meta["task"], adapter="keep")
    folder = loaded.source_path
    return EvalModel(
        loaded.model.to(target).eval(),
        loaded.tokenizer,
        str(name_or_run),
        meta["task"],
        loaded.labels,
        base_model=meta.get("base_model"),
        method=meta.get("method"),
        run=folder.parent if folder.name in ("final", "best") else folder,
    )


@dataclass
class Outcome:
    """What one evaluation measured, and how long it took."""

    mode: str  # label scoring, generation, classification head, loss
    n: int
    seconds: float
    classification: ClassificationReport | None = None
    language_model: dict[str, float] | None = None
    generation: GenerationScores | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)  # a few outputs to read
    predicted: list[str | None] = field(default_factory=list)  # classification, per example
    # Classification by scores: each example's distribution over ``labels`` (rows sum to 1).
    probabilities: torch.Tensor | None = None
    labels: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)  # the inputs as sent, one per request
    prompt_tokens: list[int] | None = None  # their token counts, where already known
    # Answers example ``i`` alone (batch size 1), as the evaluation did: its latency. It holds
    # the model: dropped once measured (:mod:`trimtab.evaluation.cost`).
    request: Callable[[int], Any] | None = None

    @property
    def examples_per_s(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else 0.0


def default_bf16(model: Any) -> bool:
    """bf16 autocast where the model's device runs it fast."""
    return bf16_available(next(model.parameters()).device)


def classification_inputs(
    model: EvalModel, data: EvalData, *, shots: list[Shot] | None, instruction: str | None
) -> tuple[list[str], list[str]]:
    """The prompts the model sees and the labels as its answer would start.

    A fine-tuned model gets the prompts as prepared (it learnt their format); a base model gets
    them wrapped in an instruction, with ``shots`` for a few-shot baseline.
    """
    labels = data.labels or []
    if model.fine_tuned and shots is None:
        space = " " if data.leading_space else ""
        return data.prompts, [space + label for label in labels]
    texts = [strip_separator(p, data.separator).rstrip() for p in data.prompts]
    return baseline_prompts(
        model.tokenizer,
        texts,
        labels,
        instruction=instruction,
        shots=shots or [],
        separator=data.separator,
        leading_space=data.leading_space,
    )


def evaluate_classification(
    model: EvalModel,
    data: EvalData,
    *,
    mode: str = "score",
    shots: list[Shot] | None = None,
    instruction: str | None = None,
    sampling: Any = None,
    bf16: bool | None = None,
    batch_size: int = 16,
    max_length: int = 512,
) -> Outcome:
    """Predict a label for every example by label scoring, the head, or generation."""
    if data.labels is None:
        raise TrimtabError(f"{data.path}: not a classification file (completions are free text)")
    bf16 = default_bf16(model.model) if bf16 is None else bf16
    gold = data.gold
    start = time.perf_counter()
    how, labels, prompts, answer = _answerer(
        model,
        data,
        mode=mode,
        shots=shots,
        instruction=instruction,
        sampling=sampling,
        bf16=bf16,
        max_length=max_length,
    )
    out: Any = answer(prompts, batch_size=batch_size)
    seconds = time.perf_counter() - start
    samples: list[dict[str, Any]] = []
    probabilities = None
    if how == "generation":
        predicted: list[str | None] = [parse_label(t, labels) for t in out]
        samples = [
            {"prompt_end": p[-80:], "output": t, "gold": g}
            for p, t, g in zip(prompts[:5], out, gold)
        ]
    else:  # log-probabilities: renormalised over the labels, they are the predicted distribution
        probabilities = torch.softmax(out.float(), dim=-1)
        predicted = [labels[int(i)] for i in out.argmax(-1)] if len(out) else []
    report = score_classification(gold, predicted, probabilities, list(labels), data.labels)
    return Outcome(
        how,
        len(gold),
        seconds,
        classification=report,
        samples=samples,
        predicted=predicted,
        probabilities=probabilities,
        labels=list(labels),
        prompts=prompts,
        request=lambda i: answer([prompts[i]], batch_size=1),
    )


def _answerer(
    model: EvalModel,
    data: EvalData,
    *,
    mode: str,
    shots: list[Shot] | None,
    instruction: str | None,
    sampling: Any,
    bf16: bool,
    max_length: int,
) -> tuple[str, list[str], list[str], Callable[..., Any]]:
    """``(how, labels, prompts, answer)``: ``answer(prompts, batch_size=...)`` is how this model
    answers, used for the whole file at once and, in the outcome's ``request``, for one example
    alone (its latency). It returns label log-probabilities, or generated texts."""
    assert data.labels is not None
    answer: Callable[..., Any]
    if model.task == "classify":
        labels = model.labels or data.labels
        prompts = [head_text(p) for p in data.prompts]  # as training gave them to the head
        answer = partial(
            classify_logits, model.model, model.tokenizer, max_length=max_length, bf16=bf16
        )
        how = "classification head"
    else:
        labels = data.labels
        prompts, label_texts = classification_inputs(
            model, data, shots=shots, instruction=instruction
        )
        if mode == "generate":
            answer = partial(
                _generate,
                model,
                sampling=_label_sampling(model, label_texts, data, sampling),
                max_length=max_length,
                bf16=bf16,
            )
            how = "generation"
        else:
            answer = partial(
                score_labels,
                model.model,
                model.tokenizer,
                labels=label_texts,
                max_length=max_length,
                bf16=bf16,
            )
            how = "label scoring"
    return how, list(labels), prompts, answer


def score_classification(
    gold: list[str],
    predicted: list[str | None],
    probabilities: torch.Tensor | None,
    labels: list[str],
    data_labels: list[str],
) -> ClassificationReport:
    """Every metric of ``predicted``; with the predicted distributions (``[n, len(labels)]``)
    also the median decision, for numeric labels."""
    report = classification_report(gold, predicted, sort_labels(set(labels) | set(data_labels)))
    if probabilities is not None and len(probabilities):
        median = median_of(probabilities, labels)
        if median is not None:
            by_median = classification_report(gold, list[str | None](median), report.labels)
            report.extra["median_decision"] = {
                "accuracy": by_median.accuracy,
                "mae": by_median.mae,
                "off_by_one_accuracy": by_median.off_by_one_accuracy,
            }
    return report


def median_decision(scores: torch.Tensor, labels: list[str]) -> list[str] | None:
    """For numeric labels: the median of each predicted distribution, which minimises the
    expected absolute error (the most likely label maximises accuracy instead). None when the
    labels are not numbers. ``scores`` are log-probabilities (renormalised here)."""
    return median_of(torch.softmax(scores.float(), dim=-1), labels)


def median_of(probabilities: torch.Tensor, labels: list[str]) -> list[str] | None:
    """:func:`median_decision` of distributions given as probabilities ``[n, len(labels)]``."""
    try:
        values = [float(label) for label in labels]
    except ValueError:
        return None
    order = sorted(range(len(labels)), key=lambda i: values[i])
    probs = probabilities.float()[:, order]
    first = (probs.cumsum(-1) >= 0.5).float().argmax(-1)  # first label reaching half the mass
    return [labels[order[int(i)]] for i in first]


def _label_sampling(model: EvalModel, label_texts: list[str], data: EvalData, sampling: Any) -> Any:
    """Greedy, just long enough for the longest label (a base model gets room for a few words)."""
    from trimtab.generation import SamplingParams

    if sampling is not None:
        return sampling
    longest = max(
        len(model.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in label_texts
    )
    room = longest + (1 if model.fine_tuned else 6)
    return SamplingParams(temperature=0, max_tokens=room, stop=(data.stop or ["\n"])[:4])


def _generate(
    model: EvalModel,
    prompts: list[str],
    sampling: Any,
    *,
    batch_size: int,
    max_length: int,
    bf16: bool,
) -> list[str]:
    from trimtab.generation import generate

    done = generate(
        model.model,
        model.tokenizer,
        prompts,
        sampling,
        batch_size=batch_size,
        max_length=max_length,
        bf16=bf16,
    )
    return [c.text for c in done]


def evaluate_generation(
    model: EvalModel,
    data: EvalData,
    *,
    sampling: Any = None,
    bf16: bool | None = None,
    batch_size: int = 16,
    max_length: int = 512,
) -> Outcome:
    """Generate a completion for every prompt; exact match and ROUGE-L against the references."""
    from trimtab.generation import SamplingParams

    if data.format != "prompt-completion":
        raise TrimtabError(f"{data.path}: generation needs prompt/completion examples")
    bf16 = default_bf16(model.model) if bf16 is None else bf16
    references = data.completions
    if sampling is None:
        longest = max(
            len(model.tokenizer(r, add_special_tokens=False)["input_ids"]) for r in references
        )
        sampling = SamplingParams(temperature=0, max_tokens=longest + 8, stop=data.stop[:4] or None)
    start = time.perf_counter()
    texts = _generate(
        model, data.prompts, sampling, batch_size=batch_size, max_length=max_length, bf16=bf16
    )
    seconds = time.perf_counter() - start
    samples = [
        {"prompt_end": p[-80:], "output": t, "reference": r}
        for p, t, r in zip(data.prompts[:5], texts, references)
    ]
    return Outcome(
        "generation",
        len(texts),
        seconds,
        generation=generation_scores(texts, references),
        samples=samples,
        prompts=data.prompts,
        request=lambda i: _generate(
            model,
            [data.prompts[i]],
            sampling,
            batch_size=1,
            max_length=max_length,
            bf16=bf16,
        ),
    )


def evaluate_language_model(
    model: EvalModel,
    data: EvalData,
    *,
    bf16: bool | None = None,
    batch_size: int = 16,
    max_length: int = 512,
) -> Outcome:
    """Mean loss (nats per token) and perplexity of the held-out tokens.

    Prompt/completion and chat examples are scored on what training learns (completions,
    assistant turns); plain text on every token, one sequence per document so the figure does
    not depend on how documents would be packed.
    """
    from trimtab.data.prepared import encode_lm, encode_sft

    if model.task == "classify":
        raise TrimtabError(f"{model.name}: a classification head has no language-model loss")
    bf16 = default_bf16(model.model) if bf16 is None else bf16
    start = time.perf_counter()
    if data.format == "text":
        items = encode_lm(data.records, model.tokenizer, max_length, pack=False)
    else:
        items = encode_sft(data.records, model.tokenizer, max_length)
    pairs = [(e.input_ids, e.labels) for e in items]
    pad = model.tokenizer.pad_token_id
    scored = language_model_loss(model.model, pairs, pad, batch_size=batch_size, bf16=bf16)
    loss = scored.loss
    return Outcome(
        "loss",
        len(items),
        time.perf_counter() - start,
        language_model={
            "loss": loss,
            "perplexity": math.exp(min(loss, 50.0)),
            "tokens": scored.tokens,
            "token_accuracy": scored.token_accuracy,
        },
        # A request is one whole sequence, as scored (already tokenised: no prompt text).
        prompt_tokens=[len(ids) for ids, _ in pairs],
        request=lambda i: language_model_loss(
            model.model, pairs[i : i + 1], pad, batch_size=1, bf16=bf16
        ),
    )
