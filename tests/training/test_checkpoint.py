"""Checkpoints: a round trip restores everything, and only complete ones count."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from trimtab.training import checkpoint as ckpt
from trimtab.training.checkpoint import LoopState


def setup(seed: int = 0):
    """A small model with a frozen part, its optimizer and scheduler, after a few steps."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 2))
    model[0].weight.requires_grad_(False)  # frozen: not a checkpoint's business
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (1 + step))
    return model, optimizer, scheduler


def step(model, optimizer, scheduler) -> None:
    loss = model(torch.randn(3, 4)).pow(2).sum()
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def save(run: Path, step_no: int, state: LoopState | None = None) -> Path:
    model, optimizer, scheduler = setup()
    return ckpt.save_checkpoint(
        run / "checkpoints" / f"step-{step_no:07d}",
        model,
        optimizer,
        scheduler,
        state or LoopState(step=step_no),
    )


def test_round_trip_restores_tensors_optimizer_scheduler_and_loop_state(tmp_path: Path):
    model, optimizer, scheduler = setup()
    for _ in range(3):
        step(model, optimizer, scheduler)
    state = LoopState(step=3, epoch=1, batch_in_epoch=2, best_score=0.5, best_step=2)
    ckpt.save_checkpoint(tmp_path / "step-0000003", model, optimizer, scheduler, state)
    fresh, fresh_opt, fresh_sched = setup(seed=1)  # different starting weights
    loaded_state = ckpt.load_checkpoint(tmp_path / "step-0000003", fresh, fresh_opt, fresh_sched)

    assert loaded_state == state
    trained = ckpt.trainable_state(model)
    assert trained.keys() == ckpt.trainable_state(fresh).keys()
    assert all(torch.equal(trained[k], ckpt.trainable_state(fresh)[k]) for k in trained)
    assert fresh_sched.state_dict() == scheduler.state_dict()
    assert fresh_opt.state_dict()["state"].keys() == optimizer.state_dict()["state"].keys()
    for key, value in optimizer.state_dict()["state"].items():
        for name, tensor in value.items():
            assert torch.equal(fresh_opt.state_dict()["state"][key][name], tensor)


def test_rng_is_restored_as_saved(tmp_path: Path):
    model, optimizer, scheduler = setup()
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    ckpt.save_checkpoint(tmp_path / "step-0000001", model, optimizer, scheduler, LoopState(1))
    draws = (random.random(), float(np.random.rand()), torch.rand(3))
    ckpt.load_checkpoint(tmp_path / "step-0000001", model, optimizer, scheduler)
    again = (random.random(), float(np.random.rand()), torch.rand(3))
    assert draws[:2] == again[:2] and torch.equal(draws[2], again[2])


def test_training_continues_identically_after_a_round_trip(tmp_path: Path):
    model, optimizer, scheduler = setup()
    step(model, optimizer, scheduler)
    ckpt.save_checkpoint(tmp_path / "c", model, optimizer, scheduler, LoopState(1))
    for _ in range(2):  # straight on, dropout and data drawn from the saved random state
        step(model, optimizer, scheduler)
    straight = ckpt.trainable_state(model)

    resumed, opt, sched = setup()  # the same frozen base; untrained, no optimizer state
    ckpt.load_checkpoint(tmp_path / "c", resumed, opt, sched)
    for _ in range(2):
        step(resumed, opt, sched)
    again = ckpt.trainable_state(resumed)
    assert all(torch.equal(straight[k], again[k]) for k in straight)


def test_a_checkpoint_lacking_trainable_tensors_is_refused(tmp_path: Path):
    small = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(small.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    ckpt.save_checkpoint(tmp_path / "c", small, optimizer, scheduler, LoopState())
    model, opt, sched = setup()
    with pytest.raises(ValueError, match="checkpoint lacks"):
        ckpt.load_checkpoint(tmp_path / "c", model, opt, sched)


def test_is_complete_ignores_hidden_and_partial_folders(tmp_path: Path):
    done = save(tmp_path, 4)
    assert ckpt.is_complete(done)
    partial = tmp_path / "checkpoints" / "step-0000008"
    partial.mkdir()
    (partial / "trainable.safetensors").write_bytes(b"")
    assert not ckpt.is_complete(partial)
    hidden = tmp_path / "checkpoints" / ".step-0000012.tmp-1-abc"
    hidden.mkdir()
    for name in ckpt.FILES:
        (hidden / name).write_bytes(b"")
    assert not ckpt.is_complete(hidden)


def test_latest_checkpoint_is_the_highest_complete_step(tmp_path: Path):
    assert ckpt.latest_checkpoint(tmp_path) is None
    for step_no in (9, 10, 100):
        save(tmp_path, step_no)
    (tmp_path / "checkpoints" / "step-0000200").mkdir()  # incomplete: does not count
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-0000100"


def test_prune_keeps_the_newest_and_the_protected(tmp_path: Path):
    folders = [save(tmp_path, s) for s in (1, 2, 3, 4, 5)]
    ckpt.prune(tmp_path, keep=2, protect={folders[1]})
    left = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert left == ["step-0000002", "step-0000004", "step-0000005"]


def test_remove_partial_removes_only_hidden_temporary_folders(tmp_path: Path):
    done = save(tmp_path, 1)
    hidden = tmp_path / "checkpoints" / ".step-0000002.tmp-12345-abcdef"
    hidden.mkdir()
    (hidden / "optimizer.pt").write_bytes(b"half")
    ckpt.remove_partial(tmp_path)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [done.name]


def test_a_failed_save_leaves_no_checkpoint_that_counts(tmp_path: Path, monkeypatch):
    model, optimizer, scheduler = setup()

    def failing_save(obj, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", failing_save)
    with pytest.raises(OSError, match="No space"):
        ckpt.save_checkpoint(
            tmp_path / "checkpoints" / "step-0000001", model, optimizer, scheduler, LoopState(1)
        )
    assert ckpt.latest_checkpoint(tmp_path) is None
    assert list((tmp_path / "checkpoints").iterdir()) == []
