"""Training configuration: typed sections, a YAML file, ``key=value`` overrides, validation.

The order is litgpt's: defaults, then the YAML file, then command-line overrides (dotted keys,
``optim.lr=1e-4``), then validation that reports every problem at once, before any model is
loaded. ``auto`` values (epochs, batch size, learning rate) are resolved from the data, as
OpenAI's API does, and the resolved config is saved in the run folder.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from trimtab.errors import ConfigError
from trimtab.methods.trainable import INIT_LORA_WEIGHTS, MethodSpec
from trimtab.models.tasks import Task

Positive = Annotated[int, Field(gt=0)]
Rate = Annotated[float, Field(gt=0, lt=1)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ModelSection(_Section):
    """Which pretrained model to start from."""

    name: str = "smollm2-135m"
    max_length: int = Field(default=512, gt=1)
    # auto: eager attention on CPU for short sequences (faster there), SDPA otherwise (eager
    # keeps every layer's T x T attention matrix for the backward pass).
    attention: Literal["auto", "eager", "sdpa"] = "auto"


class DataSection(_Section):
    """Prepared JSONL files (``trimtab prepare``) and how to read them."""

    train: Path | None = None
    valid: Path | None = None
    task: Task = "sft"
    prompt_loss_weight: float = Field(default=0.0, ge=0, le=1)
    pack: bool = True
    # End each completion with EOS so generation learns to stop; auto: yes unless the
    # completions are a few labels (classification through sft needs no stop).
    add_eos: bool | Literal["auto"] = "auto"
    # Task classify: cross_entropy, or an ordinal loss (expected, cumulative) for ordered
    # labels such as star ratings; ordinal losses take the labels' sorted order as their rank
    # (trimtab.training.loop.classification_loss).
    loss: Literal["cross_entropy", "expected", "cumulative"] = "cross_entropy"
    ordinal_weight: float = Field(default=1.0, ge=0)  # loss expected: the weight of its penalty


_SPEC = MethodSpec()  # the one set of method defaults: the section takes them from here


class MethodSection(_Section):
    """What trains: every weight, the top layers of a frozen trunk, or LoRA adapters.

    The LoRA options are PEFT's ``LoraConfig`` options of the same meaning; the defaults are
    :class:`trimtab.methods.MethodSpec`'s, and :meth:`spec` gives the spec the methods take.
    """

    name: Literal["full", "freeze", "lora"] = _SPEC.name
    trainable_layers: int = Field(default=_SPEC.trainable_layers, ge=0)
    lora_r: int = Field(default=_SPEC.lora_r, gt=0)
    lora_alpha: int = Field(default=_SPEC.lora_alpha, gt=0)
    lora_dropout: float = Field(default=_SPEC.lora_dropout, ge=0, lt=1)
    target_modules: list[str] | str = _SPEC.target_modules
    lora_bias: Literal["none", "all", "lora_only"] = _SPEC.lora_bias
    use_rslora: bool = _SPEC.use_rslora
    use_dora: bool = _SPEC.use_dora
    init_lora_weights: bool | str = _SPEC.init_lora_weights
    modules_to_save: list[str] | None = _SPEC.modules_to_save

    @field_validator("init_lora_weights")
    @classmethod
    def _known_init(cls, value: bool | str) -> bool | str:
        if isinstance(value, str) and not _known_lora_init(value):
            raise ValueError(
                f"should be true, false or one of {', '.join(INIT_LORA_WEIGHTS)} "
                f"(pissa_niter_N for fast PiSSA), got {value!r}"
            )
        return value

    def spec(self) -> MethodSpec:
        """The method options as :func:`trimtab.methods.apply_method` takes them."""
        return MethodSpec(**self.model_dump())


def _known_lora_init(value: str) -> bool:
    niter = value.removeprefix("pissa_niter_")
    return value in INIT_LORA_WEIGHTS or (niter != value and niter.isdigit())


class OptimSection(_Section):
    """Optimizer, schedule and regularisation."""

    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: Rate | Literal["auto"] = "auto"
    momentum: float = Field(default=0.9, ge=0, lt=1)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(default=0.0, ge=0)  # L2
    l1: float = Field(default=0.0, ge=0)
    warmup: float = Field(default=0.03, ge=0)  # a fraction of the steps below 1, else a step count
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    max_grad_norm: float | None = Field(default=1.0, gt=0)


class TrainConfig(_Section):
    """Everything a training run needs; saved resolved as ``config.yaml`` in the run folder."""

    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    method: MethodSection = MethodSection()
    optim: OptimSection = OptimSection()
    epochs: Positive | Literal["auto"] = "auto"
    batch_size: Positive | Literal["auto"] = "auto"
    micro_batch_size: int | None = Field(default=None, gt=0)
    # Padded tokens (rows x longest row) one forward pass may hold: longer micro-batches are
    # cut into row slices and accumulated, which bounds the activations' peak memory. None:
    # never cut; auto: 1024 on a CPU (SmolLM2 LoRA at up to 512 tokens peaks at 40% of its
    # one-pass memory, at the same speed: the matmuls stay large), None on a GPU.
    micro_batch_tokens: Positive | Literal["auto"] | None = "auto"
    # Recompute each block's activations in the backward pass instead of keeping them: less
    # memory for about a third more compute.
    gradient_checkpointing: bool = False
    max_steps: int | None = Field(default=None, gt=0)
    seed: int = 42
    eval_every: int | None = Field(default=None, gt=0)  # steps; None: at the end of every epoch
    early_stopping_patience: int | None = Field(default=None, gt=0)
    keep_best: bool = True
    save_every: int | None = Field(default=None, gt=0)  # steps; None: at every evaluation
    keep_checkpoints: int = Field(default=2, gt=0)
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    log_every: int = Field(default=10, gt=0)
    run_dir: Path | None = None  # None: runs/<model>-<method>-<task>-<time>
    # The id the fine-tuned model is served under (the jobs API sets ft:<base>:<org>:<suffix>:<id>;
    # None: the server names the run itself).
    model_id: str | None = None
    # Each checkpoint also holds model/, a servable model folder (the jobs API's checkpoints
    # are callable as <model_id>:ckpt-step-N).
    checkpoint_models: bool = False
    max_loss: float = Field(default=1e4, gt=0)  # a loss above this counts as exploded

    def problems(self) -> list[str]:
        """Cross-field problems (types and ranges are pydantic's), all of them."""
        out: list[str] = []
        if self.data.train is None:
            out.append("data.train: required (a train.jsonl written by trimtab prepare)")
        else:
            out += _file_problem("data.train", self.data.train)
        if self.data.valid is not None:
            out += _file_problem("data.valid", self.data.valid)
        out += batch_problems(self, _example_count(self), world_size())
        if self.method.name != "freeze" and self.method.trainable_layers:
            out.append("method.trainable_layers only applies to method freeze")
        if self.optim.optimizer == "adamw" and self.optim.momentum != 0.9:
            out.append("optim.momentum applies to sgd; adamw uses optim.betas")
        if self.early_stopping_patience and self.data.valid is None:
            out.append("early_stopping_patience needs data.valid")
        if self.data.task == "lm" and self.data.prompt_loss_weight:
            out.append("data.prompt_loss_weight applies to task sft")
        if self.data.loss != "cross_entropy" and self.data.task != "classify":
            out.append(
                f"data.loss: {self.data.loss} applies to task classify (an ordinal loss over "
                f"the sorted labels); task {self.data.task} trains with cross_entropy"
            )
        if self.data.loss != "expected" and self.data.ordinal_weight != 1.0:
            out.append("data.ordinal_weight applies to data.loss expected")
        return out


def _file_problem(key: str, path: Path) -> list[str]:
    if not path.exists():
        return [f"{key}: {path}: file not found"]
    if path.is_dir():
        return [f"{key}: {path}: is a folder; give a .jsonl file"]
    return []


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["optim.lr=1e-4", "epochs=2"]`` → nested dict; values are read as YAML scalars."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError([f"override {pair!r}: expected key=value, e.g. optim.lr=1e-4"])
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError([f"override {pair!r}: cannot read the value: {e}"]) from None
        if isinstance(value, str) and _looks_numeric(value):
            value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError([f"override {pair!r}: {part} is not a section"])
        node[parts[-1]] = value
    return out


def _looks_numeric(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(
    path: Path | None = None, overrides: list[str] | None = None, base: dict[str, Any] | None = None
) -> TrainConfig:
    """Defaults ← ``base`` ← YAML file ← overrides; then every problem reported at once."""
    values: dict[str, Any] = dict(base or {})
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ConfigError([f"{path}: config file not found"]) from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            raise ConfigError([f"{where}: not valid YAML: {getattr(e, 'problem', e)}"]) from None
        if not isinstance(loaded, dict):
            raise ConfigError([f"{path}: expected a mapping of config keys"])
        values = _merge(values, loaded)
    values = _merge(values, parse_overrides(overrides or []))
    source = f"{path}: " if path is not None else ""
    try:
        config = TrainConfig.model_validate(values)
    except ValidationError as e:
        raise ConfigError([source + p for p in _all_problems(e, values)]) from None
    problems = config.problems()
    if problems:
        raise ConfigError([source + p for p in problems])
    return config


def _all_problems(error: ValidationError, values: dict[str, Any]) -> list[str]:
    """Pydantic's errors, one line per key (union branches merged), then the cross-field
    problems of the config with the bad keys left at their defaults: one run shows them all."""
    by_key: dict[str, list[str]] = {}
    locations = []
    for err in error.errors():
        # Union branches add their type name to the location (epochs.int, epochs.literal[...]).
        loc = [str(p) for p in err["loc"] if not _is_branch(str(p))]
        locations.append(loc)
        message = err["msg"].split(", unable to")[0].removeprefix("Value error, ")
        if message not in by_key.setdefault(".".join(loc), []):
            by_key[".".join(loc)].append(message)
    prefix = "Input should be "
    out = [
        f"{key}: should be " + " or ".join(m.removeprefix(prefix) for m in messages)
        if all(m.startswith(prefix) for m in messages)
        else f"{key}: {'; '.join(messages)}"
        for key, messages in by_key.items()
    ]
    pruned = _without(values, locations)
    try:
        rest = TrainConfig.model_validate(pruned).problems()
    except ValidationError:
        return out
    return out + [
        p for p in rest if not any(p.startswith(k + ":") or p.startswith(k + " ") for k in by_key)
    ]


def _without(values: dict[str, Any], locations: list[list[str]]) -> dict[str, Any]:
    out = json_copy(values)
    for loc in locations:
        node = out
        for part in loc[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(loc[-1], None)
    return out


def json_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: json_copy(v) for k, v in value.items()}
    return value


def _is_branch(part: str) -> bool:
    return part in (
        "int",
        "float",
        "str",
        "bool",
        "list[str]",
        "constrained-int",
        "constrained-float",
    ) or part.startswith(("literal[", "function-", "tuple["))


# OpenAI's published defaults for choosing epochs from the data size.
TARGET_EPOCHS, MIN_TARGET_EXAMPLES, MAX_TARGET_EXAMPLES = 3, 100, 25_000
MIN_EPOCHS, MAX_EPOCHS = 1, 25
DEFAULT_LR = {"full": 2e-5, "freeze": 1e-3, "lora": 2e-4}


def auto_epochs(n_train: int) -> int:
    """3 epochs, more for tiny data (100 example-passes at least), fewer for large data."""
    if n_train * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_EPOCHS, math.ceil(MIN_TARGET_EXAMPLES / n_train))
    if n_train * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(MIN_EPOCHS, MAX_TARGET_EXAMPLES // n_train)
    return TARGET_EPOCHS


def auto_batch_size(n_train: int) -> int:
    """About 0.2% of the training examples (OpenAI's legacy rule), a power of two in 1..256."""
    target = max(1.0, 0.002 * n_train)
    return int(min(256, 2 ** round(math.log2(target))))


def auto_lr(method: str, task: str) -> float:
    """Per method: full fine-tuning moves every weight, so it needs the smallest steps."""
    if method == "full" and task == "classify":
        return 5e-5  # encoders (BERT-style) fine-tune well a bit higher
    return DEFAULT_LR[method]


def resolve_auto(config: TrainConfig, n_train: int, world: int = 1) -> TrainConfig:
    """A copy with every ``auto`` replaced by the value chosen from the data; an auto batch
    size is rounded to a multiple of what one step of all processes takes at least."""
    update: dict[str, Any] = {}
    if config.epochs == "auto":
        update["epochs"] = auto_epochs(n_train)
    if config.batch_size == "auto":
        batch = auto_batch_size(n_train)
        unit = (config.micro_batch_size or 1) * world
        if batch % unit:
            batch = unit * max(1, round(batch / unit))
        update["batch_size"] = batch
    resolved = config.model_copy(update=update)
    if config.optim.lr == "auto":
        resolved.optim = config.optim.model_copy(
            update={"lr": auto_lr(config.method.name, config.data.task)}
        )
    return resolved


MAX_MICRO_BATCH = 16  # sequences per forward pass unless micro_batch_size says otherwise


@dataclass(frozen=True)
class BatchPlan:
    """How a batch is reached: ``micro`` sequences per forward pass on each of ``world``
    processes, gradients accumulated over ``accum`` micro-batches."""

    batch_size: int
    micro: int
    world: int

    @property
    def accum(self) -> int:
        return self.batch_size // (self.micro * self.world)


def default_micro_batch(batch_size: int, world: int) -> int:
    """The largest divisor of each process's share of the batch that is at most 16."""
    share = max(1, batch_size // world)
    return max(d for d in range(1, min(share, MAX_MICRO_BATCH) + 1) if share % d == 0)


def batch_problems(config: TrainConfig, n_train: int | None, world: int) -> list[str]:
    """Every problem of the batch arithmetic: micro-batch, processes, size of the data."""
    batch, micro = config.batch_size, config.micro_batch_size
    out: list[str] = []
    if isinstance(batch, int):
        if batch % world:
            out.append(f"batch_size {batch} must be a multiple of the {world} processes")
        elif micro and batch % (micro * world):
            out.append(
                f"micro_batch_size {micro} must divide batch_size {batch}"
                + (f" / {world} processes" if world > 1 else "")
                + " (the batch is reached by gradient accumulation)"
            )
    if n_train is not None:
        needed = batch if isinstance(batch, int) else (micro or 1) * world
        if needed > n_train:
            out.append(
                f"batch_size {needed} is larger than the {n_train} training examples"
                + (f" ({config.data.train})" if config.data.train else "")
            )
    return out


def plan_batches(config: TrainConfig, n_train: int, world: int) -> tuple[TrainConfig, BatchPlan]:
    """Resolve ``auto`` values for ``n_train`` examples and ``world`` processes and check the
    batch arithmetic: ConfigError with every problem, before anything is loaded."""
    config = resolve_auto(config, n_train, world)
    problems = batch_problems(config, n_train, world)
    if problems:
        raise ConfigError(problems)
    batch = int(config.batch_size)
    micro = config.micro_batch_size or default_micro_batch(batch, world)
    return config, BatchPlan(batch, micro, world)


def world_size() -> int:
    """Processes of a data-parallel run as torchrun announces them (1 when alone)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def _example_count(config: TrainConfig) -> int | None:
    """Training examples, counted cheaply (non-empty lines); None when that is not the count
    (packed lm data: as many examples as its tokens fill) or the file cannot be read."""
    path = config.data.train
    if path is None or (config.data.task == "lm" and config.data.pack):
        return None
    if not path.is_file() or path.suffix == ".gz":
        return None
    with path.open("rb") as f:
        return sum(1 for line in f if line.strip())


def dump_config(config: TrainConfig) -> str:
    """YAML text of the config, paths as strings, in field order."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
