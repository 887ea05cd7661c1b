"""``trimtab export``, and the claim that a LoRA run's final/ loads unchanged in PEFT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from trimtab.errors import OutputExistsError, TrimtabError
from trimtab.models.runs import write_meta
from trimtab.training import load_config, train
from trimtab.training.export import export


def fake_run(path: Path) -> Path:
    """A run folder whose final/ holds a (pretend) full model: enough for a copy export."""
    final = path / "final"
    final.mkdir(parents=True)
    (final / "model.safetensors").write_bytes(b"weights")
    (final / "README.md").write_text("# card\n")
    write_meta(final, {"base_model": "tiny", "task": "sft", "method": "full"})
    (path / "run.json").write_text(json.dumps({"status": "completed"}))
    return path


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> Path:
    """A tiny LoRA sft run, trained 3 steps in fp32 (the adapter moved away from zero)."""
    root = tmp_path_factory.mktemp("lora")
    rows = [
        {"prompt": f"review {i}: {'great' if i % 2 else 'awful'}\n\n###\n\n", "completion": " ok"}
        for i in range(32)
    ]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = load_config(
        None,
        [
            f"data.train={root / 'train.jsonl'}",
            f"model.name={tiny_llama_dir}",
            f"run_dir={root / 'run'}",
            "method.name=lora",
            "method.init_lora_weights=gaussian",  # B != 0 from the start: the adapter counts
            "max_steps=3",
            "batch_size=8",
            "optim.lr=0.05",
            "precision=fp32",
        ],
    )
    train(config, progress=False)
    return root / "run"


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


IDS = torch.tensor([[5, 17, 42, 99, 23, 7, 64, 31]])


# --- copy export --------------------------------------------------------------------------------


def test_copy_export_writes_the_model_folder_whole(tmp_path: Path):
    run = fake_run(tmp_path / "run")
    assert export(run, tmp_path / "out") == tmp_path / "out"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "README.md",
        "model.safetensors",
        "trimtab.json",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "run"]


def test_copy_export_refuses_a_non_empty_out_without_force(tmp_path: Path):
    run = fake_run(tmp_path / "run")
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="--force"):
        export(run, out)
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    export(run, out, force=True)
    assert not (out / "mine.txt").exists() and (out / "model.safetensors").is_file()


def test_export_of_a_folder_without_a_model_is_an_error(tmp_path: Path):
    (tmp_path / "run").mkdir()
    with pytest.raises(TrimtabError, match="no fine-tuned model here"):
        export(tmp_path / "run", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- LoRA: merged export, and PEFT loading ------------------------------------------------------


def test_merged_export_loads_in_plain_transformers_with_the_adapter_outputs(
    lora_run: Path, tiny_llama_dir: Path, tmp_path: Path
):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = export(lora_run, tmp_path / "merged", merge=True)
    assert (out / "model.safetensors").is_file()
    assert not (out / "adapter_config.json").exists()
    assert json.loads((out / "trimtab.json").read_text())["merged_from"] == "lora"
    merged = AutoModelForCausalLM.from_pretrained(out)  # no trimtab, no PEFT
    adapter = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_llama_dir), lora_run / "final"
    )
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    torch.testing.assert_close(logits(merged, IDS), logits(adapter, IDS), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(logits(merged, IDS), logits(base, IDS))  # the adapter did count


def test_lora_final_loads_in_peft_as_trimtab_loads_it(lora_run: Path, tiny_llama_dir: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from trimtab.models.loading import load_model

    peft_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_llama_dir), lora_run / "final"
    )
    ours = load_model(lora_run, "sft", adapter="keep").model
    torch.testing.assert_close(logits(peft_model, IDS), logits(ours, IDS), rtol=1e-5, atol=1e-6)
