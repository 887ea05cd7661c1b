"""``trimtab sweep``: hyperparameter search over ``trimtab train`` with Optuna.

A sweep spec is a training config plus a ``sweep:`` section::

    sweep:
      trials: 20
      metric: valid_loss          # minimised; valid_accuracy / valid_mean_token_accuracy: maximised
      seed: 0
      search:
        optim.lr: {low: 1e-5, high: 1e-3, log: true}   # float
        method.lora_r: {choices: [4, 8, 16]}           # categorical
        epochs: {low: 1, high: 4}                      # int (both ends ints)

Every trial is an ordinary run (``OUT/trials/trial-NNN/``) trained by :func:`train` with the
base config plus the sampled values, applied through the CLI's ``key=value`` path. The sweep
decides on the validation split only (``data.valid`` is required), never on a test split. The
study lives in ``OUT/study.db`` (SQLite), so a crashed sweep continues with ``resume=True``;
``results.csv``, ``results.md`` and ``plots/`` are rewritten after every trial.
"""

from __future__ import annotations

import csv
import gc
import io
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from trimtab.errors import ConfigError, TrimtabError
from trimtab.files import write_chunks, write_text
from trimtab.models.runs import RunFolder
from trimtab.training.config import TrainConfig, load_config, parse_overrides
from trimtab.training.loop import TrainingInterrupted
from trimtab.training.trainer import train

Metric = Literal["valid_loss", "valid_accuracy", "valid_mean_token_accuracy"]
Scalar = None | bool | int | float | str  # what Optuna stores as a categorical choice
NOT_SEARCHABLE = {
    "run_dir": "each trial has its own run folder",
    "data.valid": "the sweep decides on it",
}


class SweepInterrupted(TrimtabError):
    """Ctrl-C during a sweep: the trial is recorded as interrupted; ``resume`` continues."""

    exit_code = 130


class Param(BaseModel):
    """One searched key: a range (``low``, ``high``, ``log``) or a list of ``choices``."""

    model_config = ConfigDict(extra="forbid")
    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    choices: list[Scalar] | None = None

    @model_validator(mode="after")
    def _check(self) -> Param:
        # One message with every problem of the key, so that a single run lists them all.
        problems = []
        if self.choices is not None:
            if self.low is not None or self.high is not None or self.log:
                problems.append("give either choices or low/high, not both")
            if not self.choices:
                problems.append("choices: give at least one value")
        elif self.low is None or self.high is None:
            problems.append("give low and high (a range) or choices (a list)")
        else:
            if self.low >= self.high:
                problems.append("low must be below high")
            if self.log and self.low <= 0:
                problems.append("log: low must be above 0")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def is_int(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int)

    def candidates(self) -> list[tuple[str, Any]]:
        """The values to try on the base config before anything trains: ends and choices."""
        if self.choices is not None:
            return [("choice", c) for c in self.choices]
        return [("low", self.low), ("high", self.high)]


class SweepSection(BaseModel):
    """The ``sweep:`` section of a spec."""

    model_config = ConfigDict(extra="forbid")
    trials: int = Field(default=20, gt=0)
    metric: Metric = "valid_loss"
    seed: int = 0
    search: dict[str, Param] = Field(min_length=1)

    @property
    def direction(self) -> Literal["minimize", "maximize"]:
        return "minimize" if self.metric == "valid_loss" else "maximize"


@dataclass
class SweepSpec:
    """A validated spec: the base config's values (as load_config takes them), the sweep."""

    values: dict[str, Any]
    sweep: SweepSection
    source: Path | None = None

    def trial_config(self, params: dict[str, Any], run_dir: Path) -> TrainConfig:
        """The base config with ``params`` applied as ``key=value`` overrides, like the CLI."""
        pairs = [f"{k}={json.dumps(v)}" for k, v in params.items()] + [f"run_dir={run_dir}"]
        return load_config(None, pairs, base=self.values)


def load_sweep(path: Path | None, overrides: list[str] | None = None) -> SweepSpec:
    """Read a spec (YAML file ← ``key=value`` overrides, ``sweep.*`` keys included) and report
    every problem of the sweep section and the base config at once (ConfigError)."""
    values = _read_yaml(path) if path is not None else {}
    for key, value in parse_overrides(overrides or []).items():
        both = isinstance(value, dict) and isinstance(values.get(key), dict)
        values[key] = {**values[key], **value} if both else value
    raw = values.pop("sweep", None)
    base_problems = _base_problems(values)
    sweep, problems = None, []
    try:
        sweep = SweepSection.model_validate(raw)
    except ValidationError as e:
        problems += [_pydantic_problem(err) for err in e.errors()]
    search = raw.get("search") if isinstance(raw, dict) else None
    key_problems = _key_problems(search) if isinstance(search, dict) else []
    problems += key_problems
    if sweep is not None and not base_problems and not key_problems:
        problems += _value_problems(sweep, values)  # values are tried on a valid base only
    if problems or base_problems or sweep is None:
        prefix = f"{path}: " if path is not None else ""
        raise ConfigError([prefix + p for p in problems + base_problems])
    return SweepSpec(values, sweep, path)


def _base_problems(values: dict[str, Any]) -> list[str]:
    """The base config's problems, as ``trimtab train`` reports them, and no validation file."""
    try:
        base = load_config(None, [], base=values)
    except ConfigError as e:
        return list(e.problems)
    if base.data.valid is None:
        return ["data.valid: required: the sweep decides by the validation split, never a test one"]
    return []


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError([f"{path}: sweep spec not found"]) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"{path}: not valid YAML: {getattr(e, 'problem', e)}"]) from None
    if not isinstance(loaded, dict):
        raise ConfigError([f"{path}: expected a mapping of config keys and a sweep section"])
    return loaded


def _pydantic_problem(err: Any) -> str:
    loc = ".".join(["sweep", *(str(p) for p in err["loc"])])
    if err["type"] == "model_type" and loc == "sweep":
        return "sweep: required: a mapping with trials, metric, seed and search"
    return f"{loc}: {err['msg'].removeprefix('Value error, ')}"


def _key_problems(keys: Any) -> list[str]:
    """A searched key must name one setting of TrainConfig (a section is not a setting)."""
    out = []
    for key in keys:
        if key in NOT_SEARCHABLE:
            out.append(f"sweep.search.{key}: cannot be searched: {NOT_SEARCHABLE[key]}")
            continue
        model: Any = TrainConfig
        for i, part in enumerate(key.split(".")):
            field = model.model_fields.get(part) if model is not None else None
            if field is None:
                where = ".".join(key.split(".")[:i]) or "the config"
                known = ", ".join(model.model_fields) if model is not None else "no keys"
                out.append(f"sweep.search.{key}: not a config key ({where} has {known})")
                break
            kind = field.annotation
            model = kind if isinstance(kind, type) and issubclass(kind, BaseModel) else None
        else:
            if model is not None:
                out.append(f"sweep.search.{key}: a section; search one of its keys")
    return out


def _value_problems(sweep: SweepSection, values: dict[str, Any]) -> list[str]:
    """Each end of a range and each choice, tried alone on the base config: a value that can
    never train (lr above 1, a batch larger than the data) is reported before any trial."""
    out = []
    for key, param in sweep.search.items():
        for label, value in param.candidates():
            try:
                load_config(None, [f"{key}={json.dumps(value)}"], base=values)
            except ConfigError as e:
                out += [f"sweep.search.{key}: {label} {value!r}: {p}" for p in e.problems]
    return out


# --- running ---------------------------------------------------------------------------------


@dataclass
class SweepResult:
    """The study's trials as rows (see :func:`trial_rows`) and the best complete trial."""

    out_dir: Path
    metric: str
    rows: list[dict[str, Any]]
    best: dict[str, Any] | None  # trial, params, metric value, run_dir

    def table(self) -> str:
        return markdown_table(self.rows)


def run_sweep(
    spec: SweepSpec,
    out_dir: Path,
    *,
    trials: int | None = None,
    resume: bool = False,
    progress: bool = True,
) -> SweepResult:
    """Run (or with ``resume``, continue) the sweep in ``out_dir`` until ``trials`` trials
    (the spec's count by default) have finished, counting those of an earlier, crashed run."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out_dir = Path(out_dir)
    study = _open_study(spec, out_dir, resume)
    target = trials or spec.sweep.trials
    while _finished(study) < target:
        # A sampler seeded per trial: a resumed sweep samples what an unbroken one would have.
        number = len(study.trials)
        study.sampler = optuna.samplers.TPESampler(seed=spec.sweep.seed + number)
        _run_trial(study, spec, out_dir, progress)
        _write_results(study, spec, out_dir)
        gc.collect()  # the last trial's model and optimizer, before the next one loads
    _write_results(study, spec, out_dir)
    return SweepResult(out_dir, spec.sweep.metric, trial_rows(study, spec), _best(study, spec))


def _open_study(spec: SweepSpec, out_dir: Path, resume: bool) -> Any:
    """Create the study in ``out_dir/study.db``, or open it to resume (the same search only);
    trials left running by a crash are recorded as failed, interrupted, and not counted."""
    import optuna
    from optuna.trial import TrialState

    db = out_dir / "study.db"
    if db.exists() and not resume:
        raise TrimtabError(f"{out_dir}: a sweep is there already; continue it with --resume")
    if resume and not db.exists():
        raise TrimtabError(f"{out_dir}: no sweep to resume (no study.db)")
    out_dir.mkdir(parents=True, exist_ok=True)
    search = {k: v.model_dump() for k, v in spec.sweep.search.items()}
    study = optuna.create_study(
        storage=f"sqlite:///{db.resolve()}",
        study_name="trimtab-sweep",
        direction=spec.sweep.direction,
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2),
        load_if_exists=resume,
    )
    if not resume:
        study.set_user_attr("search", search)
        study.set_user_attr("metric", spec.sweep.metric)
    elif (study.user_attrs.get("search"), study.user_attrs.get("metric")) != (
        search,
        spec.sweep.metric,
    ):
        raise TrimtabError(
            f"{out_dir}: that sweep searched another space or metric; resume it with its own spec"
        )
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)  # no "seconds": it reads as interrupted
    return study


def _finished(study: Any) -> int:
    """Trials that ran to an end (complete, pruned, failed); not those a crash cut short."""
    return sum(1 for t in study.trials if t.state.is_finished() and "seconds" in t.user_attrs)


def _run_trial(study: Any, spec: SweepSpec, out_dir: Path, progress: bool) -> None:
    """Sample, train, tell Optuna. A failure (a config that cannot train, a diverged loss, an
    out-of-memory error) is recorded with its message and the sweep goes on; Ctrl-C is not."""
    import optuna
    from optuna.trial import TrialState

    trial = study.ask()
    params = _suggest(trial, spec.sweep.search)
    run_dir = out_dir / "trials" / f"trial-{trial.number:03d}"
    trial.set_user_attr("run_dir", str(run_dir))
    say = _say if progress else (lambda _: None)
    say(f"trial {trial.number}: {_format_params(params)}")
    started = time.perf_counter()
    value, state, error = None, TrialState.COMPLETE, None
    try:
        config = spec.trial_config(params, run_dir)
        watch = _Watch(trial, RunFolder(run_dir), spec.sweep.metric, say)
        result = train(config, progress=True, log=watch)
        value = _trial_value(result.results, watch.values, config, spec.sweep.metric)
    except optuna.TrialPruned:
        state = TrialState.PRUNED
    except (KeyboardInterrupt, TrainingInterrupted):
        study.tell(trial, state=TrialState.FAIL)
        _write_results(study, spec, out_dir)
        raise SweepInterrupted(
            f"sweep interrupted during trial {trial.number}; continue it with --resume "
            f"(--out {out_dir})"
        ) from None
    except Exception as e:  # noqa: BLE001 - any failure of one trial is that trial's result
        state, error = TrialState.FAIL, str(e) if isinstance(e, TrimtabError) else repr(e)
        trial.set_user_attr("error", error.splitlines()[0] if error else type(e).__name__)
    trial.set_user_attr("seconds", round(time.perf_counter() - started, 1))
    study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
    outcome = f"{spec.sweep.metric} {value:.6g}" if value is not None else state.name.lower()
    say(f"trial {trial.number}: {outcome}" + (f" ({error})" if error else ""))


def _say(text: str) -> None:
    print(text, flush=True)


def _suggest(trial: Any, search: dict[str, Param]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, p in search.items():
        if p.choices is not None:
            out[key] = trial.suggest_categorical(key, p.choices)
        elif p.is_int:
            out[key] = trial.suggest_int(key, int(p.low or 0), int(p.high or 0), log=p.log)
        else:
            out[key] = trial.suggest_float(key, float(p.low or 0), float(p.high or 0), log=p.log)
    return out


class _Watch:
    """The trainer's log callback: after each line, the evaluations newly appended to the run's
    metrics.jsonl are reported to Optuna, and a trial clearly behind the median of the earlier
    trials at the same step is stopped (optuna.TrialPruned, raised through the trainer)."""

    def __init__(self, trial: Any, run: RunFolder, metric: str, say: Any):
        self.trial, self.run, self.metric, self.say = trial, run, metric, say
        self.offset = 0  # bytes of metrics.jsonl read so far: each line is read once
        self.values: list[float] = []

    def __call__(self, text: str) -> None:
        self.say(f"  {text}")
        for record in self._new_records():
            if self.metric not in record:
                continue
            self.values.append(float(record[self.metric]))
            self.trial.report(self.values[-1], int(record["step"]))
            if self.trial.should_prune():
                import optuna

                self.run.update(status="pruned")
                raise optuna.TrialPruned(f"pruned at step {record['step']}")

    def _new_records(self) -> list[dict[str, Any]]:
        path = self.run.metrics_file
        if not path.is_file():
            return []
        with path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line being written is read next time
        self.offset += len(complete)
        return [json.loads(line) for line in complete.splitlines() if line.strip()]


def _trial_value(
    results: dict[str, Any], seen: list[float], config: TrainConfig, metric: str
) -> float:
    """The metric of the model the run kept: at the best validation loss when ``best/``
    becomes ``final/`` (the trainer's results), else at the last evaluation."""
    if config.keep_best and metric in results:
        return float(results[metric])
    if seen:
        return seen[-1]
    raise TrimtabError(
        f"{metric} was not logged by this run (valid_accuracy needs classify, or sft with a "
        "few labels; valid_mean_token_accuracy needs sft or lm); choose another sweep.metric"
    )


# --- results ---------------------------------------------------------------------------------


def trial_rows(study: Any, spec: SweepSpec) -> list[dict[str, Any]]:
    """One row per trial: trial, each searched key, the metric, seconds, state, error."""
    rows = []
    for t in study.trials:
        value = t.value if t.value is not None else _last_report(t)
        row: dict[str, Any] = {"trial": t.number}
        row |= {k: t.params.get(k) for k in spec.sweep.search}
        row[spec.sweep.metric] = value
        row["seconds"] = t.user_attrs.get("seconds")
        state = "failed" if t.state.name == "FAIL" else t.state.name.lower()
        row["state"] = "interrupted" if "seconds" not in t.user_attrs else state
        row["error"] = t.user_attrs.get("error", "")
        rows.append(row)
    return rows


def _last_report(t: Any) -> float | None:
    steps = t.intermediate_values
    return steps[max(steps)] if steps else None


def _best(study: Any, spec: SweepSpec) -> dict[str, Any] | None:
    if not any(t.state.name == "COMPLETE" for t in study.trials):
        return None
    best = study.best_trial
    out = {"trial": best.number, "params": best.params, spec.sweep.metric: best.value}
    return out | {"run_dir": best.user_attrs.get("run_dir")}


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table (errors listed below it: they are too long for a cell)."""
    if not rows:
        return "no trials yet\n"
    columns = [c for c in rows[0] if c != "error"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r[c]) for c in columns) + " |" for r in rows]
    errors = [f"- trial {r['trial']}: {r['error']}" for r in rows if r.get("error")]
    return "\n".join(lines + ([""] + errors if errors else [])) + "\n"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _format_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_cell(v)}" for k, v in params.items())


def _write_results(study: Any, spec: SweepSpec, out_dir: Path) -> None:
    """results.csv, results.md and the plots, each written whole (a crash keeps the last)."""
    rows = trial_rows(study, spec)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["trial"])
    writer.writeheader()
    writer.writerows(rows)
    write_text(out_dir / "results.csv", buffer.getvalue())
    best = _best(study, spec)
    summary = (
        f"\nbest: trial {best['trial']}, {spec.sweep.metric} {_cell(best[spec.sweep.metric])}, "
        f"run {best['run_dir']}\n"
        if best
        else "\nno trial has completed yet\n"
    )
    write_text(
        out_dir / "results.md", f"# Sweep: {spec.sweep.metric}\n\n{markdown_table(rows)}{summary}"
    )
    _plot_metric(rows, spec, out_dir / "plots" / "metric-by-trial.png")
    _plot_importance(study, out_dir / "plots" / "importance.png")


@contextmanager
def _figure(path: Path, size: tuple[float, float]) -> Iterator[Any]:
    """Axes whose figure is written to ``path`` whole on success and closed in every case."""
    import matplotlib

    matplotlib.use("Agg")  # servers have no display; before pyplot is imported
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    try:
        yield ax
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        write_chunks(path, [buffer.getvalue()])
    finally:
        plt.close(fig)  # pyplot keeps every figure alive until closed


def _plot_metric(rows: list[dict[str, Any]], spec: SweepSpec, path: Path) -> None:
    """Each trial's metric, coloured by state; the complete trials' best so far as a line."""
    metric = spec.sweep.metric
    with _figure(path, (7, 4)) as ax:
        for state, color in (("complete", "tab:blue"), ("pruned", "tab:orange")):
            points = [(r["trial"], r[metric]) for r in rows if r["state"] == state]
            points = [(t, v) for t, v in points if v is not None]
            if points:
                ax.scatter(*zip(*points, strict=True), color=color, label=state)
        done = [(r["trial"], r[metric]) for r in rows if r["state"] == "complete"]
        pick = min if spec.sweep.direction == "minimize" else max
        best = [pick(v for _, v in done[: i + 1]) for i in range(len(done))]
        if done:
            ax.step([t for t, _ in done], best, where="post", color="tab:green", label="best")
            ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)  # trials are whole numbers
        ax.set(xlabel="trial", ylabel=metric)


def _plot_importance(study: Any, path: Path) -> None:
    """Optuna's parameter importances as bars, once it can compute them (2+ complete trials)."""
    import optuna

    if sum(1 for t in study.trials if t.state.name == "COMPLETE") < 2:
        return
    try:
        importances = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):  # e.g. every complete trial sampled the same values
        return
    if importances:
        with _figure(path, (7, 1.2 + 0.4 * len(importances))) as ax:
            names = list(importances)[::-1]  # the most important on top
            ax.barh(names, [importances[n] for n in names], color="tab:blue")
            ax.set_xlabel("importance (share of the metric's variation)")


__all__ = [
    "SweepInterrupted",
    "SweepResult",
    "SweepSpec",
    "load_sweep",
    "markdown_table",
    "run_sweep",
]
