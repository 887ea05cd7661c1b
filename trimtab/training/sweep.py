"""``trimtab sweep``: hyperparameter search over ``trimtab train`` with Optuna.

A sweep spec is a training config plus a ``sweep:`` section::

    sweep:
      trials: 20
      metric: valid_loss          # minimised; valid_accuracy / valid_mean_token_accuracy: maximised
      seed: 0
      search:
        optim.lr: {low: 1e-5, high: 1e-3, log: true}   # float
        method.lora_r: {choices: [4, 8, 16]}           # categorical
        epochs: {low: 1, high: 4}                      # int (both ends ints)

Every trial is an ordinary run (``OUT/trials/trial-NNN/``, NNN Optuna's trial number) trained by
:func:`~trimtab.training.trainer.train` with the base config plus the sampled values, applied
through the CLI's ``key=value`` path. The sweep decides on the validation split only
(``data.valid`` is required), never on a test split; ``data.test`` (or ``--test``) is read once,
by :func:`~trimtab.training.sweep_best.retrain_best`.

The sweep folder::

    OUT/spec.yaml        the spec it runs (its workers and --best read it)
    OUT/study.db         the Optuna study, a journal file (or --storage elsewhere; sweep.json)
    OUT/trials/trial-NNN/  one run folder per trial
    OUT/results.csv  results.md  plots/  report.html   rewritten after every trial
    OUT/best/            --best: the best config retrained on train+valid; report/ its test report

``parallel=N`` starts N worker processes (``python -m trimtab sweep OUT/spec.yaml --worker``),
each with ``cpus // N`` torch threads (and a GPU of its own, round robin, where there are GPUs),
all running ``study.optimize`` on the same storage. ``storage`` puts the study in a database (or
a journal file on a shared filesystem) that workers on other machines join with the same
command and ``resume=True``. The study survives a crash: ``resume=True`` continues it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trimtab.errors import ConfigError, TrimtabError
from trimtab.files import write_text
from trimtab.training.sweep_best import BestResult, retrain_best
from trimtab.training.sweep_report import best_summary, markdown_table, trial_rows, write_results
from trimtab.training.sweep_spec import SPEC_FILE, Param, SweepSection, SweepSpec, load_sweep
from trimtab.training.sweep_study import (
    StudyRef,
    SweepInterrupted,
    fail_abandoned,
    open_study,
    study_ref,
    work,
)

WORKER_STOP_S = 30.0  # after Ctrl-C, how long workers get to record their trial as interrupted


@dataclass
class SweepResult:
    """The study's trials as rows (see :func:`trial_rows`) and the best complete trial."""

    out_dir: Path
    metric: str
    rows: list[dict[str, Any]]
    best: dict[str, Any] | None  # trial, params, metric value, run_dir

    def table(self) -> str:
        return markdown_table(self.rows)


def run_sweep(
    spec: SweepSpec,
    out_dir: Path,
    *,
    trials: int | None = None,
    resume: bool = False,
    parallel: int = 1,
    storage: str | None = None,
    study: str | None = None,
    progress: bool = True,
) -> SweepResult:
    """Run (or with ``resume``, continue) the sweep in ``out_dir`` until ``trials`` trials
    (the spec's count by default) have ended, counting those of an earlier run and of other
    workers. ``parallel``: worker processes on this machine; ``storage``/``study``: a shared
    study (an RDB URL or a journal file path; see :mod:`trimtab.training.sweep_study`)."""
    out_dir = Path(out_dir)
    workers = check_parallel(parallel)
    ref = study_ref(out_dir, storage, study)
    target = trials or spec.sweep.trials
    opened = open_study(spec, out_dir, ref, resume=resume)
    write_text(out_dir / SPEC_FILE, spec.to_yaml())
    write_results(opened, spec, out_dir)
    try:
        if workers == 1:
            work(spec, out_dir, ref, target, say=_printer(progress))
        else:
            _run_workers(out_dir, ref, target, workers, progress)
    finally:  # a worker that died: its trial is recorded as interrupted, also on an error
        result = finish(spec, out_dir, ref)
    return result


def finish(spec: SweepSpec, out_dir: Path, ref: StudyRef) -> SweepResult:
    """Record this machine's abandoned trials, write the results once more, return them."""
    import optuna

    opened = optuna.load_study(study_name=ref.name, storage=ref.storage())
    fail_abandoned(opened, every_unclaimed=False)
    write_results(opened, spec, out_dir)
    rows = trial_rows(opened, spec)
    return SweepResult(out_dir, spec.sweep.metric, rows, best_summary(opened, spec))


def _printer(progress: bool) -> Callable[[str], None]:
    def say(text: str) -> None:
        if progress:
            print(text, flush=True)

    return say


def _cpus() -> int:
    """The cores this process may run on (a container's or taskset's share, not the host's)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def check_parallel(parallel: int) -> int:
    """``parallel`` if the machine can run that many trials at once: a core each at least."""
    cpus = _cpus()
    if parallel < 1:
        raise ConfigError([f"--parallel: must be at least 1, got {parallel}"])
    if parallel > cpus:
        problem = f"--parallel {parallel}: this machine has {cpus} CPU cores; a trial needs one"
        raise ConfigError([problem])
    return parallel


def _run_workers(out_dir: Path, ref: StudyRef, target: int, n: int, progress: bool) -> None:
    """Start ``n`` worker processes and wait for them; a worker that dies leaves its trial
    interrupted (the others go on), and the sweep ends with an error saying to resume."""
    threads = max(1, _cpus() // n)
    gpus = _visible_gpus()
    children = []
    for i in range(n):
        env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
        argv = worker_argv(out_dir, ref, target, threads, progress)
        children.append(subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL))
    try:
        codes = [child.wait() for child in children]
    except KeyboardInterrupt:
        # The terminal's Ctrl-C reached the workers too: let them record their trials.
        for child in children:
            try:
                child.wait(WORKER_STOP_S)
            except subprocess.TimeoutExpired:
                child.kill()
        raise SweepInterrupted(
            f"sweep interrupted; continue it with --resume (--out {out_dir})"
        ) from None
    if any(code == SweepInterrupted.exit_code for code in codes):
        raise SweepInterrupted(f"sweep interrupted; continue it with --resume (--out {out_dir})")
    dead = [
        f"worker {i + 1} ({f'killed by signal {-code}' if code < 0 else f'exit {code}'})"
        for i, code in enumerate(codes)
        if code
    ]
    if dead:
        raise TrimtabError(
            f"{', '.join(dead)} ended early; the trials that ended are kept in {out_dir}; "
            "continue the sweep with --resume"
        )


def worker_argv(
    out_dir: Path, ref: StudyRef, target: int, threads: int, progress: bool
) -> list[str]:
    """The command of one worker: the CLI's hidden ``--worker`` mode on the folder's spec."""
    argv = [sys.executable, "-m", "trimtab", "sweep", str(out_dir / SPEC_FILE), "--out"]
    argv += [str(out_dir), "--trials", str(target), "--worker", "--threads", str(threads)]
    if ref.given:
        argv += ["--storage", ref.url or str(ref.journal), "--study", ref.name]
    return argv + ([] if progress else ["--quiet"])


def _visible_gpus() -> list[str]:
    """The GPUs workers are spread over (CUDA_VISIBLE_DEVICES's, else every one)."""
    import torch

    count = torch.cuda.device_count()
    if not count:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [g.strip() for g in visible.split(",") if g.strip()] if visible else []
    return ids[:count] or [str(i) for i in range(count)]


def run_worker(
    spec: SweepSpec,
    out_dir: Path,
    *,
    target: int,
    threads: int,
    storage: str | None = None,
    study: str | None = None,
    progress: bool = True,
) -> None:
    """One worker process (``--worker``): ``threads`` torch threads, trials until the sweep
    has its count. Training lines are tagged with their trial: workers share a terminal."""
    import torch

    torch.set_num_threads(threads)
    ref = study_ref(Path(out_dir), storage, study)
    work(spec, Path(out_dir), ref, target, say=_printer(progress), tag=True)


__all__ = [
    "BestResult",
    "Param",
    "SweepInterrupted",
    "SweepResult",
    "SweepSection",
    "SweepSpec",
    "load_sweep",
    "markdown_table",
    "retrain_best",
    "run_sweep",
    "run_worker",
]
