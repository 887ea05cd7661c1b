"""Training config: YAML, key=value overrides, validation of everything at once, auto values."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from trimtab.errors import ConfigError
from trimtab.training.config import (
    auto_batch_size,
    auto_epochs,
    auto_lr,
    default_micro_batch,
    dump_config,
    load_config,
    parse_overrides,
    plan_batches,
    resolve_auto,
)


@pytest.fixture
def train_file(tmp_path: Path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text('{"prompt": "a\\n\\n###\\n\\n", "completion": " 1"}\n')
    return path


def test_overrides_become_nested_typed_values():
    assert parse_overrides(
        [
            "optim.lr=1e-4",
            "epochs=2",
            "method.name=full",
            "method.target_modules=[q_proj, v_proj]",
            "keep_best=false",
        ]
    ) == {
        "optim": {"lr": 1e-4},
        "epochs": 2,
        "method": {"name": "full", "target_modules": ["q_proj", "v_proj"]},
        "keep_best": False,
    }


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["optim.lr"])


def test_yaml_then_overrides_then_validation(tmp_path, train_file):
    config_file = tmp_path / "run.yaml"
    config_file.write_text(
        yaml.safe_dump({"data": {"train": str(train_file)}, "optim": {"lr": 0.001}, "epochs": 5})
    )
    config = load_config(config_file, ["epochs=2"])
    assert (config.epochs, config.optim.lr, config.data.train) == (2, 0.001, train_file)


def test_every_problem_is_reported_at_once(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(
            None,
            [
                "optim.lr=2",
                "method.trainable_layers=2",
                "data.valid=nowhere.jsonl",
                "early_stopping_patience=3",
                "batch_size=6",
                "micro_batch_size=4",
            ],
        )
    problems = e.value.problems
    assert any("data.train: required" in p for p in problems)
    assert len(problems) == len(set(problems))
    assert "optim.lr: should be less than 1 or 'auto'" in problems
    assert any("trainable_layers only applies" in p for p in problems)
    assert any("nowhere.jsonl: file not found" in p for p in problems)
    assert any("micro_batch_size 4 must divide" in p for p in problems)
    assert len(problems) >= 5


def test_type_errors_name_the_key_and_the_file(tmp_path, train_file):
    config_file = tmp_path / "bad.yaml"
    config_file.write_text(
        f"data:\n  train: {train_file}\nepochs: many\nmethod:\n  name: magic\ntypo_key: 1\n"
    )
    with pytest.raises(ConfigError) as e:
        load_config(config_file)
    text = str(e.value)
    assert f"{config_file}: epochs" in text and "method.name" in text and "typo_key" in text


def test_invalid_yaml_names_the_line(tmp_path):
    config_file = tmp_path / "broken.yaml"
    config_file.write_text("epochs: 2\noptim: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken.yaml:\d+: not valid YAML"):
        load_config(config_file)


def test_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.yaml")


@pytest.mark.parametrize(
    ("n", "epochs"), [(10, 10), (20, 5), (1000, 3), (8333, 3), (12000, 2), (100000, 1), (1, 25)]
)
def test_auto_epochs_follow_openai_rule(n, epochs):
    assert auto_epochs(n) == epochs


@pytest.mark.parametrize(
    ("n", "batch"), [(10, 1), (1000, 2), (11000, 16), (50000, 128), (10_000_000, 256)]
)
def test_auto_batch_size_is_about_0_2_percent_as_a_power_of_two(n, batch):
    assert auto_batch_size(n) == batch


def test_resolve_auto_fills_every_auto_and_keeps_explicit_values(train_file):
    config = load_config(None, [f"data.train={train_file}", "method.name=full", "epochs=4"])
    resolved = resolve_auto(config, 11000)
    assert (resolved.epochs, resolved.batch_size, resolved.optim.lr) == (
        4,
        16,
        auto_lr("full", "sft"),
    )
    assert config.batch_size == "auto"  # the original is untouched


def test_dump_round_trips(tmp_path, train_file):
    config = load_config(None, [f"data.train={train_file}", "optim.lr=0.0003"])
    saved = tmp_path / "config.yaml"
    saved.write_text(dump_config(config))
    assert load_config(saved) == config


@pytest.mark.parametrize(
    "name", ["marc-smollm2-lora", "marc-minilm-classify", "marc-minilm-freeze"]
)
def test_shipped_example_configs_validate(name, tmp_path):
    config_file = Path(__file__).resolve().parents[2] / "configs" / f"{name}.yaml"
    train = tmp_path / "train.jsonl"
    train.write_text('{"prompt": "a\\n\\n###\\n\\n", "completion": " 1"}\n' * 64)
    config = load_config(config_file, [f"data.train={train}"])
    assert config.model.name in ("smollm2-135m", "minilm-l6")


@pytest.mark.parametrize(
    ("batch", "world", "micro"),
    [(8, 1, 8), (16, 1, 16), (20, 1, 10), (24, 1, 12), (40, 1, 10), (64, 1, 16), (48, 2, 12)],
)
def test_default_micro_batch_is_the_largest_divisor_up_to_16(batch, world, micro):
    assert default_micro_batch(batch, world) == micro
    assert batch % (micro * world) == 0


def test_batch_arithmetic_problems_are_reported_with_the_rest_at_validation(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text('{"prompt": "a\\n\\n###\\n\\n", "completion": " 1"}\n' * 10)
    with pytest.raises(ConfigError) as e:
        load_config(
            None,
            [f"data.train={train}", "batch_size=12", "micro_batch_size=5", "optim.lr=3"],
        )
    problems = e.value.problems
    assert any("micro_batch_size 5 must divide batch_size 12" in p for p in problems)
    assert any("batch_size 12 is larger than the 10 training examples" in p for p in problems)
    assert any(p.startswith("optim.lr") for p in problems)


def test_batch_size_must_split_over_the_processes(tmp_path, monkeypatch):
    train = tmp_path / "train.jsonl"
    train.write_text('{"prompt": "a\\n\\n###\\n\\n", "completion": " 1"}\n' * 10)
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match="batch_size 8 must be a multiple of the 3 processes"):
        load_config(None, [f"data.train={train}", "batch_size=8"])


def test_plan_resolves_auto_and_splits_the_batch(train_file):
    config = load_config(None, [f"data.train={train_file}", "batch_size=auto"])
    resolved, plan = plan_batches(config, 20_000, 2)
    assert resolved.batch_size == 32  # 0.2% of 20,000 -> 40 -> the power of two 32
    assert (plan.micro, plan.world, plan.accum) == (16, 2, 1)


def test_method_section_takes_its_defaults_from_method_spec(train_file):
    from trimtab.methods import MethodSpec

    config = load_config(None, [f"data.train={train_file}"])
    assert config.method.spec() == MethodSpec()
    spec = load_config(
        None,
        [
            f"data.train={train_file}",
            "method.use_dora=true",
            "method.init_lora_weights=pissa_niter_4",
            "method.lora_bias=all",
            "method.modules_to_save=[norm]",
        ],
    ).method.spec()
    assert (spec.use_dora, spec.init_lora_weights, spec.lora_bias) == (True, "pissa_niter_4", "all")
    assert spec.modules_to_save == ["norm"]
    with pytest.raises(ConfigError, match="method.init_lora_weights"):
        load_config(None, [f"data.train={train_file}", "method.init_lora_weights=magic"])
