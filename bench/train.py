"""Benchmark `trimtab train` against the Hugging Face stack (TRL SFTTrainer, transformers Trainer).

Both sides train the same model from the same weights on the same MARC English examples
(`../shared/data/marc/en/train.csv`, a seeded sample across all star ratings, written as JSONL to
a temp dir, never into the repository), with the same hyperparameters, on the CPU in bf16
autocast. Every side runs in a fresh subprocess (2 torch threads, steady-malloc environment), so
peak memory (VmHWM) is per side. Timed: `trainer.train()` for the peer, the training loop for
trimtab (its `train_seconds`, plus the frozen-trunk feature caching for `freeze`); model loading
is excluded on both sides. The peer (`pip install -e '.[bench]'`: trl, datasets) is needed.

    sft       SmolLM2-135M, LoRA r=16 all-linear, completion-only loss  (TRL SFTTrainer + PEFT)
    classify  MiniLM-L6 full fine-tuning, 5 labels                      (transformers Trainer)
    freeze    MiniLM-L6 frozen trunk, head only, 3 epochs               (transformers Trainer)

    .venv/bin/python bench/train.py                      # all three, 512 examples (minutes)
    .venv/bin/python bench/train.py --only sft --examples 32 --held-out 32   # a quick check
"""

import argparse
import csv
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

REPO = Path(__file__).resolve().parent.parent
SEP, BATCH, MAX_LEN = "\n\n###\n\n", 16, 512
# comparison -> (model, trimtab task, method, epochs, learning rate)
COMPARISONS = {
    "sft": ("smollm2-135m", "sft", "lora", 1, 2e-4),
    "classify": ("minilm-l6", "classify", "full", 1, 5e-5),
    "freeze": ("minilm-l6", "classify", "freeze", 3, 1e-3),
}
PEERS = {"sft": ["peer"], "classify": ["peer", "peer-grouped"], "freeze": ["peer"]}
LABELS = {("sft", "peer"): "TRL SFTTrainer + PEFT", ("classify", "peer"): "HF Trainer",
          ("classify", "peer-grouped"): "HF Trainer, group_by_length",
          ("freeze", "peer"): "HF Trainer, frozen trunk"}
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "1073741824", "MALLOC_TRIM_THRESHOLD_": "1073741824",
             "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
MARK = "@@RESULT "


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_data(csv_path: Path, n: int, held: int, seed: int, work: Path) -> None:
    """n training + held held-out reviews, sampled with a fixed seed across all stars."""
    with csv_path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    pick = random.Random(seed).sample(rows, n + held)
    for task, fmt in (("sft", lambda r: (r["review_body"] + SEP, " " + r["stars"])),
                      ("classify", lambda r: (r["review_body"], r["stars"]))):
        for split, part in (("train", pick[:n]), ("heldout", pick[n:])):
            lines = [json.dumps(dict(zip(("prompt", "completion"), fmt(r)))) for r in part]
            (work / f"{task}-{split}.jsonl").write_text("".join(x + "\n" for x in lines))


# --- children: one side of one comparison per process ---------------------------------------


def peak_rss_mib() -> float:
    text = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1)) / 1024


def heldout_loss(model, tok, task: str, records: list[dict]) -> float:
    """Mean loss on held-out examples, computed the same way for both sides (bf16 autocast):
    per completion token (sft: completion + EOS, prompt cut from its start) or per example."""
    import torch
    import torch.nn.functional as F

    model.eval()
    total = count = 0.0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for i in range(0, len(records), 8):
            chunk = records[i:i + 8]
            if task == "classify":
                enc = tok([r["prompt"] for r in chunk], truncation=True, max_length=MAX_LEN,
                          padding=True, return_tensors="pt")
                target = torch.tensor([model.config.label2id[r["completion"]] for r in chunk])
                total += float(F.cross_entropy(model(**enc).logits.float(), target, reduction="sum"))
                count += len(chunk)
                continue
            seqs = []
            for r in chunk:
                c = tok(r["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
                p = tok(r["prompt"], add_special_tokens=False)["input_ids"][-(MAX_LEN - len(c)):]
                seqs.append((p + c, [-100] * len(p) + c))
            width = max(len(s) for s, _ in seqs)
            ids = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s, _ in seqs])
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s, _ in seqs])
            labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in seqs])[:, 1:]
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            total += float(F.cross_entropy(logits.transpose(1, 2), labels, reduction="sum"))
            count += int((labels != -100).sum())
    return total / max(count, 1)


def child_peer(comp: str, side: str, work: Path, a: argparse.Namespace) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, set_seed

    from trimtab.models.loading import ensure_weights

    name, _, method, epochs, lr = COMPARISONS[comp]
    folder = ensure_weights(name)
    set_seed(a.seed)
    tok = AutoTokenizer.from_pretrained(folder)
    train_rows = read_jsonl(work / f"{'sft' if comp == 'sft' else 'classify'}-train.jsonl")
    common = dict(output_dir=str(work / f"out-{comp}-{side}"), per_device_train_batch_size=BATCH,
                  num_train_epochs=epochs, learning_rate=lr, lr_scheduler_type="linear",
                  warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, bf16=True, use_cpu=True,
                  logging_steps=1, save_strategy="no", eval_strategy="no", report_to=[],
                  seed=a.seed, disable_tqdm=True, dataloader_num_workers=0)
    if comp == "sft":
        from peft import LoraConfig
        from transformers import AutoModelForCausalLM
        from trl import SFTConfig, SFTTrainer

        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        config = SFTConfig(**common, max_length=MAX_LEN, packing=False, completion_only_loss=True,
                           activation_checkpointing=a.peer_gradient_checkpointing)
        lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                          task_type="CAUSAL_LM")
        trainer = SFTTrainer(model=model, args=config, processing_class=tok, peft_config=lora,
                             train_dataset=Dataset.from_list(train_rows))
    else:
        from transformers import (AutoModelForSequenceClassification, DataCollatorWithPadding,
                                  Trainer, TrainingArguments)

        names = [str(i) for i in range(1, 6)]
        model = AutoModelForSequenceClassification.from_pretrained(
            folder, dtype=torch.float32, num_labels=5, id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)})
        if method == "freeze":  # head only: pooler + classifier train, as trimtab's freeze 0
            for n, p in model.named_parameters():
                p.requires_grad_(not n.startswith("bert.") or n.startswith("bert.pooler."))
        enc = tok([r["prompt"] for r in train_rows], truncation=True, max_length=MAX_LEN)
        data = Dataset.from_dict({**enc, "labels": [int(r["completion"]) - 1 for r in train_rows]})
        strategy = "group_by_length" if side == "peer-grouped" else "random"
        trainer = Trainer(model=model, args=TrainingArguments(
            **common, train_sampling_strategy=strategy), train_dataset=data, processing_class=tok,
            data_collator=DataCollatorWithPadding(tok))
    tokens = sum(len(x) for x in trainer.train_dataset["input_ids"]) * epochs
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    out = {"seconds": seconds, "tokens": tokens, "train_loss": losses[-1] if losses else None,
           "steps": trainer.state.global_step, "peak_rss_mib": peak_rss_mib()}
    if a.held_out:
        task = "sft" if comp == "sft" else "classify"
        out["heldout_loss"] = heldout_loss(trainer.model, tok, task,
                                           read_jsonl(work / f"{task}-heldout.jsonl"))
    return out


def child_trimtab(comp: str, work: Path, a: argparse.Namespace) -> dict:
    from trimtab.training import load_config, train

    name, task, method, epochs, lr = COMPARISONS[comp]
    data = work / f"{'sft' if task == 'sft' else 'classify'}-train.jsonl"
    overrides = [f"model.name={name}", f"model.max_length={MAX_LEN}", f"data.train={data}",
                 f"data.task={task}", f"method.name={method}", f"epochs={epochs}",
                 f"batch_size={BATCH}", f"optim.lr={lr}", "optim.warmup=0",
                 "optim.schedule=linear", "optim.weight_decay=0", "optim.max_grad_norm=1.0",
                 "precision=bf16", f"seed={a.seed}", f"run_dir={work / f'run-{comp}'}"]
    if task == "sft":  # TRL appends EOS to every completion; trimtab's auto skips it for labels
        overrides += ["data.add_eos=true", "method.lora_r=16", "method.lora_alpha=32",
                      "method.lora_dropout=0.05", "method.target_modules=all-linear"]
    if method == "freeze":
        overrides.append("method.trainable_layers=0")
    lines: list[str] = []
    result = train(load_config(None, overrides), progress=True, log=lines.append).results
    rss = peak_rss_mib()
    cached = [float(m.group(1)) for line in lines
              if (m := re.search(r"cached frozen-trunk features .* in ([\d.]+) s", line))]
    out = {"seconds": result["train_seconds"] + sum(cached), "cache_seconds": sum(cached),
           "loop_seconds": result["train_seconds"], "tokens": result["tokens"],
           "train_loss": result["train_loss"], "steps": result["steps"], "peak_rss_mib": rss}
    if a.held_out:
        out["heldout_loss"] = trimtab_heldout(comp, work)
    return out


def trimtab_heldout(comp: str, work: Path) -> float:
    import torch
    from transformers import AutoTokenizer

    final = work / f"run-{comp}" / "final"
    tok = AutoTokenizer.from_pretrained(final)
    if comp == "sft":
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        from trimtab.models.loading import ensure_weights

        base = AutoModelForCausalLM.from_pretrained(ensure_weights("smollm2-135m"),
                                                    dtype=torch.float32)
        model = PeftModel.from_pretrained(base, final)
    else:
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(final, dtype=torch.float32)
    task = "sft" if comp == "sft" else "classify"
    return heldout_loss(model, tok, task, read_jsonl(work / f"{task}-heldout.jsonl"))


# --- the parent: data, machine rate, children, table ------------------------------------------


def matmul_gflops(dtype_name: str, n: int = 2048, reps: int = 20) -> float:
    """The best of ``reps`` timed n x n matmuls (after a warm-up), in GFLOP/s."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - started)
    return 2 * n ** 3 / min(times) / 1e9


def flops_per_token(comp: str) -> float:
    """Model FLOPs per trained token: N = non-embedding parameters the tokens pass through
    (blocks; not the embeddings, LM head or pooler); 6N for full fine-tuning, 4N + 6L for LoRA
    (forward + backward through the network, weight gradients only for the L adapter weights)."""
    import torch
    from transformers import AutoConfig, AutoModel

    from trimtab.models.loading import ensure_weights

    name, _, method, _, _ = COMPARISONS[comp]
    with torch.device("meta"):
        base = AutoModel.from_config(AutoConfig.from_pretrained(ensure_weights(name)))
    n = sum(p.numel() for k, p in base.named_parameters() if "embed" not in k
            and "pooler" not in k)
    if method == "full":
        return 6.0 * n
    lora = sum(16 * (m.in_features + m.out_features) for m in base.modules()
               if isinstance(m, torch.nn.Linear))
    return 4.0 * n + 6.0 * lora


def run_child(comp: str, side: str, work: Path, a: argparse.Namespace) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", comp, side, "--work",
           str(work), "--seed", str(a.seed), "--held-out", str(a.held_out)]
    if a.peer_gradient_checkpointing:
        cmd.append("--peer-gradient-checkpointing")
    log = work / f"{comp}-{side}.log"
    with log.open("w") as err:
        p = subprocess.run(cmd, cwd=REPO, env={**os.environ, **CHILD_ENV}, text=True,
                           stdout=subprocess.PIPE, stderr=err)
    found = [line for line in p.stdout.splitlines() if line.startswith(MARK)]
    if p.returncode or not found:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        sys.exit(f"{comp} {side} failed (exit {p.returncode}):\n{tail}")
    return json.loads(found[-1][len(MARK):])


def show(rows: list[dict], rate: float) -> None:
    head = ("comparison", "side", "train s", "ex/s", "final loss", "held-out", "peak MiB",
            "tokens", "GFLOP/s", "% bf16 mm")
    fmt = "{:<10} {:<28} {:>8} {:>7} {:>10} {:>9} {:>9} {:>8} {:>8} {:>9}"
    print(fmt.format(*head))
    for r in rows:
        num = (lambda v, f: "-" if v is None else format(v, f))
        print(fmt.format(r["comparison"], r["label"], num(r["seconds"], ".1f"),
                         num(r["examples_per_s"], ".1f"), num(r["train_loss"], ".4f"),
                         num(r.get("heldout_loss"), ".4f"), num(r["peak_rss_mib"], ".0f"),
                         r["tokens"], num(r.get("gflops"), ".1f"),
                         num(r.get("gflops") and 100 * r["gflops"] / rate, ".1f")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", choices=list(COMPARISONS),
                    help="run this comparison (repeatable); default: all")
    ap.add_argument("--examples", type=int, default=512, help="training examples")
    ap.add_argument("--held-out", type=int, default=128,
                    help="held-out examples for the post-training loss (0: skip)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared/data/marc/en/train.csv")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (data, runs, logs)")
    ap.add_argument("--skip-grouped", action="store_true",
                    help="classify: skip the HF Trainer row with group_by_length")
    ap.add_argument("--peer-gradient-checkpointing", action="store_true",
                    help="sft: TRL's own default (gradient_checkpointing=True) instead of off")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        import torch

        torch.set_num_threads(2)
        comp, side = a.child
        out = child_trimtab(comp, a.work, a) if side == "trimtab" else child_peer(
            comp, side, a.work, a)
        print(MARK + json.dumps(out), flush=True)
        return
    if a.examples < BATCH:
        sys.exit(f"--examples must be at least the batch size {BATCH}")
    if not a.data.is_file():
        sys.exit(f"MARC data not found at {a.data}; pass --data path/to/marc/en/train.csv")
    import torch

    torch.set_num_threads(2)
    machine = {"bf16_matmul_gflops": matmul_gflops("bfloat16"),
               "fp32_matmul_gflops": matmul_gflops("float32"), "threads": 2,
               "torch": torch.__version__}
    print(f"matmul 2048x2048 on 2 threads: bf16 {machine['bf16_matmul_gflops']:.0f} GFLOP/s, "
          f"fp32 {machine['fp32_matmul_gflops']:.0f} GFLOP/s", flush=True)
    work = Path(tempfile.mkdtemp(prefix="trimtab-bench-train-"))
    write_data(a.data, a.examples, a.held_out, a.seed, work)
    rows, ratios = [], {}
    for comp in a.only or list(COMPARISONS):
        epochs = COMPARISONS[comp][3]
        per_token = flops_per_token(comp) if comp in ("sft", "classify") else None
        sides = [s for s in PEERS[comp] if not (a.skip_grouped and s == "peer-grouped")]
        for side in sides + ["trimtab"]:
            print(f"{comp}: {side} ...", flush=True)
            r = run_child(comp, side, work, a)
            r.update(comparison=comp, side=side, label=LABELS.get((comp, side), "trimtab"),
                     examples_per_s=a.examples * epochs / r["seconds"])
            if per_token:
                r["gflops"] = per_token * r["tokens"] / r["seconds"] / 1e9
                r["share_of_bf16_matmul"] = r["gflops"] / machine["bf16_matmul_gflops"]
            rows.append(r)
        mine = rows[-1]
        for peer in rows[-len(sides) - 1:-1]:
            ratios[f"{comp}/{peer['side']}"] = peer["seconds"] / mine["seconds"]
    print()
    show(rows, machine["bf16_matmul_gflops"])
    print("\nspeed trimtab / peer (peer seconds / trimtab seconds):")
    for key, value in ratios.items():
        print(f"  {key:<22} {value:.2f}x")
    if a.json:
        a.json.write_text(json.dumps({"examples": a.examples, "held_out": a.held_out,
                                      "seed": a.seed, "machine": machine, "rows": rows,
                                      "speed_ratio_trimtab_over_peer": ratios}, indent=2) + "\n")
    if a.keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
