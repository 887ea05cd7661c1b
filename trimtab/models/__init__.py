"""Base models: which ones trimtab knows by name, where their files come from, their tokenizers,
loading them for a task, and the catalog of base models and fine-tuned runs."""

from trimtab.models.catalog import CatalogEntry, list_models, pull
from trimtab.models.loading import LoadedModel, Task, ensure_weights, load_model
from trimtab.models.registry import (
    DEFAULT_DECODER,
    DEFAULT_ENCODER,
    KNOWN_MODELS,
    ModelSpec,
    ResolvedModel,
    cache_dir,
    load_fast_tokenizer,
    load_tokenizer,
    model_cache_dir,
    resolve_model,
)

__all__ = [
    "DEFAULT_DECODER",
    "DEFAULT_ENCODER",
    "KNOWN_MODELS",
    "CatalogEntry",
    "LoadedModel",
    "ModelSpec",
    "ResolvedModel",
    "Task",
    "cache_dir",
    "ensure_weights",
    "list_models",
    "load_fast_tokenizer",
    "load_model",
    "load_tokenizer",
    "model_cache_dir",
    "pull",
    "resolve_model",
]
