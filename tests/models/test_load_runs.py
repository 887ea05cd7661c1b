"""Fine-tuned runs load through ``load_model`` with the logits the trained model had.

Each run is written the way the trainer exports ``final/`` (``save_trainable``, the tokenizer,
``trimtab.json``) from a tiny model whose trainable weights were moved off their initial values,
so an adapter that failed to load (or a head left at random) would change the logits.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from trimtab.errors import TrimtabError
from trimtab.methods import MethodSpec, apply_method, save_trainable
from trimtab.models import load_model, resolve_model
from trimtab.models.tasks import Task

from .test_loading import save_with_tokenizer, tiny_bert

LABELS = ["1", "5"]
TEXTS = ["Great product, works as described", "It broke after one day"]


def _write_run(
    run: Path, base: Path, task: Task, method: str, *, labels: list[str] | None = None
) -> torch.Tensor:
    """A run folder with a trained-looking final/; returns the trained model's logits."""
    loaded = load_model(str(base), task, labels=labels)
    model = apply_method(loaded.model, MethodSpec(method), task)
    torch.manual_seed(1)
    with torch.no_grad():  # as if trained: every trainable weight moves
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.05)
    final = run / "final"
    save_trainable(model, final)
    loaded.tokenizer.save_pretrained(final)
    meta = {"base_model": str(base), "task": task, "method": method, "labels": labels}
    (final / "trimtab.json").write_text(json.dumps(meta))
    (run / "run.json").write_text(json.dumps(meta | {"status": "completed"}))
    return _logits(model, loaded.tokenizer)


def _logits(model: torch.nn.Module, tokenizer) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits


@pytest.fixture(scope="module")
def lora_sft(tmp_path_factory, tiny_llama_dir: Path) -> tuple[Path, torch.Tensor]:
    run = tmp_path_factory.mktemp("lora-sft")
    return run, _write_run(run, tiny_llama_dir, "sft", "lora")


@pytest.fixture(scope="module")
def full_sft(tmp_path_factory, tiny_llama_dir: Path) -> tuple[Path, torch.Tensor]:
    run = tmp_path_factory.mktemp("full-sft")
    return run, _write_run(run, tiny_llama_dir, "sft", "full")


@pytest.fixture(scope="module")
def lora_classify(tmp_path_factory, tiny_tokenizer_dir: Path) -> tuple[Path, torch.Tensor]:
    # MiniLM's shape: a BERT with its pooler (frozen under LoRA, so it must come from the base)
    base = tmp_path_factory.mktemp("tiny-bert-pooled")
    save_with_tokenizer(tiny_bert(tiny_tokenizer_dir), tiny_tokenizer_dir, base)
    run = tmp_path_factory.mktemp("lora-classify")
    return run, _write_run(run, base, "classify", "lora", labels=LABELS)


@pytest.mark.parametrize("adapter", ["merge", "train", "keep"])
@pytest.mark.parametrize("where", ["run", "final"])
def test_lora_sft_run_loads_with_the_trained_logits_in_every_adapter_mode(
    lora_sft, adapter: str, where: str
):
    run, expected = lora_sft
    loaded = load_model(run if where == "run" else run / "final", "sft", adapter=adapter)
    assert torch.allclose(_logits(loaded.model, loaded.tokenizer), expected, atol=1e-5)
    assert loaded.run_meta is not None and loaded.run_meta["method"] == "lora"
    assert loaded.source_path == run / "final"


def test_lora_run_merged_is_a_plain_transformers_model(lora_sft):
    from peft import PeftModel

    loaded = load_model(lora_sft[0], "sft", adapter="merge")
    assert not isinstance(loaded.model, PeftModel)
    assert not any("lora_" in name for name, _ in loaded.model.named_parameters())


def test_lora_run_loaded_to_train_has_trainable_lora_parameters_only(lora_sft):
    loaded = load_model(lora_sft[0], "sft", adapter="train")
    trainable = [name for name, p in loaded.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert loaded.model.training


def test_lora_run_kept_for_inference_has_nothing_trainable_and_is_in_eval_mode(lora_sft):
    loaded = load_model(lora_sft[0], "sft", adapter="keep")
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert not loaded.model.training


@pytest.mark.parametrize("adapter", ["merge", "train", "keep"])
def test_full_run_loads_its_own_weights_with_the_trained_logits(full_sft, adapter: str):
    run, expected = full_sft
    loaded = load_model(run, "sft", adapter=adapter)
    assert loaded.kind == "decoder" and loaded.model.dtype == torch.float32
    assert torch.allclose(_logits(loaded.model, loaded.tokenizer), expected, atol=1e-5)


@pytest.mark.parametrize("adapter", ["merge", "train", "keep"])
def test_classify_lora_run_loads_its_head_and_labels_with_the_trained_logits(
    lora_classify, adapter: str
):
    run, expected = lora_classify
    loaded = load_model(run, "classify", adapter=adapter)
    assert loaded.labels == LABELS and loaded.kind == "encoder"
    assert loaded.model.config.id2label == dict(enumerate(LABELS))
    assert torch.allclose(_logits(loaded.model, loaded.tokenizer), expected, atol=1e-5)


def test_classify_run_loaded_to_train_trains_the_adapter_and_the_head(lora_classify):
    loaded = load_model(lora_classify[0], "classify", adapter="train")
    trainable = [name for name, p in loaded.model.named_parameters() if p.requires_grad]
    assert any("lora_" in name for name in trainable)
    assert any("classifier" in name for name in trainable)


def test_run_loaded_for_another_task_is_a_user_error(lora_sft, lora_classify):
    with pytest.raises(TrimtabError, match="fine-tuned for task sft; .* for task classify"):
        load_model(lora_sft[0], "classify", labels=LABELS)
    with pytest.raises(TrimtabError, match="fine-tuned for task classify"):
        load_model(lora_classify[0], "sft")


def test_classify_run_with_other_labels_is_a_user_error(lora_classify):
    with pytest.raises(TrimtabError, match="has the labels"):
        load_model(lora_classify[0], "classify", labels=["a", "b"])


def test_sft_run_loads_for_language_modelling_too(lora_sft):
    run, expected = lora_sft
    loaded = load_model(run, "lm")
    assert torch.allclose(_logits(loaded.model, loaded.tokenizer), expected, atol=1e-5)


def test_unknown_adapter_mode_is_a_user_error(lora_sft):
    with pytest.raises(TrimtabError, match="unknown adapter mode 'fold'"):
        load_model(lora_sft[0], "sft", adapter="fold")  # type: ignore[arg-type]


@pytest.mark.parametrize("where", ["run", "final"])
def test_run_folder_resolves_to_its_final_folder_with_its_meta(lora_sft, where: str):
    run = lora_sft[0]
    resolved = resolve_model(run if where == "run" else run / "final")
    assert resolved.source == "run" and resolved.path == (run / "final").resolve()
    assert resolved.run_meta is not None and resolved.run_meta["task"] == "sft"
    assert resolved.name == run.name


def test_run_without_final_is_a_user_error_that_says_training_has_not_completed(tmp_path: Path):
    (tmp_path / "run.json").write_text(json.dumps({"status": "running"}))
    with pytest.raises(TrimtabError, match="no fine-tuned model here"):
        resolve_model(tmp_path)


def test_lora_run_whose_base_is_gone_fails_when_resolved(lora_sft, tmp_path: Path):
    import shutil

    run = tmp_path / "moved"
    shutil.copytree(lora_sft[0], run)
    meta = json.loads((run / "final" / "trimtab.json").read_text())
    (run / "final" / "trimtab.json").write_text(json.dumps(meta | {"base_model": "no-such"}))
    with pytest.raises(TrimtabError, match="unknown model 'no-such'"):
        resolve_model(run)
