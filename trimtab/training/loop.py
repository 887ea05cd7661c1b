"""The one training loop: every task (sft, lm, classify) and every method (full, freeze, LoRA).

Methods only decide what is trainable (:mod:`trimtab.methods`); this loop trains whatever
requires a gradient. What makes it fast on a CPU or a GPU:

- bf16 autocast with fp32 master weights where the hardware has fast bf16;
- micro-batches grouped by length, so padding is not trained on;
- logits only where the loss needs them: the hidden states of completion tokens go through the
  head, never the whole vocabulary at every prompt token;
- with a frozen trunk, the trunk's outputs are computed once and reused across epochs.

The same code runs data-parallel under ``torchrun`` (gloo on CPU, NCCL on GPU): each rank takes
its slice of every global batch, and the loss is normalised by the global token count so that
N processes with micro-batch b compute the same update as one process with batch N*b.
"""

from __future__ import annotations

import ctypes
import os
import random
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from trimtab.errors import PAUSED_EXIT, TrimtabError
from trimtab.models.batching import IGNORE, autocast, chunks
from trimtab.models.scoring import backbone_and_head, next_token_losses
from trimtab.training.batches import collate


class TrainingDiverged(TrimtabError):
    """The loss became NaN or exploded; the last good checkpoint is kept."""

    exit_code = 3


class TrainingInterrupted(TrimtabError):
    """Ctrl-C (KeyboardInterrupt) during training: the run is marked interrupted; the message
    says the step reached, the last checkpoint kept and the command that resumes."""

    exit_code = 130


class TrainingPaused(TrimtabError):
    """The run was asked to pause (its pause file): a checkpoint was written and the process
    stops; ``trimtab train --resume`` continues from it."""

    exit_code = PAUSED_EXIT


# --- the objective -------------------------------------------------------------------------


class Objective(nn.Module):
    """Loss of one micro-batch, as a module so DistributedDataParallel can wrap it.

    Returns (sum of token losses, correct predictions, loss units): summed, not averaged,
    so the caller can normalise over the whole global batch.
    """

    def __init__(
        self,
        model: nn.Module,
        causal: bool,
        trunk: Any = None,
        loss: ClassifyLoss = "cross_entropy",
        ordinal_weight: float = 1.0,
    ):
        super().__init__()
        self.model = model
        self.causal = causal
        self.trunk = trunk
        self.loss = loss  # classify only: see classification_loss
        self.ordinal_weight = ordinal_weight
        if causal:
            self.backbone, self.head = backbone_and_head(model)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        mask = batch["attention_mask"]
        if not self.causal:
            if self.trunk is not None:
                logits = self.trunk.forward_top(batch["features"], mask, batch["input_ids"])
            else:
                logits = self.model(input_ids=batch["input_ids"], attention_mask=mask).logits
            logits = logits.float()
            labels = batch["label"]
            loss, correct = classification_loss(logits, labels, self.loss, self.ordinal_weight)
            return loss, correct, torch.tensor(float(labels.numel()))
        if self.trunk is not None:
            hidden = self.trunk.forward_top(batch["features"], mask, batch["input_ids"])
        else:
            hidden = self.backbone(input_ids=batch["input_ids"], attention_mask=mask)[0]
        losses, hits, keep = next_token_losses(self.head, hidden, batch["labels"])
        if "weights" in batch:
            weights = batch["weights"][:, 1:][keep]
            # Accuracy counts the completion (weight 1), not a lightly weighted prompt.
            return (losses * weights).sum(), (hits & (weights >= 1)).sum(), weights.sum()
        return losses.sum(), hits.sum(), torch.tensor(float(losses.numel()))


ClassifyLoss = Literal["cross_entropy", "expected", "cumulative"]
CLASSIFY_LOSSES: tuple[str, ...] = get_args(ClassifyLoss)


def classification_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    loss: str = "cross_entropy",
    ordinal_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed loss, correct predictions) of a K-way head's ``logits`` (N x K) for ``labels``.

    The ordinal losses assume that the labels' sorted order (the order of the run's labels,
    class index k = rank k) is their rank: for "1".."5" the star order. All three train the
    same K-way head, so the model and its serving (softmax over the labels) are unchanged.

    - ``cross_entropy``: ``sum_i CE(z_i, y_i)``; predicts the argmax.
    - ``expected``: cross-entropy plus ``ordinal_weight * (E[rank] - y)^2`` per example, with
      ``E[rank] = sum_k softmax(z)_k * k`` (a squared-error penalty on the expected rank, so a
      far-off wrong prediction costs more than a near one); predicts the argmax.
    - ``cumulative``: a cumulative-link loss in the form of CORAL (Cao, Mirjalili & Raschka,
      "Rank consistent ordinal regression for neural networks", Pattern Recognition Letters
      2020; after the binary decomposition of Frank & Hall 2001 and McCullagh's cumulative
      link models, 1980): ``sum_{k=0}^{K-2} BCE(sigma(s_k), [y > k])`` with the threshold
      logits taken from the K logits as ``s_k = log P(y > k) - log P(y <= k)`` under
      ``P = softmax(z)`` (:func:`cumulative_logits`). ``P(y > k)`` falls with k, so the
      thresholds are rank-consistent by construction; the prediction is the number of
      thresholds passed (``s_k > 0``), the median of P. With K = 2 it is the cross-entropy.
    """
    if loss == "cross_entropy":
        return F.cross_entropy(logits, labels, reduction="sum"), (logits.argmax(-1) == labels).sum()
    if loss == "expected":
        ranks = torch.arange(logits.shape[-1], device=logits.device, dtype=logits.dtype)
        expected = (logits.softmax(-1) * ranks).sum(-1)
        penalty = (expected - labels.to(logits.dtype)).square().sum()
        total = F.cross_entropy(logits, labels, reduction="sum") + ordinal_weight * penalty
        return total, (logits.argmax(-1) == labels).sum()
    if loss == "cumulative":
        s = cumulative_logits(logits)
        thresholds = torch.arange(s.shape[-1], device=logits.device)
        targets = (labels.unsqueeze(-1) > thresholds).to(s.dtype)
        total = F.binary_cross_entropy_with_logits(s, targets, reduction="sum")
        return total, ((s > 0).sum(-1) == labels).sum()
    raise ValueError(f"unknown classification loss {loss!r}: one of {', '.join(CLASSIFY_LOSSES)}")


def cumulative_logits(logits: torch.Tensor) -> torch.Tensor:
    """The K-1 threshold logits ``s_k = log P(y > k) - log P(y <= k)``, k = 0..K-2, of the
    softmax of K logits (N x K -> N x (K-1)), computed stably with log-cumsum-exp."""
    below = torch.logcumsumexp(logits, -1)[..., :-1]  # log sum_{j<=k} e^z_j
    above = torch.logcumsumexp(logits.flip(-1), -1).flip(-1)[..., 1:]  # log sum_{j>k} e^z_j
    return above - below


def loss_units(batch: dict[str, torch.Tensor], causal: bool) -> float:
    """What the loss is averaged over: weighted target tokens (causal) or examples."""
    if not causal:
        return float(batch["label"].numel())
    if "weights" in batch:
        return float(batch["weights"][:, 1:].sum())
    return float((batch["labels"][:, 1:] != IGNORE).sum())


# --- optimizer and schedule ----------------------------------------------------------------


def make_optimizer(params: list[nn.Parameter], optim: Any, lr: float) -> torch.optim.Optimizer:
    """SGD (with ``optim.momentum``) or AdamW (``optim.betas``), with ``optim.weight_decay``."""
    if optim.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=optim.momentum, weight_decay=optim.weight_decay
        )
    # The fused kernel updates every tensor in one pass (CPU and CUDA): for full fine-tuning
    # the optimizer step is memory-bound and otherwise a large share of each step.
    return torch.optim.AdamW(
        params, lr=lr, betas=optim.betas, weight_decay=optim.weight_decay, fused=True
    )


SCHEDULES = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


def make_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """transformers' schedule of that name, with warmup factor ``(step + 1) / (warmup + 1)``.

    transformers' warmup starts at ``step / warmup``: a learning rate of 0 at the first step,
    a step that trains nothing. Its schedule built one step longer and advanced by one step
    gives exactly the factors ``(s + 1) / (W + 1)`` during warmup, then the same linear or
    cosine decay to 0 at ``total_steps`` (or a constant 1).
    """
    from transformers import get_scheduler

    scheduler = get_scheduler(
        SCHEDULES[schedule],
        optimizer,
        num_warmup_steps=warmup_steps + 1,
        num_training_steps=total_steps + 1,
    )
    with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": on purpose
        warnings.simplefilter("ignore", UserWarning)
        scheduler.step()
    return scheduler


def l1_penalty(params: list[nn.Parameter]) -> torch.Tensor:
    """Sum of absolute values of ``params`` (the L1 term, scaled by ``optim.l1`` by the caller)."""
    return sum(p.abs().sum() for p in params)  # type: ignore[return-value]


def clip_gradients(params: list[torch.nn.Parameter], max_norm: float | None) -> float:
    """The gradients' global norm, after clipping it to ``max_norm`` (None: no clipping)."""
    if max_norm is None:
        grads = [p.grad.detach().norm() for p in params if p.grad is not None]
        return float(torch.stack(grads).norm()) if grads else 0.0
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))


def evaluate(
    objective: Objective,
    items: list[Any],
    pad_id: int,
    device: torch.device,
    bf16: bool,
    batch_size: int = 32,
    extras: Any = None,
) -> dict[str, float]:
    """Mean loss and accuracy (token accuracy for causal tasks) over ``items``.

    ``extras(items)``: what the method adds to a collated batch (cached features)."""
    order = sorted(range(len(items)), key=lambda i: len(items[i].input_ids))
    loss = correct = count = 0.0
    was_training = objective.training
    objective.eval()
    with torch.no_grad():
        for idx in chunks(order, batch_size):
            group = [items[i] for i in idx]
            batch = collate(group, pad_id)
            if extras is not None:
                batch.update(extras(group))
            with autocast(device, bf16):
                part, hits, n = objective(to_device(batch, device))
            loss += float(part)
            correct += float(hits)
            count += float(n)
    objective.train(was_training)
    return {"valid_loss": loss / max(count, 1.0), "valid_accuracy": correct / max(count, 1.0)}


# --- environment ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Dist:
    """This process's place in a data-parallel run (rank 0 of 1 when alone)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    """Join the process group that torchrun describes in the environment, or use the one a
    launcher (Ray Train's TorchTrainer) has already set up."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), local)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if 0 < gpus < per_node:
        # Found on an H200 machine: two processes per node on one GPU died in set_device with
        # "invalid device ordinal". Say what to change instead.
        raise TrimtabError(
            f"{per_node} training processes per node but {gpus} GPU(s) visible: start at most "
            f"{gpus} (torchrun --nproc_per_node={gpus}), or hide the GPUs "
            "(CUDA_VISIBLE_DEVICES=) to train on CPU processes"
        )
    dist.init_process_group("nccl" if gpus else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    return Dist(dist.get_rank(), dist.get_world_size(), local)


def device_for(d: Dist) -> torch.device:
    return torch.device("cuda", d.local_rank) if torch.cuda.is_available() else torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def steady_malloc() -> None:
    """glibc's malloc returns freed memory to the OS and re-faults it every step, which makes
    CPU step times erratic; high mmap/trim thresholds keep it (measured here)."""
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def all_reduce(values: list[float], d: Dist, device: torch.device) -> list[float]:
    if d.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


# --- progress ------------------------------------------------------------------------------


class Progress:
    """tqdm's bar with loss, tokens/s and learning rate in a terminal; plain log lines every
    ``log_every`` steps otherwise (or through ``write``, when given)."""

    def __init__(
        self,
        total: int,
        start: int,
        enabled: bool,
        log_every: int,
        write: Callable[[str], None] | None = None,
    ):
        from tqdm.auto import tqdm

        self.total, self.enabled, self.log_every = total, enabled, log_every
        self.tty = enabled and sys.stderr.isatty() and write is None
        self.write = write or (lambda s: print(s, file=sys.stderr, flush=True))
        self.t0, self.start = time.perf_counter(), start
        self.bar = tqdm(
            total=total, initial=start, disable=not self.tty, file=sys.stderr, unit="step"
        )

    def update(self, step: int, loss: float, tokens_per_s: float, lr: float) -> None:
        """Show the progress after ``step`` (counted from 1)."""
        if not self.enabled:
            return
        if self.tty:
            self.bar.set_postfix_str(
                f"loss {loss:.4f}, {tokens_per_s:,.0f} tok/s, lr {lr:.2e}", refresh=False
            )
            self.bar.update(step - self.bar.n)
        elif step % self.log_every == 0 or step == self.total:
            done = step - self.start
            eta = (time.perf_counter() - self.t0) / max(1, done) * (self.total - step)
            self.write(
                f"step {step}/{self.total}  loss {loss:.4f}  {tokens_per_s:,.0f} tok/s  "
                f"lr {lr:.2e}  eta {_duration(eta)}"
            )

    def message(self, text: str) -> None:
        """A line of its own (above the bar in a terminal)."""
        if not self.enabled:
            return
        if self.tty:
            self.bar.write(text, file=sys.stderr)
        else:
            self.write(text)

    def close(self) -> None:
        self.bar.close()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
