"""Base models: which ones trimtab knows by name, where their files come from, their tokenizers."""

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
    "ModelSpec",
    "ResolvedModel",
    "cache_dir",
    "load_fast_tokenizer",
    "load_tokenizer",
    "model_cache_dir",
    "resolve_model",
]
