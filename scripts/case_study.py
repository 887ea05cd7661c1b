"""The Amazon review case study, end to end, through the trimtab command line.

    python scripts/case_study.py demo      # `make demo`: small, about 10 minutes on 2 cores
    python scripts/case_study.py full      # `make case-study`: MiniLM, MPNet, their ensemble
    python scripts/case_study.py methods   # `make case-study-methods`: every method, both models

prepare the MARC English data → fine-tune (one run per config) → evaluate every run and the base
decoder zero- and few-shot on the test split → print the table; ``full`` and ``methods`` also
write their page (``docs/case-study.md``, ``docs/case-study-methods.md``) with the plots.
Each step is the command a user would type, printed before it runs. A run that already
completed is kept, a run that was interrupted is resumed: re-running after a crash redoes only
what is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from trimtab.files import write_text
from trimtab.models.runs import RunFolder

ROOT = Path(__file__).resolve().parent.parent
INSTRUCTION = (
    "Rate this Amazon product review from 1 (worst) to 5 (best) stars. "
    "Answer with the number of stars only."
)
FINDINGS = "<!-- findings: kept when make case-study rewrites this file -->"
PROFILES = {
    # Small: 1,500 training reviews, two runs, 500 test reviews; sized by sized_demo() to the
    # machine's measured speed so that it fits --minutes.
    "demo": {
        "prepare": ["--sample", "1500"],
        "runs": {
            "smollm2-lora": ("configs/marc-smollm2-lora.yaml", ["max_steps=60", "eval_every=30"]),
            "minilm-classify": ("configs/marc-minilm-classify.yaml", ["epochs=4", "optim.lr=1e-4"]),
        },
        "eval": ["--limit", "500", "--shots", "5", "--baseline-limit", "200", "--mode", "both"],
    },
    # The case study (issue 12): the default encoder with each loss, the stronger PyPI encoder,
    # their ensemble (kept by validation accuracy), and the base decoder zero- and few-shot, for
    # the cost columns. Every run trains on the whole slice; the test split is read once.
    "full": {
        "prepare": [],
        "runs": {
            "minilm-full": ("configs/case-study/minilm-full.yaml", []),
            "minilm-full-cumulative": (
                "configs/case-study/minilm-full.yaml",
                ["data.loss=cumulative"],
            ),
            "minilm-full-expected": ("configs/case-study/minilm-full.yaml", ["data.loss=expected"]),
            "mpnet-full": ("configs/case-study/mpnet-full.yaml", []),
        },
        "models": ["smollm2-135m"],  # base model rows: zero-shot and few-shot
        "ensembles": {"mpnet+minilm": ["mpnet-full", "minilm-full"]},
        "eval": ["--shots", "5", "--baseline-limit", "1000"],
        "docs": "case-study.md",
    },
    # The methods compared on 2026-11-22: full / freeze / LoRA on both default models.
    "methods": {
        "prepare": [],
        "runs": {
            name: (f"configs/case-study/{name}.yaml", [])
            for name in (
                "minilm-full",
                "minilm-freeze",
                "minilm-lora",
                "smollm2-lora",
                "smollm2-freeze",
                "smollm2-full",
                "smollm2-lora-classify",
            )
        },
        "eval": ["--shots", "5", "--baseline-limit", "1000"],
        "docs": "case-study-methods.md",
    },
}


# the Makefile passes the same
DEFAULT_OUT = {"demo": "runs/demo", "full": "runs/case-study", "methods": "runs/case-study-methods"}


def data_folder(out: Path) -> Path:
    """Where the case study's prepared data goes (the ``--data`` of every train and eval)."""
    return out / "data"


def runs_folder(out: Path) -> Path:
    """Where the case study's runs go (what ``trimtab serve --runs`` is given)."""
    return out / "runs"


def run_folder(out: Path, name: str) -> Path:
    """The run folder of one fine-tuning run of the case study."""
    return runs_folder(out) / name


def marc_files(marc: Path, lang: str) -> tuple[Path, Path] | None:
    """The train and test files of one MARC language: the CSV slice (``LANG/train.csv``) or
    the corpus's original JSON Lines (``dataset_LANG_train.json``); None if neither is there."""
    for train, test in (
        (marc / lang / "train.csv", marc / lang / "test.csv"),
        (marc / f"dataset_{lang}_train.json", marc / f"dataset_{lang}_test.json"),
    ):
        if train.is_file() and test.is_file():
            return train, test
    return None


def report_folder(out: Path) -> Path:
    """The evaluation report (report.json, report.md, report.html, plots) of the case study."""
    return out / "report"


# The fast precision's probe rate (trimtab.models.precision, 2 threads) at which the whole demo
# fits 10 minutes, and the least share of its work a slow CPU still does. Measured 2026-12-01
# on a 2-core AMD EPYC (AVX512-BF16, probe 891 GFLOP/s bf16): `make demo` took 246 s at 74%
# of the work, so the whole demo takes under 6 minutes there; an AVX2-only CPU (~180 GFLOP/s
# fp32, where the whole demo took 16.5 minutes) gets 36%.
DEMO_REFERENCE_GFLOPS = 500.0
DEMO_MIN_SCALE = 0.25


def demo_scale(minutes: float) -> tuple[float, str]:
    """The share of the demo's training and evaluation work that fits ``minutes`` here, from a
    fresh matmul probe (a cached one may be stale: the demo's time depends on the speed now)."""
    import torch

    from trimtab.models.precision import measure_cpu

    if torch.cuda.is_available():
        return 1.0, "a GPU"
    probe = measure_cpu()
    rate = probe.bf16_gflops if probe.precision == "bf16" else probe.fp32_gflops
    scale = min(1.0, max(DEMO_MIN_SCALE, rate / DEMO_REFERENCE_GFLOPS * minutes / 10))
    return scale, f"{probe.precision} matmul {rate:.0f} GFLOP/s on {probe.threads} threads"


def sized_demo(profile: dict, minutes: float) -> dict:
    """The demo profile with its steps, epochs and test reviews scaled to the measured speed:
    every stage still runs, on less work where the CPU is slow."""
    scale, why = demo_scale(minutes)
    steps = max(10, round(60 * scale))
    epochs = max(1, round(4 * scale))
    limit, baseline = max(100, round(500 * scale)), max(50, round(200 * scale))
    print(
        f"sized for {minutes:g} minutes: {why} -> {scale:.0%} of the full demo (SmolLM2 "
        f"{steps} steps, MiniLM {epochs} epochs, {limit} test reviews, {baseline} for baselines)"
    )
    eval_args = list(profile["eval"])
    eval_args[eval_args.index("--limit") + 1] = str(limit)
    eval_args[eval_args.index("--baseline-limit") + 1] = str(baseline)
    lora, minilm = profile["runs"]["smollm2-lora"], profile["runs"]["minilm-classify"]
    runs = {
        "smollm2-lora": (lora[0], [f"max_steps={steps}", f"eval_every={max(1, steps // 2)}"]),
        "minilm-classify": (minilm[0], [f"epochs={epochs}", *minilm[1][1:]]),
    }
    return {**profile, "runs": runs, "eval": eval_args}


def main() -> int:
    args = parse_args()
    profile = PROFILES[args.profile]
    if args.profile == "demo" and args.minutes:
        profile = sized_demo(profile, args.minutes)
    out = Path(args.out or DEFAULT_OUT[args.profile])
    found = marc_files(Path(args.marc), args.lang)
    if found is None:
        print(
            f"MARC data not found in {args.marc} (expected {args.lang}/train.csv and "
            f"{args.lang}/test.csv, or dataset_{args.lang}_train.json and "
            f"dataset_{args.lang}_test.json); give --marc PATH",
            file=sys.stderr,
        )
        return 2
    data = data_folder(out)
    step(f"1. prepare MARC ({args.lang}; the official test split kept whole as the test set)")
    train_file, test_file = found
    trimtab(
        "prepare", str(train_file), "--test-input", str(test_file),
        "--prompt-template", "{review_body}", "--completion-field", "stars",
        "--out", str(data), "--yes", "--force", *profile["prepare"],
    )  # fmt: skip
    step("2. fine-tune")
    runs = [train_run(out, name, config, overrides, data) for name, (config, overrides) in
            profile["runs"].items()]  # fmt: skip
    step("3. evaluate every run, and the base decoder zero- and few-shot, on the test split")
    report = report_folder(out)
    ensembles = [
        f"{name}=" + ",".join(str(run_folder(out, member)) for member in members)
        for name, members in profile.get("ensembles", {}).items()
    ]
    trimtab(
        "eval", *map(str, runs), *profile.get("models", []),
        *(arg for e in ensembles for arg in ("--ensemble", e)),
        "--data", str(data), "--baselines", "--instruction", INSTRUCTION,
        "--out", str(report), "--force", *profile["eval"],
    )  # fmt: skip
    if args.docs or "docs" in profile:
        write_docs(report, ROOT / "docs", profile.get("docs", "case-study.md"))
    step("4. deploy: serve the fine-tuned models, then call one (from another terminal)")
    print_serving(runs_folder(out))
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", choices=sorted(PROFILES))
    parser.add_argument(
        "--marc",
        default=str(ROOT.parent / "shared" / "data" / "marc"),
        help="the MARC data folder (LANG/train.csv and LANG/test.csv, or the original "
        "dataset_LANG_train.json and dataset_LANG_test.json)",
    )
    parser.add_argument(
        "--lang",
        default="en",
        help="the MARC language (en, de, es, fr, ja, zh): the same recipe on another language",
    )
    parser.add_argument("--out", help="the case study's folder (default runs/<profile>)")
    parser.add_argument(
        "--minutes",
        type=float,
        default=10.0,
        help="demo: size the work to fit this on this machine's measured speed (0: full size)",
    )
    parser.add_argument(
        "--docs",
        action="store_true",
        help="write the profile's docs page and its plots (default for full and methods)",
    )
    return parser.parse_args()


def train_run(out: Path, name: str, config: str, overrides: list[str], data: Path) -> Path:
    """Train one run of the case study: a completed run is kept, an interrupted one resumed."""
    run = run_folder(out, name)
    if _completed(run):
        print(f"{run}: completed earlier, kept")
    elif _checkpointed(run):
        trimtab("train", "--resume", str(run))
    else:
        if run.exists():  # started but never checkpointed: nothing worth keeping
            shutil.rmtree(run)
        trimtab("train", config, "--data", str(data), f"run_dir={run}", *overrides)
    return run


def print_serving(runs: Path) -> None:
    """The ``trimtab serve`` command and a ``curl`` that calls the fine-tuned decoder."""
    from trimtab.generation.pool import ModelPool

    tuned = [m.id for m in ModelPool(runs).list() if m.fine_tuned and m.task != "classify"]
    if not tuned:
        print(f"no completed fine-tuned decoder in {runs}")
        return
    body = {
        "model": tuned[0],
        "prompt": "Works great, would buy again.\n\n###\n\n",
        "max_tokens": 2,
        "temperature": 0,
        "logprobs": 5,
    }
    print(f"trimtab serve --runs {shlex.quote(str(runs))}")
    print(
        "curl -s http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' "
        f"-d {shlex.quote(json.dumps(body))}"
    )
    print(
        "console: http://127.0.0.1:8000/ (Playground, data reports, fine-tuning jobs, "
        "compare runs, evaluations)"
    )


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def trimtab(*argv: str) -> None:
    """Run one trimtab command as a user would, stopping the case study if it fails."""
    command = [str(Path(sys.executable).with_name("trimtab")), *argv]
    print("$ trimtab " + shlex.join(argv), flush=True)
    env = {
        "MALLOC_MMAP_THRESHOLD_": "1073741824",
        "MALLOC_TRIM_THRESHOLD_": "1073741824",
        **os.environ,
    }
    code = subprocess.call(command, env=env)
    if code:
        raise SystemExit(code)


def _completed(run: Path) -> bool:
    return RunFolder(run).is_completed()


def _checkpointed(run: Path) -> bool:
    from trimtab.training.checkpoint import latest_checkpoint  # imports torch: only when needed

    return latest_checkpoint(run) is not None


def write_docs(report_dir: Path, docs: Path, name: str = "case-study.md") -> None:
    """``docs/NAME``: the table (accuracy, MAE, training and cost per row) and the report's
    plots (copied to ``docs/<NAME without .md>/``); hand-written findings are kept."""
    report = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
    stem = name.removesuffix(".md")
    plots = docs / stem
    plots.mkdir(parents=True, exist_ok=True)
    for png in (report_dir / "plots").glob("*.png"):
        shutil.copy2(png, plots / png.name)
    lines = [
        "# Case study: star ratings of Amazon reviews (MARC, English)",
        "",
        f"Written by `make case-study` on {report['created']} (trimtab "
        f"{report['trimtab_version']}). Test set: `{report['data']}` "
        f"({_test_size(report['results'])}). "
        "Goal: accuracy ≥ 0.60 and MAE ≤ 0.45 within 60 minutes of training on 2 CPU cores. "
        "Predictions are the most likely label; for stars the median of the predicted "
        "distribution (which minimises the expected absolute error) is shown beside it. "
        "Cost: the prompt tokens of one request, the latency of one request alone (median) and "
        "requests/s batched, on the machine that wrote this page.",
        "",
        "| Model | Kind | Mode | n | Accuracy [95% CI] | MAE | Off-by-one | Macro-F1 | Invalid "
        "| Median decision: accuracy / MAE | Train time | Train tokens/s | Prompt tokens "
        "| Latency (ms) | Requests/s |",
        "|" + " --- |" * 15,
        *map(_row, report["results"]),
        "",
        "## Plots",
        "",
        *(f"![{png.stem}]({stem}/{png.name})" for png in sorted(plots.glob("*.png"))),
        "",
        "The full report (per-class scores, confusion matrices, loss curves) is "
        f"`{report_dir / 'report.html'}`.",
        "",
    ]
    target = docs / name
    # Hand-written findings below the marker survive a re-run; the figures above are redone.
    old = target.read_text(encoding="utf-8") if target.is_file() else ""
    if FINDINGS in old:
        lines += ["", old[old.index(FINDINGS) :].rstrip(), ""]
    write_text(target, "\n".join(lines))  # a crash mid-write must not lose the findings
    print(f"wrote {target}")


def _row(r: dict) -> str:
    """One result of report.json as a row of the table."""
    c = r.get("classification") or {}
    t = r.get("training") or {}
    cost = r.get("cost") or {}
    ci = c.get("accuracy_ci95") or [None, None]
    median = (c.get("extra") or {}).get("median_decision") or {}
    rate = cost.get("requests_per_s", r.get("examples_per_s"))
    return (
        f"| {r['label']} | {r['kind']} | {r['mode']} | {_n(r.get('n'))} | "
        f"{_f(c.get('accuracy'))} [{_f(ci[0])}, {_f(ci[1])}] | {_f(c.get('mae'))} | "
        f"{_f(c.get('off_by_one_accuracy'))} | {_f(c.get('macro_f1'))} | "
        f"{c.get('invalid', '—')} | {_f(median.get('accuracy'))} / {_f(median.get('mae'))} | "
        f"{_minutes(t.get('seconds'))} | {_n(t.get('tokens_per_s'))} | "
        f"{_n(cost.get('prompt_tokens_per_request'))} | "
        f"{_n(cost.get('latency_ms_per_request'))} | "
        f"{'—' if rate is None else f'{rate:.1f}'} |"
    )


def _test_size(results: list[dict]) -> str:
    """How many test reviews the table stands on: the fine-tuned rows' count, and which rows
    (the zero- and few-shot baselines, given --baseline-limit) saw fewer."""
    tuned = [r for r in results if r.get("kind") == "fine-tuned"] or results
    sizes = sorted({r["n"] for r in tuned if r.get("n") is not None})
    if not sizes:
        return "the official English test split"
    what = f"{sizes[0]:,}" if len(sizes) == 1 else f"{sizes[0]:,} to {sizes[-1]:,}"
    text = f"{what} reviews of the official English test split"
    fewer = sorted({r["n"] for r in results if r.get("n") is not None and r["n"] < sizes[0]})
    if fewer:
        text += (
            f"; rows with a smaller n (the zero- and few-shot baselines) used the first "
            f"{' or '.join(f'{n:,}' for n in fewer)}"
        )
    return text


def _f(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _n(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def _minutes(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds / 60:.1f} min"


if __name__ == "__main__":
    sys.exit(main())
