"""Benchmark trimtab's label scoring against EleutherAI's lm-evaluation-harness, on the same model.

Both sides score the same MARC English test reviews (a seeded sample, every star alike) with the
same prompt strings (trimtab's baseline prompt builder: zero-shot, and few-shot with k solved
training reviews before every review) and the same labels, in one process, 2 threads, the same
batch size and ``max_length``:

    lm-evaluation-harness  its Python API: HFLM wrapping the already-loaded model and tokenizer,
                           a multiple_choice task built in code over a local JSONL file (one
                           log-likelihood request per label), log_samples for each prediction
    trimtab                ``score_labels``: one forward pass per review (the labels differ in
                           their last token), a few-shot prefix run once and its cache reused

and prints reviews/s, the ratio, how often the predicted labels agree (fp32: they should all),
the largest difference between the two sides' label distributions, and each side's accuracy.
Model loading is excluded; each side scores one batch first (warm-up).

lm-eval's HFLM groups the requests of one review whose continuations differ only in their last
token (``logits_cache``, on by default): one forward pass per review, as trimtab. What it still
does beyond trimtab is the output head and log-softmax at every position of every prompt (not
the last only), right padding at full width, and every prompt run whole (no prefix reuse).

    .venv/bin/python bench/harness.py                              # 500 reviews, fp32
    .venv/bin/python bench/harness.py --reviews 100 --before --json out.json
    .venv/bin/python bench/harness.py --run runs/demo/runs/smollm2-lora --precision bf16
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from servers import cpu_features  # noqa: E402  (bench/servers.py, beside this file)

REPO = Path(__file__).resolve().parent.parent
MARC = REPO.parent / "shared/data/marc/en"
STARS = ["1", "2", "3", "4", "5"]
SEPARATOR = "\n\n###\n\n"  # trimtab prepare's add-separator: how a fine-tuned run saw its prompts


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="base model (name or folder)")
    parser.add_argument(
        "--run", help="a fine-tuned sft run instead: its prompts as prepared (review + separator)"
    )
    parser.add_argument("--test", type=Path, default=MARC / "test.csv")
    parser.add_argument("--train", type=Path, default=MARC / "train.csv", help="few-shot pool")
    parser.add_argument("--reviews", type=int, default=500)
    parser.add_argument("--shots", type=int, default=5, help="k of the few-shot stage (0: none)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16", "auto"),
        default="fp32",
        help="bf16 autocast on both sides, or auto (bf16 where the CPU has AVX512-BF16); "
        "fp32 (default) for the identical-prediction check",
    )
    parser.add_argument(
        "--before",
        action="store_true",
        help="also time trimtab without prefix reuse (reuse_prefix=False, the earlier path)",
    )
    parser.add_argument("--json", type=Path, help="also write the rows and the machine here")
    return parser.parse_args()


def read_reviews(path: Path, n: int | None, seed: int) -> list[tuple[str, str]]:
    """``n`` (text, stars) rows of a MARC CSV, a seeded sample (the files are sorted by stars)."""
    with path.open(encoding="utf-8", newline="") as f:
        rows = [(r["review_body"].strip(), r["stars"].strip()) for r in csv.DictReader(f)]
    rng = random.Random(seed)
    rng.shuffle(rows)
    return rows[:n] if n else rows


@dataclass
class Stage:
    """One comparison: the prompts both sides score, the label strings and the gold index."""

    name: str
    prompts: list[str]
    labels: list[str]
    gold: list[int]
    prompt_tokens: list[int] = field(default_factory=list)


def build_stages(model: Any, args: argparse.Namespace) -> list[Stage]:
    """Zero-shot and few-shot prompts from trimtab's builder (a base model), or the prompts as
    prepared (a fine-tuned run): the very strings both sides are given."""
    from trimtab.evaluation.prompts import baseline_prompts, pick_shots

    reviews = read_reviews(args.test, args.reviews, args.seed)
    texts, gold = [t for t, _ in reviews], [STARS.index(s) for _, s in reviews]
    stages = []
    if model.fine_tuned:
        stages.append(
            Stage("fine-tuned", [t + SEPARATOR for t in texts], [" " + s for s in STARS], gold)
        )
    for k in () if model.fine_tuned else (0, args.shots) if args.shots else (0,):
        shots = pick_shots(read_reviews(args.train, None, args.seed), STARS, k, seed=args.seed)
        prompts, labels = baseline_prompts(model.tokenizer, texts, STARS, shots=shots)
        stages.append(Stage("zero-shot" if k == 0 else f"few-shot k={k}", prompts, labels, gold))
    for stage in stages:
        stage.prompt_tokens = [len(ids) for ids in model.tokenizer(stage.prompts)["input_ids"]]
    return stages


def load(args: argparse.Namespace) -> tuple[Any, bool]:
    """The model as trimtab loads it (fp32 weights; a LoRA run merged once), and bf16 or not."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import torch

    from trimtab.evaluation.evaluate import default_bf16, load_for_eval

    torch.set_num_threads(args.threads)
    model = load_for_eval(args.run or args.model, device="cpu")
    if hasattr(model.model, "merge_and_unload"):
        model.model = model.model.merge_and_unload().eval()
    bf16 = {"fp32": False, "bf16": True}.get(args.precision, default_bf16(model.model))
    return model, bool(bf16)


def run_trimtab(model: Any, stage: Stage, args: argparse.Namespace, bf16: bool, reuse: bool):
    """(seconds, CPU seconds, scores ``[n, labels]``) of ``score_labels``, after one warm-up
    batch. CPU seconds (this process's) say more than wall time on cores shared with others."""
    from trimtab.models.scoring import score_labels

    def score(prompts: list[str]) -> Any:
        return score_labels(
            model.model,
            model.tokenizer,
            prompts,
            stage.labels,
            batch_size=args.batch_size,
            max_length=args.max_length,
            bf16=bf16,
            reuse_prefix=reuse,
        )

    score(stage.prompts[: args.batch_size])
    start, cpu = time.perf_counter(), time.process_time()
    scores = score(stage.prompts)
    return time.perf_counter() - start, time.process_time() - cpu, scores


@dataclass
class PeerResult:
    """What lm-eval measured on one stage."""

    seconds: float  # simple_evaluate, whole (task building, requests, scoring, metrics)
    scoring_seconds: float  # inside HFLM.loglikelihood (tokenizing and forward passes)
    scoring_cpu: float  # the same, this process's CPU seconds
    scores: Any  # [n, labels] log-likelihoods from log_samples
    accuracy: float  # lm-eval's own acc
    requests: int = 0
    forward_rows: int = 0
    forward_calls: int = 0


def make_peer(model: Any, args: argparse.Namespace, bf16: bool) -> Any:
    """HFLM wrapping the loaded model and tokenizer; forward passes are counted."""
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(
        pretrained=model.model,
        tokenizer=model.tokenizer,
        batch_size=args.batch_size,
        max_length=args.max_length,  # what trimtab keeps of a long prompt: its last tokens
        device="cpu",
        mixed_precision_dtype="bfloat16" if bf16 else None,
    )
    lm.counts = {"calls": 0, "rows": 0}
    forward = lm._model_call

    def counted(inps: Any, *a: Any, **kw: Any) -> Any:
        lm.counts["calls"] += 1
        lm.counts["rows"] += int(inps.shape[0])
        return forward(inps, *a, **kw)

    lm._model_call = counted
    return lm


def task_config(stage: Stage, data_file: Path) -> dict[str, Any]:
    """A multiple_choice task over a local JSONL file: the prompt as is, the labels as is."""
    return {
        "task": "trimtab_marc_" + stage.name.replace(" ", "_").replace("=", ""),
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "prompt",  # a field name: the string itself, no template applied
        "doc_to_choice": stage.labels,
        "doc_to_target": "gold",
        "target_delimiter": "",  # the labels carry their own leading space where they have one
        "metric_list": [{"metric": "acc"}],
    }


def run_peer(lm: Any, stage: Stage, folder: Path, batch_size: int) -> PeerResult:
    """lm-eval's simple_evaluate on the stage (a warm-up on one batch first)."""
    import torch
    from lm_eval import simple_evaluate

    data_file = folder / f"{len(os.listdir(folder))}.jsonl"
    data_file.write_text(
        "".join(
            json.dumps({"prompt": p, "gold": g}) + "\n" for p, g in zip(stage.prompts, stage.gold)
        )
    )
    task = task_config(stage, data_file)
    timer = {"seconds": 0.0, "cpu": 0.0, "requests": 0}
    loglikelihood = lm.loglikelihood

    def timed(requests: Any, *a: Any, **kw: Any) -> Any:
        start, cpu = time.perf_counter(), time.process_time()
        out = loglikelihood(requests, *a, **kw)
        timer["seconds"] += time.perf_counter() - start
        timer["cpu"] += time.process_time() - cpu
        timer["requests"] += len(requests)
        return out

    lm.loglikelihood = timed
    quiet = dict(log_samples=True, bootstrap_iters=0, verbosity="ERROR")
    with contextlib.redirect_stderr(io.StringIO()):
        simple_evaluate(model=lm, tasks=[dict(task)], limit=batch_size, **quiet)
        timer.update(seconds=0.0, cpu=0.0, requests=0)
        lm.counts.update(calls=0, rows=0)
        start = time.perf_counter()
        results = simple_evaluate(model=lm, tasks=[dict(task)], **quiet)
        seconds = time.perf_counter() - start
    lm.loglikelihood = loglikelihood
    samples = sorted(results["samples"][task["task"]], key=lambda s: s["doc_id"])
    scores = torch.tensor([[float(r[0]) for r in s["filtered_resps"]] for s in samples])
    acc = results["results"][task["task"]]["acc,none"]
    return PeerResult(
        seconds,
        timer["seconds"],
        timer["cpu"],
        scores,
        acc,
        int(timer["requests"]),
        lm.counts["rows"],
        lm.counts["calls"],
    )


def same_tokens(lm: Any, model: Any, stage: Stage, n: int = 8) -> tuple[int, int]:
    """How many (prompt, label) pairs of the first ``n`` prompts lm-eval tokenizes into the very
    tokens trimtab scores (prompt tokens + label tokens; lm-eval moves a prompt's trailing
    whitespace into the continuation, which can split the same text at another point)."""
    tok, same, total = model.tokenizer, 0, 0
    for prompt in stage.prompts[:n]:
        for label in stage.labels:
            ctx, cont = lm._encode_pair(prompt, label)
            ours = tok(prompt)["input_ids"] + tok(label, add_special_tokens=False)["input_ids"]
            same += ctx + cont == ours
            total += 1
    return same, total


def compare(
    stage: Stage, seconds: float, cpu: float, scores: Any, peer: PeerResult
) -> dict[str, Any]:
    """Figures of one stage: rates, ratio, agreement, distribution gap, accuracies."""
    import torch

    n = len(stage.prompts)
    ours, theirs = scores.argmax(-1), peer.scores.argmax(-1)
    gold = torch.tensor(stage.gold)
    # Renormalised over the labels: lm-eval's continuation may hold a token (a newline moved
    # from the prompt's end) that adds the same constant to every label's log-likelihood.
    gap = (torch.log_softmax(scores, -1) - torch.log_softmax(peer.scores, -1)).abs().max()
    return {
        "trimtab_per_s": n / seconds,
        "peer_per_s": n / peer.scoring_seconds,
        "peer_whole_per_s": n / peer.seconds,
        "ratio": peer.scoring_seconds / seconds,
        "ratio_cpu": peer.scoring_cpu / cpu,
        "trimtab_cpu_s": cpu,
        "peer_cpu_s": peer.scoring_cpu,
        "agreement": float((ours == theirs).float().mean()),
        "mismatches": [int(i) for i in (ours != theirs).nonzero().flatten()],
        "max_gap": float(gap),
        "trimtab_accuracy": float((ours == gold).float().mean()),
        "peer_accuracy": float(peer.accuracy),
    }


def main() -> int:
    args = parse_args()
    for path in (args.test, args.train):
        if not path.is_file():
            print(f"{path}: not found (the MARC CSVs of ../shared/data)", file=sys.stderr)
            return 2
    model, bf16 = load(args)
    machine = {**cpu_features(), "threads": args.threads}
    print(
        f"{args.run or args.model}: {args.reviews} MARC test reviews, batch {args.batch_size}, "
        f"max_length {args.max_length}, {args.threads} threads, {'bf16' if bf16 else 'fp32'}\n"
        f"CPU: {machine['cpu']}, flags {' '.join(machine['flags'])}"
    )
    lm = make_peer(model, args, bf16)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for stage in build_stages(model, args):
            rows += run_stage(lm, model, stage, Path(folder), args, bf16)
    if args.json:
        from trimtab.files import write_json

        write_json(args.json, {"rows": rows, "machine": machine, "settings": _settings(args, bf16)})
    return 0


def run_stage(
    lm: Any, model: Any, stage: Stage, folder: Path, args: argparse.Namespace, bf16: bool
) -> list[dict[str, Any]]:
    """Both sides on one stage (and trimtab without prefix reuse, with --before); prints the
    figures and returns the --json rows."""
    tokens = stage.prompt_tokens
    same, total = same_tokens(lm, model, stage)
    print(
        f"\n== {stage.name}: labels {stage.labels!r}, prompts of {min(tokens)}-{max(tokens)} "
        f"tokens (mean {sum(tokens) / len(tokens):.0f}), "
        f"{sum(t > args.max_length for t in tokens)} cut to max_length; "
        f"same tokens on both sides for {same}/{total} (prompt, label) pairs"
    )
    peer = run_peer(lm, stage, folder, args.batch_size)
    print(
        f"lm-eval: {peer.requests} log-likelihood requests -> {peer.forward_rows} sequences in "
        f"{peer.forward_calls} forward passes (logits_cache {'on' if lm.logits_cache else 'off'})"
    )
    figures = compare(stage, *run_trimtab(model, stage, args, bf16, reuse=True), peer)
    peer_name = f"lm-evaluation-harness {lm_eval_version()} HFLM"
    rows = [_row(stage.name, peer_name, figures)]
    before = None
    if args.before:
        before = compare(stage, *run_trimtab(model, stage, args, bf16, reuse=False), peer)
        rows.append(_row(stage.name + ", no prefix reuse", peer_name, before))
    print_stage(figures, before)
    return rows


def print_stage(figures: dict[str, Any], before: dict[str, Any] | None) -> None:
    sides = [
        ("lm-eval (loglikelihood)", figures["peer_per_s"], figures["peer_cpu_s"]),
        ("lm-eval (simple_evaluate)", figures["peer_whole_per_s"], None),
        ("trimtab score_labels", figures["trimtab_per_s"], figures["trimtab_cpu_s"]),
    ]
    if before is not None:
        sides.append(("trimtab, no prefix reuse", before["trimtab_per_s"], before["trimtab_cpu_s"]))
    for name, rate, cpu in sides:
        print(f"  {name:27} {rate:7.2f} reviews/s" + (f"  {cpu:7.1f} CPU s" if cpu else ""))
    print(
        f"  trimtab vs lm-eval: {figures['ratio']:.2f}x ({figures['ratio_cpu']:.2f}x in CPU "
        f"seconds); same prediction on {figures['agreement']:.1%} "
        f"(mismatches at {figures['mismatches'][:10]}); largest gap between the label "
        f"distributions {figures['max_gap']:.2e} (log-prob); accuracy lm-eval "
        f"{figures['peer_accuracy']:.3f}, trimtab {figures['trimtab_accuracy']:.3f}"
    )
    if before is not None:
        print(
            f"  prefix reuse vs none: {figures['trimtab_per_s'] / before['trimtab_per_s']:.2f}x "
            f"({before['trimtab_cpu_s'] / figures['trimtab_cpu_s']:.2f}x in CPU seconds)"
        )


def lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


EXTRA = ("ratio_cpu", "trimtab_cpu_s", "peer_cpu_s", "peer_whole_per_s", "max_gap", "mismatches")
EXTRA += ("trimtab_accuracy", "peer_accuracy")


def _row(stage: str, peer: str, figures: dict[str, Any]) -> dict[str, Any]:
    return {
        "stage": stage,
        "peer": peer,
        "peer_figure": round(figures["peer_per_s"], 2),
        "trimtab_figure": round(figures["trimtab_per_s"], 2),
        "unit": "reviews/s",
        "ratio": round(figures["ratio"], 3),
        "agreement": figures["agreement"],
        "extra": {k: figures[k] for k in EXTRA},
    }


def _settings(args: argparse.Namespace, bf16: bool) -> dict[str, Any]:
    settings = {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "json"
    }
    return {**settings, "bf16": bf16}


if __name__ == "__main__":
    sys.exit(main())
