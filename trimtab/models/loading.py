"""Load a model for a task: a base model to fine-tune, or a fine-tuned run, with its tokenizer.

Where the weights are read from (names resolve as in :mod:`trimtab.models.registry`):

- a GGUF-packaged known model (``smollm2-135m``): transformers dequantizes the GGUF file to fp32,
  which takes ~15 s, so it is done once and saved as safetensors, with the tokenizer, into the
  cache part ``model_cache_dir(name)/"weights"``; every load then reads that folder (~1 s);
- a known model shipped as a Hugging Face folder (``minilm-l6``), or a local folder: read in place;
- a known model shipped as a zip split across several packages (``mpnet-base``): assembled once
  into the cache part ``model_cache_dir(name)/"weights"``, its sha256 checked
  (:func:`trimtab.models.registry.assemble_archive`), then read from there;
- a hub id ``owner/name``: downloaded once into ``model_cache_dir("owner--name")/"weights"``
  (online users only);
- a fine-tuned run (its folder or ``final/``): full weights read from ``final/``, or its LoRA
  adapter put on its base model (merged, trainable or kept as a PEFT model: ``adapter``).

Every model comes out in fp32 with a tokenizer that has a pad token and pads on the right.
Cache parts are built atomically with a ``.complete`` marker, exactly like the tokenizer part.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from trimtab.errors import TrimtabError
from trimtab.models.registry import (
    KNOWN_MODELS,
    WEIGHTS_PART,
    ResolvedModel,
    assemble_archive,
    first_line,
    kind_of_folder,
    load_tokenizer,
    quiet_transformers,
    resolve_model,
    weights_part,
)
from trimtab.models.tasks import ModelKind, Task, check_task, is_generative

if TYPE_CHECKING:  # transformers is imported lazily: it costs seconds and the CLI must start fast
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

_log = logging.getLogger(__name__)

Adapter = Literal["merge", "train", "keep"]
ADAPTERS: tuple[Adapter, ...] = get_args(Adapter)
__all__ = ["ADAPTERS", "WEIGHTS_PART", "Adapter", "LoadedModel", "ensure_weights", "load_model"]
# What a hub download keeps: configs, safetensors weights, tokenizer files. Pickled *.bin weights
# are left out on purpose (loading them can run code), as are ONNX/GGUF/TF copies of the weights.
_HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]


@dataclass
class LoadedModel:
    """A model ready to fine-tune or evaluate, and what it was made from."""

    model: Any  # a transformers model (a PeftModel for adapter "train"/"keep"), fp32, on CPU
    tokenizer: PreTrainedTokenizerBase  # has a pad token; pads on the right
    name: str  # as given by the user
    kind: ModelKind
    source_path: Path  # the Hugging Face folder the weights were read from (model cards, export)
    task: Task = "sft"
    labels: list[str] | None = None  # the classification head's labels, in its order
    run_meta: dict[str, Any] | None = None  # a fine-tuned run's trimtab.json (base_model, ...)


class _UnreadableWeights(TrimtabError):
    """transformers could not read a folder; a cache part raising this is rebuilt once."""


def load_model(
    name_or_run: str | Path,
    task: Task,
    *,
    labels: list[str] | None = None,
    adapter: Adapter = "merge",
) -> LoadedModel:
    """Load a known model, a local Hugging Face folder, a hub id or a fine-tuned run for ``task``.

    ``sft`` and ``lm`` need a decoder (a language-model head); ``classify`` adds a new
    classification head with one output per label (``labels`` is required and gives
    ``id2label``). A fine-tuned run keeps its own head and labels; its LoRA adapter is merged
    into the base weights (``adapter="merge"``), or put on the base as a trainable
    ``PeftModel`` to continue training (``"train"``) or a frozen one for inference (``"keep"``,
    returned in eval mode; every other model comes back in training mode). Raises TrimtabError
    for anything the user can fix: unknown name, missing package, encoder used for sft, bad
    folder, a run trained for another task.
    """
    task = check_task(task)
    if adapter not in ADAPTERS:
        raise TrimtabError(f"unknown adapter mode '{adapter}'; use one of: {', '.join(ADAPTERS)}")
    resolved = resolve_model(name_or_run)
    if resolved.source == "run":
        return _load_run(str(name_or_run), resolved, task, labels, adapter)
    if task == "classify":
        labels = _check_labels(labels)
    return _load_base(str(name_or_run), resolved, task, labels)


def _load_base(
    given: str, resolved: ResolvedModel, task: Task, labels: list[str] | None
) -> LoadedModel:
    folder = _weights_folder(resolved)
    try:
        return _load(given, resolved, folder, task, labels)
    except _UnreadableWeights as exc:
        if weights_part(resolved) is None:  # the user's own folder or a package: not ours
            raise
        # a cache part damaged after it was written (disk trouble, manual edits): rebuild once
        _log.warning("rebuilding the unreadable cached weights in %s: %s", folder, exc)
        folder = _weights_folder(resolved, rebuild=True)
        return _load(given, resolved, folder, task, labels)


def _load_run(
    given: str, resolved: ResolvedModel, task: Task, labels: list[str] | None, adapter: Adapter
) -> LoadedModel:
    """A fine-tuned run's model: its full weights, or its LoRA adapter on its base model."""
    meta, folder = resolved.run_meta or {}, resolved.path
    assert folder is not None
    trained_for = meta.get("task")
    if not isinstance(trained_for, str) or trained_for not in get_args(Task):
        raise TrimtabError(f"{folder / 'trimtab.json'}: unknown task {trained_for!r}")
    trained_for = check_task(trained_for)
    if is_generative(task) != is_generative(trained_for):
        raise TrimtabError(
            f"{given} was fine-tuned for task {trained_for}; it cannot be loaded for task {task}"
        )
    if task == "classify":
        run_labels = _check_labels(meta.get("labels"))
        if labels is not None and list(map(str, labels)) != run_labels:
            raise TrimtabError(
                f"{given}: its classification head has the labels {run_labels}, not {labels}"
            )
        labels = run_labels
    if not (folder / "adapter_config.json").is_file():  # full weights: a Hugging Face folder
        _check_hf_folder(folder)
        loaded = _load(given, resolved, folder, task, None)
    else:
        base = load_model(meta["base_model"], task, labels=labels)
        loaded = _with_adapter(base, folder, adapter)
        loaded.name, loaded.source_path = given, folder
    loaded.task, loaded.labels, loaded.run_meta = task, labels, meta
    if adapter == "keep":
        loaded.model.eval()
    return loaded


def _with_adapter(base: LoadedModel, folder: Path, adapter: Adapter) -> LoadedModel:
    """Put the run's LoRA adapter (and trained head) from ``folder`` on a freshly loaded base."""
    from peft import PeftModel

    try:
        with quiet_transformers(), warnings.catch_warnings():
            # peft 0.21 calls an API that transformers 5 deprecates; nothing for users to do
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            model = PeftModel.from_pretrained(base.model, folder, is_trainable=adapter == "train")
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise TrimtabError(
            f"{folder}: could not load the LoRA adapter ({first_line(exc)})"
        ) from exc
    if adapter == "merge":
        model = model.merge_and_unload()
        model.train()
    base.model = model
    return base


def ensure_weights(name_or_path: str) -> Path:
    """The Hugging Face folder (config, safetensors, tokenizer) holding a model's weights.

    Converts a GGUF-packaged model, assembles a split-archive one or downloads a hub model into
    the cache the first time; afterwards it only checks the cache marker.
    """
    return _weights_folder(resolve_model(name_or_path))


def _check_labels(labels: list[str] | None) -> list[str]:
    if not labels:
        raise TrimtabError("task classify needs the list of labels (none were given)")
    labels = [str(label) for label in labels]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise TrimtabError(f"labels must be distinct; repeated: {', '.join(duplicates)}")
    return labels


def _weights_folder(resolved: ResolvedModel, *, rebuild: bool = False) -> Path:
    part = weights_part(resolved)
    if part is None:  # a package, local Hugging Face folder or run: read in place
        assert resolved.path is not None
        _check_hf_folder(resolved.path)
        return resolved.path
    if not rebuild and part.complete:
        return part.folder
    if resolved.spec is not None and resolved.spec.archive is not None:
        return assemble_archive(resolved.spec, rebuild=rebuild)  # its own errors say what to do
    if resolved.gguf_file is not None:
        build = functools.partial(_convert_gguf, resolved)
    else:
        assert resolved.hub_id is not None
        if _offline():  # said before building, so that no empty cache folders are left
            raise TrimtabError(
                f"'{resolved.hub_id}' is not in trimtab's cache and the Hugging Face hub is off "
                f"(HF_HUB_OFFLINE is set). Use a known model ({', '.join(KNOWN_MODELS)}) "
                "or a local folder holding a Hugging Face model."
            )
        build = functools.partial(_download, resolved.hub_id)
    try:
        return part.build(build)
    except OSError as exc:  # unlike the tokenizer, the weights cannot be used without the cache
        raise TrimtabError(
            f"could not write the weights of '{resolved.name}' to {part.folder}: {exc}. Point "
            "TRIMTAB_HOME at a writable folder with enough free space."
        ) from exc


def _convert_gguf(resolved: ResolvedModel, folder: Path) -> None:
    assert resolved.path is not None and resolved.gguf_file is not None
    _log.info("converting %s from GGUF to fp32 safetensors (once; about 15 s)", resolved.name)
    model = _load_gguf_model(resolved.path, resolved.gguf_file)
    # transformers flags a GGUF-loaded model as quantized although its weights are now plain
    # fp32; saved as is, the config would claim a GGUF quantization that the safetensors lack.
    model.hf_quantizer = None  # type: ignore[assignment]  # an attribute transformers reads
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with quiet_transformers():
        model.save_pretrained(folder, safe_serialization=True)
    load_tokenizer(resolved.name).save_pretrained(folder)


def _load_gguf_model(folder: Path, filename: str) -> PreTrainedModel:
    """Dequantize a GGUF file into an fp32 causal LM (slow: ~15 s); tests replace this function."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with quiet_transformers(), _no_gguf_progress_bar():
            return AutoModelForCausalLM.from_pretrained(
                folder, gguf_file=filename, dtype=torch.float32
            )
    except (OSError, ValueError, RuntimeError) as exc:
        raise TrimtabError(f"{folder / filename}: could not read the model: {exc}") from exc


def _download(hub_id: str, folder: Path) -> None:
    from huggingface_hub import snapshot_download

    _log.info("downloading %s from the Hugging Face hub", hub_id)
    try:
        snapshot_download(hub_id, local_dir=folder, allow_patterns=_HUB_FILES)
    except (OSError, ValueError) as exc:  # hub errors (HTTP, offline, not found) are OSErrors
        raise TrimtabError(
            f"could not download '{hub_id}' from the Hugging Face hub ({first_line(exc)}). "
            f"Use a known model ({', '.join(KNOWN_MODELS)}) or a local folder."
        ) from exc
    shutil.rmtree(folder / ".cache", ignore_errors=True)  # the hub's own download bookkeeping
    _check_hf_folder(folder, shown=hub_id)


def _offline() -> bool:
    # the hub reads HF_HUB_OFFLINE once at import; the environment may have changed since
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return env in {"1", "ON", "YES", "TRUE"} or bool(constants.HF_HUB_OFFLINE)


def _check_hf_folder(folder: Path, *, shown: str | None = None) -> None:
    where = shown or str(folder)
    if not (folder / "config.json").is_file():
        raise TrimtabError(f"{where}: not a Hugging Face model folder (no config.json in {folder})")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("pytorch_model*.bin")):
        raise TrimtabError(f"{where}: no model weights (*.safetensors) in {folder}")


def _load(
    given: str, resolved: ResolvedModel, folder: Path, task: Task, labels: list[str] | None
) -> LoadedModel:
    import torch
    from safetensors import SafetensorError
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    try:
        with quiet_transformers():
            config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise _UnreadableWeights(
            f"{folder}: could not read config.json ({first_line(exc)})"
        ) from exc
    kind = resolved.spec.kind if resolved.spec else _kind_of(given, config, folder)
    if is_generative(task) and kind == "encoder":
        raise TrimtabError(f"{given} is an encoder: use task classify (not {task})")
    tokenizer = load_tokenizer(str(folder))
    if tokenizer.pad_token is None:  # decoders often have none; eos is never attended to anyway
        if tokenizer.eos_token is None:
            raise TrimtabError(f"{folder}: the tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"  # training pads on the right; generation sets its own

    auto: Any = AutoModelForCausalLM
    options: dict[str, object] = {"dtype": torch.float32}  # checkpoints may be stored in bf16
    if task == "classify":
        _check_has_classifier(given, config)
        auto = AutoModelForSequenceClassification
        # decoder classifiers (Llama) read each row's last non-pad token, found by this id
        options["pad_token_id"] = tokenizer.pad_token_id
        if labels is not None:  # a new head; a fine-tuned run's folder holds its own
            options |= {
                "num_labels": len(labels),
                "id2label": dict(enumerate(labels)),
                "label2id": {label: i for i, label in enumerate(labels)},
            }
    try:
        with quiet_transformers():
            model, info = auto.from_pretrained(folder, output_loading_info=True, **options)
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise _UnreadableWeights(
            f"{folder}: could not load the model weights ({first_line(exc)})"
        ) from exc
    # the model must agree with the tokenizer that pads its batches
    model.config.pad_token_id = tokenizer.pad_token_id
    generation = getattr(model, "generation_config", None)  # only generative models have one
    if generation is not None and generation.pad_token_id is None:
        generation.pad_token_id = tokenizer.pad_token_id
    new_head = task == "classify" and labels is not None
    _report_new_weights(given, model, list(info.get("missing_keys", ())), new_head=new_head)
    model.train()  # from_pretrained returns eval mode; callers fine-tune
    return LoadedModel(model, tokenizer, given, kind, folder, task=task, labels=labels)


def _kind_of(given: str, config: PretrainedConfig, folder: Path) -> ModelKind:
    """The registry's one rule (:func:`kind_of_folder`, by the architectures config.json
    names); a config that names none is told by the transformers head mappings."""
    if getattr(config, "is_encoder_decoder", False):
        raise TrimtabError(
            f"{given} is an encoder-decoder model ({config.model_type}); trimtab fine-tunes "
            "decoder-only (causal LM) and encoder-only models"
        )
    kind = kind_of_folder(folder)
    if kind is not None:
        return kind
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    # BERT-like encoders also have a causal-LM class in transformers (BertLMHeadModel), so
    # "has a causal LM" is not enough: a masked-LM head is what marks the encoder family.
    model_type = config.model_type
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "encoder"
    return "decoder" if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES else "encoder"


def _check_has_classifier(given: str, config: PretrainedConfig) -> None:
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    )

    if config.model_type not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        raise TrimtabError(
            f"{given}: transformers has no classification head for {config.model_type} models"
        )


def _report_new_weights(
    given: str, model: PreTrainedModel, missing: Iterable[str], *, new_head: bool
) -> None:
    # transformers' load report is silenced; one line says what matters instead. A new head
    # (outside the backbone) is expected for classify; anything else missing means the
    # checkpoint does not fit its config, which the user should hear about.
    prefix = f"{model.base_model_prefix}."
    head = sorted(k for k in missing if new_head and not k.startswith(prefix))
    rest = sorted(set(missing) - set(head))
    if head:
        _log.info("%s: new classification head initialised (%s)", given, ", ".join(head))
    if rest:
        _log.warning(
            "%s: %d weights missing from the checkpoint were initialised at random: %s",
            given,
            len(rest),
            ", ".join(rest[:5]) + (" ..." if len(rest) > 5 else ""),
        )


@contextmanager
def _no_gguf_progress_bar() -> Iterator[None]:
    # The GGUF reader uses a bare tqdm that transformers' progress-bar switch does not reach.
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    original = getattr(gguf_utils, "tqdm", None)
    if original is not None:  # a transformers release without it simply keeps its bar
        gguf_utils.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        if original is not None:
            gguf_utils.tqdm = original
