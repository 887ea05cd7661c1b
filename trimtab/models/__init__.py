"""Base models: which ones trimtab knows by name, where their files come from, their tokenizers,
loading them (or a fine-tuned run) for a task, and the catalog of base models and runs.

Layers, lowest first: :mod:`~trimtab.models.tasks` (the task words),
:mod:`~trimtab.models.registry` (names, folders, caches, tokenizers), :mod:`~trimtab.models.runs`
(run folders), :mod:`~trimtab.models.loading` (weights), :mod:`~trimtab.models.catalog`.
"""

from trimtab.models.catalog import CatalogEntry, list_models, pull
from trimtab.models.loading import ADAPTERS, Adapter, LoadedModel, ensure_weights, load_model
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
from trimtab.models.tasks import TASKS, Task, is_generative

__all__ = [
    "ADAPTERS",
    "DEFAULT_DECODER",
    "DEFAULT_ENCODER",
    "KNOWN_MODELS",
    "TASKS",
    "Adapter",
    "CatalogEntry",
    "LoadedModel",
    "ModelSpec",
    "ResolvedModel",
    "Task",
    "cache_dir",
    "ensure_weights",
    "is_generative",
    "list_models",
    "load_fast_tokenizer",
    "load_model",
    "load_tokenizer",
    "model_cache_dir",
    "pull",
    "resolve_model",
]
