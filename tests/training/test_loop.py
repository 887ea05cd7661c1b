"""The loop's parts on their own: optimizer, schedule, penalties, loss units, the objective."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from trimtab.models.batching import IGNORE
from trimtab.training.config import OptimSection
from trimtab.training.loop import (
    Objective,
    Progress,
    l1_penalty,
    loss_units,
    make_optimizer,
    make_scheduler,
)


def params() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(-2 * torch.ones(2))]


def test_sgd_gets_its_momentum_and_weight_decay_adamw_its_betas():
    sgd = make_optimizer(
        params(), OptimSection(optimizer="sgd", momentum=0.8, weight_decay=0.1), 0.5
    )
    assert isinstance(sgd, torch.optim.SGD)
    group = sgd.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.5, 0.8, 0.1)
    adamw = make_optimizer(params(), OptimSection(betas=(0.8, 0.9), weight_decay=0.01), 1e-3)
    assert isinstance(adamw, torch.optim.AdamW)
    assert adamw.param_groups[0]["betas"] == (0.8, 0.9)
    assert adamw.param_groups[0]["weight_decay"] == 0.01


def schedule(name: str, warmup: int, total: int) -> list[float]:
    optimizer = torch.optim.SGD(params(), lr=1.0)
    scheduler = make_scheduler(optimizer, name, warmup, total)
    out = []
    for _ in range(total):
        out.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return out


def test_warmup_starts_above_zero_and_the_schedules_decay_to_zero():
    # warmup 3 of 10 steps: (s + 1) / 4, then linear to 0 at step 10
    assert schedule("linear", 3, 10) == pytest.approx(
        [0.25, 0.5, 0.75, 1.0, 6 / 7, 5 / 7, 4 / 7, 3 / 7, 2 / 7, 1 / 7]
    )
    cosine = schedule("cosine", 0, 4)
    assert cosine == pytest.approx([0.5 * (1 + math.cos(math.pi * s / 4)) for s in range(4)])
    assert schedule("constant", 2, 5) == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0, 1.0])


def test_l1_penalty_is_the_sum_of_absolute_values():
    assert l1_penalty(params()).item() == 7.0


def test_loss_units_count_weighted_targets_or_examples():
    labels = torch.tensor([[IGNORE, IGNORE, 5, 6], [IGNORE, 7, IGNORE, IGNORE]])
    assert loss_units({"labels": labels}, causal=True) == 3.0  # the first label is never a target
    weights = torch.tensor([[0.0, 0.5, 1.0, 1.0], [0.0, 1.0, 0.0, 0.0]])
    assert loss_units({"labels": labels, "weights": weights}, causal=True) == 3.5
    assert loss_units({"label": torch.tensor([0, 1, 1])}, causal=False) == 3.0


def test_the_objective_is_the_masked_cross_entropy_summed(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    ids = torch.tensor([[5, 9, 12, 40, 41], [7, 8, 30, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    labels = torch.tensor([[IGNORE, IGNORE, 12, 40, 41], [IGNORE, 8, 30, IGNORE, IGNORE]])
    with torch.no_grad():
        loss, hits, units = Objective(model, causal=True)(
            {"input_ids": ids, "attention_mask": mask, "labels": labels}
        )
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    targets = labels[:, 1:]
    expected = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )
    keep = targets != IGNORE
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    assert float(units) == 5.0
    assert int(hits) == int((logits.argmax(-1)[keep] == targets[keep]).sum())


def test_progress_off_a_terminal_writes_a_line_every_log_every_steps():
    lines: list[str] = []
    bar = Progress(total=5, start=0, enabled=True, log_every=2, write=lines.append)
    for step in range(1, 6):
        bar.update(step, 0.5, 100.0, 1e-3)
    bar.message("done")
    bar.close()
    assert [line.split()[1] for line in lines[:-1]] == ["2/5", "4/5", "5/5"]
    assert lines[-1] == "done"


def test_sgd_config_values_reach_the_optimizer_through_a_namespace():
    optim = SimpleNamespace(optimizer="sgd", momentum=0.0, weight_decay=0.0)
    assert make_optimizer(params(), optim, 0.1).param_groups[0]["momentum"] == 0.0


def test_more_processes_per_node_than_gpus_is_refused_saying_how_many_to_start(monkeypatch):
    from trimtab.errors import TrimtabError
    from trimtab.training import loop

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(loop.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(loop.torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(loop.dist, "is_initialized", lambda: False)
    joined = []
    monkeypatch.setattr(loop.dist, "init_process_group", lambda *a, **k: joined.append(a))
    with pytest.raises(
        TrimtabError, match=r"2 training processes per node but 1 GPU.*nproc_per_node=1"
    ):
        loop.init_distributed()
    assert joined == []  # refused before joining a group the other process would wait on
