"""Sweeps in the jobs API: a parent job that runs ``trimtab sweep``, whose trials are
fine-tuning jobs of their own.

* **Creating** (:func:`prepare_sweep`): a job request whose ``trimtab.sweep`` is set becomes a
  sweep job (``trimtab.kind: "sweep"``). Its spec, the job's training config plus the sweep
  section, is written to ``jobs/<id>/sweep.yaml`` and checked by the sweep tool's own
  :func:`~trimtab.training.sweep.load_sweep`: every problem at once, each naming its key.
* **Running** (:class:`SweepFollower`, called by the scheduler): the parent's command is
  ``python -m trimtab sweep SPEC --out jobs/<id>/sweep --trials N`` (``--resume`` once its
  study exists), in the executor's process group like any job. As trial run folders appear
  under ``sweep/trials/``, each becomes a child job (``parent_id``, ``sweep_trial``) whose
  metrics, status and model are read from its run folder by the scheduler's own code, so
  every job page and curve works for trials. The sweep's ``results.csv`` gives each trial's
  value and state. Children are never claimed or started by a scheduler: the sweep runs them.
* **Serving**: a trial's run folder is linked as ``runs/<child-id>`` and, once it succeeds,
  its model is named with the child's id, so the pool serves every trial; the parent's
  ``fine_tuned_model`` is the best trial's.

The store stays the source of truth: a child is inserted once per (sweep, trial) whatever
scheduler records it, and every change is written with its event.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from trimtab.errors import ConfigError, TrimtabError
from trimtab.files import write_text
from trimtab.jobs import objects as o
from trimtab.jobs.store import new_id
from trimtab.models.runs import RunFolder, write_meta

if TYPE_CHECKING:
    from trimtab.jobs.scheduler import Scheduler
    from trimtab.jobs.service import JobRequest, JobsService

SWEEP_DIR = "sweep"  # jobs/<id>/sweep: the sweep's --out folder
FINAL_STATES = ("complete", "pruned", "failed")  # a trial's end in results.csv
# What a started sweep leaves in its folder (one of them, by version): it is resumed, not begun.
STUDY_FILES = ("study.db", "study.journal", "sweep.json")


def is_sweep(row: dict[str, Any]) -> bool:
    """Whether a job row is a sweep's parent job."""
    return (row.get("extension") or {}).get("kind") == "sweep"


# --- creating --------------------------------------------------------------------------------


def prepare_sweep(
    service: JobsService, request: JobRequest, job_id: str, config: dict[str, Any]
) -> dict[str, Any]:
    """Write and check the sweep job's spec; the job row's values that differ from a training
    job's. A 400 lists every problem, each named by its request field."""
    from trimtab.jobs.service import JOB_KEYS
    from trimtab.training.sweep import load_sweep

    raw = dict(request.trimtab.sweep or {})
    problems: list[tuple[str, str]] = []
    parallel = raw.pop("parallel", 1)
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        problems.append(
            ("trimtab.sweep.parallel", f"a whole number of at least 1, got {parallel!r}")
        )
    raw.setdefault("seed", config["seed"])
    search = raw.get("search")
    if isinstance(search, dict):
        # Checked before the sweep tool tries each value: a client never picks files or ids.
        for key in [k for k in search if k in JOB_KEYS]:
            problems.append((f"trimtab.sweep.search.{key}", "set by the job itself, not searched"))
            del search[key]
    out = service.jobs_dir / job_id / SWEEP_DIR
    values = config | {"run_dir": str(out), "model_id": None, "checkpoint_models": False}
    spec = service.jobs_dir / job_id / "sweep.yaml"
    write_text(spec, yaml.safe_dump(values | {"sweep": raw}, sort_keys=False))
    section: dict[str, Any] = {}
    try:
        checked = load_sweep(spec).sweep
        section = checked.model_dump(exclude_none=True) | {"direction": checked.direction}
    except ConfigError as exc:
        problems += [_named(p.removeprefix(f"{spec}: ")) for p in exc.problems]
    if problems:
        shutil.rmtree(service.jobs_dir / job_id, ignore_errors=True)
        message = "; ".join(f"{param}: {text}" for param, text in problems)
        raise o.ApiProblem(400, f"Invalid sweep: {message}", param=problems[0][0])
    ext = request.trimtab.model_dump(exclude={"sweep"})
    return {
        "fine_tuned_model": None,  # the best trial's, once the sweep has succeeded
        "run_dir": str(out),
        "config": values,
        "extension": ext | {"kind": "sweep", "sweep": section | {"parallel": parallel}},
    }


def _named(problem: str) -> tuple[str, str]:
    """A sweep tool problem (``key: message``) as (request field, message)."""
    key, _, message = problem.partition(": ")
    if key == "data.valid":
        return "validation_file", "required: a sweep compares its trials on the validation file"
    if key.startswith("sweep"):
        return f"trimtab.{key}", message
    return f"trimtab.config.{key}", message


def sweep_argv(row: dict[str, Any], spec: Path) -> list[str]:
    """The sweep job's command; ``--resume`` once its study exists (after a death)."""
    out = Path(row["run_dir"])
    section = (row.get("extension") or {}).get("sweep") or {}
    argv = [sys.executable, "-m", "trimtab", "sweep", str(spec), "--out", str(out)]
    argv += ["--trials", str(section.get("trials", 1)), "--quiet"]
    if any((out / name).exists() for name in STUDY_FILES):
        argv.append("--resume")
    if int(section.get("parallel", 1)) > 1:
        argv += ["--parallel", str(section["parallel"])]
    return argv


# --- reading the sweep folder ----------------------------------------------------------------


def read_results(out: Path) -> dict[int, dict[str, str]]:
    """The sweep's ``results.csv`` by trial number ({} before the first trial ends)."""
    try:
        text = (out / "results.csv").read_text(encoding="utf-8")
    except OSError:
        return {}
    rows = {}
    for row in csv.DictReader(io.StringIO(text)):
        if str(row.get("trial", "")).isdigit():
            rows[int(row["trial"])] = row
    return rows


def trial_folders(out: Path) -> dict[int, Path]:
    """The trials' run folders (``trials/trial-NNN``) by number."""
    found = {}
    for path in (out / "trials").glob("trial-*"):
        number = path.name.removeprefix("trial-")
        if number.isdigit() and path.is_dir():
            found[int(number)] = path
    return found


def trial_params(folder: Path, keys: list[str]) -> dict[str, Any] | None:
    """The searched keys' values in a trial's resolved config (None before it is written)."""
    try:
        config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None
    params = {}
    for key in keys:
        node: Any = config
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        params[key] = node
    return params


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def _scalar(text: str | None) -> Any:
    """A results.csv cell back as a number when it is one."""
    try:
        return yaml.safe_load(text) if text not in (None, "") else None
    except yaml.YAMLError:
        return text


# --- following -------------------------------------------------------------------------------


class SweepFollower:
    """The scheduler's part for sweep jobs: trials recorded as child jobs, followed through the
    scheduler's own metrics, checkpoint and outcome code; the parent ended with its best."""

    def __init__(self, scheduler: Scheduler):
        self.scheduler, self.store = scheduler, scheduler.store
        self.service = scheduler.service

    def live(self, row: dict[str, Any]) -> bool:
        """Whether a trial of the sweep is training now (its run lock is held)."""
        return any(RunFolder(p).is_live() for p in trial_folders(Path(row["run_dir"])).values())

    def sync(self, row: dict[str, Any], running: bool) -> None:
        """Record new trials, follow the running ones, note finished ones; with ``running``
        false (the sweep process ended) every trial still running ends too."""
        out = Path(row["run_dir"])
        results = read_results(out)
        children = {c["sweep_trial"]: c for c in self.store.list_trials(row["id"])}
        folders = trial_folders(out)
        for number in sorted((set(results) | set(folders)) - set(children)):
            child = self._record(row, number, folders.get(number), results.get(number))
            if child is not None:
                children[number] = child
        for number, child in sorted(children.items()):
            if child["status"] == "running":
                self._follow(child, results.get(number), running)
            self._note_result(row, child, results.get(number))

    def _record(
        self,
        parent: dict[str, Any],
        number: int,
        folder: Path | None,
        result: dict[str, str] | None,
    ) -> dict[str, Any] | None:
        """The trial as a child job, once its params are known (its config is written, or
        the sweep recorded it); None until then, or when another scheduler recorded it."""
        ext = parent.get("extension") or {}
        keys = list((ext.get("sweep") or {}).get("search") or {})
        params = trial_params(folder, keys) if folder is not None else None
        if params is None and result is None:
            return None
        if params is None:
            params = {k: _scalar((result or {}).get(k)) for k in keys}
        child_id = new_id("ftjob-")
        run_dir = folder or Path(parent["run_dir"]) / "trials" / f"trial-{number:03d}"
        link = self.service.runs_dir / child_id
        if folder is not None:  # the pool serves run folders of the runs folder
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(folder.resolve(), link, target_is_directory=True)
            run_dir = link
        row = _child_row(parent, number, child_id, params, run_dir)
        row["fine_tuned_model"] = self.service.model_id(parent["model"], parent["suffix"], child_id)
        event = {"message": f"Trial {number} of sweep {parent['id']}: {_format(params)}"}
        if not self.store.insert_trial(row, event):
            link.unlink(missing_ok=True)
            return None
        self.store.add_event(
            parent["id"],
            f"Trial {number} started ({child_id}): {_format(params)}",
            key=f"trial-{number}-started",
            data={"trial": number, "job_id": child_id, "params": params},
        )
        return self.store.get_job(child_id)

    def _follow(self, child: dict[str, Any], result: dict[str, str] | None, running: bool) -> None:
        """New metrics as events; once the trial's run has ended, the child's outcome."""
        s = self.scheduler
        run = RunFolder(Path(child["run_dir"]))
        s._sync(child)
        if running and run.is_live():  # once the sweep has ended, no trial goes on
            return
        try:
            info = run.info()
        except TrimtabError:
            info = {}
        status, state = info.get("status"), (result or {}).get("state")
        if status == "completed" and run.is_completed():
            self._name_model(child, run)
            s._succeed(child, info)
        elif status == "failed":
            s._fail(child, "training_failed", str(info.get("error") or "training failed"))
        elif status == "pruned" or state == "pruned":
            self._end(child, "Trial pruned by the sweep: behind the median of earlier trials")
        elif state == "failed":
            s._fail(child, "trial_failed", (result or {}).get("error") or "the trial failed")
        elif not running or (state == "interrupted" and status == "running"):
            self._end(child, "Trial interrupted: the sweep process stopped during it")

    def _name_model(self, child: dict[str, Any], run: RunFolder) -> None:
        """The trial's model carries the child's id: the pool serves it under that id."""
        try:
            meta = run.meta()
        except TrimtabError:
            return
        if meta.get("model_id") != child["fine_tuned_model"]:
            write_meta(run.final, meta | {"model_id": child["fine_tuned_model"]})

    def _end(self, child: dict[str, Any], message: str) -> None:
        """A trial stopped before its end (pruned, interrupted, its sweep cancelled)."""
        self.store.update_job(
            child["id"],
            {"status": "cancelled", "finished_at": int(time.time()), "estimated_finish": None},
            expect_status=("running",),
            event={"message": message},
        )

    def _note_result(
        self, parent: dict[str, Any], child: dict[str, Any], result: dict[str, str] | None
    ) -> None:
        """The trial's value and state from results.csv: on the child, and as the parent's
        "trial finished" event (once)."""
        ext = child.get("extension") or {}
        if result is None or result.get("state") not in FINAL_STATES or "state" in ext:
            return
        metric = ext.get("metric", "valid_loss")
        value, state = _number(result.get(metric)), result["state"]
        extra = {"value": value, "state": state, "error": result.get("error") or None}
        self.store.update_job(child["id"], {"extension": ext | extra})
        number = child["sweep_trial"]
        said = f"{metric}={value:.6g}" if value is not None else "no value"
        reason = f": {result['error']}" if result.get("error") else ""
        self.store.add_event(
            parent["id"],
            f"Trial {number} {'finished' if state == 'complete' else state} ({said}){reason}",
            key=f"trial-{number}-finished",
            data={"trial": number, "job_id": child["id"], "value": value, "state": state},
            level="warn" if state == "failed" else "info",
        )

    def close(self, row: dict[str, Any], message: str) -> None:
        """End every trial still running (the sweep ended, failed or was cancelled)."""
        for child in self.store.list_trials(row["id"]):
            if child["status"] == "running":
                self._end(child, message)

    def ended(self, row: dict[str, Any], code: int | None) -> None:
        """The sweep process ended: the parent succeeds with its best trial, fails, or is
        started again (``--resume``) after a death."""
        from trimtab.jobs.executors import UNKNOWN
        from trimtab.jobs.scheduler import USER_ERROR_EXIT, _log_tail

        s = self.scheduler
        if row.get("requested") == "cancel":
            s._finish_cancel(row)
            return
        self.sync(row, running=False)
        section = (row.get("extension") or {}).get("sweep") or {}
        results = read_results(Path(row["run_dir"]))
        done = sum(1 for r in results.values() if r.get("state") in FINAL_STATES)
        if code == 0 or (code == UNKNOWN and done >= int(section.get("trials", 1))):
            self._succeed(row, results)
        elif code == USER_ERROR_EXIT:
            s._fail(row, "sweep_failed", _log_tail(self.service.jobs_dir / row["id"]))
        else:
            s._retry_or_fail(row, code)

    def _succeed(self, row: dict[str, Any], results: dict[int, dict[str, str]]) -> None:
        ext = row.get("extension") or {}
        section = ext.get("sweep") or {}
        metric = section.get("metric", "valid_loss")
        values = {
            n: v
            for n, r in results.items()
            if r.get("state") == "complete" and (v := _number(r.get(metric))) is not None
        }
        if not values:
            states = ", ".join(f"trial {n}: {r.get('state')}" for n, r in sorted(results.items()))
            self.scheduler._fail(
                row, "no_trial_completed", f"no trial of the sweep completed ({states or 'none'})"
            )
            return
        # The sweep tool's own direction for the metric, recorded when the job was created.
        pick = max if section.get("direction") == "maximize" else min
        number = pick(values, key=lambda n: values[n])
        children = {c["sweep_trial"]: c for c in self.store.list_trials(row["id"])}
        child = children.get(number) or {}
        model = child.get("fine_tuned_model") if child.get("status") == "succeeded" else None
        best = {
            "trial": number,
            "job_id": child.get("id"),
            "params": (child.get("extension") or {}).get("params"),
            "metric": metric,
            "value": values[number],
            "fine_tuned_model": model,
        }
        csv_bytes = (Path(row["run_dir"]) / "results.csv").read_bytes()
        result_file = self.service.add_result_file("sweep_results.csv", csv_bytes)
        tokens = [c.get("trained_tokens") for c in children.values() if c.get("trained_tokens")]
        self.store.add_event(
            row["id"],
            f"Best trial: {number} ({child.get('id')}), {metric}={values[number]:.6g}"
            + (f"; its model is {model}" if model else ""),
            key="best-trial",
            data=best,
        )
        self.store.update_job(
            row["id"],
            {
                "status": "succeeded",
                "finished_at": int(time.time()),
                "owner": None,
                "requested": None,
                "fine_tuned_model": model,
                "trained_tokens": sum(tokens) if tokens else None,
                "result_files": [result_file],
                "extension": ext | {"best": best},
            },
            expect_status=("running",),
            event={"message": "The sweep has successfully completed"},
        )


def _child_row(
    parent: dict[str, Any], number: int, child_id: str, params: dict[str, Any], run_dir: Path
) -> dict[str, Any]:
    """A trial's job row: the parent's model and files, the trial's params, running."""
    ext = parent.get("extension") or {}
    kept = {k: ext[k] for k in ("method", "task", "cpus", "gpus") if k in ext}
    metric = (ext.get("sweep") or {}).get("metric", "valid_loss")
    auto = {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}
    return {
        "id": child_id,
        "created_at": int(time.time()),
        "model": parent["model"],
        "training_file": parent["training_file"],
        "validation_file": parent.get("validation_file"),
        "suffix": parent.get("suffix"),
        "seed": parent["seed"],
        "metadata": None,
        "method": {"type": "supervised"},
        "extension": kept | {"kind": "trial", "metric": metric, "params": params},
        "hyperparameters": auto,  # resolved from the trial's config by the scheduler
        "status": "running",
        "result_files": [],
        "run_dir": str(run_dir),
        "config": None,
        "attempts": 1,
        "executor": parent.get("executor"),
        "parent_id": parent["id"],
        "sweep_trial": number,
    }


def _format(params: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )


__all__ = ["SweepFollower", "is_sweep", "prepare_sweep", "read_results", "sweep_argv"]
