"""Sampling parameters with OpenAI's names, defaults and ranges, shared by the CLI and the server.

This module imports no torch: ``trimtab --help`` and option parsing stay fast.

Parameters (as OpenAI's completions API documents them):

- ``temperature`` (0..2, default 1): divides the logits before sampling. Higher values make
  the output more random, lower values more focused; 0 means greedy decoding (always the most
  likely token), which is deterministic.
- ``top_p`` (0 < top_p <= 1, default 1): nucleus sampling. Only the smallest set of most
  likely tokens whose probabilities add up to ``top_p`` is considered (the most likely token
  is always kept). Alter this or ``temperature``, usually not both.
- ``max_tokens`` (>= 1, default 16): the most tokens to generate for each completion; a
  completion cut by it ends with ``finish_reason`` "length".
- ``stop`` (up to 4 non-empty strings): generation of a completion ends where one of them
  appears; the returned text does not contain the stop sequence.
- ``frequency_penalty`` and ``presence_penalty`` (-2..2, default 0): positive values penalise
  tokens that already appear in this completion (the prompt is not counted), as OpenAI does::

      logits[j] -= c[j] * frequency_penalty + (c[j] > 0) * presence_penalty

  where ``c[j]`` counts how often token ``j`` was generated so far. The frequency penalty
  grows with every repeat (less verbatim repetition); the presence penalty is paid once (more
  new topics). Negative values encourage repetition.
- ``seed``: sampling with the same seed, parameters and prompt gives the same text.
- ``n`` (1..16, default 1): how many completions to generate for each prompt.
- ``logit_bias``: maps token ids to a bias (-100..100) added to their logits before sampling;
  -100 in effect bans a token, 100 in effect forces it.
- ``best_of`` (>= n, at most 20): sample this many completions and return the ``n`` with the
  highest log-probability per token.
- ``logprobs`` (0..20): return each generated token's log-probability and that many most
  likely alternatives at each position (0: the chosen token's only). The server allows up to
  5 on completions, as OpenAI does, and 20 on chat (``top_logprobs``).
- ``echo``: the returned text starts with the prompt; with ``logprobs``, the prompt's tokens
  are scored too (``max_tokens`` 0 then scores a text without generating: log-likelihood
  evaluations).
"""

from __future__ import annotations

import argparse
import difflib
from typing import Annotated, Any, get_args

from annotated_types import Ge, Gt, Le, Lt
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from trimtab.errors import ConfigError

MAX_STOP = 4  # OpenAI's limit on stop sequences
MAX_BEST_OF = 20  # OpenAI's limit on best_of
MAX_LOGPROBS = 20  # chat's top_logprobs limit (completions' logprobs: 5, checked by the server)

Bias = Annotated[float, Field(ge=-100, le=100)]


class SamplingParams(BaseModel):
    """How to pick tokens: OpenAI's sampling parameters (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(
        default=1.0, ge=0, le=2, description="randomness of sampling; 0 = greedy (deterministic)"
    )
    top_p: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="nucleus sampling: sample from the smallest set of most likely tokens "
        "whose probabilities add up to top_p",
    )
    max_tokens: int = Field(
        default=16, ge=0, description="the most tokens to generate per completion (0: echo only)"
    )
    stop: str | list[str] | None = Field(
        default=None,
        description=f"up to {MAX_STOP} sequences where generation stops (not included in the text)",
    )
    frequency_penalty: float = Field(
        default=0.0,
        ge=-2,
        le=2,
        description="penalise tokens by how often they were already generated",
    )
    presence_penalty: float = Field(
        default=0.0, ge=-2, le=2, description="penalise tokens that were already generated at all"
    )
    seed: int | None = Field(default=None, description="the same seed gives the same samples")
    n: int = Field(default=1, ge=1, le=16, description="completions to generate for each prompt")
    logit_bias: dict[Annotated[int, Field(ge=0)], Bias] | None = Field(
        default=None, description="token id -> bias (-100..100) added to its logit"
    )
    best_of: int | None = Field(
        default=None,
        ge=1,
        le=MAX_BEST_OF,
        description="sample this many and return the n with the best log-probability per token",
    )
    logprobs: int | None = Field(
        default=None,
        ge=0,
        le=MAX_LOGPROBS,
        description="return token log-probabilities and this many top alternatives",
    )
    echo: bool = Field(default=False, description="return the prompt before the completion")

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> list[str] | None:
        # One shape downstream: a single string is a one-item list.
        if value is None:
            return None
        stops = [value] if isinstance(value, str) else list(value)
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences (got {len(stops)})")
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must not be empty")
        return stops

    @model_validator(mode="after")
    def _consistent(self) -> SamplingParams:
        if self.best_of is not None and self.best_of < self.n:
            raise ValueError(f"best_of: must be at least n ({self.n}) (got {self.best_of})")
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens: must be at least 1 (0 only with echo)")
        return self

    @property
    def samples(self) -> int:
        """Completions sampled per prompt: ``best_of`` if given, else ``n``."""
        return self.best_of or self.n

    @property
    def stop_sequences(self) -> list[str]:
        """The stop sequences as a list (empty when none)."""
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def greedy(self) -> bool:
        """Temperature 0: always the most likely token, no randomness."""
        return self.temperature == 0

    @classmethod
    def from_options(cls, values: dict[str, Any]) -> SamplingParams:
        """Validate options (a request body, a config section); None means the default.

        Raises :class:`ConfigError` listing every problem at once, each starting with the
        field's name, e.g. ``temperature: must be between 0 and 2 (got 3.0)``."""
        if not isinstance(values, dict):
            raise ConfigError(
                [f"sampling options: expected a mapping, got {type(values).__name__}"]
            )
        # JSON null means "the default", as in OpenAI's API (and argparse's None).
        values = {k: v for k, v in values.items() if v is not None}
        try:
            return cls.model_validate(values)
        except ValidationError as e:
            raise ConfigError(_problems(e)) from None


def range_text(name: str) -> str:
    """The allowed range of a field in words, e.g. ``between 0 and 2`` (empty if none)."""
    return _describe(SamplingParams.model_fields[name].metadata)


def _describe(metadata: list[Any]) -> str:
    low: tuple[str, Any] | None = None
    high: tuple[str, Any] | None = None
    for m in metadata:
        if isinstance(m, Ge):
            low = ("ge", m.ge)
        elif isinstance(m, Gt):
            low = ("gt", m.gt)
        elif isinstance(m, Le):
            high = ("le", m.le)
        elif isinstance(m, Lt):
            high = ("lt", m.lt)
    if low and high and low[0] == "ge" and high[0] == "le":
        return f"between {low[1]} and {high[1]}"
    words = {"ge": "at least", "gt": "greater than", "le": "at most", "lt": "less than"}
    return " and ".join(f"{words[b[0]]} {b[1]}" for b in (low, high) if b)


_RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}
_TYPE_WORDS = {
    "float": "a number",
    "int": "a whole number",
    "bool": "true or false",
    "dict": "a mapping of token id to bias",
    "string": "a string",
}


def _problems(error: ValidationError) -> list[str]:
    """One line per field, naming it, in words a user can act on."""
    fields = SamplingParams.model_fields
    by_key: dict[str, str] = {}
    for err in error.errors():
        loc = [str(p) for p in err["loc"]]
        name = loc[0] if loc else "options"
        got = err.get("input")
        if not loc and err["type"] == "value_error":  # a rule across fields names its field
            key, _, message = err["msg"].removeprefix("Value error, ").partition(": ")
            by_key.setdefault(key, message)
            continue
        # A logit_bias problem names its token id; other fields are named alone (pydantic's
        # union branches and list indexes add nothing the user needs).
        key = f"{name}.{loc[1]}" if name == "logit_bias" and len(loc) > 1 else name
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(name.replace("-", "_"), fields, n=1)
            hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(fields)}"
            message = f"unknown option; {hint}"
        elif key.startswith("logit_bias.") and loc[-1] == "[key]":
            message = "token ids must be whole numbers of at least 0"
        elif err["type"] in _RANGE_ERRORS:
            meta = fields[name].metadata if key == name else _bias_meta()
            message = f"must be {_describe(meta)} (got {got!r})"
        elif err["type"] == "value_error":
            message = err["msg"].removeprefix("Value error, ")
        elif name == "stop":
            message = f"must be a string or a list of up to {MAX_STOP} strings (got {got!r})"
        elif err["type"] == "int_from_float":
            message = f"must be a whole number (got {got!r})"
        elif (kind := err["type"].split("_")[0]) in _TYPE_WORDS:
            message = f"must be {_TYPE_WORDS[kind]} (got {got!r})"
        else:
            message = f"{err['msg']} (got {got!r})"
        by_key.setdefault(key, message)  # the first problem of a field says enough
    return [f"{key}: {message}" for key, message in by_key.items()]


def _bias_meta() -> list[Any]:
    return get_args(Bias)[1].metadata  # Annotated[float, Field(...)]: the Field's bounds


# --- argparse ------------------------------------------------------------------------------

# Field name -> (option, type, argparse extras). Names, ranges and help come from the model.
_OPTIONS: dict[str, tuple[str, type, dict[str, Any]]] = {
    "temperature": ("--temperature", float, {}),
    "top_p": ("--top-p", float, {}),
    "max_tokens": ("--max-tokens", int, {}),
    "stop": ("--stop", str, {"action": "append", "metavar": "TEXT"}),
    "frequency_penalty": ("--frequency-penalty", float, {}),
    "presence_penalty": ("--presence-penalty", float, {}),
    "seed": ("--seed", int, {}),
    "n": ("--n", int, {}),
}


def add_sampling_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Add ``--temperature``, ``--top-p``, ``--max-tokens``, ``--stop`` (repeatable),
    ``--frequency-penalty``, ``--presence-penalty``, ``--seed`` and ``--n`` to ``parser``.

    Every option defaults to None, meaning "the model's default", so that
    :func:`sampling_from_args` passes on only what the user gave."""
    group = parser.add_argument_group("sampling (OpenAI's parameters)")
    for name, (flag, kind, options) in _OPTIONS.items():
        extra = dict(options)
        field = SamplingParams.model_fields[name]
        parts = [field.description or ""]
        if name == "stop":
            parts.append("repeat for several")
        if bounds := range_text(name):
            parts.append(bounds)
        if field.default is not None:
            parts.append(f"default: {field.default}")
        extra.setdefault("metavar", "N" if kind is int else "X")
        group.add_argument(
            flag, dest=name, type=kind, default=None, help="; ".join(p for p in parts if p), **extra
        )
    return group


def sampling_from_args(ns: argparse.Namespace) -> SamplingParams:
    """The :class:`SamplingParams` of the options given on the command line (None = default);
    problems are reported with the option's spelling (``--top-p: ...``)."""
    values = {name: getattr(ns, name) for name in _OPTIONS if getattr(ns, name, None) is not None}
    try:
        return SamplingParams.from_options(values)
    except ConfigError as e:
        raise ConfigError([_as_flag(p) for p in e.problems]) from None


def _as_flag(problem: str) -> str:
    name, _, rest = problem.partition(":")
    return f"{_OPTIONS[name][0]}:{rest}" if name in _OPTIONS else problem
