"""Evaluations: ``trimtab eval`` of a served model on an uploaded test file, from the API
(``/v1/evaluations``, a trimtab extension).

Each evaluation is a process of its own (``python -m trimtab eval``, in its own process group,
as a fine-tuning job's trainer is), and its state lives in its folder, not in memory, so it
survives a server restart and reads the same from any number of servers::

    evaluations/<eval-id>/evaluation.json   the request, the command's handle (its pid), a cancel
    evaluations/<eval-id>/eval.log          the command's output
    evaluations/<eval-id>/report/           what trimtab eval writes: report.json, report.html,
                                            report.md, plots/

The status is read from these: the process alive → ``running``; a report → ``succeeded``;
cancelled on request → ``cancelled``; else ``failed``, with the log's last lines. One evaluation
runs at a time: it loads a model and runs it on every example, the whole of a small machine; a
second request is a 429 rather than a queue, so that nothing waits unseen.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from trimtab.files import write_json
from trimtab.jobs import objects as o
from trimtab.jobs.executors import RUNNING, Launch, LocalExecutor
from trimtab.jobs.store import new_id

if TYPE_CHECKING:
    from trimtab.generation.pool import ModelPool
    from trimtab.jobs.service import JobsService

RECORD = "evaluation.json"
LOG = "eval.log"
_ID = re.compile(r"^eval-[A-Za-z0-9]{24}$")
_PLOT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\.png$")
LOG_LINES = 20  # of a failed evaluation's log, in its error message
STOP_GRACE = 5.0  # seconds a cancelled evaluation has to end before it is killed


class EvaluationRequest(BaseModel):
    """The body of ``POST /v1/evaluations``."""

    model_config = ConfigDict(extra="forbid")

    model: str  # a model id /v1/models lists: a base model, an ft: id or a checkpoint's id
    file: str  # a fine-tune file: the test set
    limit: int | None = Field(default=None, gt=0)  # the first N examples only
    mode: Literal["auto", "score", "generate", "both"] | None = None  # trimtab eval's --mode


class EvaluationService:
    """Evaluations kept under ``home/evaluations``, of ``pool``'s models on ``files``' files."""

    def __init__(
        self,
        home: Path,
        pool: ModelPool,
        files: JobsService,
        *,
        executor: LocalExecutor | None = None,
    ):
        self.folder = Path(home).absolute() / "evaluations"
        self.pool, self.files = pool, files
        self.executor = executor or _Executor()
        self._lock = threading.Lock()  # one start at a time: the running check, then the start

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        """Start evaluating; a 404 for an unknown model or file, a 429 while another runs."""
        request = o.parse_request(EvaluationRequest, body)
        model = self._model_ref(request.model)
        data = self.files.file_path_for(request.file, "file")
        with self._lock:
            running = [r["id"] for r in self._records() if self._status(r)[0] == "running"]
            if running:
                raise o.ApiProblem(
                    429,
                    f"An evaluation is running ({running[0]}); one runs at a time. Wait for "
                    "it to end, or cancel it, and try again.",
                    type="requests",
                    code="evaluation_running",
                )
            eval_id = new_id("eval-")
            folder = self.folder / eval_id
            argv = _command(model, data, folder / "report", request)
            # Unbuffered: the log shows how far it is, and a failure's last words, at once.
            launch = Launch(eval_id, 1, argv, Path.cwd(), folder / LOG, {"PYTHONUNBUFFERED": "1"})
            handle = self.executor.start(launch)
            record = {
                "id": eval_id,
                "model": request.model,
                "file": request.file,
                "limit": request.limit,
                "mode": request.mode,
                "created_at": int(time.time()),
                "started": time.time(),  # orders evaluations made within one second
                "handle": handle,
                "argv": argv,
                "cancelled_at": None,
            }
            try:
                write_json(folder / RECORD, record)
            except BaseException:
                self.executor.stop(handle, grace=0)  # unrecorded, it could never be followed
                raise
        return self._object(record)

    def list_evaluations(self, *, after: str | None = None, limit: int = 20) -> dict[str, Any]:
        """Evaluations, newest first; ``after``: the last id of the previous page."""
        if not 1 <= limit <= 100:
            raise o.ApiProblem(400, "limit: between 1 and 100", param="limit")
        records = sorted(self._records(), key=lambda r: r.get("started", 0), reverse=True)
        if after is not None:
            ids = [r["id"] for r in records]
            if after not in ids:
                raise o.not_found("evaluation", after, "after")
            records = records[ids.index(after) + 1 :]
        return o.page([self._object(r) for r in records[:limit]], len(records) > limit)

    def get(self, eval_id: str) -> dict[str, Any]:
        return self._object(self._record(eval_id))

    def cancel(self, eval_id: str) -> dict[str, Any]:
        """End a running evaluation (its whole process group); a 400 once it has ended."""
        record = self._record(eval_id)
        status = self._status(record)[0]
        if status != "running":
            raise o.ApiProblem(400, f"Evaluation {eval_id} has already {_ENDED[status]}.")
        record["cancelled_at"] = int(time.time())
        write_json(self.folder / eval_id / RECORD, record)  # first: it reads cancelled, not failed
        self.executor.stop(str(record["handle"]), grace=STOP_GRACE)
        return self._object(record)

    def report_path(self, eval_id: str) -> Path:
        """The report.html of a succeeded evaluation."""
        return self._report_file(eval_id, "report.html")

    def plot_path(self, eval_id: str, name: str) -> Path:
        """A plot of a succeeded evaluation's report (``plots/NAME`` in its report)."""
        if not _PLOT.match(name):
            raise o.ApiProblem(404, f"No such plot: '{name}'", code="plot_not_found")
        return self._report_file(eval_id, f"plots/{name}")

    # --- reading the folders -----------------------------------------------------------------

    def _report_file(self, eval_id: str, name: str) -> Path:
        record = self._record(eval_id)
        status = self._status(record)[0]
        if status != "succeeded":
            raise o.ApiProblem(
                404,
                f"Evaluation {eval_id} has no report: it "
                + ("is still running." if status == "running" else f"has {_ENDED[status]}."),
                code="no_report",
            )
        path = self.folder / eval_id / "report" / name
        if not path.is_file():
            raise o.ApiProblem(404, f"No such file in the report: '{name}'", code="no_report")
        return path

    def _record(self, eval_id: str) -> dict[str, Any]:
        record = _read_record(self.folder / eval_id) if _ID.match(eval_id) else None
        if record is None:
            raise o.not_found("evaluation", eval_id)
        return record

    def _records(self) -> list[dict[str, Any]]:
        if not self.folder.is_dir():
            return []
        found = (_read_record(p) for p in self.folder.iterdir() if _ID.match(p.name))
        return [r for r in found if r is not None]

    def _status(self, record: dict[str, Any]) -> tuple[str, int | None, dict[str, str] | None]:
        """(status, finished_at, error), from the process and the folder."""
        folder = self.folder / record["id"]
        if self._running(record):
            return "running", None, None
        report = folder / "report" / "report.json"
        if report.is_file():
            return "succeeded", int(report.stat().st_mtime), None
        if record.get("cancelled_at"):
            return "cancelled", int(record["cancelled_at"]), None
        log = folder / LOG
        ended = int(log.stat().st_mtime) if log.is_file() else record["created_at"]
        return "failed", ended, {"message": _failure(log)}

    def _running(self, record: dict[str, Any]) -> bool:
        handle = record.get("handle")
        if not handle or self.executor.poll(str(handle)) is not RUNNING:
            return False
        # After a restart the pid is not our child: it may have been reused by another process.
        return _runs(int(handle), record["id"])

    def _object(self, record: dict[str, Any]) -> dict[str, Any]:
        status, finished_at, error = self._status(record)
        results = None
        if status == "succeeded":
            report = self.folder / record["id"] / "report" / "report.json"
            results = json.loads(report.read_text(encoding="utf-8")).get("results")
        return {
            "id": record["id"],
            "object": "evaluation",
            "model": record["model"],
            "file": record["file"],
            "limit": record.get("limit"),
            "mode": record.get("mode"),
            "status": status,
            "created_at": record["created_at"],
            "finished_at": finished_at,
            "error": error,
            "results": results,
        }

    def _model_ref(self, model_id: str) -> str:
        """What ``trimtab eval`` is given for a model id: a fine-tuned model's folder (a run,
        or a checkpoint's model), a base model's name or folder."""
        from trimtab.generation.types import EngineError, ModelNotFound

        try:
            target = self.pool.target(model_id)
        except ModelNotFound as exc:
            raise o.ApiProblem(404, str(exc), param="model", code="model_not_found") from None
        except EngineError as exc:
            raise o.ApiProblem(400, str(exc), param="model") from None
        if target.info.fine_tuned and target.info.path:
            return target.info.path
        return target.load_name


class _Executor(LocalExecutor):
    """A local executor that the server's worker threads may poll at once (two requests
    reading one evaluation would otherwise both reap its ended process)."""

    def __init__(self) -> None:
        super().__init__()
        self._polling = threading.Lock()

    def poll(self, handle: str) -> int | None:
        with self._polling:
            return super().poll(handle)


def _command(model: str, data: Path, out: Path, request: EvaluationRequest) -> list[str]:
    argv = [sys.executable, "-m", "trimtab", "eval", model, "--data", str(data), "--out", str(out)]
    if request.limit is not None:
        argv += ["--limit", str(request.limit)]
    if request.mode not in (None, "auto"):
        argv += ["--mode", str(request.mode)]
    return argv


def _read_record(folder: Path) -> dict[str, Any] | None:
    """An evaluation's record; None when absent (a folder being made) or unreadable."""
    try:
        record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("id") == folder.name else None


def _runs(pid: int, eval_id: str) -> bool:
    """Whether process ``pid`` is this evaluation's command (its arguments name its folder);
    True where /proc cannot tell."""
    try:
        return eval_id.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:
        return True


def _failure(log: Path) -> str:
    """Why an evaluation failed: its log's last lines, from its last ``error:`` line on."""
    try:
        with open(log, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 16384))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        tail = ""
    lines = [line.rstrip() for line in tail.splitlines() if line.strip()][-LOG_LINES:]
    errors = [i for i, line in enumerate(lines) if line.startswith("error:")]
    if errors:
        lines = lines[errors[-1] :]
    if not lines:
        return "trimtab eval ended without a report and wrote nothing to its log"
    return "trimtab eval ended without a report: " + "\n".join(lines)


_ENDED = {"succeeded": "completed", "failed": "failed", "cancelled": "been cancelled"}


__all__ = ["EvaluationRequest", "EvaluationService"]
