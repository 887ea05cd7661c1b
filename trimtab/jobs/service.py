"""The fine-tuning API's operations: files and jobs, over the store and the data folder.

The HTTP routes (:mod:`trimtab.server.files`, :mod:`trimtab.server.fine_tuning`) and the local
command line (``trimtab jobs``/``trimtab files`` without ``--server``) call these and print what
they return: OpenAI's objects as dicts. A refusal is an :class:`ApiProblem` with OpenAI's error
fields. Jobs are run by the :class:`~trimtab.jobs.scheduler.Scheduler`; here they are only
recorded, and every change of status is written with its event in one transaction.

The data folder (``$TRIMTAB_HOME``)::

    files/<file-id>.jsonl      uploaded content, named by id only (a filename never becomes a path)
    jobs/<job-id>/config.yaml  the job's training config; train.log its output
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Literal

from pydantic import BaseModel, ConfigDict, Field

from trimtab.errors import ConfigError, TrimtabError
from trimtab.files import write_chunks, write_text
from trimtab.jobs import objects as o
from trimtab.jobs.store import Store, new_id

DEFAULT_MAX_FILE_BYTES = 512 * 1024 * 1024
FILE_PURPOSES = ("fine-tune", "fine-tune-results")
ACTIVE = ("validating_files", "queued", "running", "paused")
FINISHED = ("succeeded", "failed", "cancelled")
# A small adapter by default: cheap on a laptop, and what a hosted fine-tune is in effect.
DEFAULT_METHOD: Literal["lora"] = "lora"
# Config keys a job sets from its request: a request's trimtab.config cannot name them (a run
# folder chosen by a client could write anywhere the server can).
JOB_KEYS = frozenset(
    {
        "run_dir",
        "model_id",
        "checkpoint_models",
        "seed",
        "model",
        "model.name",
        "data",
        "data.train",
        "data.valid",
        "data.task",
        "method",
        "method.name",
    }
)
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_epochs: int | Literal["auto"] = Field(default="auto")
    batch_size: int | Literal["auto"] = Field(default="auto")
    learning_rate_multiplier: float | Literal["auto"] = Field(default="auto")


class Supervised(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: Hyperparameters = Hyperparameters()


class Method(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["supervised"]
    supervised: Supervised | None = None


class Extension(BaseModel):
    """trimtab's own choices, in the request's ``trimtab`` field (an extension of OpenAI's API):
    what trains, the task, and any ``trimtab train`` config key (dotted, e.g. ``optim.l1``)."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["full", "freeze", "lora"] = DEFAULT_METHOD
    task: Literal["sft", "lm", "classify"] = "sft"
    config: dict[str, Any] = {}
    # What the job holds on a Ray cluster (entrypoint_num_cpus/gpus); more than one GPU runs
    # the trainer under torchrun, one process per GPU. The local executor runs it as it is.
    cpus: float = Field(default=1.0, gt=0)
    gpus: float = Field(default=0.0, ge=0)
    # A sweep instead of one training run: {trials, metric, search, seed?, parallel?}, checked
    # whole by trimtab.jobs.sweeps (every problem at once, each naming its key).
    sweep: dict[str, Any] | None = None


class JobRequest(BaseModel):
    """The body of ``POST /v1/fine_tuning/jobs``: OpenAI's fields, plus ``trimtab``."""

    model_config = ConfigDict(extra="forbid")

    model: str
    training_file: str
    validation_file: str | None = None
    suffix: str | None = Field(default=None, max_length=64)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = None
    method: Method | None = None
    hyperparameters: Hyperparameters | None = None  # deprecated by OpenAI; still accepted
    integrations: list[Any] | None = None
    trimtab: Extension = Extension()


class JobsService:
    """Files and fine-tuning jobs of one data folder and one store."""

    def __init__(
        self,
        store: Store,
        home: Path,
        runs_dir: Path,
        *,
        org: str = "trimtab",
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    ):
        self.store, self.home, self.runs_dir = store, Path(home), Path(runs_dir)
        self.org, self.max_file_bytes = org, max_file_bytes
        self.files_dir, self.jobs_dir = self.home / "files", self.home / "jobs"

    # --- files -------------------------------------------------------------------------------

    def upload(self, filename: str, source: BinaryIO, purpose: str) -> dict[str, Any]:
        """Store an upload under its new id; a fine-tune file is checked line by line first
        (a 400 naming the line at fault, and nothing kept)."""
        if purpose != "fine-tune":
            raise o.ApiProblem(
                400, f"purpose: only 'fine-tune' is accepted, got {purpose!r}", param="purpose"
            )
        name = os.path.basename(filename or "").strip()
        if not name.endswith(".jsonl"):
            raise o.ApiProblem(
                400,
                f"Invalid file format for fine-tuning: {name!r}; expected "
                "a .jsonl file (one JSON example per line)",
                param="file",
            )
        file_id = new_id("file-")
        path = self._file_path(file_id)
        size = self._receive(source, path)
        try:
            _check_examples(path, name, "file")
        except o.ApiProblem:
            path.unlink(missing_ok=True)
            raise
        row = {
            "id": file_id,
            "filename": name,
            "purpose": purpose,
            "bytes": size,
            "created_at": int(time.time()),
            "status": "processed",
            "status_details": None,
            "path": path.name,
        }
        self.store.insert_file(row)
        return o.file_object(row)

    def add_result_file(self, filename: str, content: bytes) -> str:
        """A file the server writes itself (a job's results CSV); returns its id."""
        file_id = new_id("file-")
        path = self.files_dir / f"{file_id}.csv"
        write_text(path, content.decode())
        self.store.insert_file(
            {
                "id": file_id,
                "filename": filename,
                "purpose": "fine-tune-results",
                "bytes": len(content),
                "created_at": int(time.time()),
                "status": "processed",
                "status_details": None,
                "path": path.name,
            }
        )
        return file_id

    def _receive(self, source: BinaryIO, path: Path) -> int:
        """Copy the upload to ``path`` in chunks, refusing it past the size limit; written
        atomically, so a cut or refused upload leaves nothing."""
        limit = self.max_file_bytes

        def chunks() -> Iterator[bytes]:
            size = 0
            while chunk := source.read(1 << 20):
                size += len(chunk)
                if size > limit:
                    raise o.ApiProblem(
                        413,
                        f"File is larger than this server accepts ({limit} bytes)",
                        param="file",
                        code="file_too_large",
                    )
                yield chunk

        return write_chunks(path, chunks())

    def list_files(
        self,
        *,
        purpose: str | None = None,
        limit: int = 10000,
        order: str = "desc",
        after: str | None = None,
    ) -> dict[str, Any]:
        if order not in ("asc", "desc"):
            raise o.ApiProblem(400, "order: 'asc' or 'desc'", param="order")
        _check_limit(limit, 10000)
        rows, more = self.store.list_files(
            purpose=purpose,
            limit=limit,
            order=order,  # type: ignore[arg-type]
            after=after,
        )
        return o.page([o.file_object(r) for r in rows], more)

    def get_file(self, file_id: str) -> dict[str, Any]:
        return o.file_object(self._file_row(file_id))

    def file_path(self, file_id: str) -> Path:
        """Where a file's content is: always inside the files folder, named by the store."""
        return self.files_dir / Path(self._file_row(file_id)["path"]).name

    def delete_file(self, file_id: str) -> dict[str, Any]:
        """Delete a file; refused while a job not yet finished uses it (a resumed job reads
        its files again)."""
        row = self._file_row(file_id)
        users = [
            j["id"]
            for j in self.store.jobs_with_status(ACTIVE)
            if file_id in (j["training_file"], j.get("validation_file"))
        ]
        if users:
            raise o.ApiProblem(
                400,
                f"File {file_id} is used by fine-tuning job {users[0]}, which has not "
                "finished; cancel it or wait for it to end first.",
                param="file_id",
            )
        self.store.delete_file(file_id)
        (self.files_dir / Path(row["path"]).name).unlink(missing_ok=True)
        return {"id": file_id, "object": "file", "deleted": True}

    def _file_row(self, file_id: str, param: str | None = None) -> dict[str, Any]:
        row = self.store.get_file(file_id) if _ID.match(file_id.removeprefix("file-")) else None
        if row is None:
            raise o.not_found("file", file_id, param)
        return row

    def _file_path(self, file_id: str) -> Path:
        return self.files_dir / f"{file_id}.jsonl"

    # --- jobs --------------------------------------------------------------------------------

    def create_job(self, body: dict[str, Any]) -> dict[str, Any]:
        """Record a job (status ``validating_files``) after every check that needs no data
        read: the request's fields, its files, the model, the training config."""
        request = _parse(body)
        job_id = new_id("ftjob-")
        config = self._job_config(request, job_id)
        hyper = _hyperparameters(request)
        extension = request.trimtab.model_dump(exclude={"sweep"})
        row = {
            "id": job_id,
            "created_at": int(time.time()),
            "model": request.model,
            "training_file": request.training_file,
            "validation_file": request.validation_file,
            "suffix": request.suffix,
            "seed": config["seed"],
            "metadata": request.metadata,
            "method": {"type": "supervised"},
            "extension": extension,
            "hyperparameters": hyper.model_dump(),
            "status": "validating_files",
            "fine_tuned_model": config["model_id"],
            "result_files": [],
            "run_dir": config["run_dir"],
            "config": config,
            "attempts": 0,
        }
        if request.trimtab.sweep is not None:
            from trimtab.jobs.sweeps import prepare_sweep

            row |= prepare_sweep(self, request, job_id, config)
        files = request.training_file + (
            f" and validation file: {request.validation_file}" if request.validation_file else ""
        )
        # One event with the job, in its transaction: a scheduler may validate it at once.
        message = f"Created fine-tuning job: {job_id}; validating training file: {files}"
        self.store.insert_job(row, {"message": message})
        return self.get_job(job_id)

    def _job_config(self, request: JobRequest, job_id: str) -> dict[str, Any]:
        """The ``trimtab train`` config of a job, checked now (every problem at once)."""
        from trimtab.models.registry import resolve_model
        from trimtab.training.config import auto_lr, load_config

        try:
            resolve_model(request.model)
        except TrimtabError as exc:
            raise o.ApiProblem(
                400,
                f"Model {request.model!r} is not available for fine-tuning here: {exc}",
                param="model",
                code="model_not_available",
            ) from None
        train = self.file_path_for(request.training_file, "training_file")
        valid = (
            self.file_path_for(request.validation_file, "validation_file")
            if request.validation_file
            else None
        )
        ext, hyper = request.trimtab, _hyperparameters(request)
        suffix = request.suffix or ""
        if suffix and not _ID.match(suffix):
            raise o.ApiProblem(400, "suffix: up to 64 letters, digits, '-' or '_'", param="suffix")
        model_id = self.model_id(request.model, suffix, job_id)
        values: dict[str, Any] = {
            "model": {"name": request.model},
            "data": {"train": str(train), "valid": str(valid) if valid else None, "task": ext.task},
            "method": {"name": ext.method},
            "seed": request.seed if request.seed is not None else random.randrange(2**31),
            "run_dir": str(self.runs_dir / job_id),
            "model_id": model_id,
            "checkpoint_models": True,
            "keep_checkpoints": 3,  # OpenAI keeps the last three epochs' checkpoints
        }
        if hyper.n_epochs != "auto":
            values["epochs"] = hyper.n_epochs
        if hyper.batch_size != "auto":
            values["batch_size"] = hyper.batch_size
        if hyper.learning_rate_multiplier != "auto":
            lr = auto_lr(ext.method, ext.task) * hyper.learning_rate_multiplier
            values["optim"] = {"lr": lr}
        owned = [k for k in ext.config if k in JOB_KEYS]
        if owned:
            raise o.ApiProblem(
                400,
                f"trimtab.config: {', '.join(owned)} is set by the job itself (its model, "
                "files, method, task, seed and run folder are fields of the request)",
                param=f"trimtab.config.{owned[0]}",
            )
        overrides = [f"{k}={v}" for k, v in ext.config.items()]
        try:
            config = load_config(None, overrides, values)
        except ConfigError as exc:
            raise o.ApiProblem(400, "; ".join(exc.problems), param="trimtab") from None
        return config.model_dump(mode="json")

    def model_id(self, model: str, suffix: str | None, job_id: str) -> str:
        """The fine-tuned model id a job's model is served under (OpenAI's shape)."""
        from trimtab.generation.pool import base_label

        return f"ft:{base_label(model)}:{self.org}:{suffix or ''}:{job_id[6:14]}"

    def file_path_for(self, file_id: str, param: str) -> Path:
        row = self._file_row(file_id, param)
        if row["purpose"] != "fine-tune":
            raise o.ApiProblem(
                400,
                f"{param}: {file_id} has purpose {row['purpose']!r}, not 'fine-tune'",
                param=param,
            )
        return self.files_dir / Path(row["path"]).name

    def list_jobs(
        self, *, after: str | None = None, limit: int = 20, metadata: dict[str, str] | None = None
    ) -> dict[str, Any]:
        _check_limit(limit, 100)
        rows, more = self.store.list_jobs(after=after, limit=limit, metadata=metadata)
        return o.page([o.job_object(r) for r in rows], more)

    def get_job(self, job_id: str) -> dict[str, Any]:
        return o.job_object(self.job_row(job_id))

    def job_row(self, job_id: str) -> dict[str, Any]:
        row = self.store.get_job(job_id)
        if row is None:
            raise o.not_found("fine-tuning job", job_id)
        return row

    def cancel(self, job_id: str) -> dict[str, Any]:
        """A job not started (or paused) is cancelled now; a running one on request, which
        its scheduler carries out (it ends the job's whole process group)."""
        row = self.job_row(job_id)
        _refuse_trial(row, "cancelled")
        if row["status"] in FINISHED:
            raise o.ApiProblem(400, f"Job {job_id} has already {_finished(row['status'])}.")
        now = {"status": "cancelled", "finished_at": int(time.time()), "requested": None}
        event = {"message": "Fine-tuning job cancelled"}
        if not self.store.update_job(
            job_id, now, expect_status=("validating_files", "queued", "paused"), event=event
        ):
            self.store.update_job(
                job_id,
                {"requested": "cancel"},
                expect_status=("running",),
                event={"message": "Cancellation requested", "key": "request-cancel"},
            )
        return self.get_job(job_id)

    def pause(self, job_id: str) -> dict[str, Any]:
        """A running job checkpoints and stops (its scheduler asks the trainer)."""
        row = self.job_row(job_id)
        _refuse_trial(row, "paused")
        if (row.get("extension") or {}).get("kind") == "sweep":
            raise o.ApiProblem(
                400, f"Job {job_id} is a sweep, which cannot be paused; cancel it instead."
            )
        if row["status"] != "running":
            raise o.ApiProblem(
                400, f"Job {job_id} is {row['status']}; only a running job can be paused."
            )
        if row.get("requested") is None:
            self.store.update_job(
                job_id,
                {"requested": "pause"},
                expect_status=("running",),
                event={"message": "Pause requested"},
            )
        return self.get_job(job_id)

    def resume(self, job_id: str) -> dict[str, Any]:
        """A paused job is queued again; it continues from its last checkpoint."""
        row = self.job_row(job_id)
        if row["status"] != "paused":
            raise o.ApiProblem(
                400, f"Job {job_id} is {row['status']}; only a paused job can be resumed."
            )
        self.store.update_job(
            job_id,
            {"status": "queued", "requested": None},
            expect_status=("paused",),
            event={
                "message": "Fine-tuning job resumed; queued to continue from its last checkpoint"
            },
        )
        return self.get_job(job_id)

    def list_events(self, job_id: str, *, after: str | None = None, limit: int = 20) -> dict:
        self.job_row(job_id)
        _check_limit(limit, 1000)
        rows, more = self.store.list_events(job_id, after=after, limit=limit)
        return o.page([o.event_object(r) for r in rows], more)

    def list_trials(self, job_id: str) -> dict[str, Any]:
        """A sweep's trials (fine-tuning jobs of their own), in trial order; trimtab's
        extension. Their ``trimtab`` field holds the trial's number, params, value and state."""
        row = self.job_row(job_id)
        if (row.get("extension") or {}).get("kind") != "sweep":
            raise o.ApiProblem(
                400, f"Job {job_id} is not a sweep: it has no trials.", param="job_id"
            )
        return o.page([o.job_object(r) for r in self.store.list_trials(job_id)], False)

    def list_checkpoints(self, job_id: str, *, after: str | None = None, limit: int = 10) -> dict:
        self.job_row(job_id)
        _check_limit(limit, 100)
        rows, more = self.store.list_checkpoints(job_id, after=after, limit=limit)
        return o.page([o.checkpoint_object(r) for r in rows], more)


def validation_error(row: dict[str, Any], service: JobsService) -> dict[str, Any] | None:
    """The ``error`` of a job whose files fail the training reader's checks (the line at
    fault, ``param`` the file's field), or None when they pass."""
    for param in ("training_file", "validation_file"):
        file_id = row.get(param)
        if not file_id:
            continue
        try:
            path = service.file_path_for(file_id, param)
            _check_examples(path, service.get_file(file_id)["filename"], param)
        except o.ApiProblem as exc:
            return {"code": f"invalid_{param}", "message": exc.message, "param": param}
    return None


def _parse(body: dict[str, Any]) -> JobRequest:
    """The request, or a 400 naming the first field at fault (as OpenAI's API does)."""
    request = o.parse_request(JobRequest, body)
    if request.method is not None and request.hyperparameters is not None:
        raise o.ApiProblem(
            400,
            "hyperparameters: give them in method.supervised, not both",
            param="hyperparameters",
        )
    if request.metadata is not None and (
        len(request.metadata) > 16
        or any(len(k) > 64 or len(v) > 512 for k, v in request.metadata.items())
    ):
        raise o.ApiProblem(
            400,
            "metadata: at most 16 pairs, keys up to 64 characters, values up to 512",
            param="metadata",
        )
    if request.integrations:
        raise o.ApiProblem(400, "integrations: not supported by trimtab", param="integrations")
    return request


def _hyperparameters(request: JobRequest) -> Hyperparameters:
    if request.method is not None and request.method.supervised is not None:
        return request.method.supervised.hyperparameters
    return request.hyperparameters or Hyperparameters()


def _check_examples(path: Path, name: str, param: str) -> None:
    """The training reader's own checks (format, fields, types), each naming its line."""
    from trimtab.data.prepared import read_examples
    from trimtab.errors import DataError

    try:
        read_examples(path)
    except DataError as exc:
        problems = "; ".join(_where(p.line, p.field) + p.message for p in exc.problems)
        more = f" (and {exc.more} more)" if exc.more else ""
        raise o.ApiProblem(
            400, f"Invalid file {name}: {problems}{more}", param=param, code="invalid_file"
        ) from None
    except TrimtabError as exc:
        raise o.ApiProblem(
            400,
            f"Invalid file {name}: {str(exc).replace(str(path), name)}",
            param=param,
            code="invalid_file",
        ) from None


def _where(line: int | None, field: str | None) -> str:
    return (f"line {line}: " if line else "") + (f"field '{field}': " if field else "")


def _check_limit(limit: int, most: int) -> None:
    if not 1 <= limit <= most:
        raise o.ApiProblem(400, f"limit: between 1 and {most}", param="limit")


def _refuse_trial(row: dict[str, Any], done: str) -> None:
    """A sweep's trial is run by its sweep, not by a scheduler: only the sweep is acted on."""
    if row.get("parent_id"):
        raise o.ApiProblem(
            400,
            f"Job {row['id']} is trial {row.get('sweep_trial')} of sweep {row['parent_id']}; "
            f"a trial cannot be {done} on its own: act on the sweep.",
        )


def _finished(status: str) -> str:
    return {"succeeded": "completed", "failed": "failed", "cancelled": "been cancelled"}[status]


__all__ = ["FINISHED", "ACTIVE", "JobRequest", "JobsService"]
