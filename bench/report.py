"""Run every benchmark that has a peer, one at a time, and write their figures as one table.

Each benchmark runs as its own subprocess with ``--json`` into the output folder (default
runs/bench/), which keeps, per benchmark KEY: KEY.json (its figures), KEY.log (all it printed)
and KEY.status.json (how the run went: command, exit code, seconds, /proc/loadavg before it,
date, machine). The table is then built from every benchmark's files in that folder, so
``--only decoding`` refreshes the decoding rows and keeps the other stages' last figures, and
written into docs/benchmarks.md between the markers below; the prose around them is kept.
Timings need an idle machine: before each benchmark the load average is printed and the run
waits (up to --idle-wait seconds) for the cores to be idle.

    key          stage       script (full run, 2 cores)        trimtab against
    prepare      prepare     bench/prepare.py (~3 min)          the OpenAI CLI 0.28.1, 200,000 rows
    training     training    bench/train.py (~12 min)           TRL SFTTrainer, HF Trainer
    eval         evaluation  bench/eval.py (~6 min)             a transformers generate loop
    harness      evaluation  bench/harness.py (~15 min)         EleutherAI lm-evaluation-harness
    engine       decoding    bench/engine.py (~3 min)           continuous batching, model.generate
    serve        serving     bench/serve.py (~30 min)           transformers serve, llama.cpp
    adapters     serving     bench/serve.py --adapters (~5 min) trimtab serve on one adapter

A benchmark whose prerequisite is missing (trl, lm-eval, a fine-tuned LoRA run, the llama.cpp
build) is skipped with its reason printed and shown in the table; one that fails is shown as
failed with its log, and the others still run.

The summary schema: every benchmark's JSON has a top-level ``"summary"`` list of rows, each
made by :func:`summary_row` (stage, name, peer, peer_figure, trimtab_figure, unit,
higher_is_better, ratio, ceiling, precision, note), and a ``"machine"`` dict (cpu, cores,
flags, threads, the matmul rates it measured). Rows of a ``"rows"`` list with a ``"stage"``
key are read too; a stage that is not one of STAGES is that benchmark's sub-stage (e.g.
harness's "zero-shot") and becomes part of the comparison's name.

    .venv/bin/python bench/report.py                          # everything (1-2 hours)
    .venv/bin/python bench/report.py --quick --only decoding  # a smoke check (minutes)
    .venv/bin/python bench/report.py --from runs/bench        # the table again, nothing run
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from servers import F32_GGUF, cpu_features, wait_idle  # noqa: E402  (bench/servers.py)

REPO = Path(__file__).resolve().parent.parent
MARC = REPO.parent / "shared/data/marc/en"
DOC = REPO / "docs/benchmarks.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
STAGES = ("prepare", "training", "evaluation", "decoding", "serving")
LOWER_IS_BETTER_UNITS = ("s", "ms", "MiB", "MB", "GB")
LLAMA_SRC = REPO / ".bench/src/llama_cpp_python-0.3.36/vendor/llama.cpp"
LLAMA_SERVER = REPO / ".bench/llama-server/bin/llama-server"
# RUNS/runs/smollm2-lora and RUNS/data, the first found: `make case-study-methods`, `make demo`
LORA_RUNS = ("runs/case-study-methods", "runs/case-study", "runs/demo")
SERVE_SERVERS = ("trimtab", "trimtab-bf16", "transformers", "transformers-cb")
SHORT_FLAGS = (("amx", "amx_bf16"), ("avx512_bf16", "avx512_bf16"), ("avx2", "avx2"))


def ratio_of(peer: float | None, trimtab: float | None, higher_is_better: bool) -> float | None:
    """trimtab over the peer, above 1 when trimtab is better (peer/trimtab for seconds)."""
    if not peer or not trimtab:
        return None
    return trimtab / peer if higher_is_better else peer / trimtab


def summary_row(
    stage: str,
    name: str,
    peer: str,
    peer_figure: float | None,
    trimtab_figure: float | None,
    unit: str,
    *,
    higher_is_better: bool = True,
    precision: str = "fp32",
    ceiling: str | None = None,
    note: str = "",
) -> dict[str, Any]:
    """One row of a benchmark's ``"summary"``: the one definition of the schema."""
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r} is not one of {STAGES}")
    return {
        "stage": stage,
        "name": name,
        "peer": peer,
        "peer_figure": None if peer_figure is None else float(peer_figure),
        "trimtab_figure": None if trimtab_figure is None else float(trimtab_figure),
        "unit": unit,
        "higher_is_better": higher_is_better,
        "ratio": ratio_of(peer_figure, trimtab_figure, higher_is_better),
        "ceiling": ceiling,
        "precision": precision,
        "note": note,
    }


def matmul_ceiling(model_gflops: float, rate: float | None, rate_is: str, how: str) -> str | None:
    """The ceiling cell: the model's FLOP rate (counted as ``how`` says) as a share of the
    machine's matmul rate (measured as ``rate_is`` says, e.g. at the model's shapes)."""
    if not rate:
        return None
    return (
        f"{model_gflops / rate:.0%} of {number(rate)} GFLOP/s {rate_is} "
        f"({model_gflops:,.1f} model GFLOP/s: {how})"
    )


class Skip(Exception):
    """A benchmark's prerequisite is missing: the reason, printed and shown in the table."""


@dataclass(frozen=True)
class Bench:
    """One benchmark run: its files are OUT/KEY.*; what and peer name it when it has no rows."""

    key: str
    stage: str
    script: str
    what: str
    peer: str


BENCHES = (
    Bench("prepare", "prepare", "bench/prepare.py", "trimtab prepare", "OpenAI CLI 0.28.1"),
    Bench("training", "training", "bench/train.py", "sft, classify, freeze", "TRL, HF Trainer"),
    Bench("eval", "evaluation", "bench/eval.py", "classification", "HF generate loop"),
    Bench("harness", "evaluation", "bench/harness.py", "label scoring", "lm-evaluation-harness"),
    Bench("engine", "decoding", "bench/engine.py", "greedy decoding", "transformers"),
    Bench("serve", "serving", "bench/serve.py", "trimtab serve", "transformers, llama.cpp"),
    Bench("adapters", "serving", "bench/serve.py", "8 LoRA adapters", "trimtab, 1 adapter"),
)


def lora_run() -> tuple[Path, Path]:
    """A fine-tuned SmolLM2 LoRA run and its prepared data (the case study's, else the demo's)."""
    for base in LORA_RUNS:
        run, data = REPO / base / "runs/smollm2-lora", REPO / base / "data"
        if (run / "run.json").is_file() and (data / "test.jsonl").is_file():
            return run, data
    tried = " or ".join(f"{b}/runs/smollm2-lora" for b in LORA_RUNS)
    raise Skip(f"no fine-tuned SmolLM2 LoRA run ({tried}): `make demo` trains one")


def need_modules(*names: str) -> None:
    missing = [m for m in names if importlib.util.find_spec(m) is None]
    if missing:
        raise Skip(f"{', '.join(missing)} not installed: `make bench` installs '.[bench]'")


def need_marc(*files: str) -> None:
    for name in files:
        if not (MARC / name).is_file():
            raise Skip(f"MARC data not found: {MARC / name}")


def llama_servers() -> tuple[list[str], list[str], list[str]]:
    """The llama.cpp servers that can run: (their names, serve.py options, why others can't)."""
    names, options, missing = [], [], []
    if importlib.util.find_spec("llama_cpp") is None:
        missing.append("llamacpp: llama-cpp-python not built")
    elif F32_GGUF.is_file() or (LLAMA_SRC / "convert_hf_to_gguf.py").is_file():
        names.append("llamacpp")
    else:
        missing.append(f"llamacpp: no F32 GGUF ({F32_GGUF}) nor llama.cpp's converter")
    if LLAMA_SERVER.is_file():
        names.append("llama-server")
        options += ["--llama-server", str(LLAMA_SERVER)]
    else:
        missing.append(f"llama-server: no binary at {LLAMA_SERVER.relative_to(REPO)}")
    if names and (LLAMA_SRC / "convert_hf_to_gguf.py").is_file():
        options += ["--llama-cpp-src", str(LLAMA_SRC)]
    if missing:
        missing[-1] += " (`make bench-serve-peers` builds llama.cpp, ~13 min on 2 cores once)"
    return names, options, missing


def plan(bench: Bench, quick: bool) -> tuple[list[str], list[str]]:
    """The script's options and the parts skipped (with why); raises Skip when none can run."""
    key = bench.key
    if key == "prepare":
        need_marc("train.csv")
        return (["--rows", "20000"] if quick else []), []
    if key == "training":
        need_modules("trl", "datasets")
        need_marc("train.csv")
        quick_args = ["--examples", "32", "--held-out", "16", "--skip-grouped", "--skip-variants"]
        return (quick_args if quick else []), []
    if key == "eval":
        run, data = lora_run()
        return ["--run", str(run), "--data", str(data), *(["--reviews", "64"] if quick else [])], []
    if key == "harness":
        need_modules("lm_eval")
        need_marc("train.csv", "test.csv")
        return (["--reviews", "40"] if quick else []), []
    if key == "engine":
        return (["--quick"] if quick else []), []
    extra = ["--quick", "--max-tokens", "32", "--idle-wait", "10"] if quick else []
    if key == "adapters":  # 16 clients: the one level the adapter comparison uses
        run, _ = lora_run()
        options = ["--servers", "trimtab", "--levels", "16", "--runs", str(run.parent)]
        return [*options, "--adapters", run.name, *extra], []
    extra += ["--levels", "1,16"] if quick else []
    names, options, missing = llama_servers()
    servers = ",".join([*SERVE_SERVERS, *names])
    return ["--servers", servers, *options, *extra], missing


def loadavg() -> str:
    path = Path("/proc/loadavg")
    return path.read_text().strip() if path.is_file() else "unknown"


def kill_group(pid: int) -> None:
    """SIGKILL the process group pid leads (a benchmark and the servers it started)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_logged(cmd: list[str], log: Path, timeout: float | None) -> int:
    """Run cmd, its output to the terminal and to log; killed (its process group) on timeout."""
    with log.open("w", encoding="utf-8") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            start_new_session=True,  # the benchmark's servers and children go with it
        )
        timer = threading.Timer(timeout, kill_group, (proc.pid,)) if timeout else None
        if timer:
            timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
                out.write(line)
            return proc.wait()
        except BaseException:  # Ctrl-C: the benchmark and its servers stop too
            kill_group(proc.pid)
            raise
        finally:
            if timer:
                timer.cancel()


def run_bench(bench: Bench, out: Path, a: argparse.Namespace) -> dict[str, Any]:
    """Run one benchmark (or record why not); returns and writes its status record."""
    from trimtab.files import write_json

    status: dict[str, Any] = {"key": bench.key, "stage": bench.stage, "script": bench.script}
    status.update(quick=a.quick, machine={**cpu_features(), "threads": os.cpu_count()})
    result, log = out / f"{bench.key}.json", out / f"{bench.key}.log"
    result.unlink(missing_ok=True)  # an old JSON must never pass for this run's figures
    try:
        options, skipped = plan(bench, a.quick)
    except Skip as e:
        print(f"\n== {bench.key} ({bench.stage}): SKIPPED: {e}", flush=True)
        status.update(state="skipped", reason=str(e), date=_now())
        write_json(out / f"{bench.key}.status.json", status)
        return status
    for part in skipped:
        print(f"== {bench.key}: part skipped: {part}", flush=True)
    cmd = [sys.executable, str(REPO / bench.script), *options, "--json", str(result)]
    print(f"\n== {bench.key} ({bench.stage}): {' '.join(cmd)}", flush=True)
    busy = wait_idle(a.idle_wait) if a.idle_wait else None
    load = loadavg()
    print(f"/proc/loadavg: {load}" + (f"; cores {busy:.0%} busy" if busy is not None else ""))
    if busy is not None and busy > 0.2:
        print("warning: other processes keep the cores busy: these timings are unreliable")
    started = time.perf_counter()
    code = run_logged(cmd, log, a.timeout)
    status.update(command=cmd, returncode=code, seconds=round(time.perf_counter() - started, 1))
    status.update(loadavg_before=load, cores_busy_before=busy, skipped_parts=skipped)
    status.update(log=str(log), date=_now())
    status["state"] = "ok" if code == 0 and result.is_file() else "failed"
    if status["state"] == "failed":
        timed_out = a.timeout and status["seconds"] >= a.timeout
        status["reason"] = (
            f"killed after --timeout {a.timeout:.0f} s"
            if timed_out
            else (f"exit {code}" if code else "no JSON written")
        )
    write_json(out / f"{bench.key}.status.json", status)
    print(f"== {bench.key}: {status['state']} in {status['seconds']:.0f} s; log {log}", flush=True)
    return status


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def read_json(path: Path) -> dict[str, Any] | None:
    """The file's JSON object; None when absent or unreadable."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def summary_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSON's summary rows: ``"summary"``, else the ``"rows"`` that have a stage."""
    rows = data.get("summary")
    if isinstance(rows, list):
        return [r for r in rows if isinstance(r, dict)]
    rows = data.get("rows")  # prepare.py's and harness.py's; a number in older JSONs
    return (
        [r for r in rows if isinstance(r, dict) and "stage" in r] if isinstance(rows, list) else []
    )


def normalize(row: dict[str, Any], bench: Bench) -> dict[str, Any]:
    """A summary row with every field of the schema; a sub-stage moves into the name."""
    row = dict(row)
    stage, name = row.get("stage"), row.get("name")
    if stage not in STAGES:
        name = name or (f"{bench.what}, {stage}" if stage else bench.what)
        stage = bench.stage
    unit = str(row.get("unit") or "")
    higher = row.get("higher_is_better")
    higher = unit not in LOWER_IS_BETTER_UNITS if higher is None else bool(higher)
    ratio = row.get("ratio")
    if ratio is None:
        ratio = ratio_of(row.get("peer_figure"), row.get("trimtab_figure"), higher)
    row.update(stage=stage, name=name or bench.what, unit=unit, higher_is_better=higher)
    row.update(ratio=ratio, peer=row.get("peer") or bench.peer, state="ok")
    for key in ("peer_figure", "trimtab_figure", "ceiling", "precision", "note"):
        row.setdefault(key, None)
    return row


def placeholder(bench: Bench, state: str, note: str, **more: Any) -> dict[str, Any]:
    """The one row of a benchmark with no figures: not run, skipped or failed, and why."""
    row = {"stage": bench.stage, "name": bench.what, "peer": bench.peer, "state": state}
    row.update(peer_figure=None, trimtab_figure=None, unit="", ratio=None, ceiling=None)
    return {**row, "precision": None, "note": note, **more}


def log_tail(log: str | None) -> str:
    """The last line of a failed benchmark's log that says something."""
    try:
        lines = [x.strip() for x in Path(log or "").read_text(errors="replace").splitlines()]
    except OSError:
        return ""
    said = [x for x in lines if x]
    return said[-1][:200] if said else ""


def bench_rows(bench: Bench, out: Path) -> list[dict[str, Any]]:
    """The table rows of one benchmark from OUT: its summary, or one row that says why not."""
    status = read_json(out / f"{bench.key}.status.json")
    data = read_json(out / f"{bench.key}.json")
    if status is None and data is None:
        return [placeholder(bench, "not run", "")]
    status = status or {}
    date = status.get("date")
    if date is None and data is not None:
        mtime = (out / f"{bench.key}.json").stat().st_mtime
        date = datetime.datetime.fromtimestamp(mtime).isoformat(timespec="seconds")
    common = {"date": date, "quick": bool(status.get("quick"))}
    common["machine"] = {**status.get("machine", {}), **((data or {}).get("machine") or {})}
    if not common["machine"]:
        common["machine"] = {**cpu_features(), "threads": os.cpu_count()}
    state, log = status.get("state", "ok"), status.get("log")
    if state == "skipped":
        return [placeholder(bench, "skipped", status.get("reason", ""), **common)]
    rows = summary_rows(data) if data is not None and state == "ok" else []
    if not rows:
        why = status.get("reason") or ("no JSON" if data is None else "no summary rows in its JSON")
        tail = log_tail(log) if state == "failed" else ""
        note = f"{why}; log: {log}" + (f"; last line: {tail}" if tail else "")
        return [placeholder(bench, "failed", note, log=log, **common)]
    out_rows = [{**common, **normalize(r, bench)} for r in rows]
    for part in status.get("skipped_parts", []):
        out_rows.append(placeholder(bench, "skipped", part, **common))
    return out_rows


def number(value: float | None) -> str:
    """About three significant figures, thousands separated."""
    if value is None:
        return "-"
    size = abs(value)
    if size >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if size >= 10 else f"{value:.3g}"


def figure(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{number(value)} {unit}".strip()


def ratio_text(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def machine_text(machine: dict[str, Any]) -> str:
    """Short: the GPU's name, else the CPU's model, amx / avx512_bf16 / avx2 and threads."""
    if machine.get("gpu"):
        return str(machine["gpu"])
    cpu = re.sub(r"\((R|TM|tm)\)|\bCPU\b|@.*$|\b\d+-Core Processor\b", "", machine.get("cpu", ""))
    flags = set(machine.get("flags") or [])
    shown = [short for short, flag in SHORT_FLAGS if flag in flags]
    threads = machine.get("threads")
    parts = [" ".join(cpu.split()) or "unknown CPU", " ".join(shown) or "no avx2"]
    return ", ".join(parts + ([f"{threads} threads"] if threads else []))


def cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table, then the notes (one per row that has one) and the machines' rates."""
    head = "stage | comparison | peer | peer figure | trimtab figure | ratio | ceiling | machine"
    lines = [f"| {head} | date |", "| --- " * 3 + "| ---: " * 3 + "| --- " * 3 + "|"]
    notes = []
    for r in rows:
        name = r["name"] + (f", {r['precision']}" if r.get("precision") else "")
        if r.get("note"):
            notes.append(f"{len(notes) + 1}. {r['stage']}, {name}: {r['note']}")
            name += f" [{len(notes)}]"
        if r["state"] == "ok":
            cells = [figure(r["peer_figure"], r["unit"]), figure(r["trimtab_figure"], r["unit"])]
            cells += [ratio_text(r["ratio"]), r.get("ceiling") or "-"]
        else:
            cells = [r["state"], "-", "-", "-"]
        date = (r.get("date") or "-")[:10] + (" (quick)" if r.get("quick") else "")
        machine = machine_text(r["machine"]) if r.get("machine") else "-"
        row = [r["stage"], name, r["peer"], *cells, machine, date]
        lines.append("| " + " | ".join(cell(c) for c in row) + " |")
    lines += ["", "Ratio: trimtab over the peer, above 1 when trimtab is better."]
    if notes:
        lines += ["", "Notes:", "", *notes]
    rates = sorted({rates_text(r["machine"]) for r in rows if r.get("machine")} - {""})
    if rates:
        lines += ["", "Machines:", "", *(f"- {x}" for x in rates)]
    return "\n".join(lines) + "\n"


def rates_text(machine: dict[str, Any]) -> str:
    """The machine in full: CPU, cores, every flag and the matmul rates measured on it."""
    rates = [
        f"{k.removesuffix('_matmul_gflops')} 2048² matmul {v:,.0f} GFLOP/s"
        for k, v in sorted(machine.items())
        if k.endswith("_matmul_gflops") and isinstance(v, int | float)
    ]
    if not rates:
        return ""
    flags = " ".join(machine.get("flags") or []) or "none of the listed flags"
    cores = f", {machine['cores']} cores" if machine.get("cores") else ""
    return f"{machine.get('cpu', 'unknown CPU')}{cores} ({flags}): " + ", ".join(rates)


DOC_TEMPLATE = f"""# Benchmarks: trimtab against its peers

Every stage of trimtab (prepare, training, evaluation, decoding, serving) timed against the tool
a user would otherwise reach for, on the same model, data and settings, in one run on one
machine. Compare the ratios, not the seconds: the seconds belong to the machine in each row.

## How to run

    make bench                            # every benchmark, one at a time (1-2 hours)
    make bench BENCH_ARGS=--quick         # ~20 min smoke check, table in runs/bench/benchmarks.md
    make bench BENCH_ARGS='--only decoding --only serving'
    .venv/bin/python bench/report.py --from runs/bench   # this table again, nothing run

`bench/report.py` runs each script in `bench/` with `--json` into `runs/bench/` (each
benchmark's JSON, log and run status are kept there) and rewrites the table below from them;
the rest of this page is kept as written. Timings need an otherwise idle machine: the load
average is printed before each benchmark. A benchmark whose prerequisite is missing (trl,
lm-eval, a fine-tuned LoRA run from `make demo`, the llama.cpp build) shows as skipped with the
reason; one that failed shows as failed with its log. Each benchmark's settings and full
figures: [prepare-vs-openai.md](prepare-vs-openai.md),
[training-benchmark.md](training-benchmark.md), [serving.md](serving.md) (decoding and
serving), and the docstrings of the scripts in `bench/`.

## Columns

- **stage**: prepare, training, evaluation, decoding or serving.
- **comparison**: what was measured, and the precision trimtab computed in (fp32 or bf16).
- **peer** / **peer figure** / **trimtab figure**: the tool compared against and both figures,
  in the unit shown (examples/s, tokens/s, reviews/s, s ...).
- **ratio**: trimtab over the peer, above 1 when trimtab is better (for seconds, the peer's
  over trimtab's).
- **ceiling**: how close trimtab is to what the machine allows: its model FLOP rate (FLOPs
  counted as the cell says) as a share of the machine's matmul rate at the model's own shapes
  (`bench/ceiling.py`), in the same precision. 2048² matmul rates are listed under the table.
- **machine**: the CPU's model, amx / avx512_bf16 / avx2 and the threads used (or the GPU).
- **date**: when the row was measured; "(quick)" marks a smoke-check run with small sizes.

## Results

{START}
{END}
"""


def write_doc(doc: Path, rows: list[dict[str, Any]]) -> None:
    """Put the table between the markers of doc (created from a template if absent), atomically."""
    from trimtab.files import write_text

    text = doc.read_text(encoding="utf-8") if doc.is_file() else DOC_TEMPLATE
    block = f"{START}\n{table(rows)}{END}"
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    else:
        text = text[:start] + block + text[end + len(END) :]
    write_text(doc, text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--only",
        action="append",
        choices=[*STAGES, *(b.key for b in BENCHES if b.key not in STAGES)],
        help="run this stage (or benchmark key); repeatable; default: all",
    )
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke check")
    ap.add_argument("--out", type=Path, default=REPO / "runs/bench", help="JSONs and logs")
    ap.add_argument(
        "--from",
        dest="source",
        type=Path,
        help="rebuild the table from this folder's JSONs; run nothing",
    )
    ap.add_argument(
        "--doc",
        type=Path,
        help=f"the page the table goes into (default {DOC.relative_to(REPO)}; with --quick: "
        "OUT/benchmarks.md, so a smoke check never replaces the real figures)",
    )
    ap.add_argument(
        "--idle-wait",
        type=float,
        help="before each benchmark, wait up to this many seconds for idle cores (default 120; "
        "with --quick 10)",
    )
    ap.add_argument("--timeout", type=float, help="seconds before a benchmark is killed")
    a = ap.parse_args(argv)
    if a.idle_wait is None:
        a.idle_wait = 10.0 if a.quick else 120.0
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.source is not None:
        if not a.source.is_dir():
            print(f"{a.source}: no such folder", file=sys.stderr)
            return 2
        rows = [r for b in BENCHES for r in bench_rows(b, a.source)]
    else:
        a.out.mkdir(parents=True, exist_ok=True)
        chosen = [b for b in BENCHES if not a.only or {b.stage, b.key} & set(a.only)]
        done = [run_bench(b, a.out, a) for b in chosen]
        rows = [r for b in BENCHES for r in bench_rows(b, a.out)]
        states = ", ".join(f"{s['key']} {s['state']}" for s in done)
        print(f"\n{states}")
    doc = a.doc or (a.out / "benchmarks.md" if a.quick and a.source is None else DOC)
    write_doc(doc, rows)
    print(table(rows))
    print(f"wrote the table into {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
