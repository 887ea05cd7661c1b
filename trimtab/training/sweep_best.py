"""``trimtab sweep --best``: the best trial's config retrained on train+valid, tested once.

The sweep chose the config on the validation split; the final model may learn from it as well.
The best complete trial's resolved config (every ``auto`` as that trial chose it, so the same
epochs, batch size and learning rate) is trained again on one file joining ``data.train`` and
``data.valid`` (``OUT/best-data/train.jsonl``), with no evaluation split, into ``OUT/best/``.
A ``max_steps`` cap is scaled by the data's growth, so the model still sees the same number of
epochs. Then the model is evaluated once on the test split (``data.test`` of the spec, or
``--test``) by ``trimtab eval``'s library (:func:`trimtab.evaluation.comparison.run_eval`),
into ``OUT/best/report/``. Both steps are skipped when already done: the test split is read
once, and a second call shows the same report.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trimtab.errors import TrimtabError
from trimtab.files import write_chunks
from trimtab.models.runs import RunFolder
from trimtab.training.config import TrainConfig, load_config
from trimtab.training.sweep_spec import SPEC_FILE, SweepSpec, load_sweep

BEST, BEST_DATA, REPORT = "best", "best-data", "report"


@dataclass
class BestResult:
    """The retrained best trial: which trial, its run folder, its test report."""

    trial: int
    params: dict[str, Any]
    run_dir: Path
    report_dir: Path
    report: dict[str, Any]
    trained: bool  # False: a completed OUT/best/ was reused
    evaluated: bool  # False: the report of an earlier call was reused

    def table(self) -> str:
        """The test report's comparison table (Markdown)."""
        from trimtab.evaluation.report import comparison_table

        return comparison_table(self.report) + "\n"


def retrain_best(
    out_dir: Path,
    *,
    test: Path | None = None,
    storage: str | None = None,
    study: str | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> BestResult:
    """Retrain the sweep's best trial on train+valid into ``out_dir/best`` and evaluate it once
    on ``test`` (default: the spec's ``data.test``); ``limit``: the first N test examples.

    Refused (TrimtabError) before anything trains when the sweep has no completed trial or
    there is no test file.
    """
    out_dir = Path(out_dir)
    spec = _sweep_spec(out_dir)
    test = _test_file(out_dir, spec, test)
    trial = _best_trial(out_dir, storage, study)
    say = (lambda s: print(s, flush=True)) if progress else (lambda _: None)
    run = RunFolder(out_dir / BEST)
    trained = not run.is_completed()
    if trained:
        say(f"retraining trial {trial.number} on train+valid into {run.path}")
        _train_best(_trial_config(trial), out_dir, progress)
    else:
        say(f"{run.path}: completed earlier, reused")
    report_dir = run.path / REPORT
    report, evaluated = _test_report(run.path, report_dir, test, limit, say)
    return BestResult(trial.number, trial.params, run.path, report_dir, report, trained, evaluated)


def _sweep_spec(out_dir: Path) -> SweepSpec:
    if not (out_dir / SPEC_FILE).is_file():
        raise TrimtabError(
            f"{out_dir}: not a sweep folder (no {SPEC_FILE}); give the --out of a trimtab sweep"
        )
    return load_sweep(out_dir / SPEC_FILE)


def _test_file(out_dir: Path, spec: SweepSpec, test: Path | None) -> Path:
    test = Path(test) if test is not None else spec.test
    if test is None:
        raise TrimtabError(
            f"{out_dir}: no test file: give --test FILE (or data.test in the sweep spec); the "
            "retrained model is evaluated on it once"
        )
    if not test.exists():
        raise TrimtabError(f"--test {test}: file not found")
    return test


def _best_trial(out_dir: Path, storage: str | None, study: str | None) -> Any:
    import optuna

    from trimtab.training.sweep_report import best_trial
    from trimtab.training.sweep_study import study_ref

    ref = study_ref(out_dir, storage, study)
    if not ref.exists():
        raise TrimtabError(f"{out_dir}: no sweep study in {ref.describe()}")
    best = best_trial(optuna.load_study(study_name=ref.name, storage=ref.storage()))
    if best is None:
        raise TrimtabError(
            f"{out_dir}: no trial has completed; nothing to retrain (see {out_dir}/results.md)"
        )
    return best


def _trial_config(trial: Any) -> TrainConfig:
    """The config the trial's run saved, resolved (every ``auto`` as the trial chose it)."""
    run = RunFolder(Path(str(trial.user_attrs.get("run_dir"))))
    if not run.config_file.is_file():
        raise TrimtabError(
            f"trial {trial.number}: its run folder {run.path} has no config.yaml to retrain from"
        )
    return load_config(run.config_file)


def join_splits(train: Path, valid: Path, out: Path) -> tuple[int, int]:
    """Write ``train`` then ``valid`` as one JSONL file ``out`` (atomically); return the rows of
    ``train`` and of the joined file."""
    rows = {"train": 0, "all": 0}

    def lines() -> Any:
        for name, path in (("train", train), ("valid", valid)):
            with open(path, "rb") as f:
                for line in f:
                    if line.strip():
                        rows[name] = rows.get(name, 0) + 1
                        rows["all"] += 1
                        yield line if line.endswith(b"\n") else line + b"\n"

    write_chunks(out, lines())
    return rows["train"], rows["all"]


def _train_best(config: TrainConfig, out_dir: Path, progress: bool) -> None:
    """Train ``config`` on train+valid into ``out_dir/best``, or continue it there."""
    from trimtab.training.checkpoint import latest_checkpoint
    from trimtab.training.trainer import train

    run = RunFolder(out_dir / BEST)
    if run.is_live():
        raise TrimtabError(f"{run.path}: another process is training it now; wait for it")
    if run.info_file.is_file() and latest_checkpoint(run.path) is not None:
        train(None, resume=run.path, progress=progress)
        return
    shutil.rmtree(run.path, ignore_errors=True)  # started, never checkpointed: nothing to keep
    assert config.data.train is not None and config.data.valid is not None  # a sweep's trial
    joined = out_dir / BEST_DATA / "train.jsonl"
    train_rows, all_rows = join_splits(config.data.train, config.data.valid, joined)
    values = config.model_dump(mode="json")
    values["data"] |= {"train": str(joined), "valid": None}
    values |= {"run_dir": str(run.path), "keep_best": False, "early_stopping_patience": None}
    values |= {"eval_every": None}
    if config.max_steps:  # the same passes over the larger data
        values["max_steps"] = math.ceil(config.max_steps * all_rows / train_rows)
    train(load_config(None, [], base=values), progress=progress)


def _test_report(
    run_dir: Path, report_dir: Path, test: Path, limit: int | None, say: Callable[[str], None]
) -> tuple[dict[str, Any], bool]:
    """The test report of ``run_dir``: the one written earlier (on the same file), else one
    evaluation now, written to ``report_dir``."""
    from trimtab.evaluation.comparison import EvalOptions, run_eval

    saved = report_dir / "report.json"
    if saved.is_file():
        report: dict[str, Any] = json.loads(saved.read_text(encoding="utf-8"))
        if Path(str(report.get("data"))).resolve() != test.resolve():
            raise TrimtabError(
                f"{report_dir}: the best model was tested on {report.get('data')} already; "
                "the test split is read once (remove that report to test on another file)"
            )
        say(f"{report_dir}: tested earlier, reused")
        return report, False
    options = EvalOptions.parse(models=[str(run_dir)], data=test, out=report_dir, limit=limit)
    return run_eval(options, say=say), True
