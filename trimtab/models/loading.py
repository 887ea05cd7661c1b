"""Load a base model for fine-tuning: fp32 weights on CPU, in training mode, with its tokenizer.

Where the weights are read from (names resolve as in :mod:`trimtab.models.registry`):

- a GGUF-packaged known model (``smollm2-135m``): transformers dequantizes the GGUF file to fp32,
  which takes ~15 s, so it is done once and saved as safetensors, with the tokenizer, into the
  cache part ``model_cache_dir(name)/"weights"``; every load then reads that folder (~1 s);
- a known model shipped as a Hugging Face folder (``minilm-l6``), or a local folder: read in place;
- a hub id ``owner/name``: downloaded once into ``model_cache_dir("owner--name")/"weights"``
  (online users only).

Cache parts are built atomically with a ``.complete`` marker, exactly like the tokenizer part.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from trimtab.errors import TrimtabError
from trimtab.models.registry import (
    KNOWN_MODELS,
    ResolvedModel,
    _first_line,
    _part_is_complete,
    _quiet_transformers,
    _write_part,
    load_tokenizer,
    model_cache_dir,
    resolve_model,
)

if TYPE_CHECKING:  # transformers is imported lazily: it costs seconds and the CLI must start fast
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

_log = logging.getLogger(__name__)

Task = Literal["causal-lm", "classify"]
TASKS: tuple[Task, ...] = ("causal-lm", "classify")
WEIGHTS_PART = "weights"
# What a hub download keeps: configs, safetensors weights, tokenizer files. Pickled *.bin weights
# are left out on purpose (loading them can run code), as are ONNX/GGUF/TF copies of the weights.
_HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]


@dataclass
class LoadedModel:
    """A model ready to fine-tune, and what it was made from."""

    model: PreTrainedModel  # fp32, on CPU, in training mode
    tokenizer: PreTrainedTokenizerBase  # has a pad token; pads on the right
    name: str  # as given by the user
    kind: Literal["decoder", "encoder"]
    source_path: Path  # the Hugging Face folder the weights were read from (model cards, export)


class _UnreadableWeights(TrimtabError):
    """transformers could not read a folder; a cache part raising this is rebuilt once."""


def load_model(name_or_path: str, task: Task, *, labels: list[str] | None = None) -> LoadedModel:
    """Load a known model, a local Hugging Face folder or a hub id for ``task``.

    ``causal-lm`` needs a decoder; ``classify`` adds a new classification head with one output
    per label (``labels`` is required and gives ``id2label``). Raises TrimtabError for anything
    the user can fix: unknown name, missing package, encoder used for causal-lm, bad folder.
    """
    if task not in TASKS:
        raise TrimtabError(f"unknown task '{task}'; use one of: {', '.join(TASKS)}")
    if task == "classify":
        labels = _check_labels(labels)
    resolved = resolve_model(name_or_path)
    folder = _weights_folder(resolved)
    try:
        return _load(name_or_path, resolved, folder, task, labels)
    except _UnreadableWeights as exc:
        if folder == resolved.path:  # the user's own folder or a package: not ours to rebuild
            raise
        # a cache part damaged after it was written (disk trouble, manual edits): rebuild once
        _log.warning("rebuilding the unreadable cached weights in %s: %s", folder, exc)
        folder = _weights_folder(resolved, rebuild=True)
        return _load(name_or_path, resolved, folder, task, labels)


def ensure_weights(name_or_path: str) -> Path:
    """The Hugging Face folder (config, safetensors, tokenizer) holding a model's weights.

    Converts a GGUF-packaged model or downloads a hub model into the cache the first time;
    afterwards it only checks the cache marker.
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


def _cache_part(resolved: ResolvedModel) -> tuple[Path, str] | None:
    """The weights cache part of a model and the marker source it must carry; None: no cache."""
    if resolved.gguf_file is not None:
        assert resolved.spec is not None
        source = f"{resolved.spec.package}:{resolved.gguf_file}"
        return model_cache_dir(resolved.name) / WEIGHTS_PART, source
    if resolved.hub_id is not None:
        name = resolved.hub_id.replace("/", "--")  # one folder level, never a known name
        return model_cache_dir(name) / WEIGHTS_PART, f"hub:{resolved.hub_id}"
    return None


def _weights_folder(resolved: ResolvedModel, *, rebuild: bool = False) -> Path:
    part = _cache_part(resolved)
    if part is None:  # a package or local Hugging Face folder: read in place
        assert resolved.path is not None
        _check_hf_folder(resolved.path)
        return resolved.path
    target, source = part
    if not rebuild and _part_is_complete(target, source):
        return target
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
        _write_part(target, build, source)
    except OSError as exc:  # unlike the tokenizer, the weights cannot be used without the cache
        raise TrimtabError(
            f"could not write the weights of '{resolved.name}' to {target}: {exc}. Point "
            "TRIMTAB_HOME at a writable folder with enough free space."
        ) from exc
    return target


def _convert_gguf(resolved: ResolvedModel, folder: Path) -> None:
    assert resolved.path is not None and resolved.gguf_file is not None
    _log.info("converting %s from GGUF to fp32 safetensors (once; about 15 s)", resolved.name)
    model = _load_gguf_model(resolved.path, resolved.gguf_file)
    # transformers flags a GGUF-loaded model as quantized although its weights are now plain
    # fp32; saved as is, the config would claim a GGUF quantization that the safetensors lack.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with _quiet():
        model.save_pretrained(folder, safe_serialization=True)
    load_tokenizer(resolved.name).save_pretrained(folder)


def _load_gguf_model(folder: Path, filename: str) -> PreTrainedModel:
    """Dequantize a GGUF file into an fp32 causal LM (slow: ~15 s); tests replace this function."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with _quiet(), _no_gguf_progress_bar():
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
            f"could not download '{hub_id}' from the Hugging Face hub ({_first_line(exc)}). "
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
        with _quiet():
            config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise _UnreadableWeights(
            f"{folder}: could not read config.json ({_first_line(exc)})"
        ) from exc
    kind = resolved.spec.kind if resolved.spec else _kind_of(given, config)
    if task == "causal-lm" and kind == "encoder":
        raise TrimtabError(f"{given} is an encoder: use task classify")
    tokenizer = load_tokenizer(str(folder))
    if tokenizer.pad_token is None:  # decoders often have none; eos is never attended to anyway
        if tokenizer.eos_token is None:
            raise TrimtabError(f"{folder}: the tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"  # training pads on the right; generation sets its own

    auto: type = AutoModelForCausalLM
    options: dict[str, object] = {"dtype": torch.float32}  # checkpoints may be stored in bf16
    if task == "classify":
        assert labels is not None
        _check_has_classifier(given, config)
        auto = AutoModelForSequenceClassification
        options |= {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)},
            # decoder classifiers (Llama) read each row's last non-pad token, found by this id
            "pad_token_id": tokenizer.pad_token_id,
        }
    try:
        with _quiet():
            model, info = auto.from_pretrained(folder, output_loading_info=True, **options)
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise _UnreadableWeights(
            f"{folder}: could not load the model weights ({_first_line(exc)})"
        ) from exc
    # the model must agree with the tokenizer that pads its batches
    model.config.pad_token_id = tokenizer.pad_token_id
    generation = getattr(model, "generation_config", None)  # only generative models have one
    if generation is not None and generation.pad_token_id is None:
        generation.pad_token_id = tokenizer.pad_token_id
    _report_new_weights(given, model, list(info.get("missing_keys", ())), task)
    model.train()  # from_pretrained returns eval mode; callers fine-tune
    return LoadedModel(model, tokenizer, given, kind, folder)


def _kind_of(given: str, config: PretrainedConfig) -> Literal["decoder", "encoder"]:
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    if getattr(config, "is_encoder_decoder", False):
        raise TrimtabError(
            f"{given} is an encoder-decoder model ({config.model_type}); trimtab fine-tunes "
            "decoder-only (causal LM) and encoder-only models"
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
    given: str, model: PreTrainedModel, missing: Iterable[str], task: Task
) -> None:
    # transformers' load report is silenced; one line says what matters instead. A new head
    # (outside the backbone) is expected for classify; anything else missing means the
    # checkpoint does not fit its config, which the user should hear about.
    prefix = f"{model.base_model_prefix}."
    head = sorted(k for k in missing if task == "classify" and not k.startswith(prefix))
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
def _quiet() -> Iterator[None]:
    """No transformers log warnings or progress bars for what is expected (new heads, loading)."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with _quiet_transformers():
            yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()


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
