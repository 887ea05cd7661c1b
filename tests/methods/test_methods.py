"""Tests for the methods (what trains), saving, merging and the frozen-trunk feature cache.

Every model is built tiny from a config (never downloaded) with a fixed seed, so a test can
build the same base model twice.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import (
    AutoModelForCausalLM,
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
)

from trimtab.errors import ConfigError, TrimtabError
from trimtab.methods import (
    FrozenTrunk,
    MethodSpec,
    apply_method,
    frozen_linears_to_bf16,
    merge_lora,
    method_for,
    save_trainable,
    trainable_parameters,
    transformer_layers,
)

# peft 0.21 calls an accessor that transformers 5 deprecates (PeftModel.from_pretrained)
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")

VOCAB = 300
LAYERS = 4


def llama_config(**overrides: object) -> LlamaConfig:
    values: dict[str, object] = dict(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, pad_token_id=0,
        bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    values.update(overrides)
    return LlamaConfig(**values)


def tiny_llama(seed: int = 0, **overrides: object) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(llama_config(**overrides)).eval()


def tiny_llama_classifier(seed: int = 0, **overrides: object) -> LlamaForSequenceClassification:
    torch.manual_seed(seed)
    return LlamaForSequenceClassification(llama_config(num_labels=3, **overrides)).eval()


def tiny_bert(seed: int = 0, **overrides: object) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=4,
        intermediate_size=64, num_labels=3, **overrides,
    )  # fmt: skip
    return BertForSequenceClassification(config).eval()


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=LAYERS,
        n_head=4,
        n_positions=64,
        bos_token_id=1,
        eos_token_id=2,
    )
    return GPT2LMHeadModel(config).eval()


CLASSIFIERS: dict[str, Callable[..., torch.nn.Module]] = {
    "llama": tiny_llama_classifier,
    "bert": tiny_bert,
}


def batch(seed: int = 1, lengths: tuple[int, ...] = (9, 6, 3), width: int = 9):
    """Right-padded token ids (pad id 0, never inside a sequence) and their attention mask."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (len(lengths), width), generator=generator)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    return ids.masked_fill(mask == 0, 0), mask


def trainable_names(model: torch.nn.Module) -> set[str]:
    return {name for name, param in model.named_parameters() if param.requires_grad}


def logits(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def perturb_adapter(model: torch.nn.Module) -> None:
    """LoRA B starts at zero (the adapter is a no-op); give it, and a saved head, real values."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)


# --- full ----------------------------------------------------------------------------------


@pytest.mark.parametrize("build", [tiny_llama, tiny_bert], ids=["llama", "bert"])
def test_full_trains_every_parameter(build: Callable[[], torch.nn.Module]) -> None:
    model = build()
    for param in model.parameters():
        param.requires_grad_(False)
    task = "sft" if isinstance(model, LlamaForCausalLM) else "classify"
    assert apply_method(model, MethodSpec("full"), task) is model
    trainable, total = trainable_parameters(model)
    assert trainable == total == sum(p.numel() for p in model.parameters())


def test_full_keeps_tied_embeddings_tied() -> None:
    model = apply_method(tiny_llama(), MethodSpec("full"), "sft")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.config.tie_word_embeddings


# --- freeze --------------------------------------------------------------------------------


def test_freeze_two_layers_trains_top_blocks_norm_and_head_only() -> None:
    model = apply_method(tiny_llama(), MethodSpec("freeze", trainable_layers=2), "sft")
    names = trainable_names(model)
    blocks = {n.split(".")[2] for n in names if n.startswith("model.layers.")}
    assert blocks == {"2", "3"}
    assert names - {n for n in names if n.startswith("model.layers.")} == {
        "model.norm.weight", "lm_head.weight",
    }  # fmt: skip
    # whole blocks: every parameter of layers 2 and 3, none of 0 and 1
    assert all(p.requires_grad for p in model.model.layers[2].parameters())
    assert not any(p.requires_grad for p in model.model.layers[1].parameters())


def test_freeze_zero_layers_trains_only_final_norm_and_head() -> None:
    model = apply_method(tiny_llama(), MethodSpec("freeze", trainable_layers=0), "sft")
    assert trainable_names(model) == {"model.norm.weight", "lm_head.weight"}


def test_freeze_llama_classifier_trains_top_blocks_norm_and_score() -> None:
    model = apply_method(
        tiny_llama_classifier(), MethodSpec("freeze", trainable_layers=2), "classify"
    )
    names = trainable_names(model)
    assert {n for n in names if not n.startswith("model.layers.")} == {
        "model.norm.weight", "score.weight",
    }  # fmt: skip
    assert {n.split(".")[2] for n in names if n.startswith("model.layers.")} == {"2", "3"}


@pytest.mark.parametrize("n", [0, 2])
def test_freeze_bert_trains_top_blocks_pooler_and_classifier(n: int) -> None:
    model = apply_method(tiny_bert(), MethodSpec("freeze", trainable_layers=n), "classify")
    names = trainable_names(model)
    head = {
        "bert.pooler.dense.weight", "bert.pooler.dense.bias",
        "classifier.weight", "classifier.bias",
    }  # fmt: skip
    assert head <= names
    blocks = {n.split(".")[3] for n in names if n.startswith("bert.encoder.layer.")}
    assert blocks == {str(i) for i in range(LAYERS - n, LAYERS)}
    assert names - head == {n for n in names if n.startswith("bert.encoder.layer.")}
    assert not any(p.requires_grad for p in model.bert.embeddings.parameters())


def test_freeze_unties_tied_head_so_embeddings_stay_frozen() -> None:
    model = tiny_llama()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    ids, mask = batch()
    before = logits(model, ids, mask)

    apply_method(model, MethodSpec("freeze", trainable_layers=0), "sft")

    assert model.lm_head.weight is not model.model.embed_tokens.weight
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert not model.config.tie_word_embeddings
    assert model.lm_head.weight.requires_grad
    assert not model.model.embed_tokens.weight.requires_grad
    assert torch.equal(logits(model, ids, mask), before)  # untying alone changes nothing

    embeddings = model.model.embed_tokens.weight.detach().clone()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    model(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()
    optimizer.step()
    assert torch.equal(model.model.embed_tokens.weight, embeddings)
    assert not torch.equal(model.lm_head.weight, embeddings)


def test_untied_head_survives_save_and_reload(tmp_path: Path) -> None:
    model = apply_method(tiny_llama(), MethodSpec("freeze", trainable_layers=1), "sft")
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)  # as training would: head and embeddings now differ
    save_trainable(model, tmp_path / "final")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "final").eval()
    assert loaded.lm_head.weight is not loaded.model.embed_tokens.weight
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    assert torch.equal(loaded.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_freeze_works_generically_on_gpt2() -> None:
    model = apply_method(tiny_gpt2(), MethodSpec("freeze", trainable_layers=1), "sft")
    names = trainable_names(model)
    assert {n.split(".")[2] for n in names if n.startswith("transformer.h.")} == {"3"}
    assert {n for n in names if not n.startswith("transformer.h.")} == {
        "transformer.ln_f.weight", "transformer.ln_f.bias", "lm_head.weight",
    }  # fmt: skip
    assert not model.transformer.wte.weight.requires_grad


# --- lora ----------------------------------------------------------------------------------


def test_lora_causal_lm_trains_only_adapter_matrices() -> None:
    model = apply_method(tiny_llama(), MethodSpec("lora", lora_r=4), "sft")
    assert isinstance(model, PeftModel)
    names = trainable_names(model)
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in names}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    trainable, total = trainable_parameters(model)
    assert 0 < trainable < 0.35 * total  # tiny model; on SmolLM2 r=16 it is about 3%
    assert model.peft_config["default"].r == 4


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_lora_classifier_trains_adapters_and_the_whole_head(family: str) -> None:
    model = apply_method(CLASSIFIERS[family](), MethodSpec("lora"), "classify")
    head = "score" if family == "llama" else "classifier"
    names = trainable_names(model)
    others = {n for n in names if ".lora_A." not in n and ".lora_B." not in n}
    assert others and all(f".{head}.modules_to_save." in n for n in others)
    head_module = model.base_model.model.get_submodule(head).modules_to_save["default"]
    assert all(p.requires_grad for p in head_module.parameters())


def test_lora_targets_given_by_name() -> None:
    model = apply_method(
        tiny_llama(), MethodSpec("lora", target_modules=["q_proj", "v_proj"]), "sft"
    )
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable_names(model)}
    assert adapted == {"q_proj", "v_proj"}


@pytest.mark.parametrize("family", ["causal", "llama", "bert"])
def test_save_trainable_lora_writes_peft_adapter_that_reloads(family: str, tmp_path: Path) -> None:
    build = tiny_llama if family == "causal" else CLASSIFIERS[family]
    task = "sft" if family == "causal" else "classify"
    fresh_base = build()
    model = apply_method(build(), MethodSpec("lora", lora_r=4), task)
    perturb_adapter(model)
    ids, mask = batch()
    expected = logits(model, ids, mask)
    assert not torch.allclose(expected, logits(fresh_base, ids, mask))  # the adapter does something

    save_trainable(model, tmp_path / "adapter")

    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files
    assert not files & {"model.safetensors", "pytorch_model.bin", "adapter_model.bin"}
    loaded = PeftModel.from_pretrained(fresh_base, tmp_path / "adapter").eval()
    torch.testing.assert_close(logits(loaded, ids, mask), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["full", "freeze"])
def test_save_trainable_full_model_writes_loadable_hf_folder(method: str, tmp_path: Path) -> None:
    model = apply_method(tiny_llama(), MethodSpec(method, trainable_layers=2), "sft")
    save_trainable(model, tmp_path / "model")
    files = {p.name for p in (tmp_path / "model").iterdir()}
    assert {"config.json", "model.safetensors"} <= files
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model").eval()
    assert isinstance(loaded, LlamaForCausalLM)
    ids, mask = batch()
    torch.testing.assert_close(logits(loaded, ids, mask), logits(model, ids, mask), rtol=0, atol=0)


@pytest.mark.parametrize("family", ["causal", "llama", "bert"])
def test_merge_lora_gives_plain_model_with_adapter_outputs(family: str) -> None:
    build = tiny_llama if family == "causal" else CLASSIFIERS[family]
    task = "sft" if family == "causal" else "classify"
    base_logits = logits(build(), *batch())
    model = apply_method(build(), MethodSpec("lora", lora_r=4), task)
    perturb_adapter(model)
    ids, mask = batch()
    expected = logits(model, ids, mask)
    assert (expected - base_logits).abs().max() > 1e-2  # the adapter is no no-op

    merged = merge_lora(model)

    assert not isinstance(merged, PeftModel)
    assert type(merged) is type(build())
    assert not any("lora_" in n or "modules_to_save" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(logits(merged, ids, mask), expected, rtol=0, atol=1e-5)


def test_merge_lora_refuses_a_model_without_adapter() -> None:
    with pytest.raises(TrimtabError, match="without --merge"):
        merge_lora(tiny_llama())


# --- transformer_layers --------------------------------------------------------------------


def test_transformer_layers_finds_the_block_list() -> None:
    llama, bert, gpt2 = tiny_llama(), tiny_bert(), tiny_gpt2()
    assert transformer_layers(llama) is llama.model.layers
    assert transformer_layers(bert) is bert.bert.encoder.layer
    assert transformer_layers(gpt2) is gpt2.transformer.h


@pytest.mark.parametrize("task", ["sft", "classify"])
def test_transformer_layers_through_a_peft_wrapper(task: str) -> None:
    base = tiny_llama() if task == "sft" else tiny_bert()
    expected = base.model.layers if task == "sft" else base.bert.encoder.layer
    wrapped = apply_method(base, MethodSpec("lora"), task)
    assert isinstance(wrapped, PeftModel)
    assert transformer_layers(wrapped) is expected
    assert len(transformer_layers(wrapped)) == LAYERS


def test_transformer_layers_of_a_model_without_blocks_is_an_error() -> None:
    with pytest.raises(TrimtabError, match="no list of transformer blocks"):
        transformer_layers(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)))


# --- bad options ---------------------------------------------------------------------------


def test_freeze_more_layers_than_the_model_has_is_a_user_error() -> None:
    message = r"trainable_layers: 5 is more than the 4 .*choose 0 to 4"
    with pytest.raises(TrimtabError, match=message):
        apply_method(tiny_llama(), MethodSpec("freeze", trainable_layers=5), "sft")


def test_lora_targets_that_match_nothing_are_a_user_error() -> None:
    spec = MethodSpec("lora", target_modules=["query_key_value"])
    with pytest.raises(TrimtabError) as caught:
        apply_method(tiny_llama(), spec, "sft")
    message = str(caught.value)
    assert "query_key_value" in message and "matches no module" in message
    assert "q_proj" in message  # says what the names are


def test_bad_options_are_all_reported_at_once() -> None:
    spec = MethodSpec("lora", lora_r=0, lora_dropout=1.5, target_modules=[])
    with pytest.raises(ConfigError) as caught:
        apply_method(tiny_llama(), spec, "sft")
    assert [p.split(":")[0] for p in caught.value.problems] == [
        "lora_r", "lora_dropout", "target_modules",
    ]  # fmt: skip
    assert isinstance(caught.value, TrimtabError)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (MethodSpec("qlora"), "unknown method 'qlora'"),  # type: ignore[arg-type]
        (MethodSpec("freeze", trainable_layers=-1), "trainable_layers: must be"),
    ],
)
def test_invalid_method_options_are_user_errors(spec: MethodSpec, match: str) -> None:
    with pytest.raises(TrimtabError, match=match):
        apply_method(tiny_llama(), spec, "sft")


def test_task_that_does_not_fit_the_model_is_a_user_error() -> None:
    with pytest.raises(TrimtabError, match="task sft needs a model with a language-model head"):
        apply_method(tiny_bert(), MethodSpec("full"), "sft")
    with pytest.raises(TrimtabError, match="classify needs a model with a classification head"):
        apply_method(tiny_llama(), MethodSpec("lora"), "classify")


# --- FrozenTrunk ---------------------------------------------------------------------------

FAMILIES = ["llama-causal", "llama-classify", "bert-classify"]


def frozen(family: str, n: int, **overrides: object) -> tuple[torch.nn.Module, FrozenTrunk]:
    build = {"llama-causal": tiny_llama, "llama-classify": tiny_llama_classifier,
             "bert-classify": tiny_bert}[family]  # fmt: skip
    task = "sft" if family == "llama-causal" else "classify"
    model = apply_method(build(**overrides), MethodSpec("freeze", trainable_layers=n), task)
    return model.eval(), FrozenTrunk(model, n, task)


def reference(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The full model's output: logits for classification, final hidden states for a causal LM."""
    with torch.no_grad():
        if isinstance(model, LlamaForCausalLM):
            return model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return model(input_ids=ids, attention_mask=mask).logits


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("n", [0, 1, 2])
@pytest.mark.parametrize("family", FAMILIES)
def test_frozen_trunk_top_on_features_equals_full_model(
    family: str, n: int, attention: str
) -> None:
    model, trunk = frozen(family, n, attn_implementation=attention)
    ids, mask = batch()
    expected = reference(model, ids, mask)

    with torch.no_grad():
        out = trunk.forward_top(trunk.features(ids, mask), mask, input_ids=ids)

    assert out.shape == expected.shape
    assert torch.allclose(out, expected, atol=1e-5), (out - expected).abs().max()
    if family != "llama-causal":
        assert out.shape == (3, 3)  # [batch, num_labels]


@pytest.mark.parametrize("family", FAMILIES)
def test_frozen_trunk_feature_shapes(family: str) -> None:
    ids, mask = batch()
    _, head_only = frozen(family, 0)
    _, top_two = frozen(family, 2)
    pooled = family != "llama-causal"  # classification caches one vector per example at N=0
    assert head_only.features(ids, mask).shape == ((3, 32) if pooled else (3, 9, 32))
    assert top_two.features(ids, mask).shape == (3, 9, 32)


@pytest.mark.parametrize("family", FAMILIES)
def test_features_cached_per_example_do_not_depend_on_the_batch(family: str) -> None:
    """Cache each example's features trimmed to its length, re-batch them padded differently."""
    model, trunk = frozen(family, 1)
    ids, mask = batch(lengths=(9, 6, 3), width=9)
    cached = [f[: int(m.sum())] for f, m in zip(trunk.features(ids, mask), mask, strict=True)]

    order, width = [2, 1], 12  # another batch: other neighbours, more padding
    new_ids = torch.zeros((2, width), dtype=torch.long)
    new_mask = torch.zeros((2, width), dtype=torch.long)
    features = torch.full((2, width, 32), 123.0)  # padding positions hold garbage on purpose
    for row, i in enumerate(order):
        length = int(mask[i].sum())
        new_ids[row, :length] = ids[i, :length]
        new_mask[row, :length] = 1
        features[row, :length] = cached[i]

    with torch.no_grad():
        out = trunk.forward_top(features, new_mask, input_ids=new_ids)
    expected = reference(model, new_ids, new_mask)
    if family == "llama-causal":  # only real tokens matter (the loss ignores padding)
        out, expected = out[new_mask.bool()], expected[new_mask.bool()]
    assert torch.allclose(out, expected, atol=1e-5)


def test_features_run_in_eval_mode_without_grad_and_top_trains() -> None:
    model, trunk = frozen("bert-classify", 1, hidden_dropout_prob=0.5,
                          attention_probs_dropout_prob=0.5)  # fmt: skip
    model.train()
    ids, mask = batch()
    first, second = trunk.features(ids, mask), trunk.features(ids, mask)
    assert torch.equal(first, second)  # no dropout in the trunk
    assert not first.requires_grad
    assert model.training and model.bert.encoder.layer[0].training  # mode restored

    trunk.forward_top(first, mask).sum().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == trainable_names(model)


def test_llama_classify_top_pools_the_token_the_model_pools() -> None:
    """HF pools the rightmost non-pad token: with input_ids, exactly; without, the mask's last."""
    model, trunk = frozen("llama-classify", 1)
    ids, mask = batch()
    features = trunk.features(ids, mask)
    with torch.no_grad():
        expected = reference(model, ids, mask)
        assert torch.allclose(trunk.forward_top(features, mask), expected, atol=1e-5)

        ends_with_pad = ids.clone()
        ends_with_pad[0, 8] = 0  # pad id as a real (attended) last token, e.g. pad == eos
        features = trunk.features(ends_with_pad, mask)
        expected = reference(model, ends_with_pad, mask)
        exact = trunk.forward_top(features, mask, input_ids=ends_with_pad)
        assert torch.allclose(exact, expected, atol=1e-5)
        assert not torch.allclose(trunk.forward_top(features, mask)[0], expected[0], atol=1e-5)


def test_features_under_bf16_autocast_feed_the_fp32_top() -> None:
    model = apply_method(tiny_llama(), MethodSpec("freeze", trainable_layers=1), "sft")
    trunk = FrozenTrunk(model, 1, "sft", autocast_dtype=torch.bfloat16)
    ids, mask = batch()
    features = trunk.features(ids, mask).to(torch.bfloat16)  # as a cache would store them
    out = trunk.forward_top(features, mask)
    assert out.dtype == torch.float32
    expected = reference(model, ids, mask)
    assert torch.allclose(out, expected, atol=0.1)  # bf16 rounding only


def test_frozen_trunk_refuses_a_trunk_that_still_trains() -> None:
    model = tiny_llama()  # not frozen
    with pytest.raises(ValueError, match="must be frozen"):
        FrozenTrunk(model, 1, "sft")


def test_frozen_trunk_rejects_too_many_layers() -> None:
    model = apply_method(tiny_bert(), MethodSpec("freeze", trainable_layers=4), "classify")
    with pytest.raises(TrimtabError, match="outside 0 to 4"):
        FrozenTrunk(model, 5, "classify")


def test_frozen_trunk_supports_llama_and_bert_only() -> None:
    assert FrozenTrunk.supported(tiny_llama())
    assert FrozenTrunk.supported(tiny_llama_classifier())
    assert FrozenTrunk.supported(tiny_bert())
    gpt2 = apply_method(tiny_gpt2(), MethodSpec("freeze", trainable_layers=1), "sft")
    assert not FrozenTrunk.supported(gpt2)
    assert not FrozenTrunk.supported(tiny_bert(is_decoder=True))
    with pytest.raises(ValueError, match="does not support GPT2LMHeadModel"):
        FrozenTrunk(gpt2, 1, "sft")


def test_frozen_trunk_does_not_take_a_lora_model() -> None:
    wrapped = apply_method(tiny_llama(), MethodSpec("lora"), "sft")
    assert not FrozenTrunk.supported(wrapped)


# --- package -------------------------------------------------------------------------------


def test_importing_trimtab_methods_does_not_import_torch() -> None:
    code = (
        "import sys, trimtab.methods as m; m.MethodSpec('freeze', trainable_layers=2); "
        "assert 'torch' not in sys.modules and 'peft' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


@pytest.mark.real_model
@pytest.mark.parametrize("n", [0, 2])
def test_real_minilm_frozen_trunk_equals_full_model(n: int) -> None:
    from transformers import AutoModelForSequenceClassification

    from trimtab.models import load_tokenizer, resolve_model

    folder = resolve_model("minilm-l6").path
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=5).eval()
    model = apply_method(model, MethodSpec("freeze", trainable_layers=n), "classify")
    trunk = FrozenTrunk(model, n, "classify")
    tokenizer = load_tokenizer("minilm-l6")
    enc = tokenizer(["Great product.", "It broke after one day and nobody answered my emails."],
                    padding=True, return_tensors="pt")  # fmt: skip
    assert (enc.attention_mask == 0).any()
    with torch.no_grad():
        expected = model(**enc).logits
        out = trunk.forward_top(trunk.features(enc.input_ids, enc.attention_mask),
                                enc.attention_mask)  # fmt: skip
    assert torch.allclose(out, expected, atol=1e-5)


# --- LoRA options and the method objects ---------------------------------------------------


def test_lora_base_weights_in_bf16_give_the_same_autocast_outputs() -> None:
    model = apply_method(tiny_llama(), MethodSpec("lora", lora_r=4), "sft").eval()
    ids = torch.randint(5, VOCAB, (2, 12))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = model(input_ids=ids).logits.float()
        frozen_linears_to_bf16(model)
        after = model(input_ids=ids).logits.float()
    assert torch.equal(before, after)
    assert model.get_input_embeddings().weight.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)


def test_every_peft_lora_option_reaches_the_lora_config() -> None:
    spec = MethodSpec(
        "lora",
        lora_r=4,
        lora_alpha=8,
        lora_dropout=0.1,
        lora_bias="lora_only",
        use_rslora=True,
        use_dora=True,
        init_lora_weights="gaussian",
        modules_to_save=["norm"],
    )
    config = apply_method(tiny_llama(), spec, "sft").peft_config["default"]
    assert (config.r, config.lora_alpha, config.lora_dropout, config.bias) == (
        4,
        8,
        0.1,
        "lora_only",
    )
    assert (config.use_rslora, config.use_dora, config.init_lora_weights) == (
        True,
        True,
        "gaussian",
    )
    assert "norm" in config.modules_to_save


def test_modules_to_save_add_to_the_classification_head() -> None:
    model = apply_method(
        tiny_llama_classifier(), MethodSpec("lora", modules_to_save=["norm"]), "classify"
    )
    saved = set(model.peft_config["default"].modules_to_save)
    assert {"score", "norm"} <= saved
    assert any("score" in n for n in trainable_names(model))
    assert any("norm.modules_to_save" in n for n in trainable_names(model))


def test_dora_trains_its_magnitude_and_lowers_the_loss() -> None:
    model = apply_method(tiny_llama(), MethodSpec("lora", lora_r=4, use_dora=True), "sft")
    assert any("lora_magnitude_vector" in n for n in trainable_names(model))
    model.train()
    ids = torch.randint(5, VOCAB, (4, 10), generator=torch.Generator().manual_seed(3))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.01)
    losses = []
    for _ in range(10):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_bad_lora_options_are_each_reported() -> None:
    problems = MethodSpec(
        "lora",
        lora_r=0,
        lora_alpha=0,
        lora_dropout=1.0,
        target_modules=[],
        lora_bias="some",  # type: ignore[arg-type]
        init_lora_weights="magic",
        modules_to_save=[""],
    ).problems()
    for key in (
        "lora_r",
        "lora_alpha",
        "lora_dropout",
        "target_modules",
        "lora_bias",
        "init_lora_weights",
        "modules_to_save",
    ):
        assert any(p.startswith(f"{key}:") for p in problems), key
    assert len(problems) == 7


def test_a_method_object_per_name_owns_its_preparation() -> None:
    lora = method_for(MethodSpec("lora", lora_r=4))
    model = lora.apply(tiny_llama(), "sft")
    lora.prepare(model, bf16=True)
    frozen = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert any(w.dtype == torch.bfloat16 for w in frozen if not w.requires_grad)
    assert lora.apply(model, "sft") is model  # an adapter already there is continued

    freeze = method_for(MethodSpec("freeze", trainable_layers=1))
    bert = freeze.apply(tiny_bert(), "classify")
    ids, mask = batch()
    items = [_Item(row[: int(m.sum())].tolist()) for row, m in zip(ids, mask)]
    collate = lambda group: _pad(group)  # noqa: E731
    assert freeze.precompute(bert, "classify", [items], collate, bf16=False)
    extras = freeze.extras(items)
    assert extras["features"].shape == (3, 9, 32)  # the top block's input, padded again
    with torch.no_grad():
        top = freeze.top.forward_top(extras["features"], mask, ids)
    torch.testing.assert_close(top, logits(bert, ids, mask), rtol=1e-5, atol=1e-5)
    assert method_for(MethodSpec("full")).extras(items) == {}


class _Item:
    def __init__(self, ids: list[int]) -> None:
        self.input_ids, self.features = ids, None


def _pad(group: list[_Item]) -> dict[str, torch.Tensor]:
    width = max(len(e.input_ids) for e in group)
    ids = torch.tensor([e.input_ids + [0] * (width - len(e.input_ids)) for e in group])
    mask = torch.tensor([[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in group])
    return {"input_ids": ids, "attention_mask": mask}
