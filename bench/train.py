"""Benchmark `trimtab train` against TRL's SFTTrainer and the transformers Trainer.

Each comparison trains the same model (same weights) on the same seeded sample of MARC English
reviews (`../shared/data/marc/en/train.csv`, written as JSONL to a temp dir) with the same
hyperparameters, on the CPU in the machine's fast precision (``--precision auto``: trimtab's
measured choice, bf16 autocast where a bf16 matmul is faster, else fp32; both sides the same);
each side in a fresh subprocess (2 threads), so its peak RSS is its own. Timed:
`trainer.train()` vs. trimtab's training loop (+ the frozen-trunk feature caching for freeze);
model loading excluded. Settings: docs/training-benchmark.md.

    sft       SmolLM2-135M LoRA r=16 all-linear, completion-only loss (TRL SFTTrainer + PEFT)
    classify  MiniLM-L6 full fine-tuning, 5 labels                     (transformers Trainer)
    freeze    MiniLM-L6 frozen trunk, head only, 3 epochs              (transformers Trainer)

    .venv/bin/python bench/train.py          # all three, 512 examples; needs '.[bench]'
    .venv/bin/python bench/train.py --only sft --examples 32 --held-out 32   # a quick check

Besides the peers, sft also trains a trimtab variant with micro_batch_tokens=null (each
micro-batch in one pass, as before the token budget) to show what the budget saves in peak
memory and costs in speed. The model FLOP/s of sft and classify are printed as a share of the
matmul rate measured in the same run at the model's own shapes (bench/ceiling.py).
"""

import argparse
import csv
import importlib.util
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ceiling import block_linears, shape_rate, square_rate  # noqa: E402  (beside this file)
from servers import cpu_features  # noqa: E402
from train_table import show, summary_rows  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SEP, BATCH, MAX_LEN, LORA = "\n\n###\n\n", 16, 512, (16, 32, 0.05)  # LoRA r, alpha, dropout
# comparison -> model, task (also the data file), method, epochs, learning rate, peer sides
COMPARISONS = {
    "sft": ("smollm2-135m", "sft", "lora", 1, 2e-4, ["TRL SFTTrainer + PEFT"]),
    "classify": (
        "minilm-l6",
        "classify",
        "full",
        1,
        5e-5,
        ["HF Trainer", "HF Trainer, group_by_length"],
    ),
    "freeze": ("minilm-l6", "classify", "freeze", 3, 1e-3, ["HF Trainer, frozen trunk"]),
}
CHILD_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "1073741824",
    "MALLOC_TRIM_THRESHOLD_": "1073741824",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
}
MARK = "@@RESULT "
# comparison -> (row label, extra trimtab overrides): trimtab variants trained beside the default
VARIANTS = {"sft": [("trimtab, no token budget", ["micro_batch_tokens=null"])]}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_data(csv_path: Path, n: int, held: int, seed: int, work: Path) -> None:
    """n training + held held-out reviews, sampled with a fixed seed across all stars."""
    with csv_path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    random.Random(seed).shuffle(rows)  # the first n train, the next held are held out
    pick = rows[: n + held]
    for task, fmt in (
        ("sft", lambda r: (r["review_body"] + SEP, " " + r["stars"])),
        ("classify", lambda r: (r["review_body"], r["stars"])),
    ):
        for split, part in (("train", pick[:n]), ("heldout", pick[n:])):
            lines = [json.dumps(dict(zip(("prompt", "completion"), fmt(r)))) for r in part]
            (work / f"{task}-{split}.jsonl").write_text("".join(x + "\n" for x in lines))


def peak_rss_mib() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def heldout_loss(model, tok, task: str, work: Path, bf16: bool) -> float:
    """Mean loss on the held-out examples, computed the same way for both sides (the run's
    precision):
    per completion token (sft: completion + EOS, the prompt cut from its start) or per example."""
    import torch

    records, total, count = read_jsonl(work / f"{task}-heldout.jsonl"), 0.0, 0
    model.eval()
    for i in range(0, len(records), 8):
        chunk = records[i : i + 8]
        if task == "classify":
            batch = dict(
                tok(
                    [r["prompt"] for r in chunk],
                    truncation=True,
                    max_length=MAX_LEN,
                    padding=True,
                    return_tensors="pt",
                )
            )
            batch["labels"] = torch.tensor([model.config.label2id[r["completion"]] for r in chunk])
            n = len(chunk)
        else:
            seqs = []
            for r in chunk:
                c = tok(r["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
                p = tok(r["prompt"], add_special_tokens=False)["input_ids"][-(MAX_LEN - len(c)) :]
                seqs.append((p + c, [-100] * len(p) + c))
            width = max(len(s) for s, _ in seqs)

            def pad(x: list[int], v: int, width: int = width) -> list[int]:
                return x + [v] * (width - len(x))

            batch = {
                "input_ids": torch.tensor([pad(s, tok.pad_token_id) for s, _ in seqs]),
                "attention_mask": torch.tensor([pad([1] * len(s), 0) for s, _ in seqs]),
                "labels": torch.tensor([pad(y, -100) for _, y in seqs]),
            }
            n = int((batch["labels"][:, 1:] != -100).sum())
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            total += float(model(**batch).loss) * n  # the model's own mean loss of the batch
        count += n
    return total / max(count, 1)


def peer_training_args(comp: str, side: int, work: Path, a: argparse.Namespace) -> dict:
    """The TrainingArguments / SFTConfig settings both peers share (trimtab's own defaults)."""
    _, _, _, epochs, lr, _ = COMPARISONS[comp]
    return dict(
        output_dir=str(work / f"out-{comp}-{side}"),
        per_device_train_batch_size=BATCH,
        num_train_epochs=epochs,
        learning_rate=lr,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        bf16=a.precision == "bf16",
        use_cpu=True,
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        seed=a.seed,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def sft_trainer(folder, tok, rows: list[dict], common: dict, a: argparse.Namespace):
    """TRL SFTTrainer with a PEFT LoRA adapter, completion-only loss."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    # activation_checkpointing is transformers 5's name for gradient_checkpointing (which
    # TRL defaults to True); off, as trimtab, unless --peer-gradient-checkpointing
    config = SFTConfig(
        **common,
        max_length=MAX_LEN,
        packing=False,
        completion_only_loss=True,
        activation_checkpointing=a.peer_gradient_checkpointing,
    )
    lora = LoraConfig(
        r=LORA[0],
        lora_alpha=LORA[1],
        lora_dropout=LORA[2],
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    return SFTTrainer(
        model=model,
        args=config,
        processing_class=tok,
        peft_config=lora,
        train_dataset=Dataset.from_list(rows),
    )


def classify_trainer(folder, tok, rows: list[dict], common: dict, method: str, side: int):
    """transformers Trainer for 5-label classification (full, or the head only for freeze);
    side 1 samples by length (group_by_length)."""
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    names = [str(i) for i in range(1, 6)]  # the stars; trimtab sorts the labels the same way
    model = AutoModelForSequenceClassification.from_pretrained(
        folder,
        dtype=torch.float32,
        num_labels=5,
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
    )
    if method == "freeze":  # head only: pooler + classifier train, as trimtab's freeze 0
        for n, p in model.named_parameters():
            p.requires_grad_(not n.startswith("bert.") or n.startswith("bert.pooler."))
    enc = tok([r["prompt"] for r in rows], truncation=True, max_length=MAX_LEN)
    data = Dataset.from_dict({**enc, "labels": [names.index(r["completion"]) for r in rows]})
    # group_by_length=True of transformers 4 is train_sampling_strategy in transformers 5
    args = TrainingArguments(
        **common, train_sampling_strategy=("group_by_length" if side == 1 else "random")
    )
    return Trainer(
        model=model,
        args=args,
        train_dataset=data,
        processing_class=tok,
        data_collator=DataCollatorWithPadding(tok),
    )


def train_peer(trainer, tok, task: str, epochs: int, work: Path, a: argparse.Namespace) -> dict:
    """Time trainer.train(); its tokens, last logged loss, steps, peak RSS (+ held-out loss)."""
    tokens = sum(len(x) for x in trainer.train_dataset["input_ids"]) * epochs
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    out = {
        "seconds": seconds,
        "tokens": tokens,
        "train_loss": losses[-1] if losses else None,
        "steps": trainer.state.global_step,
        "peak_rss_mib": peak_rss_mib(),
    }
    if a.held_out:
        out["heldout_loss"] = heldout_loss(trainer.model, tok, task, work, a.precision == "bf16")
    return out


def child_peer(comp: str, side: int, work: Path, a: argparse.Namespace) -> dict:
    from transformers import AutoTokenizer, set_seed

    from trimtab.models.loading import ensure_weights

    name, task, method, epochs, _, _ = COMPARISONS[comp]
    folder = ensure_weights(name)
    set_seed(a.seed)
    tok = AutoTokenizer.from_pretrained(folder)
    rows = read_jsonl(work / f"{task}-train.jsonl")
    common = peer_training_args(comp, side, work, a)
    if task == "sft":
        trainer = sft_trainer(folder, tok, rows, common, a)
    else:
        trainer = classify_trainer(folder, tok, rows, common, method, side)
    return train_peer(trainer, tok, task, epochs, work, a)


def timers() -> dict:
    """Full-precision timers around trimtab's own phases (its results round to 0.1 s): the loop
    (from its progress bar's creation to its close, as ``train_seconds``), the frozen-trunk
    feature caching (before the loop) and the checkpoints it writes inside the loop."""
    import trimtab.methods.method as mm
    import trimtab.training.trainer as tt

    spans: dict[str, float] = {}

    def hook(owner, attr: str, key: str) -> None:
        fn = getattr(owner, attr, None)

        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spans[key] = spans.get(key, 0.0) + time.perf_counter() - started
                spans[key + "_at"] = started

        if fn is None:  # a renamed phase would silently drop out of the timed span
            raise SystemExit(f"bench/train.py: {owner.__name__}.{attr} not found; update timers()")
        setattr(owner, attr, wrapper)

    hook(tt.Progress, "close", "close")  # the loop ends by closing its progress bar ...
    hook(tt, "Progress", "bar")  # ... which it creates just before it starts
    hook(mm.Freeze, "precompute", "cache")  # freeze: the trunk's features, cached before the loop
    hook(tt.ckpt, "save_checkpoint", "checkpoint")
    return spans


def child_trimtab(comp: str, work: Path, a: argparse.Namespace, variant: int | None) -> dict:
    import torch
    from transformers import AutoTokenizer

    from trimtab.models.loading import ensure_weights
    from trimtab.training import load_config, train

    name, task, method, epochs, lr, _ = COMPARISONS[comp]
    run = work / f"run-{comp}" if variant is None else work / f"run-{comp}-{variant}"
    overrides = [
        f"model.name={name}",
        f"model.max_length={MAX_LEN}",
        f"data.task={task}",
        f"data.train={work / f'{task}-train.jsonl'}",
        f"method.name={method}",
        f"epochs={epochs}",
        f"batch_size={BATCH}",
        f"optim.lr={lr}",
        "optim.warmup=0",
        "optim.schedule=linear",
        "optim.weight_decay=0",
        "optim.max_grad_norm=1.0",
        f"precision={a.precision}",
        f"seed={a.seed}",
        f"run_dir={run}",
    ]
    if method == "lora":  # TRL appends EOS to every completion; trimtab's auto skips it for labels
        overrides += [
            "data.add_eos=true",
            f"method.lora_r={LORA[0]}",
            f"method.lora_alpha={LORA[1]}",
            f"method.lora_dropout={LORA[2]}",
            "method.target_modules=all-linear",
        ]
    overrides += ["method.trainable_layers=0"] if method == "freeze" else []
    overrides += VARIANTS[comp][variant][1] if variant is not None else []
    spans = timers()
    result = train(load_config(None, overrides), progress=False).results
    rss = peak_rss_mib()
    loop = (
        spans["close_at"] - spans["bar_at"]
        if "close_at" in spans and "bar_at" in spans
        else result["train_seconds"]
    )
    cache = spans.get("cache", 0.0)
    out = {
        "seconds": loop + cache,
        "loop_seconds": loop,
        "cache_seconds": cache,
        "checkpoint_seconds": spans.get("checkpoint", 0.0),
        "tokens": result["tokens"],
        "train_seconds_reported": result["train_seconds"],
        "train_loss": result["train_loss"],
        "steps": result["steps"],
        "peak_rss_mib": rss,
    }
    if a.held_out:  # the exported model, read back as a user would
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        model = (
            PeftModel.from_pretrained(
                AutoModelForCausalLM.from_pretrained(ensure_weights(name), dtype=torch.float32),
                run / "final",
            )
            if task == "sft"
            else AutoModelForSequenceClassification.from_pretrained(run / "final")
        )
        tok = AutoTokenizer.from_pretrained(run / "final")
        out["heldout_loss"] = heldout_loss(model, tok, task, work, a.precision == "bf16")
    return out


def flops_per_token(comp: str) -> float:
    """Model FLOPs per trained token: N = non-embedding parameters the tokens pass through
    (the blocks; not the embeddings, LM head or pooler); 6N for full fine-tuning, 4N + 6L for
    LoRA (forward + backward through the network; weight gradients only for the L adapters)."""
    import torch
    from transformers import AutoConfig, AutoModel

    from trimtab.models.loading import ensure_weights

    name, _, method, *_ = COMPARISONS[comp]
    with torch.device("meta"):
        base = AutoModel.from_config(AutoConfig.from_pretrained(ensure_weights(name)))
    n = sum(p.numel() for k, p in base.named_parameters() if "embed" not in k and "pooler" not in k)
    if method == "full":
        return 6.0 * n
    adapters = sum(
        LORA[0] * (m.in_features + m.out_features)
        for m in base.modules()
        if isinstance(m, torch.nn.Linear)
    )
    return 4.0 * n + 6.0 * adapters


def run_child(comp: str, side: str, work: Path, a: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        comp,
        side,
        "--work",
        str(work),
        "--seed",
        str(a.seed),
        "--held-out",
        str(a.held_out),
        "--precision",
        a.precision,
    ]
    cmd += ["--peer-gradient-checkpointing"] if a.peer_gradient_checkpointing else []
    log = work / f"{comp}-{side}.log"
    with log.open("w") as err:
        p = subprocess.run(
            cmd,
            cwd=REPO,
            env={**os.environ, **CHILD_ENV},
            text=True,
            stdout=subprocess.PIPE,
            stderr=err,
        )
    found = [line for line in p.stdout.splitlines() if line.startswith(MARK)]
    if p.returncode or not found:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise SystemExit(f"{comp} {side} failed (exit {p.returncode}):\n{tail}")
    return json.loads(found[-1][len(MARK) :])


def sides(comp: str, a: argparse.Namespace) -> list[tuple[str, str]]:
    """(child side, row label) of a comparison: its peers, then trimtab and its variants."""
    peers = COMPARISONS[comp][5][:1] if a.skip_grouped else COMPARISONS[comp][5]
    out = [(str(i), p) for i, p in enumerate(peers)] + [("trimtab", "trimtab")]
    if not a.skip_variants:
        out += [(f"trimtab:{i}", label) for i, (label, _) in enumerate(VARIANTS.get(comp, []))]
    return out


def add_ceiling(rows: list[dict], comp: str, a: argparse.Namespace) -> None:
    """Model GFLOP/s of each row, and as a share of the matmul rate at the model's own shapes:
    one block's linears at trimtab's mean tokens per step (one micro-batch of 16 here)."""
    mine = next(r for r in rows if r["side"] == "trimtab")
    tokens = max(1, round(mine["tokens"] / max(mine["steps"], 1)))
    name, _, method, *_ = COMPARISONS[comp]
    dtype = "bfloat16" if a.precision == "bf16" else "float32"
    rate = shape_rate(block_linears(name), tokens, dtype, weight_grads=method == "full")
    per_token = flops_per_token(comp)
    for r in rows:
        r["gflops"] = per_token * r["tokens"] / r["seconds"] / 1e9
        r["ceiling_gflops"], r["ceiling_tokens"] = rate, tokens
        r["share_of_ceiling"] = r["gflops"] / rate


def compare(a: argparse.Namespace, work: Path) -> dict:
    import torch

    torch.set_num_threads(2)
    machine = {
        **cpu_features(),
        "bf16_matmul_gflops": square_rate("bfloat16"),
        "fp32_matmul_gflops": square_rate("float32"),
        "threads": 2,
        "precision": a.precision,
    }
    print(
        f"{machine['cpu']} {' '.join(machine['flags'])}; 2048x2048 matmul, 2 threads: "
        f"bf16 {machine['bf16_matmul_gflops']:.0f} GFLOP/s, fp32 "
        f"{machine['fp32_matmul_gflops']:.0f} GFLOP/s (best of 20); precision {a.precision}",
        flush=True,
    )
    write_data(a.data, a.examples, a.held_out, a.seed, work)
    rows = []
    for comp in a.only or list(COMPARISONS):
        epochs = COMPARISONS[comp][3]
        group = []
        for side, label in sides(comp, a):
            print(f"{comp}: {label} ...", flush=True)
            r = run_child(comp, side, work, a)
            r.update(comparison=comp, side=side, label=label)
            r.update(model=COMPARISONS[comp][0], method=COMPARISONS[comp][2])
            r["examples_per_s"] = a.examples * epochs / r["seconds"]
            group.append(r)
        if comp != "freeze":
            add_ceiling(group, comp, a)
        rows += group
    summary = summary_rows(rows, a.precision)
    print()
    show(rows)
    print("\nspeed ratio (other seconds / trimtab seconds):")
    for r in summary:
        print(f"  {r['name']}: trimtab / {r['peer']:<30} {r['ratio']:.2f}x  {r['note']}")
    print(
        "trimtab's time includes the checkpoints it writes (the peer saves none): "
        + ", ".join(
            f"{r['comparison']} {r['checkpoint_seconds']:.2f} s"
            for r in rows
            if "loop_seconds" in r
        )
    )
    return {
        "examples": a.examples,
        "held_out": a.held_out,
        "seed": a.seed,
        "machine": machine,
        "rows": rows,
        "summary": summary,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--only",
        action="append",
        choices=list(COMPARISONS),
        help="run this comparison (repeatable); default: all three",
    )
    ap.add_argument("--examples", type=int, default=512, help="training examples")
    ap.add_argument("--held-out", type=int, default=128, help="held-out examples; 0: none")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared/data/marc/en/train.csv")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (data, runs, logs)")
    ap.add_argument("--skip-grouped", action="store_true", help="no group_by_length peer row")
    ap.add_argument("--skip-variants", action="store_true", help="no trimtab variant rows")
    ap.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp32"],
        default="auto",
        help="both sides; auto: the faster on this machine, as trimtab measures it",
    )
    ap.add_argument(
        "--peer-gradient-checkpointing",
        action="store_true",
        help="sft: TRL's own default (gradient checkpointing on) instead of off",
    )
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        import torch

        torch.set_num_threads(2)
        comp, side = a.child
        out = (
            child_trimtab(comp, a.work, a, int(side[8:]) if ":" in side else None)
            if side.startswith("trimtab")
            else child_peer(comp, int(side), a.work, a)
        )
        print(MARK + json.dumps(out), flush=True)
        return
    missing = [m for m in ("trl", "datasets") if importlib.util.find_spec(m) is None]
    if a.examples < BATCH or not a.data.is_file() or missing:
        sys.exit(
            f"--examples must be at least the batch size {BATCH}"
            if a.examples < BATCH
            else f"the peer needs {', '.join(missing)}: pip install -e '.[bench]'"
            if missing
            else f"MARC data not found at {a.data}; pass --data path/to/marc/en/train.csv"
        )
    if a.precision == "auto":
        import torch

        from trimtab.models.precision import decide_precision

        torch.set_num_threads(2)  # the probe's figures are per thread count
        decision = decide_precision(torch.device("cpu"))
        a.precision = decision.precision
        print(decision.describe(), flush=True)
    work = Path(tempfile.mkdtemp(prefix="trimtab-bench-train-"))
    try:
        results = compare(a, work)
        if a.json:
            a.json.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        if a.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
