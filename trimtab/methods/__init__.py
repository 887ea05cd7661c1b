"""Methods decide which parameters train: full, freeze (top blocks + head), LoRA through PEFT.

:mod:`trimtab.methods.trainable` marks what trains and saves it; :mod:`trimtab.methods.features`
caches the frozen trunk's outputs so that ``freeze`` trains at the cost of its top blocks only.
Importing this package stays cheap: torch is imported only when :class:`FrozenTrunk` is asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trimtab.methods.method import (
    METHOD_TYPES,
    TrainingMethod,
    frozen_linears_to_bf16,
    method_for,
)
from trimtab.methods.trainable import (
    METHODS,
    Method,
    MethodSpec,
    apply_method,
    merge_lora,
    no_progress_bars,
    save_trainable,
    trainable_parameters,
    transformer_layers,
    untie_head,
)

if TYPE_CHECKING:
    from trimtab.methods.features import FrozenTrunk

__all__ = [
    "METHODS",
    "METHOD_TYPES",
    "FrozenTrunk",
    "Method",
    "MethodSpec",
    "TrainingMethod",
    "apply_method",
    "frozen_linears_to_bf16",
    "merge_lora",
    "method_for",
    "no_progress_bars",
    "save_trainable",
    "trainable_parameters",
    "transformer_layers",
    "untie_head",
]


def __getattr__(name: str) -> object:
    if name == "FrozenTrunk":  # imports torch: only on demand
        from trimtab.methods.features import FrozenTrunk

        return FrozenTrunk
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
