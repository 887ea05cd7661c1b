"""The machine's ceiling for a model: its matmul rate measured at the model's own shapes.

A 2048 x 2048 matmul shows the best a CPU can do, but a transformer block's matmuls are skinny
(tokens of one micro-batch x hidden size) and run well below that. The ceiling a training loop
can aim at is the rate of exactly its own matmuls: every ``nn.Linear`` of one block, with the
tokens of one micro-batch, forward (``x @ W``), backward to the activations (``dy @ W.T``) and,
for weights that train, backward to the weights (``dy.T @ x``), in the precision the run uses.
The bench scripts print a run's model FLOP/s as a share of this rate.
"""

from __future__ import annotations

import time
from collections.abc import Sequence


def block_linears(model_name: str) -> list[tuple[int, int]]:
    """(in_features, out_features) of every ``nn.Linear`` in the model's first block."""
    import torch
    from transformers import AutoConfig, AutoModel

    from trimtab.models.loading import ensure_weights

    with torch.device("meta"):
        base = AutoModel.from_config(AutoConfig.from_pretrained(ensure_weights(model_name)))
    shapes: list[tuple[int, int]] = []
    for name, module in base.named_modules():
        # the first block: "layers.0." (Llama), "encoder.layer.0." (BERT)
        if isinstance(module, torch.nn.Linear) and ".0." in f".{name}":
            shapes.append((module.in_features, module.out_features))
    if not shapes:
        raise ValueError(f"{model_name}: no linear layer found in its first block")
    return shapes


def matmul_seconds(m: int, k: int, n: int, dtype_name: str, reps: int = 5) -> float:
    """Best of ``reps`` timed ``[m, k] @ [k, n]`` matmuls after two warm-up runs."""
    import torch

    dtype = getattr(torch, dtype_name)
    x, y = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    best = float("inf")
    for i in range(2 + reps):
        started = time.perf_counter()
        x @ y
        if i >= 2:
            best = min(best, time.perf_counter() - started)
    return best


def shape_rate(
    shapes: Sequence[tuple[int, int]], tokens: int, dtype_name: str, *, weight_grads: bool
) -> float:
    """GFLOP/s of one block's matmuls at ``tokens`` rows: forward and backward to the inputs,
    plus the weight gradients when the weights train (full fine-tuning), as one FLOP-weighted
    rate (total FLOPs / total best times)."""
    flops = seconds = 0.0
    for k, n in shapes:
        work = [(tokens, k, n), (tokens, n, k)] + ([(n, tokens, k)] if weight_grads else [])
        for m, kk, nn in work:
            flops += 2.0 * m * kk * nn
            seconds += matmul_seconds(m, kk, nn, dtype_name)
    return flops / seconds / 1e9


def square_rate(dtype_name: str, n: int = 2048, reps: int = 20) -> float:
    """GFLOP/s of the best of ``reps`` n x n matmuls: the peak the hardware shows."""
    return 2.0 * n**3 / matmul_seconds(n, n, n, dtype_name, reps) / 1e9
