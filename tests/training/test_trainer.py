"""The training recipe end to end on tiny models built from a config (and, marked, real ones)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trimtab.errors import ConfigError, TrimtabError
from trimtab.training import load_config, train
from trimtab.training.loop import TrainingDiverged


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def config(data: Path, model: Path, run: Path, *extra: str):
    return load_config(
        None,
        [
            f"data.train={data / 'train.jsonl'}",
            f"data.valid={data / 'valid.jsonl'}",
            f"model.name={model}",
            f"run_dir={run}",
            "epochs=2",
            "batch_size=8",
            "optim.lr=0.01",
            "log_every=1",
            *extra,
        ],
    )


def trainable_tensors(final: Path) -> dict[str, torch.Tensor]:
    name = (
        "adapter_model.safetensors"
        if (final / "adapter_model.safetensors").exists()
        else "model.safetensors"
    )
    return load_file(str(final / name))


def test_lora_sft_writes_a_self_describing_run_folder(tmp_path, reviews, tiny_llama_dir):
    result = train(config(reviews, tiny_llama_dir, tmp_path / "run"), progress=False)
    run = tmp_path / "run"
    assert {"config.yaml", "run.json", "metrics.jsonl", "checkpoints", "best", "final"} <= set(
        os.listdir(run)
    )
    info = json.loads((run / "run.json").read_text())
    assert (info["status"], info["task"], info["method"]) == ("completed", "sft", "lora")
    assert 0 < info["trainable_parameters"] < info["total_parameters"]
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "README.md",
        "trimtab.json",
    } <= set(os.listdir(result.final))
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "train_loss" in m]
    assert [m["step"] for m in steps] == list(range(1, 13))
    assert {"train_loss", "train_mean_token_accuracy", "lr", "tokens_per_second"} <= set(steps[0])
    evaluations = [m for m in metrics if "valid_loss" in m]
    assert [m["step"] for m in evaluations] == [6, 12]
    assert {"valid_accuracy", "valid_mean_token_accuracy"} <= set(evaluations[0])
    assert steps[-1]["train_loss"] < steps[0]["train_loss"]
    saved = load_config(run / "config.yaml")
    assert (saved.epochs, saved.batch_size, saved.optim.lr) == (2, 8, 0.01)
    assert "Fine-tuned from" in (result.final / "README.md").read_text()


def test_auto_hyperparameters_are_resolved_and_saved(tmp_path, reviews, tiny_llama_dir):
    cfg = load_config(
        None,
        [
            f"data.train={reviews / 'train.jsonl'}",
            f"model.name={tiny_llama_dir}",
            f"run_dir={tmp_path / 'run'}",
            "max_steps=2",
        ],
    )
    train(cfg, progress=False)
    saved = load_config(tmp_path / "run" / "config.yaml")
    # 48 examples: 100 example-passes at least -> 3 epochs; 0.2% -> batch 1; LoRA's rate
    assert (saved.epochs, saved.batch_size, saved.optim.lr) == (3, 1, 2e-4)


def test_full_classify_on_an_encoder_learns_a_separable_task(tmp_path, reviews, tiny_bert_dir):
    result = train(
        config(
            reviews,
            tiny_bert_dir,
            tmp_path / "run",
            "data.task=classify",
            "method.name=full",
            "epochs=6",
            "optim.lr=0.003",
        ),
        progress=False,
    )
    assert result.results["valid_accuracy"] == 1.0
    meta = json.loads((result.final / "trimtab.json").read_text())
    assert meta["labels"] == ["1", "5"] and meta["task"] == "classify"


def test_freeze_caches_trunk_features_and_trains_only_the_head(tmp_path, reviews, tiny_bert_dir):
    from trimtab.models.loading import load_model
    from trimtab.training.loop import seed_everything

    before = load_file(str(tiny_bert_dir / "model.safetensors"))
    seed_everything(42)  # as train() does before loading: the same random new head
    initial = load_model(str(tiny_bert_dir), "classify", labels=["1", "5"]).model.state_dict()
    result = train(
        config(
            reviews,
            tiny_bert_dir,
            tmp_path / "run",
            "data.task=classify",
            "method.name=freeze",
            "optim.lr=0.01",
        ),
        progress=False,
    )
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["feature_cache"] is True
    after = load_file(str(result.final / "model.safetensors"))
    trunk = [k for k in after if k.startswith(("bert.embeddings.", "bert.encoder."))]
    assert trunk and all(k in before for k in trunk)
    assert all(torch.equal(after[k], before[k]) for k in trunk)  # the trunk never moved
    head = [k for k in after if k.startswith("classifier.")]
    assert head and all(not torch.equal(after[k], initial[k]) for k in head)  # the head did


def test_lm_task_trains_on_packed_raw_text(tmp_path, tiny_llama_dir):
    rows = [{"text": f"line {i} of a long story about cats and dogs"} for i in range(40)]
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "train.jsonl", rows)
    cfg = load_config(
        None,
        [
            f"data.train={data / 'train.jsonl'}",
            "data.task=lm",
            f"model.name={tiny_llama_dir}",
            "model.max_length=32",
            f"run_dir={tmp_path / 'run'}",
            "epochs=2",
            "batch_size=2",
            "method.name=full",
            "optim.lr=0.003",
        ],
    )
    result = train(cfg, progress=False)
    assert result.results["steps"] > 0 and (result.final / "model.safetensors").exists()


def test_sgd_with_momentum_and_an_l1_penalty_shrinks_weights(tmp_path, reviews, tiny_llama_dir):
    norms = {}
    for l1 in (0.0, 0.05):
        result = train(
            config(
                reviews,
                tiny_llama_dir,
                tmp_path / f"run-{l1}",
                "method.name=full",
                "optim.optimizer=sgd",
                "optim.momentum=0.8",
                f"optim.l1={l1}",
                "optim.lr=0.05",
                "keep_best=false",
            ),
            progress=False,
        )
        weights = trainable_tensors(result.final)
        norms[l1] = sum(float(t.abs().sum()) for k, t in weights.items() if "layers" in k)
    assert norms[0.05] < norms[0.0]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(
    tmp_path, reviews, tiny_llama_dir, monkeypatch
):
    from trimtab.training import loop

    real_forward = loop.Objective.forward
    calls = {"n": 0}

    def poisoned(self, batch):
        loss, hits, n = real_forward(self, batch)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 5:
                return loss * float("nan"), hits, n
        return loss, hits, n

    monkeypatch.setattr(loop.Objective, "forward", poisoned)
    with pytest.raises(TrainingDiverged) as e:
        train(config(reviews, tiny_llama_dir, tmp_path / "run", "save_every=2"), progress=False)
    assert "step 5" in str(e.value) and "step-0000004" in str(e.value)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["status"] == "failed"
    assert (tmp_path / "run" / "checkpoints" / "step-0000004").is_dir()
    assert not (tmp_path / "run" / "final").exists()


def test_early_stopping_keeps_the_best_model(tmp_path, reviews, tiny_llama_dir):
    result = train(
        config(
            reviews,
            tiny_llama_dir,
            tmp_path / "run",
            "epochs=10",
            "eval_every=1",
            "early_stopping_patience=2",
            "optim.lr=0.5",
            "optim.warmup=0",
            "max_loss=1e9",
            "optim.max_grad_norm=1000",
        ),
        progress=False,
    )
    assert result.results["steps"] < 60
    metrics = [
        json.loads(x)
        for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
        if "valid_loss" in x
    ]
    best = min(metrics, key=lambda m: m["valid_loss"])
    assert result.results["best_step"] == best["step"]
    assert (
        trainable_tensors(result.final).keys()
        == trainable_tensors(tmp_path / "run" / "best").keys()
    )
    for k, v in trainable_tensors(result.final).items():
        assert torch.equal(v, trainable_tensors(tmp_path / "run" / "best")[k])


def test_existing_run_is_not_overwritten_and_missing_resume_is_an_error(
    tmp_path, reviews, tiny_llama_dir
):
    train(config(reviews, tiny_llama_dir, tmp_path / "run", "max_steps=1"), progress=False)
    with pytest.raises(TrimtabError, match="already exists"):
        train(config(reviews, tiny_llama_dir, tmp_path / "run"), progress=False)
    with pytest.raises(TrimtabError, match="not a trimtab run folder"):
        train(None, resume=tmp_path / "nowhere", progress=False)


def test_batch_size_larger_than_the_data_is_a_clear_error(tmp_path, reviews, tiny_llama_dir):
    with pytest.raises(ConfigError, match="larger than the 48 training examples"):
        train(
            config(
                reviews, tiny_llama_dir, tmp_path / "run", "batch_size=64", "micro_batch_size=16"
            ),
            progress=False,
        )


@pytest.mark.parametrize(("batch", "micro", "accum"), [(20, 10, 2), (24, 12, 2), (40, 10, 4)])
def test_a_batch_size_not_a_multiple_of_16_trains_with_a_micro_batch_that_divides_it(
    tmp_path, reviews, tiny_llama_dir, batch, micro, accum
):
    train(
        config(reviews, tiny_llama_dir, tmp_path / "run", f"batch_size={batch}", "max_steps=1"),
        progress=False,
    )
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert (info["micro_batch_size"], info["accumulation"]) == (micro, accum)


def test_micro_batches_left_over_by_accumulation_make_a_last_shorter_step(
    tmp_path, reviews, tiny_llama_dir
):
    lines: list[str] = []
    result = train(
        config(
            reviews,
            tiny_llama_dir,
            tmp_path / "run",
            "epochs=1",
            "batch_size=20",
            "micro_batch_size=4",
        ),
        log=lines.append,
    )
    # 48 examples = 12 micro-batches of 4; 5 per step: steps of 5, 5 and the last 2
    assert result.results["steps"] == 3 and result.results["epochs"] == 1.0
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["last_step_micro_batches"] == 2
    assert any("each epoch's last step: 2 x 4 x 1" in line for line in lines)


def test_batch_problems_are_found_before_any_model_is_loaded(
    tmp_path, reviews, tiny_llama_dir, monkeypatch
):
    from trimtab.training import trainer

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(trainer, "load_model", no_loading)
    cfg = config(reviews, tiny_llama_dir, tmp_path / "run", "max_steps=1")
    cfg = cfg.model_copy(update={"batch_size": 64})  # past validation, as a resumed config
    with pytest.raises(ConfigError, match="batch_size 64 is larger than the 48 training"):
        train(cfg, progress=False)
    assert not (tmp_path / "run").exists()


def test_a_second_train_of_a_locked_run_is_refused_before_loading_a_model(
    tmp_path, reviews, tiny_llama_dir, monkeypatch
):
    from trimtab.models.runs import RunFolder, RunLockedError
    from trimtab.training import trainer

    train(config(reviews, tiny_llama_dir, tmp_path / "run", "max_steps=1"), progress=False)

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(trainer, "load_model", no_loading)
    with RunFolder(tmp_path / "run").lock():  # as another process training it would
        with pytest.raises(RunLockedError):
            train(None, resume=tmp_path / "run", progress=False)
        with pytest.raises(RunLockedError):
            train(config(reviews, tiny_llama_dir, tmp_path / "run"), progress=False)


def test_ctrl_c_marks_the_run_interrupted_and_says_how_to_resume(
    tmp_path, reviews, tiny_llama_dir, monkeypatch
):
    from trimtab.training import trainer
    from trimtab.training.loop import TrainingInterrupted

    real_step = trainer._step
    calls = {"n": 0}

    def interrupted(s, micro_batches):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        real_step(s, micro_batches)

    monkeypatch.setattr(trainer, "_step", interrupted)
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as e:
        train(config(reviews, tiny_llama_dir, run, "save_every=1"), progress=False)
    message = str(e.value)
    assert e.value.exit_code == 130
    assert "step 2" in message and "step-0000002" in message
    assert f"trimtab train --resume {run}" in message
    info = json.loads((run / "run.json").read_text())
    assert (info["status"], info["interrupted_step"]) == ("interrupted", 2)
    assert info["last_checkpoint"].endswith("step-0000002")
    monkeypatch.setattr(trainer, "_step", real_step)
    result = train(None, resume=run, progress=False)
    assert result.results["steps"] == 12
    assert json.loads((run / "run.json").read_text())["status"] == "completed"


def test_sft_on_a_few_labels_reports_label_accuracy(tmp_path, reviews, tiny_llama_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = train(
        config(
            reviews,
            tiny_llama_dir,
            tmp_path / "run",
            "epochs=1",
            "keep_best=false",
            "precision=fp32",
            "optim.lr=0.003",
        ),
        progress=False,
    )
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_llama_dir), result.final
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    rows = [json.loads(x) for x in (reviews / "valid.jsonl").read_text().splitlines()]
    labels = [" 1", " 5"]
    hits = 0
    for row in rows:
        scores = []
        for label in labels:
            prompt = tokenizer(row["prompt"])["input_ids"]
            answer = tokenizer(label, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = model(input_ids=torch.tensor([prompt + answer])).logits.log_softmax(-1)
            scores.append(sum(float(logp[0, len(prompt) + j - 1, t]) for j, t in enumerate(answer)))
        hits += labels[scores.index(max(scores))] == row["completion"]
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    last = [m for m in metrics if "valid_loss" in m][-1]
    assert last["valid_accuracy"] == pytest.approx(hits / len(rows))
    assert "valid_mean_token_accuracy" in last
    assert result.results["valid_accuracy"] == last["valid_accuracy"]


def test_checkpoints_and_exports_show_no_progress_bars_of_transformers(
    tmp_path, reviews, tiny_llama_dir, capfd
):
    capfd.readouterr()  # what the fixtures printed while building the tiny model
    train(
        config(reviews, tiny_llama_dir, tmp_path / "run", "method.name=full", "max_steps=2"),
        progress=False,
    )
    out, err = capfd.readouterr()
    assert "Writing model shards" not in out + err
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_finished_run_is_the_starting_point_of_another(tmp_path, reviews, tiny_llama_dir, method):
    first = train(
        config(reviews, tiny_llama_dir, tmp_path / "first", "precision=fp32"), progress=False
    )
    second = train(
        config(
            reviews,
            tiny_llama_dir,
            tmp_path / "second",
            f"method.name={method}",
            f"model.name={tmp_path / 'first'}",
            "precision=fp32",
            "max_steps=1",
            "eval_every=1",
            "optim.lr=1e-9",
            "optim.warmup=0",
        ),
        progress=False,
    )
    # one step of a vanishing learning rate: it starts where the first run ended
    assert second.results["valid_loss"] == pytest.approx(first.results["valid_loss"], rel=1e-4)
    info = json.loads((tmp_path / "second" / "run.json").read_text())
    assert info["base_model"] == str(tiny_llama_dir)
    assert info["parent_run"] == str(tmp_path / "first")


# --- resume after SIGKILL, and data parallel ----------------------------------------------------


def cli(*args: str, **kw) -> list[str]:
    return [sys.executable, "-m", "trimtab", "train", *args]


def train_args(data: Path, model: Path, run: Path) -> list[str]:
    return [
        f"data.train={data / 'train.jsonl'}",
        f"data.valid={data / 'valid.jsonl'}",
        f"model.name={model}",
        f"run_dir={run}",
        "epochs=3",
        "batch_size=4",
        "optim.lr=0.01",
        "precision=fp32",
        "save_every=1",
        "keep_checkpoints=100",
        "method.lora_dropout=0.1",
    ]


def test_resume_after_sigkill_ends_bit_identical_to_an_uninterrupted_run(
    tmp_path, reviews, tiny_llama_dir
):
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    straight = tmp_path / "straight"
    subprocess.run(
        cli(*train_args(reviews, tiny_llama_dir, straight), "--quiet"),
        check=True,
        env=env,
        capture_output=True,
        timeout=300,
    )
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        cli(*train_args(reviews, tiny_llama_dir, killed), "--quiet"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    target = killed / "checkpoints" / "step-0000015"
    deadline = time.monotonic() + 240
    while not target.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (killed / "final").exists()
    resumed = subprocess.run(
        cli("--resume", str(killed), "--quiet"),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    a = trainable_tensors(straight / "final")
    b = trainable_tensors(killed / "final")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lines = lambda run: [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert [m["step"] for m in lines(killed)] == [m["step"] for m in lines(straight)]
    assert [m.get("train_loss") for m in lines(killed)] == [
        m.get("train_loss") for m in lines(straight)
    ]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process_with_the_same_global_batch(
    tmp_path, reviews, tiny_llama_dir
):
    common = [
        f"data.train={reviews / 'train.jsonl'}",
        f"model.name={tiny_llama_dir}",
        "epochs=1",
        "batch_size=8",
        "optim.lr=0.01",
        "precision=fp32",
        "method.name=full",
        "max_steps=4",
        "--quiet",
    ]
    # CPU processes (gloo) on any machine: a one-GPU machine cannot hold two processes.
    env = os.environ | {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    one = subprocess.run(
        cli(*common, f"run_dir={tmp_path / 'one'}", "micro_batch_size=8"),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            f"--master_port={free_port()}",
            "-m",
            "trimtab",
            "train",
            *common,
            f"run_dir={tmp_path / 'two'}",
            "micro_batch_size=4",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    info = json.loads((tmp_path / "two" / "run.json").read_text())
    assert info["world_size"] == 2
    a = trainable_tensors(tmp_path / "one" / "final")
    b = trainable_tensors(tmp_path / "two" / "final")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)

    def loss(run: str) -> list[float | None]:
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [json.loads(x).get("train_loss") for x in lines]

    for x, y in zip(loss("one"), loss("two")):
        assert x == pytest.approx(y, rel=1e-4)


# --- the CLI --------------------------------------------------------------------------------------


def test_cli_trains_from_a_prepare_folder(tmp_path, reviews, tiny_llama_dir):
    result = subprocess.run(
        cli(
            "--data",
            str(reviews),
            f"model.name={tiny_llama_dir}",
            f"run_dir={tmp_path / 'run'}",
            "max_steps=2",
            "batch_size=4",
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert f"run: {tmp_path / 'run'}" in result.stdout
    assert "step 2/2" in result.stderr  # plain progress lines when not in a terminal


def test_cli_reports_every_config_problem_before_loading_a_model(tmp_path):
    result = subprocess.run(
        cli("model.name=no-such-model", "optim.lr=7", "epochs=zero", "data.train=missing.jsonl"),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "epochs" in result.stderr and "optim.lr" in result.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.real_model
def test_real_smollm2_lora_and_minilm_classify_train_on_marc_and_load_back(tmp_path, marc):
    import csv

    from trimtab.models.loading import load_model

    rows = list(csv.DictReader(open(marc / "en" / "train.csv", encoding="utf-8")))
    picked = [r for i, r in enumerate(rows) if i % 400 == 0][:32]
    data = tmp_path / "data"
    data.mkdir()
    pairs = [
        {"prompt": r["review_body"] + "\n\n###\n\n", "completion": " " + r["stars"]} for r in picked
    ]  # the CSV is sorted by stars: every 400th row spans all five
    write_jsonl(data / "train.jsonl", [p for j, p in enumerate(pairs) if j % 4 != 3])
    write_jsonl(data / "valid.jsonl", [p for j, p in enumerate(pairs) if j % 4 == 3])
    for extra in (
        ["model.name=smollm2-135m", "method.name=lora"],
        ["model.name=minilm-l6", "data.task=classify", "method.name=full"],
    ):
        result = train(
            load_config(
                None,
                [
                    f"data.train={data / 'train.jsonl'}",
                    f"data.valid={data / 'valid.jsonl'}",
                    f"run_dir={tmp_path / extra[0].split('=')[1]}",
                    "epochs=1",
                    "batch_size=8",
                    "model.max_length=128",
                    *extra,
                ],
            ),
            progress=False,
        )
        assert result.results["steps"] == 3 and result.results["valid_loss"] > 0
        meta = json.loads((result.final / "trimtab.json").read_text())
        loaded = load_model(result.run_dir, meta["task"])  # the fine-tune loads as a model
        assert loaded.model is not None and "valid_accuracy" in result.results


def test_export_merge_writes_full_weights_with_the_adapter_outputs(
    tmp_path, reviews, tiny_llama_dir
):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from trimtab.cli import main

    result = train(
        config(reviews, tiny_llama_dir, tmp_path / "run", "max_steps=3", "precision=fp32"),
        progress=False,
    )
    assert (
        main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "merged"), "--merge"]) == 0
    )
    assert (tmp_path / "merged" / "model.safetensors").exists()
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    ids = torch.randint(5, 200, (1, 10))
    adapter = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_llama_dir), result.final
    ).eval()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(
            merged(input_ids=ids).logits, adapter(input_ids=ids).logits, rtol=1e-4, atol=1e-5
        )
    assert (
        main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "merged"), "--merge"]) == 2
    )  # exists: needs --force


def test_models_list_shows_known_models_and_finished_runs(
    tmp_path, reviews, tiny_llama_dir, capsys
):
    from trimtab.cli import main

    train(
        config(reviews, tiny_llama_dir, tmp_path / "runs" / "mine", "max_steps=1"), progress=False
    )
    assert main(["models", "list", "--runs", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m" in out and "minilm-l6" in out and "mine" in out


def test_unknown_model_and_malformed_data_fail_before_anything_is_written(
    tmp_path, reviews, tiny_llama_dir
):
    with pytest.raises(TrimtabError, match="no-such-model"):
        train(config(reviews, Path("no-such-model"), tmp_path / "run"), progress=False)
    bad = tmp_path / "bad"
    bad.mkdir()
    write_jsonl(bad / "train.jsonl", [{"prompt": "a", "completion": " 1"}])
    (bad / "valid.jsonl").write_text('{"prompt": "b", "completion": " 1"}\n{"prompt": \n')
    with pytest.raises(TrimtabError, match=r"valid.jsonl:2"):
        train(config(bad, tiny_llama_dir, tmp_path / "run", "batch_size=1"), progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("method", "extra"),
    [
        ("full", "micro_batch_tokens=40"),
        ("lora", "micro_batch_tokens=40"),
        ("lora", "gradient_checkpointing=true"),
    ],
)
def test_memory_savers_train_the_same_update_as_one_pass(
    tmp_path, reviews, tiny_llama_dir, method, extra
):
    """A token budget (long micro-batches cut into accumulated slices) and gradient
    checkpointing only change what is kept in memory, not the step's gradients."""
    common = ("precision=fp32", f"method.name={method}", "method.lora_dropout=0", "max_steps=3")
    plain = train(config(reviews, tiny_llama_dir, tmp_path / "a", *common), progress=False)
    saved = train(config(reviews, tiny_llama_dir, tmp_path / "b", *common, extra), progress=False)
    assert saved.results["tokens"] == plain.results["tokens"]
    assert saved.results["train_loss"] == pytest.approx(plain.results["train_loss"], rel=1e-4)
    expected = trainable_tensors(plain.final)
    got = trainable_tensors(saved.final)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, atol=1e-4, rtol=1e-3)  # summation order


def test_gradient_checkpointing_on_a_model_without_it_is_a_clear_error(
    tmp_path, reviews, tiny_llama_dir, monkeypatch
):
    from transformers import LlamaForCausalLM

    monkeypatch.setattr(LlamaForCausalLM, "supports_gradient_checkpointing", False)
    with pytest.raises(TrimtabError, match="gradient_checkpointing: model .* does not support"):
        train(
            config(reviews, tiny_llama_dir, tmp_path / "run", "gradient_checkpointing=true"),
            progress=False,
        )
