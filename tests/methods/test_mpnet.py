"""The methods on an MPNet encoder (all-mpnet-base-v2's architecture, ``mpnet-base``).

MPNet differs from BERT where the methods look: its blocks share one relative attention bias
table (``encoder.relative_attention_bias``, outside the block list), its attention linears are
named ``q``/``k``/``v``/``o``, and its classification head reads the first token itself (no
pooler). Models are built tiny from a config (tests/models/tiny_mpnet.py), never downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import MPNetForSequenceClassification

from tests.models.tiny_mpnet import VOCAB, save_tiny_mpnet, tiny_mpnet_config
from trimtab.errors import TrimtabError
from trimtab.methods import (
    FrozenTrunk,
    MethodSpec,
    apply_method,
    method_for,
    trainable_parameters,
    transformer_layers,
)

# peft 0.21 calls an accessor that transformers 5 deprecates (PeftModel.from_pretrained)
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")

PAD = VOCAB["<pad>"]
BIAS = "mpnet.encoder.relative_attention_bias.weight"


def tiny_mpnet(seed: int = 0, layers: int = 3, **overrides: object):
    torch.manual_seed(seed)
    config = tiny_mpnet_config(num_hidden_layers=layers, num_labels=3, **overrides)
    return MPNetForSequenceClassification(config).eval()


def batch(lengths: tuple[int, ...] = (9, 6, 3), width: int = 9, seed: int = 1):
    """``<s> ... </s>`` rows right-padded with MPNet's pad id, and their attention mask."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(len(VOCAB) - 20, len(VOCAB), (len(lengths), width), generator=generator)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
        ids[row, 0], ids[row, length - 1] = VOCAB["<s>"], VOCAB["</s>"]
    return ids.masked_fill(mask == 0, PAD), mask


def trainable_names(model: torch.nn.Module) -> set[str]:
    return {name for name, param in model.named_parameters() if param.requires_grad}


# --- what trains ---------------------------------------------------------------------------


def test_full_trains_every_mpnet_parameter_including_the_shared_position_bias():
    model = apply_method(tiny_mpnet(), MethodSpec("full"), "classify")
    trainable, total = trainable_parameters(model)
    assert trainable == total and BIAS in trainable_names(model)


def test_the_layer_stack_of_mpnet_is_its_encoder_layer_list():
    model = tiny_mpnet(layers=3)
    assert transformer_layers(model) is model.mpnet.encoder.layer


@pytest.mark.parametrize("n", [0, 1, 3])
def test_freeze_trains_the_top_blocks_and_the_head_never_the_shared_bias_or_embeddings(n: int):
    model = apply_method(tiny_mpnet(layers=3), MethodSpec("freeze", trainable_layers=n), "classify")
    names = trainable_names(model)
    top = {f"mpnet.encoder.layer.{i}." for i in range(3 - n, 3)}
    assert {name for name in names if not name.startswith("classifier.")} == {
        name for name, _ in model.named_parameters() if name.startswith(tuple(top))
    }
    assert {"classifier.dense.weight", "classifier.out_proj.weight"} <= names
    assert BIAS not in names and not any(".embeddings." in name for name in names)


def test_freeze_refuses_more_layers_than_mpnet_has():
    with pytest.raises(TrimtabError, match="more than the 2 transformer layers"):
        apply_method(tiny_mpnet(layers=2), MethodSpec("freeze", trainable_layers=3), "classify")


def test_lora_on_mpnet_adapts_attention_and_feed_forward_and_trains_the_whole_head():
    wrapped = apply_method(tiny_mpnet(layers=2), MethodSpec("lora", lora_r=4), "classify")
    adapted = {name.split(".lora_A")[0] for name, _ in wrapped.named_parameters()
               if ".lora_A." in name}  # fmt: skip
    block = "base_model.model.mpnet.encoder.layer.{}."
    expected = {block.format(i) + leaf for i in range(2) for leaf in (
        "attention.attn.q", "attention.attn.k", "attention.attn.v", "attention.attn.o",
        "intermediate.dense", "output.dense")}  # fmt: skip
    assert adapted == expected  # all-linear: every block linear, none in the head
    trained = trainable_names(wrapped)
    head = {n for n in trained if ".classifier.modules_to_save." in n}
    assert {n.rsplit(".", 2)[-2] for n in head} == {"dense", "out_proj"}
    assert trained == head | {n for n in trained if "lora_" in n}


def test_lora_targets_of_mpnet_given_by_name_and_a_wrong_name_lists_its_linears():
    spec = MethodSpec("lora", lora_r=4, target_modules=["q", "v"])
    wrapped = apply_method(tiny_mpnet(), spec, "classify")
    leaves = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n in trainable_names(wrapped)
              if "lora_A" in n}  # fmt: skip
    assert leaves == {"q", "v"}
    wrong = MethodSpec("lora", target_modules=["q_proj"])
    with pytest.raises(TrimtabError, match=r"linear layers are named dense, k, o, out_proj, q, v"):
        apply_method(tiny_mpnet(), wrong, "classify")


# --- the frozen trunk ----------------------------------------------------------------------


def frozen(n: int, **overrides: object):
    model = apply_method(tiny_mpnet(**overrides), MethodSpec("freeze", trainable_layers=n),
                         "classify")  # fmt: skip
    return model.eval(), FrozenTrunk(model, n, "classify")


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_mpnet_frozen_trunk_top_on_features_equals_the_full_model(n: int):
    model, trunk = frozen(n)
    ids, mask = batch()
    assert (mask == 0).any()
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
        features = trunk.features(ids, mask)
        out = trunk.forward_top(features, mask, input_ids=ids)
    assert features.shape == ((3, 32) if n == 0 else (3, 9, 32))
    assert out.shape == expected.shape == (3, 3)
    assert torch.allclose(out, expected, atol=1e-5), (out - expected).abs().max()


def test_mpnet_features_cached_per_example_do_not_depend_on_the_batch():
    """Cached trimmed to each example's length, re-batched with more padding: same logits."""
    model, trunk = frozen(1)
    ids, mask = batch(lengths=(9, 6, 3), width=9)
    cached = [f[: int(m.sum())] for f, m in zip(trunk.features(ids, mask), mask)]
    order, width = [2, 1], 14
    new_ids = torch.full((2, width), PAD)
    new_mask = torch.zeros((2, width), dtype=torch.long)
    features = torch.full((2, width, 32), 123.0)  # padding positions hold garbage on purpose
    for row, i in enumerate(order):
        length = int(mask[i].sum())
        new_ids[row, :length], new_mask[row, :length] = ids[i, :length], 1
        features[row, :length] = cached[i]
    with torch.no_grad():
        out = trunk.forward_top(features, new_mask, input_ids=new_ids)
        expected = model(input_ids=new_ids, attention_mask=new_mask).logits
    assert torch.allclose(out, expected, atol=1e-5)


def test_mpnet_top_trains_only_what_freeze_left_trainable():
    model, trunk = frozen(1, hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5)
    model.train()
    ids, mask = batch()
    first, second = trunk.features(ids, mask), trunk.features(ids, mask)
    assert torch.equal(first, second) and not first.requires_grad  # no dropout, no grad
    trunk.forward_top(first, mask).sum().backward()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None}
    assert with_grad == trainable_names(model)


def test_frozen_trunk_supports_mpnet_and_refuses_a_trainable_shared_bias():
    model = apply_method(tiny_mpnet(), MethodSpec("freeze", trainable_layers=1), "classify")
    assert FrozenTrunk.supported(model)
    model.mpnet.encoder.relative_attention_bias.weight.requires_grad_(True)
    with pytest.raises(ValueError, match="must be frozen"):
        FrozenTrunk(model, 1, "classify")


def test_the_freeze_method_caches_mpnet_features_for_every_example():
    model = apply_method(tiny_mpnet(), MethodSpec("freeze", trainable_layers=1), "classify")
    method = method_for(MethodSpec("freeze", trainable_layers=1))

    class Example:
        def __init__(self, ids: list[int]):
            self.input_ids, self.features = ids, None

    examples = [Example([0, 7, 8, 2]), Example([0, 9, 2])]

    def collate(items: list[Example]) -> dict[str, torch.Tensor]:
        width = max(len(e.input_ids) for e in items)
        ids = torch.tensor([e.input_ids + [PAD] * (width - len(e.input_ids)) for e in items])
        return {"input_ids": ids, "attention_mask": (ids != PAD).long()}

    line = method.precompute(model, "classify", [examples], collate, bf16=False)
    assert line is not None and "2 examples" in line
    assert [tuple(e.features.shape) for e in examples] == [(4, 32), (3, 32)]


# --- trimtab train on a tiny MPNet folder --------------------------------------------------


@pytest.fixture(scope="module")
def tiny_mpnet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_mpnet(tmp_path_factory.mktemp("tiny-mpnet"))


def train_classifier(data: Path, model: Path, run: Path, method: str, *extra: str):
    from trimtab.training import load_config, train

    config = load_config(None, [
        f"data.train={data / 'train.jsonl'}", f"data.valid={data / 'valid.jsonl'}",
        f"model.name={model}", f"run_dir={run}", "data.task=classify", f"method.name={method}",
        "epochs=2", "batch_size=8", "optim.lr=0.003", "log_every=1", *extra,
    ])  # fmt: skip
    return train(config, progress=False)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_mpnet_trains_for_classify_and_its_loss_falls(
    method: str, tmp_path: Path, reviews: Path, tiny_mpnet_dir: Path
):
    result = train_classifier(reviews, tiny_mpnet_dir, tmp_path / "run", method, "epochs=4")
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    losses = [json.loads(line)["train_loss"] for line in metrics if "train_loss" in line]
    assert losses[-1] < losses[0]
    meta = json.loads((result.final / "trimtab.json").read_text())
    assert (meta["task"], meta["labels"]) == ("classify", ["1", "5"])


def test_freeze_on_mpnet_caches_the_trunk_and_moves_only_the_top(
    tmp_path: Path, reviews: Path, tiny_mpnet_dir: Path
):
    before = load_file(str(tiny_mpnet_dir / "model.safetensors"))
    result = train_classifier(reviews, tiny_mpnet_dir, tmp_path / "run", "freeze",
                              "method.trainable_layers=1")  # fmt: skip
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["feature_cache"] is True
    after = load_file(str(result.final / "model.safetensors"))
    frozen_keys = [k for k in after if k.startswith(("mpnet.embeddings.", "mpnet.encoder."))
                   and not k.startswith("mpnet.encoder.layer.1.")]  # fmt: skip
    assert "mpnet.encoder.relative_attention_bias.weight" in frozen_keys
    assert all(torch.equal(after[k], before[k]) for k in frozen_keys)  # the trunk never moved
    top = [k for k in after if k.startswith("mpnet.encoder.layer.1.")]
    assert top and any(not torch.equal(after[k], before[k]) for k in top)


# --- real weights --------------------------------------------------------------------------


@pytest.mark.real_model
@pytest.mark.parametrize("n", [0, 2])
def test_real_mpnet_base_frozen_trunk_equals_full_model(n: int):
    from transformers import AutoModelForSequenceClassification

    from trimtab.models import KNOWN_MODELS, ensure_weights, load_tokenizer
    from trimtab.models.archives import locate_piece

    archive = KNOWN_MODELS["mpnet-base"].archive
    assert archive is not None
    if any(locate_piece(r, p) is None for r, p in zip(archive.parts, archive.pieces)):
        pytest.skip(f"mpnet-base's part packages are not installed ({archive.install_command})")
    folder = ensure_weights("mpnet-base")
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=5).eval()
    model = apply_method(model, MethodSpec("freeze", trainable_layers=n), "classify")
    trunk = FrozenTrunk(model, n, "classify")
    tokenizer = load_tokenizer("mpnet-base")
    enc = tokenizer(["Great product.", "It broke after one day and nobody answered my emails."],
                    padding=True, return_tensors="pt")  # fmt: skip
    assert (enc.attention_mask == 0).any()
    with torch.no_grad():
        expected = model(**enc).logits
        out = trunk.forward_top(trunk.features(enc.input_ids, enc.attention_mask),
                                enc.attention_mask)  # fmt: skip
    assert torch.allclose(out, expected, atol=1e-5)
