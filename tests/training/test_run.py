"""Where a new run goes, and the model card written into its final/."""

from __future__ import annotations

import json
import re
from pathlib import Path

from trimtab.training import load_config
from trimtab.training.run import default_run_dir, model_card


def make_config(tmp_path: Path, *overrides: str):
    data = tmp_path / "train.jsonl"
    rows = [{"prompt": f"review {i}\n\n###\n\n", "completion": " good"} for i in range(40)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_config(None, [f"data.train={data}", *overrides])


def test_default_run_dir_names_model_method_task_and_time(tmp_path: Path):
    config = make_config(tmp_path, "model.name=smollm2-135m", "method.name=lora")
    path = default_run_dir(config, root=tmp_path / "runs")
    assert path.parent == tmp_path / "runs"
    assert re.fullmatch(rf"smollm2-135m-lora-{config.data.task}-\d{{8}}-\d{{6}}", path.name), (
        path.name
    )


def test_default_run_dir_of_a_model_folder_uses_its_last_name(tmp_path: Path):
    config = make_config(tmp_path, f"model.name={tmp_path / 'models' / 'tiny'}")
    assert default_run_dir(config).name.startswith("tiny-")


def test_model_card_says_what_the_model_is_and_how_it_did(tmp_path: Path):
    config = make_config(tmp_path, "model.name=smollm2-135m", "method.name=lora")
    card = model_card(
        config,
        {
            "name": "reviews",
            "labels": ["1", "5"],
            "train_examples": 40,
            "results": {"steps": 3, "valid_loss": 1.25, "best_step": 2},
        },
    )
    assert card.startswith("# reviews\n")
    assert "Fine-tuned from `smollm2-135m`" in card
    assert "method `lora`" in card and "LoRA r=" in card
    assert "peft.PeftModel.from_pretrained" in card  # the claim tests/training/test_export checks
    assert "vLLM" not in card and "LoRAX" not in card  # claims no test here can check
    assert "- labels: '1', '5'" in card
    assert "- valid loss: 1.25" in card and "- best step: 2" in card
    assert f"`{config.data.train}` (40 examples)" in card
