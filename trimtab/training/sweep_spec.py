"""The sweep spec: a training config plus a ``sweep:`` section, validated before anything trains.

See :mod:`trimtab.training.sweep` for the format. Besides the ``trimtab train`` keys, a spec may
name ``data.test``: the file the best trial is evaluated on, once, by ``trimtab sweep --best``
(the sweep itself never reads it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from trimtab.errors import ConfigError
from trimtab.training.config import TrainConfig, load_config, parse_overrides

Metric = Literal["valid_loss", "valid_accuracy", "valid_mean_token_accuracy"]
Scalar = None | bool | int | float | str  # what Optuna stores as a categorical choice
NOT_SEARCHABLE = {
    "run_dir": "each trial has its own run folder",
    "data.valid": "the sweep decides on it",
    "data.test": "it is read once, by --best, never by the sweep",
}
SPEC_FILE = "spec.yaml"  # the spec a sweep folder ran with: its workers and --best read it


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
    test: Path | None = None  # data.test: what --best evaluates on, once

    def trial_config(self, params: dict[str, Any], run_dir: Path) -> TrainConfig:
        """The base config with ``params`` applied as ``key=value`` overrides, like the CLI."""
        pairs = [f"{k}={json.dumps(v)}" for k, v in params.items()] + [f"run_dir={run_dir}"]
        return load_config(None, pairs, base=self.values)

    def to_yaml(self) -> str:
        """The spec as a file :func:`load_sweep` reads back; data paths made absolute, so that
        workers started elsewhere (another folder, another node) read the same files."""
        values = json.loads(json.dumps(self.values))  # a deep copy of plain values
        data = values.get("data") if isinstance(values.get("data"), dict) else None
        if data is not None:
            for key in ("train", "valid"):
                if data.get(key) is not None:
                    data[key] = str(Path(data[key]).resolve())
            if self.test is not None:
                data["test"] = str(self.test.resolve())
        sweep = self.sweep.model_dump(exclude_none=True)
        return yaml.safe_dump(values | {"sweep": sweep}, sort_keys=False)


def load_sweep(path: Path | None, overrides: list[str] | None = None) -> SweepSpec:
    """Read a spec (YAML file ← ``key=value`` overrides, ``sweep.*`` keys included) and report
    every problem of the sweep section and the base config at once (ConfigError)."""
    values = _read_yaml(path) if path is not None else {}
    for key, value in parse_overrides(overrides or []).items():
        both = isinstance(value, dict) and isinstance(values.get(key), dict)
        values[key] = {**values[key], **value} if both else value
    raw = values.pop("sweep", None)
    test, test_problems = _pop_test(values)
    base_problems = _base_problems(values) + test_problems
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
    return SweepSpec(values, sweep, path, test)


def _pop_test(values: dict[str, Any]) -> tuple[Path | None, list[str]]:
    """``data.test``, taken out of the training config (training never reads it)."""
    data = values.get("data")
    if not isinstance(data, dict) or data.get("test") is None:
        if isinstance(data, dict):
            data.pop("test", None)
        return None, []
    values["data"] = data = dict(data)  # the caller's mapping is left as it was
    test = Path(str(data.pop("test")))
    if not test.exists():
        return test, [f"data.test: {test}: file not found"]
    return test, []


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
