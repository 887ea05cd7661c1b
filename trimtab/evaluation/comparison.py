"""``trimtab eval``: many models, one test file, one table and one report folder.

Each model given is a fine-tuned run or a base model. A base model is a baseline: zero-shot (an
instruction before the text) and few-shot (``shots`` solved examples from the training file as
well). ``baselines=True`` adds the base model of every fine-tuned decoder run, so a table shows
what fine-tuning bought. Models are loaded one at a time, so memory holds one model.

Every row carries its ``cost`` (:mod:`trimtab.evaluation.cost`); ``ensembles`` add rows that
average other rows' label distributions (:mod:`trimtab.evaluation.ensemble`), and the report
folder keeps each classification row's per-example distribution in ``predictions/``.
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from trimtab import __version__
from trimtab.data.examples import strip_separator
from trimtab.errors import ConfigError, TrimtabError
from trimtab.evaluation.cost import DEFAULT_LATENCY_SAMPLE, outcome_cost, parameter_count
from trimtab.evaluation.ensemble import (
    EnsembleSpec,
    Evaluated,
    build_ensemble,
    check_ensembles,
    members_to_evaluate,
    prediction_files,
)
from trimtab.evaluation.evaluate import (
    EvalData,
    EvalModel,
    Outcome,
    evaluate_classification,
    evaluate_generation,
    evaluate_language_model,
    load_eval_data,
    load_for_eval,
)
from trimtab.evaluation.prompts import Shot, pick_shots
from trimtab.files import check_output
from trimtab.models.runs import RunFolder

Mode = Literal["score", "generate", "both"]


class EvalOptions(BaseModel):
    """Everything ``trimtab eval`` takes; problems are reported all at once."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    models: list[str] = Field(min_length=1)
    data: Path
    mode: Mode = "score"  # classification by label scoring, by generation, or both
    baselines: bool = False
    shots: int = Field(5, ge=0, le=64)  # few-shot examples; 0: no few-shot baseline
    instruction: str | None = None  # the baselines' task description ({labels} is filled in)
    limit: int | None = Field(None, gt=0)  # evaluate the first N examples only
    # Base models asked zero/few-shot: the first N examples only (long prompts, weak results:
    # a smaller sample is enough to place them, at a fraction of the time).
    baseline_limit: int | None = Field(None, gt=0)
    batch_size: int = Field(16, gt=0)
    max_length: int = Field(512, gt=8)
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    out: Path | None = None  # the report folder; None: no report written
    force: bool = False
    seed: int = 0
    sampling: dict[str, Any] | None = None  # SamplingParams values for generation
    # Rows averaging other rows' label distributions ("[NAME=]A[:W],B[:W]" or the fields).
    ensembles: list[EnsembleSpec] = Field(default_factory=list)
    # Requests answered one at a time for each row's latency (after 2 warm-ups); 0: skip.
    latency_sample: int = Field(DEFAULT_LATENCY_SAMPLE, ge=0)

    @field_validator("ensembles", mode="before")
    @classmethod
    def _ensembles_from_text(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [EnsembleSpec.parse_text(v) if isinstance(v, str) else v for v in value]
        return value

    @classmethod
    def parse(cls, **values: Any) -> EvalOptions:
        """Validate, reporting every problem at once: options, sampling values, paths."""
        problems: list[str] = []
        options = None
        try:
            options = cls.model_validate(values)
        except ValidationError as e:
            problems += [
                f"{'.'.join(str(p) for p in err['loc']) or 'options'}: {err['msg']}"
                for err in e.errors()
            ]
        data = values.get("data")
        if data is not None and not Path(data).exists():
            problems.append(f"data: {data}: not found")
        if values.get("sampling"):
            from trimtab.generation import SamplingParams

            try:
                SamplingParams.from_options(values["sampling"])
            except ConfigError as e:
                problems += e.problems
            if (values["sampling"].get("n") or 1) != 1:
                problems.append("n: evaluation reads one answer per example; use n=1")
        if problems or options is None:
            raise ConfigError(problems)
        return options


@dataclass
class Candidate:
    """One row of the table: a model, and how it is asked (as fine-tuned, zero- or few-shot)."""

    model: str
    kind: str  # fine-tuned, zero-shot, few-shot (k=N)
    shots: list[Shot] | None = None


def run_eval(options: EvalOptions, *, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluate every model; returns the report (and writes its folder if ``options.out``)."""
    from trimtab.evaluation.report import comparison_table, result_slugs, write_report

    if options.out is not None:  # checked before an hour of evaluation, not after it
        check_output(options.out, options.force, "report")
    models = options.models + members_to_evaluate(options.ensembles, options.models)
    check_model_refs(models)
    data = load_eval_data(options.data, limit=options.limit)
    check_ensembles(options.ensembles, data, options.mode)
    say(
        f"{data.path}: {len(data.records):,} examples, "
        + (f"classification over {', '.join(data.labels)}" if data.labels else data.format)
    )
    evaluated: list[Evaluated] = []
    for model_ref in _with_baselines(models, options.baselines, say):
        say(f"loading {model_ref}")
        model = load_for_eval(model_ref)
        sample = data
        if not model.fine_tuned and options.baseline_limit:
            sample = replace(data, records=data.records[: options.baseline_limit])
        for candidate in _candidates(model, model_ref, sample, options, say):
            evaluated += _evaluate(model, candidate, sample, options, say)
        del model
    for spec in options.ensembles:  # from the members' stored distributions: nothing reruns
        evaluated.append(build_ensemble(spec, evaluated, data))
        say(f"  {evaluated[-1].row['label']}: {_summary(evaluated[-1].outcome)}")
    results = [e.row for e in evaluated]
    report = {
        "trimtab_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "data": str(data.path),
        "command": shlex.join(["trimtab", *sys.argv[1:]]) if sys.argv else "",
        "results": results,
    }
    say("")
    say(comparison_table(report))
    if options.out is not None:
        files = prediction_files(evaluated, result_slugs(results), data.gold)
        write_report(report, options.out, force=True, files=files)
        say(
            f"\nReport: {options.out / 'report.html'} "
            "(and report.md, report.json, plots/, predictions/)"
        )
    return report


def _with_baselines(models: list[str], baselines: bool, say: Callable[[str], None]) -> list[str]:
    """The models to load, base models of the runs first when baselines are asked for."""
    refs = list(dict.fromkeys(models))
    if not baselines:
        return refs
    bases = []
    for ref in refs:
        meta = _run_meta(Path(ref))
        if meta and _is_decoder(meta["base_model"]):  # zero-shot needs a language model
            bases.append(meta["base_model"])
        elif meta:
            say(
                f"{ref}: its base model {meta['base_model']} is an encoder, which cannot "
                "answer zero- or few-shot: no baseline for it"
            )
    return list(dict.fromkeys(bases + [r for r in refs if r not in bases]))


def _run_meta(path: Path) -> dict[str, Any] | None:
    """A fine-tuned model's trimtab.json, or None for a base model."""
    try:
        return RunFolder(path).meta()
    except TrimtabError:
        return None


def _is_decoder(name: str) -> bool:
    from trimtab.models.registry import KNOWN_MODELS

    spec = KNOWN_MODELS.get(name)
    return spec is None or spec.kind == "decoder"


def _candidates(
    model: EvalModel, ref: str, data: EvalData, options: EvalOptions, say: Callable[[str], None]
) -> list[Candidate]:
    if model.fine_tuned:
        return [Candidate(ref, "fine-tuned")]
    out = [Candidate(ref, "zero-shot")]
    if options.shots and data.labels:
        if data.train is None:
            say(f"  no train.jsonl beside {data.path}: no few-shot baseline")
        else:
            out.append(
                Candidate(
                    ref, f"few-shot (k={options.shots})", _shots(data, options.shots, options.seed)
                )
            )
    return out


def _shots(data: EvalData, k: int, seed: int) -> list[Shot]:
    from trimtab.data.prepared import read_examples

    assert data.train is not None and data.labels is not None
    examples = [
        (
            strip_separator(r.fields["prompt"], data.separator).rstrip(),
            r.fields["completion"].strip(),
        )
        for r in read_examples(data.train)
        if "prompt" in r.fields
    ]
    return pick_shots(examples, data.labels, k, seed=seed)


def _evaluate(
    model: EvalModel,
    candidate: Candidate,
    data: EvalData,
    options: EvalOptions,
    say: Callable[[str], None],
) -> list[Evaluated]:
    """The rows of one model asked one way (a row per mode), each with its cost."""
    from trimtab.generation import SamplingParams

    sampling = SamplingParams.from_options(options.sampling) if options.sampling else None
    bf16 = {"auto": None, "bf16": True, "fp32": False}[options.precision]
    common: dict[str, Any] = {
        "bf16": bf16,
        "batch_size": options.batch_size,
        "max_length": options.max_length,
    }
    label = _label(model, candidate)
    outcomes: list[Outcome] = []
    if data.labels is not None:
        modes = (
            ["score"]
            if model.task == "classify"
            else (["score", "generate"] if options.mode == "both" else [options.mode])
        )
        for mode in modes:
            say(f"  {label}: {'label scoring' if mode == 'score' else 'generation'} ...")
            outcomes.append(
                evaluate_classification(
                    model,
                    data,
                    mode=mode,
                    shots=candidate.shots,
                    instruction=options.instruction,
                    sampling=sampling,
                    **common,
                )
            )
    elif data.format == "text":
        outcomes.append(evaluate_language_model(model, data, **common))
    else:
        outcomes.append(evaluate_generation(model, data, sampling=sampling, **common))
        outcomes.append(evaluate_language_model(model, data, **common))
    if data.labels is None and len(outcomes) == 2:  # one row: generation and loss together
        gen, lm = outcomes
        gen.language_model, gen.seconds = lm.language_model, gen.seconds + lm.seconds
        lm.request = None  # the row's requests are generations: its latency is theirs
        outcomes = [gen]
    return _rows(model, candidate, outcomes, data, options, say)


def _rows(
    model: EvalModel,
    candidate: Candidate,
    outcomes: list[Outcome],
    data: EvalData,
    options: EvalOptions,
    say: Callable[[str], None],
) -> list[Evaluated]:
    """A row per outcome, each with its cost (measuring the latency runs the model again)."""
    rows = []
    label = _label(model, candidate)
    parameters = parameter_count(model.model)
    for outcome in outcomes:
        row_label = label + (
            " [generation]"
            if outcome.mode == "generation" and data.labels is not None and len(outcomes) > 1
            else ""
        )
        row = _row(model, candidate, row_label, outcome)
        row["cost"] = outcome_cost(
            outcome,
            model.tokenizer,
            max_length=options.max_length,
            latency_sample=options.latency_sample,
            parameters=parameters,
        )
        rows.append(Evaluated(row, outcome))
        say(f"  {row_label}: {_summary(outcome)} ({outcome.examples_per_s:.1f} examples/s)")
    return rows


def _label(model: EvalModel, candidate: Candidate) -> str:
    if model.fine_tuned and model.run is not None:
        return model.run.name
    return f"{Path(candidate.model).name} {candidate.kind}"


def _summary(outcome: Outcome) -> str:
    parts = []
    if outcome.classification:
        c = outcome.classification
        parts.append(f"accuracy {c.accuracy:.3f}")
        if c.mae is not None:
            parts.append(f"MAE {c.mae:.3f}")
        if c.invalid:
            parts.append(f"{c.invalid} invalid")
    if outcome.generation:
        parts.append(
            f"exact match {outcome.generation.exact_match:.3f}, "
            f"ROUGE-L {outcome.generation.rouge_l:.3f}"
        )
    if outcome.language_model:
        parts.append(
            f"loss {outcome.language_model['loss']:.4f}, "
            f"perplexity {outcome.language_model['perplexity']:.2f}"
        )
    return ", ".join(parts)


def _row(model: EvalModel, candidate: Candidate, label: str, outcome: Outcome) -> dict[str, Any]:
    training = metrics = None
    if model.run is not None:
        folder = RunFolder(model.run)
        info = folder.info()
        results = info.get("results") or {}
        training = {
            "seconds": results.get("train_seconds"),
            "tokens_per_s": results.get("tokens_per_second"),
            "train_examples": info.get("train_examples"),
            "trainable_parameters": info.get("trainable_parameters"),
        }
        metrics = folder.metrics()
    return {
        "label": label,
        "model": candidate.model,
        "kind": candidate.kind,
        "base_model": model.base_model,
        "method": model.method,
        "task": model.task,
        "mode": outcome.mode,
        "n": outcome.n,
        "seconds": round(outcome.seconds, 2),
        "examples_per_s": round(outcome.examples_per_s, 2),
        "shots": [{"text": s.text, "label": s.label} for s in candidate.shots or []],
        "classification": outcome.classification.to_json() if outcome.classification else None,
        "language_model": outcome.language_model,
        "generation": outcome.generation.to_json() if outcome.generation else None,
        "samples": outcome.samples,
        "training": training,
        "run": {"path": str(model.run), "metrics": metrics} if model.run is not None else None,
    }


def check_model_refs(refs: list[str]) -> None:
    """Fail before loading anything if a model is neither a run nor a known base model."""
    from trimtab.models.registry import KNOWN_MODELS, is_hub_id

    def missing(ref: str) -> bool:
        if Path(ref).exists() or ref in KNOWN_MODELS:
            return False
        # owner/name may be a hub id; a path whose folder exists is a local path, mistyped.
        return not is_hub_id(ref) or Path(ref).parent.exists()

    bad = [r for r in refs if missing(r)]
    if bad:
        raise TrimtabError(
            f"not a run folder or a known model: {', '.join(bad)} "
            f"(known models: {', '.join(KNOWN_MODELS)})"
        )
