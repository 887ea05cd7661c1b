"""One object per method: what the training loop asks of a method, and nothing else.

The loop calls, in this order, :meth:`TrainingMethod.apply` (mark what trains),
:meth:`~TrainingMethod.prepare` (once the model is on its device), :meth:`~TrainingMethod.
precompute` (work done once before the first step) and, for every batch,
:meth:`~TrainingMethod.extras` (what the method adds to a collated batch). ``top`` is what
the objective runs instead of the whole model when the method computed part of it in advance
(``freeze``'s :class:`~trimtab.methods.features.FrozenTrunk`). A new method is a new subclass
in :data:`METHOD_TYPES`: the loop does not change.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from trimtab.methods.trainable import MethodSpec, Task, apply_method, is_peft

if TYPE_CHECKING:
    import torch

Collate = Callable[[list[Any]], "dict[str, torch.Tensor]"]
FEATURE_BATCH = 64  # examples per forward pass of the frozen trunk when caching its features


class TrainingMethod:
    """``full``: every weight trains; nothing to prepare, precompute or add."""

    name: ClassVar[str] = "full"

    def __init__(self, spec: MethodSpec):
        self.spec = spec
        self.top: Any = None  # what the objective runs on precomputed inputs, if anything

    def apply(self, model: torch.nn.Module, task: Task) -> torch.nn.Module:
        """Mark what trains in ``model``; return the model to train (see :func:`apply_method`)."""
        return apply_method(model, self.spec, task)

    def prepare(self, model: torch.nn.Module, *, bf16: bool) -> None:
        """Adjust the model once it is on its device (``bf16``: autocast will be on)."""

    def precompute(
        self,
        model: torch.nn.Module,
        task: Task,
        splits: Sequence[list[Any]],
        collate: Collate,
        *,
        bf16: bool,
    ) -> str | None:
        """Work done once before training, over the encoded examples of every split;
        returns a line for the user when there was some."""
        return None

    def extras(self, items: list[Any]) -> dict[str, torch.Tensor]:
        """What this method adds to the collated batch of ``items``."""
        return {}


class Freeze(TrainingMethod):
    """``freeze``: the frozen trunk's outputs are computed once per example and cached."""

    name = "freeze"

    def precompute(
        self,
        model: torch.nn.Module,
        task: Task,
        splits: Sequence[list[Any]],
        collate: Collate,
        *,
        bf16: bool,
    ) -> str | None:
        """Run the frozen trunk once over every example; keep each example's features.

        Models whose forward glue :class:`FrozenTrunk` does not know run the trunk at every
        step instead (``top`` stays None)."""
        import torch

        from trimtab.methods.features import FrozenTrunk

        if not FrozenTrunk.supported(model):
            return None
        self.top = trunk = FrozenTrunk(model, self.spec.trainable_layers, task)
        started = time.perf_counter()
        for items in splits:
            order = sorted(range(len(items)), key=lambda i: len(items[i].input_ids))
            for start in range(0, len(order), FEATURE_BATCH):
                idx = order[start : start + FEATURE_BATCH]
                batch = collate([items[i] for i in idx])
                with torch.no_grad(), _autocast(batch["input_ids"].device, bf16):
                    feats = trunk.features(batch["input_ids"], batch["attention_mask"])
                feats = feats.to(torch.bfloat16 if bf16 else torch.float32)  # half the memory
                for row, i in enumerate(idx):
                    n = len(items[i].input_ids)
                    items[i].features = (
                        feats[row, :n].cpu() if feats.dim() == 3 else feats[row].cpu()
                    )
        count = sum(len(items) for items in splits)
        return (
            f"cached frozen-trunk features of {count} examples in "
            f"{time.perf_counter() - started:.1f} s"
        )

    def extras(self, items: list[Any]) -> dict[str, torch.Tensor]:
        if self.top is None:
            return {}
        import torch

        features = [e.features for e in items]
        if features[0].dim() == 1:
            return {"features": torch.stack(features)}
        return {"features": torch.nn.utils.rnn.pad_sequence(features, batch_first=True)}


class Lora(TrainingMethod):
    """``lora``: PEFT adapters; under bf16 the frozen base linears are cast once."""

    name = "lora"

    def apply(self, model: torch.nn.Module, task: Task) -> torch.nn.Module:
        """A model that already carries a trainable adapter (a LoRA run continued, loaded with
        ``adapter="train"``) keeps it: the adapter's own options were fixed by that run."""
        if is_peft(model):
            return model
        return apply_method(model, self.spec, task)

    def prepare(self, model: torch.nn.Module, *, bf16: bool) -> None:
        if bf16:
            frozen_linears_to_bf16(model)


METHOD_TYPES: dict[str, type[TrainingMethod]] = {
    "full": TrainingMethod,
    "freeze": Freeze,
    "lora": Lora,
}


def method_for(spec: MethodSpec) -> TrainingMethod:
    """The method object of ``spec.name``."""
    return METHOD_TYPES[spec.name](spec)


def frozen_linears_to_bf16(model: torch.nn.Module) -> None:
    """LoRA never changes the base weights, and autocast would cast each frozen linear weight
    to bf16 on every forward: cast them once. Trainable weights stay fp32 (master weights);
    embeddings (and a head tied to them) stay fp32 so the residual stream keeps its precision.
    The saved adapter is unaffected; the base model is reloaded in fp32 wherever it is used."""
    import torch

    hf: Any = model  # a transformers or PEFT model
    embedding = hf.get_input_embeddings().weight
    with torch.no_grad():
        for module in model.modules():
            if (
                isinstance(module, torch.nn.Linear)
                and not module.weight.requires_grad
                and module.weight is not embedding
            ):
                module.weight.data = module.weight.data.to(torch.bfloat16)
                if module.bias is not None and not module.bias.requires_grad:
                    module.bias.data = module.bias.data.to(torch.bfloat16)


def _autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager[Any]:
    import torch

    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
