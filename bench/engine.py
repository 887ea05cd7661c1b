"""Benchmark trimtab's decoding lane against transformers' continuous batching and `model.generate`.

One process, one model (SmolLM2-135M as `trimtab.models.loading.load_model` gives it: fp32, SDPA,
on the CPU, 2 threads), the same prompts (MARC English test reviews cut to varied lengths,
`../shared/data/marc/en/test.csv`, else synthetic text), the same token ids (the tokenizer's own,
no chat template), greedy decoding, the same max_new_tokens and the same eos set (trimtab's: the
tokenizer's eos plus the model's generation_config eos). Each engine runs 2 prompts once,
unmeasured, before its timed run. The engines:

    trimtab           trimtab.generation.generate: the server's Lane (continuous batching written
                      by hand; rows leave the batch and its KV cache the step they finish, the next
                      prompts join in their place), batch_size B
    transformers-cb   transformers' own continuous batching (paged KV cache, a background thread),
                      driven exactly as `model.generate_batch` drives it (init_continuous_batching,
                      warmup, start, add_requests, get_result, stop) with max_requests_per_batch B;
                      timed twice from one run: the requests alone (manager already up) and the
                      whole call (+ KV cache allocation, thread start and stop). On the CPU it
                      needs nothing special: SDPA is kept (no flash-attn to switch to), no CUDA
                      graphs or compile, so warmup() only builds the KV cache (sized from RAM)
    generate          plain `model.generate` on static left-padded batches of B, in input order:
                      a batch decodes until its last row ends

Measured: wall seconds, generated tokens (per row: up to and including the eos, or max_tokens),
tokens/s, and trimtab's tokens/s over each peer's (above 1: trimtab is faster). Also greedy
agreement: trimtab batched vs trimtab one prompt at a time (batch_size=1; the texts should all
match: batching must not change greedy output), and how many of the peers' texts (decoded with
skip_special_tokens=True) are identical to trimtab's. The CPU's matmul rate and flags
(amx / avx512_bf16 / avx2) are printed, as they bound what any engine can do, and so is the share
of the CPU other processes used during each timed run ("others %", from /proc/stat less this
process's own ticks): on a small shared machine a busy neighbour slows a run several-fold.

    .venv/bin/python bench/engine.py                 # 32 prompts, 64 tokens, batch 16
    .venv/bin/python bench/engine.py --quick --json out.json   # 8 prompts, 32 tokens
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ceiling import block_linears, square_rate  # noqa: E402  (bench/ceiling.py)
from report import matmul_ceiling, summary_row  # noqa: E402  (bench/report.py: the schema)
from servers import FLAGS, cpu_features, forward_rate, linear_weights  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CUTS = (120, 250, 400, 700, 1000)  # characters a review is cut to, in turn: varied lengths


def cpu_ticks() -> tuple[int, int, float]:
    """(busy ticks of the whole machine, this process's ticks, monotonic seconds)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    busy = sum(int(v) for i, v in enumerate(fields[:8]) if i not in (3, 4))  # not idle, iowait
    mine = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return busy, int(mine[11]) + int(mine[12]), time.monotonic()  # utime + stime


def others_share(before: tuple, after: tuple) -> float:
    """The share of all cores' time that other processes kept busy between two cpu_ticks()."""
    hz = os.sysconf("SC_CLK_TCK")
    others = (after[0] - before[0]) - (after[1] - before[1])
    return max(0.0, others / hz / ((after[2] - before[2]) * (os.cpu_count() or 1)))


def make_prompts(data: Path, n: int, seed: int) -> tuple[list[str], str]:
    """n review prompts of varied length (MARC test reviews if the file is there)."""
    rng = random.Random(seed)
    if data.is_file():
        with data.open(newline="", encoding="utf-8") as f:
            bodies = [r["review_body"] for r in csv.DictReader(f)]
        bodies, source = rng.sample(bodies, n), str(data)
    else:
        words = "good bad cheap sturdy broke works fast slow size color battery gift".split()
        bodies = [" ".join(rng.choices(words, k=rng.randint(10, 160))) + "." for _ in range(n)]
        source = "synthetic"
    out = []
    for i, body in enumerate(bodies):
        cut = CUTS[i % len(CUTS)]
        body = body if len(body) <= cut else body[:cut].rsplit(" ", 1)[0] + " ..."
        out.append(f"Product review: {body}\n\nA short summary of this review:")
    return out, source


def count_new(tokens: list[int], eos: set[int]) -> list[int]:
    """The generated tokens up to and including the first eos (all of them if none)."""
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[: i + 1]
    return tokens


def run_trimtab(model, tok, prompts: list[str], a, batch_size: int) -> dict:
    """trimtab.generation.generate (the Lane), greedy; texts as the engine streams them."""
    from trimtab.generation import SamplingParams, generate

    params = SamplingParams(temperature=0, max_tokens=a.max_tokens)
    started = time.perf_counter()
    done = generate(model, tok, prompts, params, batch_size=batch_size)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "tokens": sum(c.tokens for c in done),
        "texts": [c.text for c in done],
        "finish": [c.finish_reason for c in done],
    }


def run_generate(model, tok, ids: list[list[int]], eos: set[int], a) -> dict:
    """Plain `model.generate`: static left-padded batches of B, in input order."""
    import torch
    from transformers import GenerationConfig

    config = GenerationConfig(
        max_new_tokens=a.max_tokens,
        do_sample=False,
        eos_token_id=sorted(eos),
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else min(eos),
    )
    rows: list[list[int]] = []
    started = time.perf_counter()
    for i in range(0, len(ids), a.batch_size):
        batch = tok.pad({"input_ids": ids[i : i + a.batch_size]}, padding_side="left")
        batch = {k: torch.tensor(v) for k, v in batch.items()}
        with torch.no_grad():
            out = model.generate(**batch, generation_config=config)
        width = batch["input_ids"].shape[1]
        rows += [count_new(r[width:].tolist(), eos) for r in out]
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "tokens": sum(len(r) for r in rows),
        "texts": [tok.decode(r, skip_special_tokens=True) for r in rows],
    }


def collect(manager, request_ids: list[str]) -> dict:
    """Wait for every request's final GenerationOutput, as generate_batch does."""
    results: dict = {}
    while len(results) < len(request_ids):
        r = manager.get_result(timeout=1)
        if r is not None and r.is_finished():
            results[r.request_id] = r
        elif r is None and not manager.is_running():
            raise RuntimeError("transformers' continuous batching thread died")
    bad = {k: r.error for k, r in results.items() if r.error is not None}
    if bad:
        raise RuntimeError(f"transformers' continuous batching failed requests: {bad}")
    return results


def run_transformers_cb(model, tok, ids: list[list[int]], eos: set[int], a) -> dict:
    """transformers' continuous batching, the calls `model.generate_batch` makes, timed apart."""
    import torch
    from transformers import ContinuousBatchingConfig, GenerationConfig
    from transformers.generation.continuous_batching.utils import WorkloadHints

    config = GenerationConfig(
        max_new_tokens=a.max_tokens,
        do_sample=False,
        eos_token_id=sorted(eos),
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else min(eos),
    )
    hints = WorkloadHints(max(map(len, ids)), a.max_tokens, len(ids))
    cb = ContinuousBatchingConfig(max_requests_per_batch=a.batch_size)
    started = time.perf_counter()
    with torch.no_grad():
        manager = model.init_continuous_batching(config, cb, hints)
        manager.warmup()  # builds the batch processor and the paged KV cache
        manager.start()
        ready = time.perf_counter()
        try:
            request_ids = manager.add_requests(inputs=ids, max_new_tokens=a.max_tokens)
            results = collect(manager, request_ids)
            finished = time.perf_counter()
        finally:
            manager.stop(block=True, timeout=30)
            manager.destroy()
    ended = time.perf_counter()
    rows = [count_new(list(results[r].generated_tokens), eos) for r in request_ids]
    return {
        "seconds": finished - ready,
        "call_seconds": ended - started,
        "setup_seconds": ready - started,
        "stop_seconds": ended - finished,
        "tokens": sum(len(r) for r in rows),
        "texts": [tok.decode(r, skip_special_tokens=True) for r in rows],
        "resolved_config": {
            k: v
            for k, v in vars(manager.continuous_batching_config).items()
            if isinstance(v, (int, float, str, bool, tuple)) and v is not None
        },
        "attn_implementation": model.config._attn_implementation,
    }


def measured(run, prompts: list[str], ids: list[list[int]]) -> dict:
    """run(prompts, ids), with the share of the CPU other processes used meanwhile."""
    before = cpu_ticks()
    out = run(prompts, ids)
    return {**out, "others_cpu_share": others_share(before, cpu_ticks())}


def run_all(model, tok, prompts: list[str], a) -> dict:
    """Warm each engine up on 2 prompts, then time it on all of them; then trimtab one by one."""
    from trimtab.generation.intake import eos_ids

    eos = eos_ids(model, tok)
    ids = tok(prompts)["input_ids"]  # what trimtab's generate feeds its lane, too
    engines = {
        "trimtab": lambda p, i: run_trimtab(model, tok, p, a, a.batch_size),
        "generate": lambda p, i: run_generate(model, tok, i, eos, a),
        "transformers-cb": lambda p, i: run_transformers_cb(model, tok, i, eos, a),
    }
    runs = {}
    for name, run in engines.items():
        try:
            print(f"{name}: warm-up ...", flush=True)
            run(prompts[:2], ids[:2])
            print(f"{name}: {len(prompts)} prompts ...", flush=True)
            runs[name] = measured(run, prompts, ids)
        except Exception as e:  # a peer that cannot run is reported, not fatal
            runs[name] = {"error": f"{type(e).__name__}: {e}"}
            print(f"{name} failed: {runs[name]['error']}", flush=True)
    print("trimtab: one prompt at a time (batch_size=1) ...", flush=True)
    runs["trimtab, batch 1"] = measured(lambda p, i: run_trimtab(model, tok, p, a, 1), prompts, ids)
    return {"eos": sorted(eos), "prompt_tokens": [len(x) for x in ids], "runs": runs}


def agreement(runs: dict) -> dict:
    """Greedy agreement counts, all against trimtab's batched texts."""
    mine = runs["trimtab"]["texts"]
    alone = runs["trimtab, batch 1"]["texts"]
    out = {
        "prompts": len(mine),
        "trimtab_batched_vs_alone_differ": [
            i for i, (x, y) in enumerate(zip(mine, alone)) if x != y
        ],
    }
    for peer in ("generate", "transformers-cb"):
        if "texts" in runs[peer]:
            same = sum(x == y for x, y in zip(mine, runs[peer]["texts"]))
            out[f"identical_trimtab_vs_{peer}"] = same
    return out


def show(runs: dict, machine: dict) -> dict:
    """Print the table and the ratios; returns the ratios (trimtab tokens/s over the peer's)."""
    rows = [(name, r["seconds"], r["tokens"], r) for name, r in runs.items() if "seconds" in r]
    cb = runs.get("transformers-cb", {})
    if "call_seconds" in cb:
        rows.insert(3, ("transformers-cb, whole call", cb["call_seconds"], cb["tokens"], cb))
    mine = runs["trimtab"]["tokens"] / runs["trimtab"]["seconds"]
    fmt = "{:<28} {:>8} {:>7} {:>9} {:>14} {:>9}"
    print(fmt.format("engine", "wall s", "tokens", "tokens/s", "trimtab ratio", "others %"))
    ratios = {}
    for name, seconds, tokens, r in rows:
        rate = tokens / seconds
        if name != "trimtab":
            ratios[name] = mine / rate
        ratio = "-" if name == "trimtab" else f"{mine / rate:.2f}x"
        others = f"{100 * r['others_cpu_share']:.0f}"
        print(fmt.format(name, f"{seconds:.2f}", tokens, f"{rate:.1f}", ratio, others))
    for name, r in runs.items():
        if "error" in r:
            print(fmt.format(name, "failed", "-", "-", "-", "-"))
    if "call_seconds" in cb:
        print(
            f"transformers-cb: setup {cb['setup_seconds']:.2f} s (KV cache, thread), stop "
            f"{cb['stop_seconds']:.2f} s; attention {cb['attn_implementation']}, resolved "
            + ", ".join(
                f"{k}={cb['resolved_config'][k]}"
                for k in ("num_blocks", "page_size", "max_batch_tokens", "max_requests_per_batch")
                if k in cb["resolved_config"]
            )
        )
    print(
        f"CPU: {machine['cpu']}, {machine['cores']} cores, threads {machine['threads']}, "
        f"flags: {' '.join(machine['flags']) or 'none of ' + ', '.join(FLAGS)}; fp32 2048^2 "
        f"matmul {machine['fp32_matmul_gflops']:.0f} GFLOP/s; other processes used "
        f"{100 * machine['others_cpu_share']:.0f}% of the CPU during the runs"
    )
    if machine["others_cpu_share"] > 0.1:
        print("warning: other processes loaded the CPU (others %): those timings are unreliable")
    return ratios


def print_agreement(agree: dict) -> None:
    """One line: how many batched texts differ from solo ones, how many peers' texts match."""
    n = agree["prompts"]
    differ = len(agree["trimtab_batched_vs_alone_differ"])
    peers = [(k.rsplit("_vs_", 1)[1], v) for k, v in agree.items() if k.startswith("identical_")]
    print(
        f"greedy agreement: trimtab batched vs alone: {differ} of {n} differ"
        + "".join(f"; identical to {peer}: {v} of {n}" for peer, v in peers)
    )


PEERS = {
    "generate": "transformers model.generate (static batches)",
    "transformers-cb": "transformers continuous batching",
}


def summary(result: dict, machine: dict, agree: dict, weights: tuple[int, int], a) -> list:
    """bench/report.py's rows: trimtab's tokens/s against each peer's; its ceiling: the model's
    FLOP rate (2 per weight per token, prompt tokens included) against the fp32 matmul rate at
    the model's block shapes with batch_size rows (a decoding step's)."""
    runs, mine = result["runs"], result["runs"]["trimtab"]
    rate = mine["tokens"] / mine["seconds"]
    body, head = weights
    flops = 2 * body * (sum(result["prompt_tokens"]) + mine["tokens"]) + 2 * head * mine["tokens"]
    how = "2 FLOPs a weight a token, prompt tokens included"
    at = f"fp32 matmul at the model's shapes, {min(a.batch_size, a.prompts)} rows"
    ceiling = matmul_ceiling(flops / mine["seconds"] / 1e9, result["step_gflops"], at, how)
    name = f"greedy decoding, {a.prompts} prompts, {a.max_tokens} tokens, batch {a.batch_size}"
    differ, n = len(agree["trimtab_batched_vs_alone_differ"]), agree["prompts"]
    busy = machine["others_cpu_share"]
    rows = []
    for key, peer in PEERS.items():
        r = runs.get(key, {})
        same = agree.get(f"identical_trimtab_vs_{key}")
        note = f"greedy text identical to the peer's on {same} of {n} prompts; " if same else ""
        note += f"trimtab batched vs one at a time: {differ} of {n} differ (goal: none)"
        if "call_seconds" in r:
            whole = rate / (r["tokens"] / r["call_seconds"])
            note += f"; counting the peer's setup and stop: {whole:.2f}x"
        if "error" in r:
            note = f"the peer failed: {r['error'][:200]}"
        if busy > 0.1:
            note += f"; other processes used {busy:.0%} of the CPU: timings unreliable"
        peer_rate = r["tokens"] / r["seconds"] if "seconds" in r else None
        rows.append(
            summary_row(
                "decoding",
                f"{name} (SmolLM2-135M)",
                peer,
                peer_rate,
                rate,
                "tokens/s",
                precision="fp32",
                ceiling=ceiling,
                note=note,
            )
        )
    return rows


def parse_args() -> argparse.Namespace:
    """The options; --quick overrides --prompts and --max-tokens."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=32, help="prompts (default 32)")
    ap.add_argument("--max-tokens", type=int, default=64, help="max new tokens (default 64)")
    ap.add_argument("--batch-size", type=int, default=16, help="rows decoded together (16)")
    ap.add_argument("--quick", action="store_true", help="8 prompts, 32 tokens")
    ap.add_argument("--seed", type=int, default=0, help="which reviews are sampled")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared/data/marc/en/test.csv")
    ap.add_argument("--json", type=Path, help="also write the results here")
    a = ap.parse_args()
    if a.quick:
        a.prompts, a.max_tokens = 8, 32
    if min(a.prompts, a.max_tokens, a.batch_size) < 1 or a.prompts < 2:
        ap.error("--prompts must be at least 2; --max-tokens and --batch-size at least 1")
    return a


def main() -> None:
    """Load the model once, run the engines, print the table, write --json."""
    a = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers

    from trimtab.models.loading import load_model

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()
    machine = {**cpu_features(), "threads": threads, "fp32_matmul_gflops": square_rate("float32")}
    rows = min(a.batch_size, a.prompts)  # a decoding step's rows, at most
    step_gflops = forward_rate(block_linears("smollm2-135m"), rows, "float32")
    prompts, source = make_prompts(a.data, a.prompts, a.seed)
    lm = load_model("smollm2-135m", "sft")
    model, tok = lm.model.eval(), lm.tokenizer
    print(
        f"{a.prompts} prompts ({source}), max_tokens {a.max_tokens}, batch {a.batch_size}, "
        f"greedy, {model.dtype}, attention {model.config._attn_implementation}, "
        f"torch {torch.__version__}, transformers {transformers.__version__}",
        flush=True,
    )
    before = cpu_ticks()
    result = {**run_all(model, tok, prompts, a), "step_gflops": step_gflops}
    machine["others_cpu_share"] = others_share(before, cpu_ticks())
    print()
    ratios = show(result["runs"], machine)
    agree = agreement(result["runs"])
    print_agreement(agree)
    prompt_tokens = result["prompt_tokens"]
    print(f"prompt tokens: min {min(prompt_tokens)}, max {max(prompt_tokens)}, eos {result['eos']}")
    if a.json:
        rows = summary(result, machine, agree, linear_weights(model), a)
        settings = {k: v for k, v in vars(a).items() if k not in ("json", "data")}
        a.json.write_text(
            json.dumps(
                {
                    "summary": rows,
                    "settings": {**settings, "source": source},
                    "machine": machine,
                    **result,
                    "speed_ratio_trimtab_over_peer": ratios,
                    "agreement": agree,
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
