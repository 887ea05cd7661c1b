"""A sweep's Optuna study: where it is stored, and the worker that runs its trials.

Workers share nothing but the study's storage. Each runs ``study.optimize`` on it, one trial at
a time, in its own process or machine; Optuna's storage hands out the trial numbers, so
``trial-NNN`` folders never clash. Storages:

- by default a journal file in the sweep folder, ``study.db`` (Optuna's JournalStorage with its
  file backend: appends under a lock file, safe for many processes, and on a shared filesystem
  for many machines; SQLite is not, under concurrent writers);
- ``--storage URL``: an RDB (``postgresql://...``, ``mysql+pymysql://...``) reached by every
  machine; Optuna's heartbeat marks a trial failed when its machine stops answering;
- ``--storage PATH``: a journal file elsewhere (a shared filesystem).

A ``study.db`` from before the journal (an SQLite database) is continued as SQLite.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trimtab.errors import TrimtabError
from trimtab.files import pid_alive, write_json
from trimtab.models.runs import RunFolder
from trimtab.training.config import TrainConfig
from trimtab.training.loop import TrainingInterrupted
from trimtab.training.sweep_report import counted, shown, write_results
from trimtab.training.sweep_spec import Param, SweepSpec
from trimtab.training.trainer import train

STUDY_NAME = "trimtab-sweep"
JOURNAL = "study.db"  # a journal file; SQLite in sweep folders made before the journal
SQLITE_MAGIC = b"SQLite format 3\x00"
SWEEP_JSON = "sweep.json"  # where the study is, for --resume and --best
HEARTBEAT_S, GRACE_S = 60, 180  # RDB storages: a trial silent this long is marked failed
WORKER = f"{socket.gethostname()}:{os.getpid()}"  # this process, as a trial records it


class SweepInterrupted(TrimtabError):
    """Ctrl-C during a sweep: the trial is recorded as interrupted; ``resume`` continues."""

    exit_code = 130


@dataclass(frozen=True)
class StudyRef:
    """Where a study is: an RDB URL (``url``) or a journal file (``journal``), and its name.

    ``given``: named by ``--storage`` (shared with other machines), not the sweep folder's own.
    """

    name: str = STUDY_NAME
    url: str | None = None
    journal: Path | None = None
    given: bool = False

    def storage(self) -> Any:
        """The Optuna storage object."""
        import optuna

        if self.journal is not None:
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            return JournalStorage(JournalFileBackend(str(self.journal)))
        assert self.url is not None
        kwargs: dict[str, Any] = {"heartbeat_interval": HEARTBEAT_S, "grace_period": GRACE_S}
        if self.url.startswith("sqlite"):  # wait for a busy database rather than fail at once
            kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
        return optuna.storages.RDBStorage(self.url, **kwargs)

    def describe(self) -> str:
        """The storage as it may be shown and saved: an URL's password hidden."""
        if self.journal is not None:
            return str(self.journal)
        from sqlalchemy.engine import make_url

        return make_url(self.url or "").render_as_string(hide_password=True)

    def exists(self) -> bool:
        """Whether the study is there already."""
        if self.journal is not None and not self.journal.is_file():
            return False  # not created by asking: the backend makes the file
        import optuna

        return self.name in optuna.study.get_all_study_names(self.storage())


def study_ref(out_dir: Path, storage: str | None = None, name: str | None = None) -> StudyRef:
    """The study of the sweep folder ``out_dir``: ``storage`` (an URL with a scheme, else a
    journal file's path) when given, else what ``sweep.json`` recorded, else the folder's own
    journal (or its older ``study.db``)."""
    out_dir = Path(out_dir)
    if storage:
        default = f"{STUDY_NAME}-{out_dir.resolve().name}"  # many sweeps share one database
        if "://" in storage:
            return StudyRef(name or default, url=storage, given=True)
        return StudyRef(name or default, journal=Path(storage).resolve(), given=True)
    recorded = _recorded(out_dir)
    if recorded is not None:
        return recorded if name is None else StudyRef(name, recorded.url, recorded.journal, True)
    local = out_dir / JOURNAL
    if _is_sqlite(local):
        return StudyRef(name or STUDY_NAME, url=f"sqlite:///{local.resolve()}")
    return StudyRef(name or STUDY_NAME, journal=local)


def _is_sqlite(path: Path) -> bool:
    if not path.is_file():
        return False
    with path.open("rb") as f:
        return f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC


def _recorded(out_dir: Path) -> StudyRef | None:
    """The shared storage ``sweep.json`` names; an error if its password was kept out."""
    path = out_dir / SWEEP_JSON
    if not path.is_file():
        return None
    saved = json.loads(path.read_text(encoding="utf-8"))
    if not saved.get("given"):
        return None
    where = str(saved["storage"])
    if "://" not in where:
        return StudyRef(saved["study"], journal=Path(where), given=True)
    if "***" in where:
        raise TrimtabError(
            f"{out_dir}: its study {saved['study']!r} is in {where}; give --storage with the "
            "password (it is not saved in the sweep folder)"
        )
    return StudyRef(saved["study"], url=where, given=True)


def open_study(spec: SweepSpec, out_dir: Path, ref: StudyRef, *, resume: bool) -> Any:
    """Create the study, or open it to resume (the same search and metric only).

    ``resume`` on a shared storage (``--storage``) joins the study, creating it if this is the
    first machine to start; on the folder's own storage it requires an earlier sweep. Trials
    this machine left running (their process gone) are recorded as interrupted.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    exists = ref.exists()
    if exists and not resume:
        raise TrimtabError(
            f"{out_dir}: a sweep is there already; continue it with --resume (study "
            f"{ref.name!r} in {ref.describe()})"
        )
    if resume and not exists and not ref.given:
        raise TrimtabError(f"{out_dir}: no sweep to resume (no study in {JOURNAL})")
    out_dir.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        storage=ref.storage(),
        study_name=ref.name,
        direction=spec.sweep.direction,
        pruner=pruner(),
        load_if_exists=True,  # two machines joining at once: the second loads the first's
    )
    _check_same_search(study, spec, out_dir)
    write_json(
        out_dir / SWEEP_JSON, {"study": ref.name, "storage": ref.describe(), "given": ref.given}
    )
    fail_abandoned(study, every_unclaimed=not ref.given)
    return study


def pruner() -> Any:
    """The median pruner: a trial behind the median of earlier ones at a step is stopped (the
    first two trials never are). Optuna does not store it: every worker makes its own."""
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=2)


def _check_same_search(study: Any, spec: SweepSpec, out_dir: Path) -> None:
    search = {k: v.model_dump() for k, v in spec.sweep.search.items()}
    saved = study.user_attrs
    if "search" not in saved:  # a new study (set again by a second machine: the same values)
        study.set_user_attr("search", search)
        study.set_user_attr("metric", spec.sweep.metric)
    elif (saved.get("search"), saved.get("metric")) != (search, spec.sweep.metric):
        raise TrimtabError(
            f"{out_dir}: that sweep searched another space or metric; resume it with its own spec"
        )


def fail_abandoned(study: Any, *, every_unclaimed: bool) -> None:
    """Record as failed (shown as interrupted: no ``seconds``) the running trials whose worker
    process on this machine is gone, and with ``every_unclaimed`` those no worker claimed (a
    crash between Optuna's ask and the claim). Other machines' trials are theirs to end."""
    from optuna.trial import TrialState

    host = WORKER.split(":")[0]
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = str(t.user_attrs.get("worker") or "")
        name, _, pid = worker.rpartition(":")
        mine_and_gone = name == host and pid.isdigit() and not pid_alive(int(pid))
        if mine_and_gone or (not worker and every_unclaimed):
            try:
                study.tell(t.number, state=TrialState.FAIL)
            except (RuntimeError, ValueError):  # another process ended it meanwhile
                pass


def taken(study: Any) -> int:
    """Trials that count toward the sweep's number: ended ones, and those running now."""
    return sum(1 for t in study.get_trials(deepcopy=False) if _takes_a_place(t))


def _takes_a_place(t: Any) -> bool:
    return counted(t) or (t.state.name == "RUNNING" and shown(t))


# --- the worker ------------------------------------------------------------------------------


def work(
    spec: SweepSpec,
    out_dir: Path,
    ref: StudyRef,
    target: int,
    *,
    say: Callable[[str], None],
    tag: bool = False,
) -> None:
    """Run trials of the study until ``target`` trials are ended or running (every worker's
    count together). ``tag``: prefix the training lines with the trial (several workers print
    to one terminal)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # each trial's end is said below
    study = optuna.load_study(study_name=ref.name, storage=ref.storage(), pruner=pruner())
    if taken(study) >= target:
        return
    objective = _Objective(spec, out_dir, target, say, tag)

    def after(study: Any, _: Any) -> None:
        write_results(study, spec, out_dir)
        if taken(study) >= target:
            study.stop()

    try:
        study.optimize(
            objective, callbacks=[after], catch=(_TrialFailed, _Surplus), gc_after_trial=True
        )
    except (KeyboardInterrupt, TrainingInterrupted):
        write_results(study, spec, out_dir)
        raise SweepInterrupted(
            f"sweep interrupted during trial {objective.current}; continue it with --resume "
            f"(--out {out_dir})"
        ) from None


class _TrialFailed(Exception):
    """A trial that could not train: recorded with its message, and the sweep goes on."""


class _Surplus(Exception):
    """A trial drawn when the sweep had its count already (another worker took the last
    place): given back unrun."""


class _Objective:
    """One trial: reseed the sampler, sample, train into ``trials/trial-NNN``, return the
    metric. A failure (a config that cannot train, a diverged loss, out of memory) is recorded
    with its message; Ctrl-C is not a failure and stops the worker."""

    def __init__(
        self, spec: SweepSpec, out_dir: Path, target: int, say: Callable[[str], None], tag: bool
    ):
        self.spec, self.out_dir, self.target, self.say, self.tag = spec, out_dir, target, say, tag
        self.current: int | None = None

    def __call__(self, trial: Any) -> float:
        import optuna

        # Seeded by the trial's number: a resumed or parallel sweep samples what an unbroken
        # serial one would for the same number; constant_liar keeps parallel workers apart.
        trial.study.sampler = optuna.samplers.TPESampler(
            seed=self.spec.sweep.seed + trial.number, constant_liar=True
        )
        trial.set_user_attr("worker", WORKER)
        if self._surplus(trial):
            trial.set_user_attr("surplus", True)
            trial.study.stop()
            raise _Surplus
        self.current = trial.number
        params = suggest(trial, self.spec.sweep.search)
        run_dir = self.out_dir / "trials" / f"trial-{trial.number:03d}"
        trial.set_user_attr("run_dir", str(run_dir))
        self.say(f"trial {trial.number}: {format_params(params)}")
        return self._train(trial, params, run_dir)

    def _surplus(self, trial: Any) -> bool:
        earlier = trial.study.get_trials(deepcopy=False)
        return sum(1 for t in earlier if t.number < trial.number and _takes_a_place(t)) >= (
            self.target
        )

    def _train(self, trial: Any, params: dict[str, Any], run_dir: Path) -> float:
        import optuna

        metric = self.spec.sweep.metric
        started, outcome = time.perf_counter(), "interrupted"
        prefix = f"  trial {trial.number}: " if self.tag else "  "
        try:
            config = self.spec.trial_config(params, run_dir)
            watch = _Watch(trial, RunFolder(run_dir), metric, lambda s: self.say(prefix + s))
            result = train(config, progress=True, log=watch)
            value = _trial_value(result.results, watch.values, config, metric)
            outcome = f"{metric} {value:.6g}"
            return value
        except optuna.TrialPruned:
            outcome = "pruned"
            raise
        except (KeyboardInterrupt, TrainingInterrupted):
            raise
        except Exception as e:  # noqa: BLE001 - any failure of one trial is that trial's result
            error = str(e) if isinstance(e, TrimtabError) else repr(e)
            trial.set_user_attr("error", error.splitlines()[0] if error else type(e).__name__)
            outcome = f"failed ({error})"
            raise _TrialFailed(error) from None
        finally:
            if outcome != "interrupted":
                trial.set_user_attr("seconds", round(time.perf_counter() - started, 1))
                self.say(f"trial {trial.number}: {outcome}")


def suggest(trial: Any, search: dict[str, Param]) -> dict[str, Any]:
    """The trial's value of every searched key, sampled by the study's sampler."""
    out: dict[str, Any] = {}
    for key, p in search.items():
        if p.choices is not None:
            out[key] = trial.suggest_categorical(key, p.choices)
        elif p.is_int:
            out[key] = trial.suggest_int(key, int(p.low or 0), int(p.high or 0), log=p.log)
        else:
            out[key] = trial.suggest_float(key, float(p.low or 0), float(p.high or 0), log=p.log)
    return out


def format_params(params: dict[str, Any]) -> str:
    from trimtab.training.sweep_report import cell

    return ", ".join(f"{k}={cell(v)}" for k, v in params.items())


class _Watch:
    """The trainer's log callback: after each line, the evaluations newly appended to the run's
    metrics.jsonl are reported to Optuna, and a trial clearly behind the median of the earlier
    trials at the same step is stopped (optuna.TrialPruned, raised through the trainer)."""

    def __init__(self, trial: Any, run: RunFolder, metric: str, say: Callable[[str], None]):
        self.trial, self.run, self.metric, self.say = trial, run, metric, say
        self.offset = 0  # bytes of metrics.jsonl read so far: each line is read once
        self.values: list[float] = []

    def __call__(self, text: str) -> None:
        self.say(text)
        for record in self._new_records():
            if self.metric not in record:
                continue
            self.values.append(float(record[self.metric]))
            self.trial.report(self.values[-1], int(record["step"]))
            if self.trial.should_prune():
                import optuna

                self.run.update(status="pruned")
                raise optuna.TrialPruned(f"pruned at step {record['step']}")

    def _new_records(self) -> list[dict[str, Any]]:
        path = self.run.metrics_file
        if not path.is_file():
            return []
        with path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line being written is read next time
        self.offset += len(complete)
        return [json.loads(line) for line in complete.splitlines() if line.strip()]


def _trial_value(
    results: dict[str, Any], seen: list[float], config: TrainConfig, metric: str
) -> float:
    """The metric of the model the run kept: at the best validation loss when ``best/``
    becomes ``final/`` (the trainer's results), else at the last evaluation."""
    if config.keep_best and metric in results:
        return float(results[metric])
    if seen:
        return seen[-1]
    raise TrimtabError(
        f"{metric} was not logged by this run (valid_accuracy needs classify, or sft with a "
        "few labels; valid_mean_token_accuracy needs sft or lm); choose another sweep.metric"
    )
