"""What training, evaluation and generation share to batch token sequences.

Kept free of a top-level torch import: the data layer and the CLI import :data:`IGNORE` and
:func:`chunks` without paying torch's second of start-up.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import torch

IGNORE = -100
"""Label of a token that is not trained or scored on (PyTorch's cross-entropy ``ignore_index``)."""

T = TypeVar("T")


def chunks(items: Sequence[T], size: int) -> Iterator[list[T]]:
    """Consecutive slices of ``items`` of ``size`` elements (the last may be shorter)."""
    if size < 1:
        raise ValueError(f"chunk size must be at least 1, got {size}")
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def left_pad(
    rows: list[list[int]], pad: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``input_ids``, ``attention_mask`` and ``position_ids`` of rows padded on the left.

    Left padding puts every row's last token in the last column, so one logits row per row
    comes out and new tokens are appended in one column for all. Positions count real tokens
    only: padding must not shift a row's positions.
    """
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


def bf16_available(device: torch.device) -> bool:
    """True where bf16 is faster than fp32 on ``device``: what precision ``auto`` picks.

    A GPU that supports bf16; a CPU where a measured matmul says so (AMX or AVX512-BF16, not
    AVX2's emulated bf16), once per machine; ``$TRIMTAB_PRECISION`` overrides both. See
    :mod:`trimtab.models.precision`.
    """
    from trimtab.models.precision import fast_precision

    return fast_precision(device) == "bf16"


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager[object]:
    """bf16 autocast on ``device`` when ``bf16``, else a context that does nothing."""
    import torch

    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
