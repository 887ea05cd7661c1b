"""Benchmark classification by label scoring against generation, on the same fine-tuned model.

One fine-tuned SmolLM2 run (LoRA merged into the weights once, so no side pays for the adapter)
predicts the star rating of the same MARC English test reviews three ways, in one process,
2 threads, bf16 autocast, batch 16:

    label scoring      trimtab: one forward pass per review, the five labels' log-probabilities
    trimtab generate   trimtab's sampler (KV cache, greedy), the answer parsed back to a label
    HF generate loop   what a user would otherwise write: tokenizer(padding left) +
                       model.generate(do_sample=False) per batch, decode, parse

and prints reviews/s, the ratios, and how often the predictions agree. Model loading and the
tokenizer's first call are excluded (a warm-up batch runs first on each side).

    .venv/bin/python bench/eval.py          # 1,000 reviews, make case-study-methods's LoRA run
    .venv/bin/python bench/eval.py --run runs/demo/runs/smollm2-lora --data runs/demo/data \
        --reviews 200 --json out.json

--json writes the figures, the machine (CPU, flags, threads, bf16/fp32 2048x2048 matmul rates)
and bench/report.py's summary rows: each trimtab side against the HF generate loop, with the
model's FLOP rate on the prompts against the matmul rate as its ceiling.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ceiling import block_linears, square_rate  # noqa: E402  (bench/ceiling.py)
from report import matmul_ceiling, summary_row  # noqa: E402  (bench/report.py: the schema)
from servers import cpu_features, forward_rate, linear_weights  # noqa: E402  (bench/servers.py)

REPO = Path(__file__).resolve().parent.parent


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--run",
        default=str(REPO / "runs/case-study-methods/runs/smollm2-lora"),
        help="a fine-tuned sft run (trimtab train output)",
    )
    parser.add_argument(
        "--data",
        default=str(REPO / "runs/case-study-methods/data"),
        help="the prepared MARC folder (its test.jsonl)",
    )
    parser.add_argument("--reviews", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--fp32",
        action="store_true",
        help="no bf16 autocast: the three sides then agree exactly (in bf16 a "
        "near-tie between two labels can go either way)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures and summary here")
    return parser.parse_args()


def inputs_exist(args: argparse.Namespace) -> bool:
    """Whether --run and --data exist; says what to do on stderr when one does not."""
    for path in (args.run, args.data):
        if not Path(path).exists():
            print(
                f"{path}: not found. Run `make demo` or `make case-study-methods` first, or give "
                "--run and --data.",
                file=sys.stderr,
            )
            return False
    return True


def load_model_and_data(args: argparse.Namespace):
    """The run's model (LoRA merged into the weights), the reviews and a warm-up batch."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from trimtab.evaluation.evaluate import load_eval_data, load_for_eval

    torch.set_num_threads(args.threads)
    model = load_for_eval(args.run, device="cpu")
    if hasattr(model.model, "merge_and_unload"):
        model.model = model.model.merge_and_unload().eval()
    data = load_eval_data(Path(args.data), limit=args.reviews)
    warm = load_eval_data(Path(args.data), limit=args.batch_size)
    print(
        f"{args.run}: {len(data.records)} reviews of {data.path}, batch {args.batch_size}, "
        f"{args.threads} threads, {'fp32' if args.fp32 else 'bf16'}"
    )
    return model, data, warm


def run_sides(model, data, warm, args: argparse.Namespace):
    """Label scoring and generation by trimtab, then the HF generate loop (each warmed up)."""
    from trimtab.evaluation.evaluate import evaluate_classification
    from trimtab.evaluation.prompts import parse_label

    labels = data.labels or []
    common = {"bf16": not args.fp32, "batch_size": args.batch_size, "max_length": 512}
    evaluate_classification(model, warm, mode="score", **common)
    scored = evaluate_classification(model, data, mode="score", **common)
    evaluate_classification(model, warm, mode="generate", **common)
    generated = evaluate_classification(model, data, mode="generate", **common)
    hf_seconds, hf_predicted = hf_generate_loop(
        model, data, labels, parse_label, args.batch_size, bf16=not args.fp32
    )
    return scored, generated, hf_seconds, hf_predicted


def print_table(data, scored, generated, hf_seconds, hf_predicted) -> None:
    rows = [
        ("label scoring (trimtab)", scored.seconds, scored.classification),
        ("generation (trimtab)", generated.seconds, generated.classification),
        ("HF generate loop", hf_seconds, None),
    ]
    n = len(data.records)
    print(f"\n{'side':28} {'seconds':>8} {'reviews/s':>10} {'accuracy':>9} {'invalid':>8}")
    for name, seconds, report in rows:
        acc = f"{report.accuracy:.3f}" if report else f"{_accuracy(hf_predicted, data.gold):.3f}"
        invalid = report.invalid if report else sum(p is None for p in hf_predicted)
        print(f"{name:28} {seconds:8.1f} {n / seconds:10.1f} {acc:>9} {invalid:>8}")


def print_ratios(scored, generated, hf_seconds, hf_predicted) -> None:
    score_pred, gen_pred = scored.predicted, generated.predicted
    print(
        f"\nlabel scoring vs trimtab generation: {generated.seconds / scored.seconds:.2f}x "
        f"faster; same prediction on {_agree(score_pred, gen_pred):.1%} of reviews"
    )
    print(
        f"label scoring vs HF generate loop:   {hf_seconds / scored.seconds:.2f}x faster; "
        f"same prediction on {_agree(score_pred, hf_predicted):.1%}"
    )
    print(
        f"trimtab generation vs HF generate:   {hf_seconds / generated.seconds:.2f}x faster; "
        f"same prediction on {_agree(gen_pred, hf_predicted):.1%}"
    )


def main() -> int:
    args = parse_args()
    if not inputs_exist(args):
        return 2
    model, data, warm = load_model_and_data(args)
    machine = {**cpu_features(), "threads": args.threads}
    machine.update(bf16_matmul_gflops=square_rate("bfloat16"))
    machine.update(fp32_matmul_gflops=square_rate("float32"))
    results = run_sides(model, data, warm, args)
    print_table(data, *results)
    print_ratios(*results)
    if args.json:
        from trimtab.files import write_json

        write_json(args.json, figures(model, data, results, machine, args))
    return 0


def figures(model, data, results, machine: dict, args: argparse.Namespace) -> dict:
    """The --json content: each side's figures, the machine and bench/report.py's rows."""
    scored, generated, hf_seconds, hf_predicted = results
    n, precision = len(data.records), "fp32" if args.fp32 else "bf16"
    prompts = model.tokenizer(data.prompts, truncation=True, max_length=512)["input_ids"]
    body, _ = linear_weights(model.model)
    how = "2 FLOPs a block weight a prompt token"
    # a forward pass runs a batch's tokens (batch x its mean prompt length) through each matmul
    rows = round(args.batch_size * sum(map(len, prompts)) / max(1, len(prompts)))
    shapes = block_linears(model.base_model or model.name)
    rate = forward_rate(shapes, rows, "float32" if args.fp32 else "bfloat16")
    at = f"{precision} matmul at the model's shapes, {rows} rows"
    hf_accuracy = _accuracy(hf_predicted, data.gold)
    sides = {
        "label scoring (trimtab)": (scored.seconds, scored.classification.accuracy),
        "generation (trimtab)": (generated.seconds, generated.classification.accuracy),
        "HF generate loop": (hf_seconds, hf_accuracy),
    }
    summary = []
    for side, mine in (("label scoring", scored), ("generation", generated)):
        gflops = 2 * body * sum(map(len, prompts)) / mine.seconds / 1e9
        same = _agree(mine.predicted, hf_predicted)
        note = f"accuracy {mine.classification.accuracy:.3f} vs the peer's {hf_accuracy:.3f}; "
        note += f"same prediction on {same:.1%} of {n} test reviews, batch {args.batch_size}"
        summary.append(
            summary_row(
                "evaluation",
                f"classification by {side}, {model.base_model or model.name} {model.method or ''}"
                " fine-tuned (merged)",
                "transformers generate loop (3 new tokens, parsed)",
                n / hf_seconds,
                n / mine.seconds,
                "reviews/s",
                precision=precision,
                ceiling=matmul_ceiling(gflops, rate, at, how),
                note=note,
            )
        )
    return {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "reviews": n,
        "sides": {
            k: {"seconds": t, "reviews_per_s": n / t, "accuracy": acc}
            for k, (t, acc) in sides.items()
        },
        "machine": machine,
        "summary": summary,
    }


def hf_generate_loop(model, data, labels, parse_label, batch_size, bf16):
    """The loop a user writes with transformers alone (batched, left-padded, greedy).

    Reviews go in length order, as trimtab's sides do, so padding costs both the same.
    """
    import torch

    tok, net = model.tokenizer, model.model
    tok.padding_side = "left"
    order = sorted(range(len(data.prompts)), key=lambda i: len(data.prompts[i]))
    prompts = [data.prompts[i] for i in order]
    max_new = 3  # " " + digit + end of text: the fine-tuned answer
    predicted: list[str | None] = []

    def run(batch: list[str]) -> list[str]:
        enc = tok(batch, return_tensors="pt", padding=True, truncation=True, max_length=512)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = net.generate(
                **enc, max_new_tokens=max_new, do_sample=False, pad_token_id=tok.pad_token_id
            )
        return tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)

    run(prompts[:batch_size])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(prompts), batch_size):
        predicted += [parse_label(t, labels) for t in run(prompts[i : i + batch_size])]
    seconds = time.perf_counter() - start
    in_order: list[str | None] = [None] * len(prompts)
    for k, i in enumerate(order):
        in_order[i] = predicted[k]
    return seconds, in_order


def _accuracy(predicted, gold) -> float:
    return sum(p == g for p, g in zip(predicted, gold)) / max(1, len(gold))


def _agree(a, b) -> float:
    return sum(x == y for x, y in zip(a, b)) / max(1, len(a))


if __name__ == "__main__":
    sys.exit(main())
