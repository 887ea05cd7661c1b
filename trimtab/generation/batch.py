"""The rows a model decodes together: one KV cache, its attention mask and the next positions.

Continuous batching needs what ``model.generate`` does not offer: rows that join a running
batch between two decode steps and rows that leave it as soon as they end. A :class:`Part` is
a set of rows with their cache; a new request is prefilled into its own part and
:func:`merge`\\ d in (the shorter cache is padded on the left, where the mask hides it), and
:func:`select` keeps the live rows. Columns that no row attends to any more are cut, so a long
request that left does not leave its padding behind. Written by hand because transformers'
``continuous_batching`` runs one sampling configuration for the whole batch and no PEFT
``adapter_names``; this keeps per-row sampling and mixed-adapter batches on the plain
``DynamicCache`` every decoder supports (bench/serve.py measures both).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trimtab.models.batching import left_pad

if TYPE_CHECKING:
    import torch

BASE_ADAPTER = "__base__"  # PEFT's adapter_names entry for "the base model alone"


@dataclass
class Part:
    """Rows with their KV cache: the logits of each row's next token are in ``logits``."""

    cache: Any  # a transformers DynamicCache
    mask: torch.Tensor  # [rows, columns] 1 where a cached column is a real token
    following: torch.Tensor  # [rows, 1] the position id of each row's next token
    logits: torch.Tensor  # [rows, vocab]

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])


def can_merge(cache: Any) -> bool:
    """True if every layer of the cache is a plain full-attention ``DynamicLayer``; other
    layouts (sliding windows, recurrent states) keep a batch closed until it empties."""
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) is DynamicLayer for layer in cache.layers)


def prefill(
    model: Any,
    prompts: list[list[int]],
    repeats: list[int],
    *,
    pad: int,
    adapters: list[str] | None = None,
    all_logits: bool = False,
) -> tuple[Part, torch.Tensor | None]:
    """Run the prompts once; prompt ``i``'s row is then copied ``repeats[i]`` times.

    ``adapters`` names each prompt's LoRA adapter (PEFT's ``adapter_names``). With
    ``all_logits`` the logits at every prompt position come back too (for echo's prompt
    log-probabilities), as [prompts, columns, vocab] on the left-padded columns."""
    import torch
    from transformers import DynamicCache

    device = _device(model)
    ids, mask, positions = left_pad(prompts, pad, device)
    cache = DynamicCache(config=model.config)
    extra = {"adapter_names": adapters} if adapters is not None else {}
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=0 if all_logits else 1,
        **extra,
    )
    full = out.logits if all_logits else None
    logits, cache = out.logits[:, -1], out.past_key_values
    following = positions[:, -1:] + 1
    if any(r != 1 for r in repeats):  # one prefill per prompt; its cache is copied
        index = torch.tensor([i for i, r in enumerate(repeats) for _ in range(r)], device=device)
        cache.batch_select_indices(index)
        logits, mask, following = logits[index], mask[index], following[index]
    return Part(cache, mask, following, logits), full


def merge(a: Part | None, b: Part) -> Part:
    """One part holding a's rows then b's; the shorter cache is padded on the left."""
    import torch
    import torch.nn.functional as F

    if a is None:
        return b
    width = max(a.mask.shape[1], b.mask.shape[1])
    for la, lb in zip(a.cache.layers, b.cache.layers):
        la.keys = torch.cat([_pad_left(la.keys, width, 2), _pad_left(lb.keys, width, 2)])
        la.values = torch.cat([_pad_left(la.values, width, 2), _pad_left(lb.values, width, 2)])
    mask = torch.cat(
        [F.pad(a.mask, (width - a.mask.shape[1], 0)), F.pad(b.mask, (width - b.mask.shape[1], 0))]
    )
    merged = Part(
        a.cache,
        mask,
        torch.cat([a.following, b.following]),
        torch.cat([a.logits, b.logits]),
    )
    return _trim(merged)


def select(part: Part, keep: list[int]) -> Part:
    """The part with only the rows ``keep`` (in that order)."""
    import torch

    index = torch.tensor(keep, device=part.mask.device)
    part.cache.batch_select_indices(index)
    kept = Part(part.cache, part.mask[index], part.following[index], part.logits[index])
    return _trim(kept)


def decode(model: Any, part: Part, tokens: list[int], adapters: list[str] | None) -> None:
    """Feed each row its next token; ``part.logits`` becomes the logits after it."""
    import torch

    device = part.mask.device
    part.mask = torch.cat([part.mask, torch.ones_like(part.mask[:, :1])], dim=1)
    extra = {"adapter_names": adapters} if adapters is not None else {}
    out = model(
        input_ids=torch.tensor(tokens, device=device)[:, None],
        attention_mask=part.mask,
        position_ids=part.following,
        past_key_values=part.cache,
        use_cache=True,
        **extra,
    )
    part.logits, part.cache = out.logits[:, -1], out.past_key_values
    part.following = part.following + 1


def _pad_left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    import torch.nn.functional as F

    missing = width - t.shape[dim]
    if missing == 0:
        return t
    pad = [0, 0] * (t.dim() - dim - 1) + [missing, 0]
    return F.pad(t, pad)


def _trim(part: Part) -> Part:
    """Cut the leading columns that no row attends to (padding left by rows that ended)."""
    used = part.mask.any(dim=0).nonzero()
    first = int(used[0]) if used.numel() else part.mask.shape[1]
    if first == 0:
        return part
    for layer in part.cache.layers:
        layer.keys = layer.keys[:, :, first:]
        layer.values = layer.values[:, :, first:]
    part.mask = part.mask[:, first:]
    return part


def _device(model: Any) -> torch.device:
    import torch

    device = getattr(model, "device", None)
    return device if isinstance(device, torch.device) else next(model.parameters()).device
