"""``trimtab sweep``: hyperparameter search over ``trimtab train`` (:mod:`trimtab.training.sweep`).

Like the rest of the CLI it only parses, calls the library and prints.
"""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Search hyperparameters with Optuna. The spec is a training config (every `trimtab train` key)
plus a sweep: section (trials, metric, seed, search: dotted keys to {low, high, log} ranges or
{choices}). Every trial is a run under OUT/trials/trial-NNN/; the sweep decides on the
validation split (data.valid) only. The study is kept in OUT/study.db (an Optuna journal file):
--resume continues a sweep that stopped, running only the missing trials.

--parallel N runs N trials at a time on this machine (N worker processes sharing the study,
each with cores/N torch threads). --storage shares the study with other machines: an RDB URL
(postgresql://user:pass@host/db, which Optuna's heartbeat keeps honest when a machine dies) or a
journal file on a shared filesystem. Start the same command, with --resume, on every machine
(the first creates the study, the others join it), all with the same --out on the shared
filesystem, e.g. one `ray job submit -- trimtab sweep ...` per node.

--best OUT retrains the best trial's config on train+valid into OUT/best/ and evaluates it once
on the test split (data.test of the spec, or --test FILE) into OUT/best/report/."""


def add_sweep_command(sub: argparse._SubParsersAction) -> None:
    """Add ``sweep`` to the ``trimtab`` parser."""
    p = sub.add_parser(
        "sweep",
        help="search hyperparameters (Optuna): train a trial per sampled config",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "config", nargs="?", metavar="CONFIG.yaml", help="training config with a sweep: section"
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. sweep.trials=10")
    p.add_argument("--trials", type=int, help="trials in all (default: sweep.trials)")
    p.add_argument("--out", help="sweep folder (default: sweeps/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue (or join) the sweep in --out")
    p.add_argument(
        "--parallel", type=int, default=1, metavar="N", help="trials at a time on this machine"
    )
    p.add_argument(
        "--storage",
        metavar="URL|FILE",
        help="shared study storage: an RDB URL (postgresql://...) or a journal file path",
    )
    p.add_argument("--study", help="study name in --storage (default: the --out folder's name)")
    p.add_argument("--best", metavar="OUT", help="retrain the best trial of sweep OUT and test it")
    p.add_argument("--test", metavar="FILE", help="with --best: the test file (data.test)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    # One worker of --parallel: started by the sweep itself, not by people.
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.set_defaults(
        handler=_run_sweep,
        interrupted="interrupted: finished trials are kept in the sweep folder; continue with "
        "--resume",
    )


def _run_sweep(args: argparse.Namespace) -> int:
    from pathlib import Path

    from trimtab.errors import ConfigError
    from trimtab.training.sweep import load_sweep, run_sweep, run_worker

    if args.best:
        return _run_best(args)
    if args.config is None:
        raise ConfigError(["CONFIG.yaml: required (or --best OUT to retrain a sweep's best trial)"])
    if args.trials is not None and args.trials < 1:
        raise ConfigError([f"--trials: must be at least 1, got {args.trials}"])
    config = Path(args.config)
    spec = load_sweep(config, args.overrides)
    out = Path(args.out) if args.out else Path("sweeps") / config.stem
    if args.worker:
        target = args.trials or spec.sweep.trials
        run_worker(
            spec,
            out,
            target=target,
            threads=args.threads,
            storage=args.storage,
            study=args.study,
            progress=not args.quiet,
        )
        return 0
    result = run_sweep(
        spec,
        out,
        trials=args.trials,
        resume=args.resume,
        parallel=args.parallel,
        storage=args.storage,
        study=args.study,
        progress=not args.quiet,
    )
    print(result.table(), end="")
    if result.best is None:
        print(f"no trial completed; see {out / 'results.md'}")
    else:
        best = result.best
        print(f"best: trial {best['trial']}, {result.metric} {best[result.metric]:.6g}")
        print(f"run: {best['run_dir']}")
    print(f"report: {out / 'report.html'}")
    return 0


def _run_best(args: argparse.Namespace) -> int:
    from pathlib import Path

    from trimtab.errors import ConfigError
    from trimtab.training.sweep import retrain_best

    if args.config is not None or args.overrides:
        raise ConfigError(["--best OUT: give the sweep folder only (its spec.yaml is used)"])
    best = retrain_best(
        Path(args.best),
        test=Path(args.test) if args.test else None,
        storage=args.storage,
        study=args.study,
        progress=not args.quiet,
    )
    print(best.table(), end="")
    print(f"best: trial {best.trial} retrained on train+valid: {best.run_dir}")
    print(f"test report: {best.report_dir}")
    return 0
