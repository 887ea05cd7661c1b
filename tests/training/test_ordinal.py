"""Ordinal losses for classify (data.loss): the formulas on tensors, the config, a tiny run."""

from __future__ import annotations

import functools
from typing import get_args

import pytest
import torch
import torch.nn.functional as F

from trimtab.errors import ConfigError
from trimtab.training import load_config, train
from trimtab.training import trainer as trainer_module
from trimtab.training.config import DataSection
from trimtab.training.loop import (
    CLASSIFY_LOSSES,
    Objective,
    classification_loss,
    cumulative_logits,
)


class Head(torch.nn.Module):
    """A 'model' whose logits are given: the Objective's classify branch on its own."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = torch.nn.Parameter(logits.clone())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        return type("Out", (), {"logits": self.logits})()


def batch(n: int, labels: list[int]) -> dict[str, torch.Tensor]:
    ids = torch.ones(n, 3, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": ids, "label": torch.tensor(labels)}


def test_the_config_and_the_loop_know_the_same_losses():
    assert get_args(DataSection.model_fields["loss"].annotation) == CLASSIFY_LOSSES
    assert DataSection().loss == "cross_entropy" and DataSection().ordinal_weight == 1.0


def test_cross_entropy_is_exactly_todays_objective():
    torch.manual_seed(0)
    logits = torch.randn(6, 5)
    labels = [0, 4, 2, 3, 1, 4]
    loss, correct, units = Objective(Head(logits), causal=False)(batch(6, labels))
    target = torch.tensor(labels)
    assert torch.equal(loss, F.cross_entropy(logits, target, reduction="sum"))
    assert int(correct) == int((logits.argmax(-1) == target).sum())
    assert float(units) == 6.0


def test_expected_penalises_a_far_wrong_prediction_more_than_a_near_one():
    # The true star is rank 4 (of 0..4) and gets the same probability in both rows, so the
    # cross-entropy is the same; the rest goes to rank 3 (near) or rank 0 (far).
    near = torch.tensor([[-9.0, -9.0, -9.0, 2.0, 0.0]])
    far = torch.tensor([[2.0, -9.0, -9.0, -9.0, 0.0]])
    label = torch.tensor([4])
    torch.testing.assert_close(F.cross_entropy(near, label), F.cross_entropy(far, label))
    near_loss, _ = classification_loss(near, label, "expected")
    far_loss, _ = classification_loss(far, label, "expected")
    assert far_loss > near_loss + 5.0
    # The penalty is weighted: weight 0 is the cross-entropy.
    plain, _ = classification_loss(far, label, "expected", ordinal_weight=0.0)
    torch.testing.assert_close(plain, F.cross_entropy(far, label, reduction="sum"))
    p = far.softmax(-1)[0]
    expected_rank = float((p * torch.arange(5.0)).sum())
    heavy, _ = classification_loss(far, label, "expected", ordinal_weight=2.0)
    torch.testing.assert_close(float(heavy), float(plain) + 2 * (expected_rank - 4) ** 2)


@pytest.mark.parametrize("loss", CLASSIFY_LOSSES)
def test_every_loss_has_a_finite_gradient_even_for_extreme_logits(loss):
    logits = torch.tensor([[80.0, -80.0, 0.0, 5.0, -3.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    logits.requires_grad_(True)
    total, _ = classification_loss(logits, torch.tensor([4, 2]), loss)
    total.backward()
    assert torch.isfinite(total) and logits.grad is not None
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_cumulative_is_lower_when_the_implied_rank_matches_the_label():
    label = torch.tensor([3])
    right = torch.tensor([[-4.0, -4.0, -1.0, 4.0, -1.0]])  # mass on rank 3
    off_by_one = torch.tensor([[-4.0, -1.0, 4.0, -1.0, -4.0]])  # on rank 2
    far = torch.tensor([[4.0, -1.0, -4.0, -4.0, -4.0]])  # on rank 0
    losses = [
        float(classification_loss(z, label, "cumulative")[0]) for z in (right, off_by_one, far)
    ]
    assert losses[0] < losses[1] < losses[2]


def test_cumulative_predicts_the_number_of_thresholds_passed():
    logits = torch.tensor(
        [
            [5.0, 0.0, 0.0, 0.0, 0.0],  # P(y > 0) < 1/2: no threshold passed -> 0
            [0.0, 0.0, 0.0, 0.0, 5.0],  # every threshold passed -> 4
            [1.5, 0.0, 0.0, 0.0, 1.6],  # bimodal: argmax is 4, the median (2 passed) is 2
        ]
    )
    s = cumulative_logits(logits)
    assert s.shape == (3, 4)
    passed = (s > 0).sum(-1)
    assert passed.tolist() == [0, 4, 2]
    # P(y > k) = sigma(s_k) is the softmax's tail mass, falling with k (rank-consistent).
    p = logits.softmax(-1)
    tails = torch.stack([p[:, k + 1 :].sum(-1) for k in range(4)], -1)
    torch.testing.assert_close(torch.sigmoid(s), tails)
    assert (tails[:, 1:] <= tails[:, :-1] + 1e-6).all()
    _, correct = classification_loss(logits, torch.tensor([0, 4, 2]), "cumulative")
    assert int(correct) == 3
    _, by_argmax = classification_loss(logits, torch.tensor([0, 4, 2]), "cross_entropy")
    assert int(by_argmax) == 2  # the bimodal row: argmax 4, not 2


def test_cumulative_with_two_labels_is_the_cross_entropy():
    torch.manual_seed(1)
    logits, labels = torch.randn(8, 2), torch.randint(0, 2, (8,))
    cumulative, _ = classification_loss(logits, labels, "cumulative")
    torch.testing.assert_close(cumulative, F.cross_entropy(logits, labels, reduction="sum"))


def test_objective_returns_the_loss_it_was_built_with():
    logits = torch.tensor([[2.0, -9.0, -9.0, -9.0, 0.0]])
    for loss in CLASSIFY_LOSSES:
        got, correct, units = Objective(Head(logits), causal=False, loss=loss)(batch(1, [4]))
        torch.testing.assert_close(got, classification_loss(logits, torch.tensor([4]), loss)[0])
        assert float(units) == 1.0 and int(correct) in (0, 1)


def test_an_ordinal_loss_outside_classify_is_refused_naming_data_loss(tmp_path):
    train_file = tmp_path / "train.jsonl"
    train_file.write_text('{"prompt": "a", "completion": " b"}\n' * 4)
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"data.train={train_file}", "data.task=sft", "data.loss=expected"])
    assert any(p.startswith("data.loss:") for p in e.value.problems)
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"data.train={train_file}", "data.ordinal_weight=-1"])
    assert any("data.ordinal_weight" in p for p in e.value.problems)
    ok = load_config(
        None,
        [f"data.train={train_file}", "data.task=classify", "data.loss=expected", "batch_size=4"],
    )
    assert ok.data.loss == "expected"


@pytest.mark.parametrize("loss", CLASSIFY_LOSSES)
def test_a_tiny_encoder_trains_and_saves_with_each_loss(
    tmp_path, reviews, tiny_bert_dir, monkeypatch, loss
):
    # The trainer builds the Objective with the config's loss: record what it built.
    built: list[Objective] = []

    def objective(*args, **kwargs):
        out = Objective(*args, **kwargs)
        built.append(out)
        return out

    monkeypatch.setattr(trainer_module, "Objective", functools.wraps(Objective)(objective))
    cfg = load_config(
        None,
        [
            f"data.train={reviews / 'train.jsonl'}",
            f"data.valid={reviews / 'valid.jsonl'}",
            f"model.name={tiny_bert_dir}",
            f"run_dir={tmp_path / 'run'}",
            "data.task=classify",
            f"data.loss={loss}",
            "method.name=full",
            "batch_size=8",
            "max_steps=3",
            "optim.lr=0.003",
        ],
    )
    result = train(cfg, progress=False)
    assert built and built[0].loss == loss
    assert (result.final / "model.safetensors").exists()
    assert 0.0 <= result.results["valid_accuracy"] <= 1.0
