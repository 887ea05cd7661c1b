"""``trimtab sweep``: hyperparameter search over ``trimtab train`` (:mod:`trimtab.training.sweep`).

Like the rest of the CLI it only parses, calls the library and prints.
"""

from __future__ import annotations

import argparse


def add_sweep_command(sub: argparse._SubParsersAction) -> None:
    """Add ``sweep`` to the ``trimtab`` parser."""
    p = sub.add_parser(
        "sweep",
        help="search hyperparameters (Optuna): train a trial per sampled config",
        description="Search hyperparameters with Optuna. The spec is a training config (every "
        "`trimtab train` key) plus a sweep: section (trials, metric, seed, search: dotted keys "
        "to {low, high, log} ranges or {choices}). Every trial is a run under OUT/trials/; the "
        "sweep decides on the validation split (data.valid) only. The study is kept in "
        "OUT/study.db: --resume continues a sweep that stopped.",
    )
    p.add_argument("config", metavar="CONFIG.yaml", help="training config with a sweep: section")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. sweep.trials=10")
    p.add_argument("--trials", type=int, help="trials in all (default: sweep.trials)")
    p.add_argument("--out", help="sweep folder (default: sweeps/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue the sweep in --out")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(
        handler=_run_sweep,
        interrupted="interrupted: finished trials are kept in the sweep folder; continue with "
        "--resume",
    )


def _run_sweep(args: argparse.Namespace) -> int:
    from pathlib import Path

    from trimtab.errors import ConfigError
    from trimtab.training.sweep import load_sweep, run_sweep

    if args.trials is not None and args.trials < 1:
        raise ConfigError([f"--trials: must be at least 1, got {args.trials}"])
    config = Path(args.config)
    spec = load_sweep(config, args.overrides)
    out = Path(args.out) if args.out else Path("sweeps") / config.stem
    result = run_sweep(spec, out, trials=args.trials, resume=args.resume, progress=not args.quiet)
    print(result.table(), end="")
    if result.best is None:
        print(f"no trial completed; see {out / 'results.md'}")
    else:
        best = result.best
        print(f"best: trial {best['trial']}, {result.metric} {best[result.metric]:.6g}")
        print(f"run: {best['run_dir']}")
    return 0
