"""Length-grouped batches of encoded examples for training.

Examples are read and encoded by :mod:`trimtab.data.prepared`. A step costs
what its padded batch costs, so :class:`LengthGroupedSampler` groups similar lengths and
:func:`collate` pads each batch only to its own longest example.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from trimtab.data.prepared import Encoded
from trimtab.models.batching import IGNORE

if TYPE_CHECKING:  # torch costs a second to import; only collate needs it
    import torch

MEGA_BATCHES = 50  # the sampler sorts by length within chunks of 50 global batches


# --- batching -------------------------------------------------------------------------------


class LengthGroupedSampler:
    """Yields micro-batches (lists of indices) of similar lengths, in a new order every epoch.

    Per epoch: shuffle all indices with ``random.Random(seed + epoch)``; sort chunks of 50
    global batches by length (longest first); cut them into global batches of
    ``world_size * batch_size``; shuffle the batch order, then swap the batch holding the
    longest example to the front so that running out of memory shows on the first step.

    Data parallel: rank ``r`` takes the ``r``-th contiguous slice of every global batch, so
    ``world_size`` ranks with ``batch_size`` b see at step s exactly the examples one process
    with ``batch_size`` W*b sees at step s. Every rank gets one micro-batch per global batch.
    The last, short global batch (unless ``drop_last``) is split as evenly as possible; if it
    holds fewer examples than ranks, it repeats its examples so that no rank gets none.

    Resuming: ``set_epoch(epoch, start=k)`` makes iteration begin at batch ``k`` of that epoch;
    ``batches(epoch)[k:]`` gives the same list.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        seed: int,
        *,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        mega_batches: int = MEGA_BATCHES,
    ) -> None:
        if batch_size < 1 or world_size < 1 or mega_batches < 1:
            raise ValueError("batch_size, world_size and mega_batches must be at least 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.lengths, self.batch_size, self.seed = list(lengths), batch_size, seed
        self.shuffle, self.drop_last, self.mega_batches = shuffle, drop_last, mega_batches
        self.rank, self.world_size = rank, world_size
        self.epoch = self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Choose the epoch (and the batch to begin at, when resuming) of the next iteration."""
        self.epoch, self.start = epoch, start

    def global_batches(self, epoch: int) -> list[list[int]]:
        """The batches of all ranks together, each sorted longest first, in step order."""
        size = self.batch_size * self.world_size
        rng = random.Random(self.seed + epoch)
        order = list(range(len(self.lengths)))
        if self.shuffle:
            rng.shuffle(order)
        chunk = self.mega_batches * size  # a multiple of size: no batch straddles two chunks
        by_length = self.lengths.__getitem__
        grouped: list[int] = []
        for s in range(0, len(order), chunk):
            grouped += sorted(order[s : s + chunk], key=by_length, reverse=True)
        batches = [grouped[s : s + size] for s in range(0, len(grouped), size)]
        if self.drop_last and batches and len(batches[-1]) < size:
            batches.pop()
        if self.shuffle and len(batches) > 1:
            rng.shuffle(batches)
            longest = max(range(len(batches)), key=lambda i: self.lengths[batches[i][0]])
            batches[0], batches[longest] = batches[longest], batches[0]
        return batches

    def batches(self, epoch: int) -> list[list[int]]:
        """This rank's micro-batches of one epoch, in step order."""
        w, r = self.world_size, self.rank
        out = []
        for batch in self.global_batches(epoch):
            if len(batch) < w:
                batch = (batch * w)[:w]
            n = len(batch)
            out.append(batch[r * n // w : (r + 1) * n // w])
        return out

    def __len__(self) -> int:
        size = self.batch_size * self.world_size
        n = len(self.lengths)
        return n // size if self.drop_last else -(-n // size)

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches(self.epoch)[self.start :]


def collate(batch: list[Encoded], pad_id: int | None) -> dict[str, torch.Tensor]:
    """Right-pad a batch to its longest sequence: ``input_ids``, ``attention_mask``, ``labels``
    (-100 on padding; absent for classification), ``weights`` (only if some example has them; 0
    wherever the label is -100) and ``label`` (classification). ``pad_id`` may be any id (EOS
    for tokenizers without a pad token; None means 0): padding is masked, never trained on."""
    import torch

    if not batch:
        raise ValueError("cannot collate an empty batch")
    width = max(len(e.input_ids) for e in batch)
    pad_id = 0 if pad_id is None else pad_id
    out = {
        "input_ids": torch.tensor(
            [e.input_ids + [pad_id] * (width - len(e.input_ids)) for e in batch], dtype=torch.long
        ),
        "attention_mask": torch.tensor(
            [[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in batch],
            dtype=torch.long,
        ),
    }
    if any(e.labels for e in batch):
        labels = [e.labels + [IGNORE] * (width - len(e.labels)) for e in batch]
        out["labels"] = torch.tensor(labels, dtype=torch.long)
        if any(e.weights is not None for e in batch):
            weights = [
                (e.weights if e.weights is not None else [1.0] * len(e.labels))
                + [0.0] * (width - len(e.labels))
                for e in batch
            ]
            out["weights"] = torch.tensor(weights) * (out["labels"] != IGNORE)
    if any(e.label is not None for e in batch):
        if any(e.label is None for e in batch):
            raise ValueError("a batch mixes classification examples with others")
        out["label"] = torch.tensor([e.label for e in batch], dtype=torch.long)
    return out


# Per-token tensors of a collated batch (plus any 3-D one: cached per-token features), trimmed
# to each slice's own longest row when a batch is split.
_PER_TOKEN = ("input_ids", "attention_mask", "labels", "weights")


def split_by_tokens(
    batch: dict[str, torch.Tensor], max_tokens: int | None
) -> list[dict[str, torch.Tensor]]:
    """``batch`` cut into row slices of at most ``max_tokens`` padded tokens each (at least one
    row per slice), each trimmed to its own longest row; the whole batch when it fits.

    Why: a step's activations grow with rows x longest row, so the few long batches set the
    peak memory of a run. Their slices are accumulated like micro-batches (the loss is
    normalised by the step's units, so the update is the same), while short batches, which are
    most of them, still run as one matmul-friendly piece.
    """
    mask = batch["attention_mask"]
    rows, width = mask.shape
    if max_tokens is None or rows * width <= max_tokens or rows == 1:
        return [batch]
    step = max(1, max_tokens // width)
    pieces = []
    for start in range(0, rows, step):
        piece = {k: v[start : start + step] for k, v in batch.items()}
        longest = int(piece["attention_mask"].sum(1).max())  # right padding: real tokens first
        pieces.append(
            {k: v[:, :longest] if k in _PER_TOKEN or v.dim() == 3 else v for k, v in piece.items()}
        )
    return pieces
