"""What trains: a method marks parameters trainable; the one training loop does the rest.

Three methods, as in torchtune's ``set_trainable_params``:

``full``
    Every parameter trains (tied embeddings stay tied: input and output embedding train as one).
``freeze``
    Everything is frozen except the top ``trainable_layers`` transformer blocks, the final norm
    (the base model's children after the block list, e.g. Llama's ``model.norm``) and the head:
    every child of the task model outside the base model (``lm_head``, ``score``, ``classifier``)
    plus BERT's ``pooler``. ``trainable_layers=0`` trains the head only (and the final norm).
    What every block shares stays frozen (MPNet's relative attention bias table,
    ``encoder.relative_attention_bias``): training it would change the frozen blocks too.
``lora``
    LoRA adapters through PEFT (never by hand): ``peft.get_peft_model`` with a ``LoraConfig``
    of task type ``CAUSAL_LM`` or ``SEQ_CLS``. For classification the new, randomly initialised
    head is trained in full: it is named in ``modules_to_save`` (PEFT's ``SEQ_CLS`` default only
    knows the names ``classifier`` and ``score``; naming the head ourselves covers heads called
    otherwise), and :func:`apply_method` checks that it ended up trainable.

Freeze and tied embeddings
--------------------------
SmolLM2 ties ``lm_head.weight`` to ``model.embed_tokens.weight``: one tensor. Training the head
would then also change the input embeddings, so the frozen blocks would see different inputs
at every step: they would not be frozen in effect, and their outputs could not be computed once
and cached (:class:`trimtab.methods.features.FrozenTrunk`, the reason ``freeze`` is fast).
So ``freeze`` on a causal LM with tied embeddings *unties* them: ``lm_head`` gets its own copy of
the weight and ``config.tie_word_embeddings`` becomes False, so only the head trains and the
embeddings stay as they were. The model's outputs are unchanged by the untying itself; the cost
is one more vocabulary-sized matrix in the saved model (for SmolLM2-135M 49152 x 576, 28M
parameters), which the loader reads from ``config.json`` (``tie_word_embeddings``).

Saving
------
:func:`save_trainable` writes what a checkpoint or final model needs: for ``lora`` the PEFT
adapter format (``adapter_config.json`` + ``adapter_model.safetensors``) that PEFT loads;
for ``full`` and ``freeze`` the whole model as ``save_pretrained`` writes
it (``config.json`` + safetensors). :func:`merge_lora` folds an adapter into its base model for
``trimtab export --merge``.

torch, transformers and peft are imported inside the functions: importing this module (for
:class:`MethodSpec`, say, while parsing options) must stay cheap for the CLI.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from trimtab.errors import ConfigError, TrimtabError
from trimtab.models.tasks import TASKS, Task, is_generative

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

Method = Literal["full", "freeze", "lora"]
METHODS: tuple[Method, ...] = ("full", "freeze", "lora")

# A base-model child whose name holds this is on the input side (BLOOM's
# word_embeddings_layernorm), never part of the final norm.
_EMBEDDING_HINT = "emb"


LORA_BIAS = ("none", "all", "lora_only")
# PEFT's named initialisations (besides true: Kaiming A, zero B; false: random B, for tests);
# "pissa_niter_N" (fast PiSSA with N subspace iterations) is accepted too.
INIT_LORA_WEIGHTS = ("gaussian", "eva", "olora", "pissa", "corda", "loftq", "orthogonal")


@dataclass(frozen=True)
class MethodSpec:
    """How to fine-tune: which method, and its options (the others are ignored).

    The one set of defaults: the training config's ``method`` section takes them from here.
    The LoRA options mean what PEFT's ``LoraConfig`` options of the same name mean
    (``lora_bias`` is its ``bias``); ``modules_to_save`` adds to the classification head,
    which trimtab always trains in full.
    """

    name: Method = "lora"
    trainable_layers: int = 0  # freeze: top N transformer layers that train (0 = head only)
    lora_r: int = 16
    lora_alpha: int = 32
    # PEFT's default. On a CPU, dropout's random mask on every LoRA input cost as much as the
    # matmuls (measured: 4.8 s of an 8 s forward on SmolLM2); set it where data is scarce.
    lora_dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"
    lora_bias: Literal["none", "all", "lora_only"] = "none"
    use_rslora: bool = False
    use_dora: bool = False
    init_lora_weights: bool | str = True
    modules_to_save: list[str] | None = None

    def problems(self) -> list[str]:
        """Every problem with these options, as messages a user can act on (empty if none)."""
        found: list[str] = []
        if self.name not in METHODS:
            choices = ", ".join(METHODS)
            found.append(f"method: unknown method {self.name!r}; choose one of {choices}")
        if self.name == "freeze" and (
            not isinstance(self.trainable_layers, int) or self.trainable_layers < 0
        ):
            found.append(
                f"trainable_layers: must be a whole number >= 0 (0 trains only the head), "
                f"got {self.trainable_layers!r}"
            )
        if self.name == "lora":
            found += self._lora_problems()
        return found

    def _lora_problems(self) -> list[str]:
        found: list[str] = []
        if not isinstance(self.lora_r, int) or self.lora_r < 1:
            found.append(f"lora_r: must be a whole number >= 1, got {self.lora_r!r}")
        if not self.lora_alpha > 0:
            found.append(f"lora_alpha: must be > 0, got {self.lora_alpha!r}")
        if not 0 <= self.lora_dropout < 1:
            found.append(f"lora_dropout: must be in [0, 1), got {self.lora_dropout!r}")
        targets = self.target_modules
        if isinstance(targets, str):
            if not targets.strip():
                found.append("target_modules: empty; give module names or 'all-linear'")
        elif not targets or not all(isinstance(t, str) and t.strip() for t in targets):
            found.append(
                f"target_modules: give a non-empty list of module names (e.g. q_proj, v_proj) "
                f"or 'all-linear', got {targets!r}"
            )
        if self.lora_bias not in LORA_BIAS:
            found.append(f"lora_bias: one of {', '.join(LORA_BIAS)}, got {self.lora_bias!r}")
        init = self.init_lora_weights
        if isinstance(init, str) and not (
            init in INIT_LORA_WEIGHTS or init.removeprefix("pissa_niter_").isdigit()
        ):
            found.append(
                f"init_lora_weights: true, false or one of {', '.join(INIT_LORA_WEIGHTS)}, "
                f"got {init!r}"
            )
        saved = self.modules_to_save
        if saved is not None and not all(isinstance(m, str) and m.strip() for m in saved):
            found.append(f"modules_to_save: give a list of module names, got {saved!r}")
        return found


def apply_method(model: torch.nn.Module, spec: MethodSpec, task: Task) -> torch.nn.Module:
    """Mark what trains in ``model`` according to ``spec``; return the model to train.

    ``full`` and ``freeze`` change ``model`` in place and return it; ``lora`` returns the PEFT
    wrapper around it. Raises :class:`~trimtab.errors.TrimtabError` for options that do not fit
    the model (more trainable layers than it has, LoRA targets that match nothing).
    """
    problems = spec.problems()
    if task not in TASKS:
        problems.append(f"task: unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if problems:
        raise ConfigError(problems)
    if is_peft(model):
        raise ValueError("apply_method expects a plain transformers model, got a PEFT model")
    _check_task(model, task)
    if spec.name == "full":
        for param in model.parameters():
            param.requires_grad_(True)
        return model
    if spec.name == "freeze":
        return _freeze(model, spec.trainable_layers, task)
    return _lora(model, spec, task)


def trainable_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a tied tensor counts once."""
    trainable = total = 0
    for param in model.parameters():  # parameters() yields a shared tensor once
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    return trainable, total


def transformer_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's list of transformer blocks (Llama ``model.layers``, BERT and MPNet
    ``encoder.layer``).

    Found generically, through a PEFT wrapper too: the ``ModuleList`` of identical blocks that
    holds most of the parameters, preferring one of ``config.num_hidden_layers`` blocks. Raises
    TrimtabError if the model has none (freeze cannot be used with it).
    """
    import torch

    base = _unwrap_peft(model)
    expected = getattr(getattr(base, "config", None), "num_hidden_layers", None)
    best: tuple[bool, int] | None = None
    found: torch.nn.ModuleList | None = None
    for _, module in base.named_modules():
        if not isinstance(module, torch.nn.ModuleList) or len(module) == 0:
            continue
        kinds = {type(block) for block in module}
        if len(kinds) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if size == 0:
            continue
        rank = (len(module) == expected, size)
        if best is None or rank > best:
            best, found = rank, module
    if found is None:
        raise TrimtabError(
            f"{type(base).__name__}: found no list of transformer blocks in this model, so "
            f"'freeze' cannot pick layers to train; use method 'lora' or 'full'"
        )
    return found


def save_trainable(model: torch.nn.Module, folder: Path) -> None:
    """Write what a checkpoint or the final model needs into ``folder`` (created if absent).

    LoRA: the PEFT adapter (``adapter_config.json``, ``adapter_model.safetensors``; for
    classification it also holds the trained head), loadable by ``PeftModel.from_pretrained``.
    full / freeze: the whole model (``config.json`` + safetensors).
    The tokenizer is not written here. Files are written in place: a caller that needs a
    crash-proof checkpoint writes into a temporary folder and renames it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hf: Any = model  # a transformers or PEFT model: save_pretrained is theirs
    with no_progress_bars():  # trimtab's own progress bar is the only one
        if is_peft(model):
            # save_embedding_layers=False: trimtab never resizes embeddings, and "auto" would
            # look the base model up on the hub to compare vocabulary sizes.
            hf.save_pretrained(str(folder), safe_serialization=True, save_embedding_layers=False)
        else:
            hf.save_pretrained(str(folder))


@contextmanager
def no_progress_bars() -> Iterator[None]:
    """transformers' own progress bars off for the duration ("Writing model shards" at every
    save_pretrained), then back as they were."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def merge_lora(model: torch.nn.Module) -> PreTrainedModel:
    """Fold the LoRA adapter into the base weights; return the plain transformers model.

    For ``trimtab export --merge``. Raises TrimtabError if ``model`` carries no adapter.
    """
    if not is_peft(model):
        raise TrimtabError(
            f"--merge needs a LoRA model, but this is a plain {type(model).__name__} "
            f"(trained with method 'full' or 'freeze'); export it without --merge"
        )
    peft_model: Any = model
    return peft_model.merge_and_unload()


# --- freeze --------------------------------------------------------------------------------


def _freeze(model: torch.nn.Module, n: int, task: Task) -> torch.nn.Module:
    layers = transformer_layers(model)
    count = len(layers)
    if n > count:
        raise TrimtabError(
            f"trainable_layers: {n} is more than the {count} transformer layers of "
            f"{type(model).__name__}; choose 0 to {count} (0 trains only the head)"
        )
    if is_generative(task) and _has_tied_head(model):
        untie_head(model)  # type: ignore[arg-type]  # a causal LM is a PreTrainedModel
    for param in model.parameters():
        param.requires_grad_(False)
    for module in [*layers[count - n :], *_final_modules(model, layers), *_head_modules(model)]:
        for param in module.parameters():
            param.requires_grad_(True)
    return model


def untie_head(model: PreTrainedModel) -> None:
    """Give a tied output head its own copy of the input embedding weight (in place).

    Afterwards ``config.tie_word_embeddings`` is False, so ``save_pretrained`` writes both
    matrices and ``from_pretrained`` does not tie them again. Outputs are unchanged.
    """
    import torch

    head = model.get_output_embeddings()
    head.weight = torch.nn.Parameter(
        head.weight.detach().clone(), requires_grad=head.weight.requires_grad
    )
    for config in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        config.tie_word_embeddings = False
    # transformers 5 keeps the tying plan in all_tied_weights_keys (read by tie_weights());
    # recompute it from the changed config so that nothing ties the copy back.
    if hasattr(model, "get_expanded_tied_weights_keys"):
        model.all_tied_weights_keys = model.get_expanded_tied_weights_keys(all_submodels=True)


def _has_tied_head(model: torch.nn.Module) -> bool:
    get_out = getattr(model, "get_output_embeddings", None)
    get_in = getattr(model, "get_input_embeddings", None)
    if get_out is None or get_in is None:
        return False
    out, inp = get_out(), get_in()
    return out is not None and inp is not None and out.weight is inp.weight


def _base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model without its task head (``model.model`` for Llama, ``model.bert`` for BERT)."""
    base = getattr(model, "base_model", model)
    return base if base is not None else model


def _head_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The task head: children of the task model outside the base model, and BERT's pooler."""
    base = _base_model(model)
    modules = [] if base is model else [child for child in model.children() if child is not base]
    pooler = getattr(base, "pooler", None)
    if pooler is not None:
        modules.append(pooler)
    return modules


def _head_names(model: torch.nn.Module) -> list[str]:
    """Names of the head's top-level children that hold parameters (for modules_to_save)."""
    base = _base_model(model)
    return [
        name
        for name, child in model.named_children()
        if child is not base and any(True for _ in child.parameters())
    ]


def _final_modules(model: torch.nn.Module, layers: torch.nn.ModuleList) -> list[torch.nn.Module]:
    """The base model's children after the blocks: its final norm (``norm``, ``ln_f``...).

    Generic rule: a direct child of the base model that does not contain the block list, is
    not named like an embedding and holds no embedding table. The pooler belongs to the head.
    """
    import torch

    base = _base_model(model)
    found = []
    for name, child in base.named_children():
        if name == "pooler" or _EMBEDDING_HINT in name.lower():
            continue
        if child is layers or any(m is layers for m in child.modules()):
            continue
        if any(isinstance(m, torch.nn.Embedding) for m in child.modules()):
            continue
        found.append(child)
    return found


# --- lora ----------------------------------------------------------------------------------


def _lora(model: torch.nn.Module, spec: MethodSpec, task: Task) -> torch.nn.Module:
    from peft import LoraConfig, TaskType, get_peft_model

    targets = spec.target_modules
    targets = targets.strip() if isinstance(targets, str) else [t.strip() for t in targets]
    head = _head_names(model) if task == "classify" else []
    saved = list(dict.fromkeys([*head, *(spec.modules_to_save or [])]))  # a copy: peft extends it
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS if task == "classify" else TaskType.CAUSAL_LM,
        r=spec.lora_r,
        lora_alpha=spec.lora_alpha,
        lora_dropout=spec.lora_dropout,
        target_modules=targets,
        bias=spec.lora_bias,
        use_rslora=spec.use_rslora,
        use_dora=spec.use_dora,
        init_lora_weights=spec.init_lora_weights,  # type: ignore[arg-type]
        modules_to_save=saved or None,
    )
    try:
        with warnings.catch_warnings():  # peft 0.21 calls an API that transformers 5 deprecates
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            wrapped = get_peft_model(model, config)
    except ValueError as exc:  # peft's NoMatchingPeftModuleError is a ValueError
        if "not found" not in str(exc) and "No modules were targeted" not in str(exc):
            raise
        raise TrimtabError(
            f"target_modules: {spec.target_modules!r} matches no module of "
            f"{type(model).__name__}; its linear layers are named "
            f"{', '.join(_linear_names(model))} (or give 'all-linear')"
        ) from None
    wrapped.train(model.training)  # new LoRA modules start in train mode: one mode for all
    if task == "classify":  # the new head must train in full, not stay at its random init
        trained = {name for name, param in wrapped.named_parameters() if param.requires_grad}
        untrained = [h for h in head if not any(f".{h}." in f".{name}" for name in trained)]
        if untrained:
            raise RuntimeError(f"LoRA left the classification head untrained: {untrained}")
    return wrapped


def _linear_names(model: torch.nn.Module) -> list[str]:
    import torch

    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name
    }
    return sorted(names)


# --- helpers -------------------------------------------------------------------------------


def _has_lm_head(model: torch.nn.Module) -> bool:
    get_out = getattr(model, "get_output_embeddings", None)
    return get_out is not None and get_out() is not None


def is_peft(model: object) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def _unwrap_peft(model: torch.nn.Module) -> torch.nn.Module:
    peft_model: Any = model
    return peft_model.get_base_model() if is_peft(model) else model


def _check_task(model: torch.nn.Module, task: Task) -> None:
    """A causal LM needs an output head; classification needs a head besides the base model."""
    kind = type(model).__name__
    if is_generative(task):
        if not _has_lm_head(model):
            raise TrimtabError(
                f"task {task} needs a model with a language-model head, but {kind} has none "
                f"(an encoder such as BERT can only be used for classification)"
            )
    elif not _head_names(model) or _has_lm_head(model):
        raise TrimtabError(
            f"task classify needs a model with a classification head (e.g. "
            f"LlamaForSequenceClassification), got {kind}"
        )
