"""Benchmark a hyperparameter sweep against the default config: MiniLM classify on MARC stars.

1. prepare the MARC English slice with ``trimtab prepare`` (as scripts/case_study.py does;
   the official test split kept as the test set, never read by the sweep);
2. sweep ``configs/marc-minilm-classify.yaml`` (learning rate, weight decay, epochs, batch size;
   Optuna TPE, median pruning on the validation loss) for ``--trials`` trials or until
   ``--budget-minutes`` have passed (the trial running then finishes);
3. retrain the best trial on train+valid and test it once (``trimtab sweep --best``);
4. train the default config on the same train+valid file and test it on the same examples;

then print, and write as Markdown (``OUT/results.md``), the test metrics of both with the
compute each took, and the CPU's model and features.

    .venv/bin/python bench/sweep.py                                   # 20 trials, 1,500 reviews
    .venv/bin/python bench/sweep.py --trials 2 --sample 300 --test-limit 200 --max-steps 4  # smoke
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from servers import cpu_features  # noqa: E402 - bench/servers.py, beside this script

SEARCH = {
    "optim.lr": {"low": 1e-5, "high": 3e-4, "log": True},
    "optim.weight_decay": {"choices": [0.0, 0.01, 0.1]},
    "epochs": {"low": 1, "high": 4},
    "batch_size": {"choices": [16, 32]},
    # the ordinal losses of issue 12; their losses differ in scale, so the sweep compares
    # trials by validation accuracy
    "data.loss": {"choices": ["cross_entropy", "cumulative", "expected"]},
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--marc", default=str(REPO.parent / "shared" / "data" / "marc"))
    parser.add_argument("--out", default=str(REPO / "runs" / "bench" / "sweep"))
    parser.add_argument("--config", default=str(REPO / "configs" / "marc-minilm-classify.yaml"))
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--budget-minutes", type=float, help="start no trial after this long")
    parser.add_argument(
        "--sample", type=int, default=1500, help="train+valid reviews prepared (0: all)"
    )
    parser.add_argument("--model", help="base model instead of the config's (name or folder)")
    parser.add_argument(
        "--metric",
        default="valid_accuracy",
        choices=["valid_accuracy", "valid_loss"],
        help="what the sweep compares trials by (valid_loss only without data.loss choices)",
    )
    parser.add_argument("--test-limit", type=int, help="test on the first N test reviews only")
    parser.add_argument("--max-steps", type=int, help="cap every training run (smoke tests)")
    parser.add_argument("--parallel", type=int, default=1, help="trials at a time")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def prepare(marc: Path, data: Path, sample: int, model: str | None) -> None:
    """MARC English, prompt = review body, completion = stars; its test.csv as the test set."""
    en = marc / "en"
    if not (en / "train.csv").is_file():
        raise SystemExit(f"MARC data not found in {marc} (expected en/train.csv, en/test.csv)")
    argv = [sys.executable, "-m", "trimtab", "prepare", str(en / "train.csv"), "--test-input"]
    argv += [str(en / "test.csv"), "--prompt-template", "{review_body}", "--completion-field"]
    argv += ["stars", "--out", str(data), "--yes", "--force"]
    argv += ["--sample", str(sample)] if sample else []
    argv += ["--model", model] if model else []  # tokens counted with the swept model's tokenizer
    subprocess.run(argv, check=True, cwd=REPO, stdout=subprocess.DEVNULL)


def base_values(a: argparse.Namespace, data: Path) -> dict[str, Any]:
    """The default config on the prepared data (and the --max-steps cap)."""
    values = yaml.safe_load(Path(a.config).read_text(encoding="utf-8"))
    values["data"] = values.get("data", {}) | {
        "train": str(data / "train.jsonl"),
        "valid": str(data / "valid.jsonl"),
    }
    if a.model:
        values["model"] = values.get("model", {}) | {"name": a.model}
    if a.max_steps:
        values |= {"max_steps": a.max_steps, "eval_every": a.max_steps}
    return values


def sweep(a: argparse.Namespace, values: dict[str, Any], data: Path, out: Path) -> Any:
    """Trials one at a time (each call resumes the study) until the count or the budget."""
    from trimtab.training.sweep import load_sweep, run_sweep

    spec_file = out / "sweep.yaml"
    search = SEARCH if a.metric == "valid_accuracy" else SEARCH | {"data.loss": None}
    search = {k: v for k, v in search.items() if v is not None}
    section = {"trials": a.trials, "metric": a.metric, "seed": a.seed, "search": search}
    spec = values | {"data": values["data"] | {"test": str(data / "test.jsonl")}}
    spec_file.write_text(yaml.safe_dump(spec | {"sweep": section}, sort_keys=False))
    folder, started, result = out / "sweep", time.perf_counter(), None
    step = a.parallel if a.budget_minutes else a.trials
    for done in range(step, a.trials + step, step):
        resume = (folder / "study.db").is_file()
        result = run_sweep(
            load_sweep(spec_file), folder, trials=min(done, a.trials), resume=resume,
            parallel=a.parallel, progress=False,
        )  # fmt: skip
        minutes = (time.perf_counter() - started) / 60
        print(f"  {len(result.rows)} trials, {minutes:.1f} min", flush=True)
        if a.budget_minutes and minutes >= a.budget_minutes:
            break
    return result


def train_default(values: dict[str, Any], joined: Path, run_dir: Path) -> None:
    """The default config on the best retrain's train+valid file, without evaluation split."""
    from trimtab.models.runs import RunFolder
    from trimtab.training import load_config, train

    if RunFolder(run_dir).is_completed():
        return
    default = values | {"run_dir": str(run_dir), "keep_best": False, "eval_every": None}
    default["data"] = values["data"] | {"train": str(joined), "valid": None}
    if default.get("max_steps"):  # as the best retrain scales its cap: the same passes
        grown = lines(joined) / lines(Path(values["data"]["train"]))
        default["max_steps"] = math.ceil(default["max_steps"] * grown)
    train(load_config(None, [], base=default), progress=False)


def lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(1 for line in f if line.strip())


def test_report(run_dir: Path, test: Path, limit: int | None) -> dict[str, Any]:
    from trimtab.evaluation.comparison import EvalOptions, run_eval

    out = run_dir / "report"
    if (out / "report.json").is_file():
        return dict(json.loads((out / "report.json").read_text(encoding="utf-8")))
    options = EvalOptions.parse(models=[str(run_dir)], data=test, out=out, limit=limit)
    return run_eval(options, say=lambda _: None)


def device_name() -> str:
    """Where training ran: the GPU's name when torch sees one (trimtab trains there), else CPU."""
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"


def row(name: str, report: dict[str, Any], minutes: float, trials: str) -> str:
    from trimtab.evaluation.plots import ci95

    result = report["results"][0]
    c = result.get("classification") or {}
    ci = ci95(c)
    accuracy = f"{c['accuracy']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
    cells = [name, accuracy, f"{c.get('macro_f1', 0):.3f}", f"{c.get('mae', 0):.3f}"]
    cells += [str(result.get("n")), f"{minutes:.1f}", trials]
    return "| " + " | ".join(cells) + " |"


def main() -> int:
    a = parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cpu = cpu_features()
    print(f"CPU: {cpu['cpu']}, {cpu['cores']} logical cores; flags: {' '.join(cpu['flags'])}")
    print(f"Device: {device_name()}")
    data = out / "data"
    prepare(Path(a.marc), data, a.sample, a.model)
    values = base_values(a, data)
    started = time.perf_counter()
    result = sweep(a, values, data, out)
    sweep_minutes = sum(r["seconds"] or 0 for r in result.rows) / 60
    wall_minutes = (time.perf_counter() - started) / 60

    from trimtab.training.sweep import retrain_best

    started = time.perf_counter()
    best = retrain_best(out / "sweep", limit=a.test_limit, progress=False)
    best_minutes = (time.perf_counter() - started) / 60
    started = time.perf_counter()
    train_default(values, out / "sweep" / "best-data" / "train.jsonl", out / "default")
    default = test_report(out / "default", data / "test.jsonl", a.test_limit)
    default_minutes = (time.perf_counter() - started) / 60

    header = "| config | accuracy [95% CI] | macro-F1 | MAE | test n | compute (min) | trials |"
    table = [header, "|---|---:|---:|---:|---:|---:|---:|"]
    label = f"best of sweep (trial {best.trial}), retrained on train+valid"
    total = sweep_minutes + best_minutes
    table.append(row(label, best.report, total, f"{len(result.rows)}"))
    table.append(row("default (configs/marc-minilm-classify.yaml)", default, default_minutes, "-"))
    params = ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items()
    )
    text = "\n".join(
        [
            "# Sweep vs default: MiniLM classify, MARC stars",
            "",
            f"CPU: {cpu['cpu']}, {cpu['cores']} logical cores; flags: {' '.join(cpu['flags'])}",
            f"Device: {device_name()}; base model: {values['model']['name']}",
            f"Data: {a.sample or 'all'} reviews prepared (train/valid), "
            f"test: {data / 'test.jsonl'}",
            f"Sweep: {len(result.rows)} trials, {sweep_minutes:.1f} min of training "
            f"({wall_minutes:.1f} min wall, {a.parallel} at a time); best {params}",
            "Compute: the sweep's trials plus the best retrain and its test evaluation; the "
            "default's training and its test evaluation.",
            "",
            *table,
            "",
        ]
    )
    (out / "results.md").write_text(text, encoding="utf-8")
    print(text)
    print(f"written: {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
