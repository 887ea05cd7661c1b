"""The scheduler: validates files, starts queued jobs, follows running ones, recovers.

One thread ticks every ``interval`` seconds (0.2: a new metrics line is an event a few hundred
milliseconds later at most; an idle tick only reads). A tick:

1. beats this scheduler's heart in the store (``schedulers``) every quarter of ``owner_ttl``,
   so others know it is alive;
2. validates the files of ``validating_files`` jobs (→ ``queued``, or ``failed`` naming the
   line at fault);
3. adopts ``running`` jobs whose scheduler died (no heartbeat for ``owner_ttl`` seconds): a
   job whose trainer still runs is followed from where it is; one whose trainer died is
   resumed from its last complete checkpoint;
4. follows the running jobs it owns: turns new lines of the run's ``metrics.jsonl`` into
   ``metrics`` events (keyed by step, so a restart never writes one twice), lists complete
   checkpoints, carries out cancel and pause requests, and on exit reads ``run.json`` to say
   how it went (succeeded, paused, failed; a death without a word is retried up to
   ``max_attempts`` starts, then failed);
5. starts queued jobs up to ``concurrency``, each claimed by one conditional update, so two
   schedulers on one store never run the same job twice (the run folder's lock is a second
   guard: ``trimtab train`` refuses a run another process trains).

The store is the source of truth; this thread keeps it in step with the run folders, which
the trainer writes whatever executor runs it.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import secrets
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trimtab.errors import PAUSED_EXIT
from trimtab.files import pid_alive, write_text
from trimtab.jobs.executors import RUNNING, UNKNOWN, Executor, Launch
from trimtab.jobs.service import JobsService, validation_error
from trimtab.jobs.sweeps import SweepFollower, is_sweep, sweep_argv
from trimtab.models.runs import RunFolder
from trimtab.training import checkpoint as ckpt

_log = logging.getLogger("trimtab.jobs")

USER_ERROR_EXIT = 2  # a TrimtabError: retrying cannot help
RESULT_COLUMNS = ("step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy")


@dataclass
class _Progress:
    """What this scheduler has read of a running job (only to save work: all of it can be
    read again, and the store ignores events it already has)."""

    offset: int = 0  # bytes of metrics.jsonl turned into events
    size: int = 0
    first: tuple[float, int] | None = None  # (time, step) of the first step seen, for the ETA
    records: list[dict[str, Any]] = field(default_factory=list)  # metrics lines read so far
    checkpoints: dict[int, dict[str, Any]] = field(default_factory=dict)  # as in the store


class Scheduler:
    """Runs the jobs of one store; any number may share a store (each job runs once)."""

    def __init__(
        self,
        service: JobsService,
        executor: Executor,
        *,
        concurrency: int = 1,
        interval: float = 0.2,
        owner_ttl: float = 10.0,
        max_attempts: int = 3,
    ):
        self.service, self.store, self.executor = service, service.store, executor
        self.concurrency, self.interval = concurrency, interval
        self.owner_ttl, self.max_attempts = owner_ttl, max_attempts
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._progress: dict[str, _Progress] = {}
        self.sweeps = SweepFollower(self)
        self._beat = -float("inf")  # when the heartbeat was last written (monotonic)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- running -----------------------------------------------------------------------------

    def start(self) -> None:
        """Tick in a background thread until :meth:`stop`."""
        self._thread = threading.Thread(target=self._loop, name="trimtab-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop ticking. Running jobs go on: the next scheduler on this store adopts them at
        once (this one says it is gone instead of letting its heartbeat age)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.store.forget_owner(self.owner)

    def run_until_idle(self, timeout: float | None = None) -> None:
        """Tick in this thread until no job is validating, queued or running (``trimtab jobs
        work --until-idle``); TimeoutError after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.store.jobs_with_status(("validating_files", "queued", "running")):
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"jobs still running after {timeout} s")
            self.tick()
            time.sleep(self.interval)
        self.store.forget_owner(self.owner)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # one bad tick must not end the scheduler; the next retries
                _log.exception("scheduler tick failed")
            self._stop.wait(self.interval)

    def tick(self) -> None:
        """One round: heartbeat, validate, adopt, follow, start."""
        if time.monotonic() - self._beat >= self.owner_ttl / 4:  # not every tick: a write
            self.store.heartbeat(self.owner, socket.gethostname(), os.getpid())
            self._beat = time.monotonic()
        for row in self.store.jobs_with_status(("validating_files",)):
            self._validate(row)
        live = self.store.live_owners(self.owner_ttl) | {self.owner}
        for row in self._running():
            owner = row.get("owner")
            if owner not in live or (owner != self.owner and _gone_here(owner)):
                self._adopt(row)
        for row in [r for r in self._running() if r["owner"] == self.owner]:
            self._follow(row)
        free = self.concurrency - len([r for r in self._running() if r["owner"] == self.owner])
        for row in self.store.jobs_with_status(("queued",))[: max(0, free)]:
            self._claim_and_start(row)

    def _running(self) -> list[dict[str, Any]]:
        """The running jobs a scheduler runs: a sweep's trials are run (and followed) by
        their sweep, never claimed, adopted or started on their own."""
        return [r for r in self.store.jobs_with_status(("running",)) if not r.get("parent_id")]

    def _live(self, row: dict[str, Any]) -> bool:
        """Whether the job's trainer runs now, wherever it is (its run lock is held)."""
        if is_sweep(row):
            return self.sweeps.live(row)
        return RunFolder(Path(row["run_dir"])).is_live()

    # --- states ------------------------------------------------------------------------------

    def _validate(self, row: dict[str, Any]) -> None:
        error = validation_error(row, self.service)
        if error is None:
            values: dict[str, Any] = {"status": "queued"}
            event = {"message": "Files validated, moving job to queued state"}
        else:
            values = {"status": "failed", "error": error, "finished_at": int(time.time())}
            event = {"message": f"Job failed: {error['message']}", "level": "error"}
        self.store.update_job(row["id"], values, expect_status=("validating_files",), event=event)

    def _claim_and_start(self, row: dict[str, Any]) -> None:
        attempt = int(row.get("attempts") or 0) + 1
        claimed = self.store.update_job(
            row["id"],
            {
                "status": "running",
                "owner": self.owner,
                "attempts": attempt,
                "handle": None,
                "executor": self.executor.name,
            },
            expect_status=("queued",),
            event={"message": _started(attempt), "key": f"started-{attempt}"},
        )
        if claimed:
            self._launch(self.store.get_job(row["id"]) or row, attempt)

    def _launch(self, row: dict[str, Any], attempt: int) -> None:
        """Start the job's command: ``trimtab train CONFIG`` the first time, ``trimtab train
        --resume RUN`` once its run folder exists (after a pause or a dead worker)."""
        job_dir = self.service.jobs_dir / row["id"]
        run = RunFolder(Path(row["run_dir"]))
        run.pause_file.unlink(missing_ok=True)
        if is_sweep(row):
            argv = sweep_argv(row, job_dir / "sweep.yaml")
        elif run.config_file.is_file():
            argv = [sys.executable, "-m", "trimtab", "train", "--resume", str(run.path)]
        else:
            from trimtab.training.config import TrainConfig, dump_config

            config_file = job_dir / "config.yaml"
            write_text(config_file, dump_config(TrainConfig.model_validate(row["config"])))
            argv = [sys.executable, "-m", "trimtab", "train", str(config_file)]
        ext = row.get("extension") or {}
        launch = Launch(
            row["id"],
            attempt,
            [*argv, "--quiet"],
            Path.cwd(),
            job_dir / "train.log",
            cpus=float(ext.get("cpus", 1.0)),
            gpus=float(ext.get("gpus", 0.0)),
        )
        try:
            handle = self.executor.start(launch)
        except Exception as exc:  # the executor could not start it: the job fails, visibly
            _log.exception("could not start %s", row["id"])
            self._fail(row, "executor_error", f"could not start the job: {exc}")
            return
        self.store.update_job(row["id"], {"handle": handle}, expect_owner=self.owner)
        self._progress.pop(row["id"], None)

    def _adopt(self, row: dict[str, Any]) -> None:
        """Take over a running job whose scheduler is gone; a dead trainer is resumed."""
        won = self.store.update_job(
            row["id"],
            {"owner": self.owner},
            expect_status=("running",),
            expect_owner=row.get("owner"),
            event={
                "message": "Scheduler restarted; following the job from where it is",
                "key": f"adopted-{row.get('owner')}",
            },
        )
        if won and not row.get("handle") and not self._live(row):
            self._retry_or_fail(self.store.get_job(row["id"]) or row, None)

    def _follow(self, row: dict[str, Any]) -> None:
        if is_sweep(row):
            self.sweeps.sync(row, running=True)
        else:
            self._sync(row)
        handle = row.get("handle")
        code = self._poll(row)
        if code is RUNNING:
            if row.get("requested") == "cancel" and handle:
                self.executor.stop(handle)
                self._finish_cancel(row)
            elif row.get("requested") == "pause":  # asked once: the trainer removes the file
                RunFolder(Path(row["run_dir"])).pause_file.touch()
                self.store.update_job(row["id"], {"requested": "pausing"})
            return
        self._ended(row, code)

    def _poll(self, row: dict[str, Any]) -> int | None:
        """The executor's word on the job's command. When it cannot know (no handle: a
        scheduler died between starting the job and storing its handle; or a process it did
        not start), the run folder's lock tells: held while a trainer runs, wherever it is."""
        code = self.executor.poll(row["handle"]) if row.get("handle") else UNKNOWN
        if code == UNKNOWN and self._live(row):
            return RUNNING
        return code

    def _ended(self, row: dict[str, Any], code: int) -> None:
        """The job's command ended: what the run folder says decides the job's state."""
        if is_sweep(row):
            self.sweeps.ended(row, code)
            return
        self._sync(row)
        run = RunFolder(Path(row["run_dir"]))
        info = run.info()
        status = info.get("status")
        if row.get("requested") == "cancel":
            self._finish_cancel(row)
        elif status == "completed" and run.is_completed():
            self._succeed(row, info)
        elif status == "paused" or code == PAUSED_EXIT:
            self.store.update_job(
                row["id"],
                {"status": "paused", "requested": None, "handle": None, "owner": None},
                expect_status=("running",),
                event={"message": f"Fine-tuning job paused at step {info.get('paused_step')}"},
            )
        elif status == "failed" or code == USER_ERROR_EXIT:
            message = info.get("error") or _log_tail(self.service.jobs_dir / row["id"])
            self._fail(row, "training_failed", str(message))
        else:
            self._retry_or_fail(row, code)

    def _retry_or_fail(self, row: dict[str, Any], code: int | None) -> None:
        """A trainer that died without a word (killed, machine lost): resumed from its last
        checkpoint, until ``max_attempts`` starts have been made."""
        attempts = int(row.get("attempts") or 0)
        last = ckpt.latest_checkpoint(Path(row["run_dir"]))
        where = f"from {last.name}" if last else "from the start"
        if is_sweep(row):
            where = "the sweep from its finished trials (a trial cut short runs again)"
        why = f"exit code {code}" if code is not None and code >= 0 else "the process is gone"
        if attempts >= self.max_attempts:
            self._fail(
                row,
                "worker_failed",
                f"the training process died ({why}) and "
                f"{attempts} attempts were made; the log is "
                f"{self.service.jobs_dir / row['id'] / 'train.log'}",
            )
            return
        self.store.update_job(
            row["id"],
            {"status": "queued", "handle": None, "owner": None},
            expect_status=("running",),
            event={
                "message": f"The training process died ({why}); resuming {where} "
                f"(attempt {attempts + 1} of {self.max_attempts})",
                "level": "warn",
                "key": f"retry-{attempts}",
            },
        )

    def _finish_cancel(self, row: dict[str, Any]) -> None:
        if is_sweep(row):  # trials that ended keep their outcome; the others end with it
            self.sweeps.sync(row, running=True)
            self.sweeps.close(row, "Trial cancelled with its sweep")
        self.store.update_job(
            row["id"],
            {
                "status": "cancelled",
                "requested": None,
                "finished_at": int(time.time()),
                "estimated_finish": None,
                "owner": None,
            },
            expect_status=("running",),
            event={"message": "Fine-tuning job cancelled"},
        )

    def _fail(self, row: dict[str, Any], code: str, message: str) -> None:
        if is_sweep(row):
            self.sweeps.close(row, "Trial stopped: its sweep failed")
        self.store.update_job(
            row["id"],
            {
                "status": "failed",
                "finished_at": int(time.time()),
                "owner": None,
                "error": {"code": code, "message": message, "param": None},
            },
            expect_status=("running", "queued"),
            event={"message": f"Job failed: {message}", "level": "error"},
        )

    def _succeed(self, row: dict[str, Any], info: dict[str, Any]) -> None:
        results = info.get("results") or {}
        metrics = RunFolder(Path(row["run_dir"])).metrics()
        result_file = self.service.add_result_file("step_metrics.csv", results_csv(metrics))
        self.store.add_event(
            row["id"],
            f"New fine-tuned model created: {row['fine_tuned_model']}",
            key="model-created",
        )
        self.store.update_job(
            row["id"],
            {
                "status": "succeeded",
                "finished_at": int(time.time()),
                "owner": None,
                "requested": None,
                "trained_tokens": results.get("tokens"),
                "result_files": [result_file],
                "estimated_finish": None,
            },
            expect_status=("running",),
            event={"message": "The job has successfully completed"},
        )

    # --- reading the run folder --------------------------------------------------------------

    def _sync(self, row: dict[str, Any]) -> None:
        """New metrics lines → events; complete checkpoints → checkpoint objects; the ETA and
        the resolved hyperparameters."""
        run = RunFolder(Path(row["run_dir"]))
        info = run.info()
        total = info.get("total_steps")
        progress = self._progress.setdefault(row["id"], _Progress())
        records = self._new_records(run, progress)
        for record in records:
            _metrics_event(self.store, row["id"], record, total)
        values: dict[str, Any] = {}
        steps = [r["step"] for r in records if "train_loss" in r]
        if steps and total:
            values["estimated_finish"] = _eta(progress, steps[-1], int(total))
        if "auto" in (row.get("hyperparameters") or {}).values() and run.config_file.is_file():
            values["hyperparameters"] = _resolved_hyperparameters(run, row)
        if values:
            self.store.update_job(row["id"], values)
        self._sync_checkpoints(row, run)

    def _new_records(self, run: RunFolder, progress: _Progress) -> list[dict[str, Any]]:
        import json

        try:
            size = run.metrics_file.stat().st_size
        except OSError:
            return []
        if size < progress.size:  # truncated on resume: read again (events are keyed)
            progress.offset, progress.records = 0, []
        progress.size = size
        with run.metrics_file.open("rb") as f:
            f.seek(progress.offset)
            data = f.read()
        complete = data[: data.rfind(b"\n") + 1]  # a line still being written waits
        progress.offset += len(complete)
        out = []
        for line in complete.splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        progress.records += out
        return out

    def _sync_checkpoints(self, row: dict[str, Any], run: RunFolder) -> None:
        """The run's complete checkpoints as the job's, with the metrics of their step (the
        last training line at or before it, the evaluation at it); written only on change."""
        progress = self._progress.setdefault(row["id"], _Progress())
        steps = sorted(
            int(p.parent.name.removeprefix("step-"))
            for p in (run.path / "checkpoints").glob("step-*/model")
            if ckpt.is_complete(p.parent)
        )
        for step in steps:
            metrics = _metrics_at(progress.records, step)
            if progress.checkpoints.get(step) == metrics:
                continue
            model_id = f"{row['fine_tuned_model']}:ckpt-step-{step}"
            if self.store.upsert_checkpoint(row["id"], step, metrics, model_id):
                self.store.add_event(
                    row["id"], f"Checkpoint created at step {step}", key=f"checkpoint-{step}"
                )
            progress.checkpoints[step] = metrics
        if set(progress.checkpoints) != set(steps):  # pruned by the trainer (it keeps 3)
            self.store.delete_checkpoints(row["id"], set(steps))
            progress.checkpoints = {k: v for k, v in progress.checkpoints.items() if k in steps}


def _metrics_at(records: list[dict[str, Any]], step: int) -> dict[str, Any]:
    """OpenAI's checkpoint metrics at ``step``: the last training line logged at or before it
    (lines are every ``log_every`` steps) and the evaluation at it, if any."""
    out: dict[str, Any] = {}
    train = [r for r in records if "train_loss" in r and int(r.get("step", -1)) <= step]
    if train:
        last = train[-1]
        accuracy = last.get("train_mean_token_accuracy", last.get("train_accuracy"))
        out |= {"train_loss": last["train_loss"], "train_mean_token_accuracy": accuracy}
    valid = [r for r in records if "valid_loss" in r and int(r.get("step", -1)) == step]
    if valid:
        loss = valid[-1]["valid_loss"]
        accuracy = valid[-1].get("valid_mean_token_accuracy", valid[-1].get("valid_accuracy"))
        out |= {"valid_loss": loss, "valid_mean_token_accuracy": accuracy}
        out |= {"full_valid_loss": loss, "full_valid_mean_token_accuracy": accuracy}
    return out | {"step": step}


def _started(attempt: int) -> str:
    if attempt == 1:
        return "Fine-tuning job started"
    return f"Fine-tuning job started again (attempt {attempt}), from its last checkpoint"


def _gone_here(owner: str | None) -> bool:
    """A scheduler of this host whose process has ended: adopted at once, without waiting
    for its heartbeat to age (a server restarted after a kill takes its jobs back in a tick)."""
    host, _, rest = (owner or "").partition(":")
    pid = rest.partition(":")[0]
    return host == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid))


def _metrics_event(store: Any, job_id: str, record: dict[str, Any], total: Any) -> None:
    """One metrics line as OpenAI's ``metrics`` event (and its message), keyed by step."""
    step = int(record.get("step", 0))
    data: dict[str, Any] = {"step": step, "total_steps": total}
    if "train_loss" in record:
        data["train_loss"] = record["train_loss"]
        accuracy = record.get("train_mean_token_accuracy", record.get("train_accuracy"))
        data["train_mean_token_accuracy"] = accuracy
        message = f"Step {step}/{total}: training loss={record['train_loss']:.4f}"
        key = f"train-{step}"
    elif "valid_loss" in record:
        data["valid_loss"] = record["valid_loss"]
        data["full_valid_loss"] = record["valid_loss"]
        accuracy = record.get("valid_mean_token_accuracy", record.get("valid_accuracy"))
        data["valid_mean_token_accuracy"] = accuracy
        data["full_valid_mean_token_accuracy"] = accuracy
        message = f"Step {step}/{total}: validation loss={record['valid_loss']:.4f}"
        key = f"valid-{step}"
    else:
        return
    store.add_event(job_id, message, type="metrics", data=data, key=key)


def _eta(progress: _Progress, step: int, total: int) -> int:
    now = time.time()
    if progress.first is None or progress.first[1] >= step:
        progress.first = (now, step)
        return int(now)
    rate = (now - progress.first[0]) / (step - progress.first[1])
    return int(now + rate * max(0, total - step))


def _resolved_hyperparameters(run: RunFolder, row: dict[str, Any]) -> dict[str, Any]:
    """The values the trainer chose for ``auto`` (from the run's resolved config)."""
    from trimtab.training.config import auto_lr, load_config

    config = load_config(run.config_file) if run.config_file.is_file() else None
    if config is None:
        return row.get("hyperparameters") or {}
    lr = float(config.optim.lr)  # resolved: a number
    return {
        "n_epochs": config.epochs,
        "batch_size": config.batch_size,
        "learning_rate_multiplier": round(lr / auto_lr(config.method.name, config.data.task), 6),
    }


def results_csv(metrics: list[dict[str, Any]]) -> bytes:
    """OpenAI's results file: one row per step (training and validation merged)."""
    by_step: dict[int, dict[str, Any]] = {}
    for record in metrics:
        row = by_step.setdefault(int(record.get("step", 0)), {"step": int(record.get("step", 0))})
        for key, value in record.items():
            if key == "train_mean_token_accuracy":
                key = "train_accuracy"
            if key == "valid_accuracy" and "valid_mean_token_accuracy" not in record:
                key = "valid_mean_token_accuracy"
            if key in RESULT_COLUMNS:
                row[key] = value
    out = io.StringIO()
    writer = csv.DictWriter(out, RESULT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for step in sorted(by_step):
        writer.writerow(by_step[step])
    return out.getvalue().encode()


def _log_tail(job_dir: Path, lines: int = 5) -> str:
    try:
        text = (job_dir / "train.log").read_text(errors="replace")
    except OSError:
        return "the training process failed (no log)"
    return " | ".join(line for line in text.strip().splitlines()[-lines:] if line.strip())


__all__ = ["Scheduler", "results_csv"]
