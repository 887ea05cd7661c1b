"""The fine-tuning API's objects as OpenAI writes them, from the store's rows, and the
refusal every operation raises (:class:`ApiProblem`, OpenAI's error fields).

One place turns rows into ``file``, ``fine_tuning.job``, ``fine_tuning.job.event`` and
``fine_tuning.job.checkpoint`` objects, so the HTTP routes and the local command line print
the same JSON.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from trimtab.errors import TrimtabError

Request = TypeVar("Request", bound=BaseModel)

ORG_ID = "org-trimtab"


class ApiProblem(TrimtabError):
    """A refusal with OpenAI's error fields: HTTP ``status``, ``param`` at fault, ``code``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = (
            status,
            message,
            param,
            code,
            type,
        )


def parse_request(model: type[Request], body: Any) -> Request:
    """A request body as ``model``, or a 400 naming the first field at fault, in OpenAI's words
    ("Unrecognized request argument supplied: x" for a field it does not know)."""
    if not isinstance(body, dict):
        raise ApiProblem(400, "The request body must be a JSON object.")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("literal", "int")))
        if err["type"] == "extra_forbidden":
            raise ApiProblem(
                400, f"Unrecognized request argument supplied: {param}", param=param
            ) from None
        raise ApiProblem(400, f"{param}: {err['msg']}", param=param) from None


def not_found(kind: str, ident: str, param: str | None = None) -> ApiProblem:
    return ApiProblem(404, f"No such {kind}: '{ident}'", param=param, code=f"{kind}_not_found")


def file_object(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "file",
        "bytes": row["bytes"],
        "created_at": row["created_at"],
        "filename": row["filename"],
        "purpose": row["purpose"],
        "status": row["status"],
        "status_details": row.get("status_details"),
        "expires_at": None,
    }


def job_object(row: dict[str, Any]) -> dict[str, Any]:
    """A ``fine_tuning.job``; the hyperparameters are the resolved values once training
    started (``auto`` before)."""
    hyper = row.get("hyperparameters") or {}
    return {
        "id": row["id"],
        "object": "fine_tuning.job",
        "created_at": row["created_at"],
        "error": row.get("error"),
        "fine_tuned_model": row.get("fine_tuned_model") if row["status"] == "succeeded" else None,
        "finished_at": row.get("finished_at"),
        "hyperparameters": hyper,
        "model": row["model"],
        "organization_id": ORG_ID,
        "result_files": list(row.get("result_files") or []),
        "seed": row["seed"],
        "status": row["status"],
        "trained_tokens": row.get("trained_tokens"),
        "training_file": row["training_file"],
        "validation_file": row.get("validation_file"),
        "estimated_finish": row.get("estimated_finish") if row["status"] == "running" else None,
        "integrations": [],
        "metadata": row.get("metadata"),
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyper}},
        "user_provided_suffix": row.get("suffix"),
        # trimtab's extension: what the job trains (method, task, config keys) and where; a
        # sweep's (kind "sweep") search and best trial; a trial's sweep, number and params.
        "trimtab": (row.get("extension") or {}) | {"run_dir": row.get("run_dir")} | _trial(row),
    }


def _trial(row: dict[str, Any]) -> dict[str, Any]:
    if not row.get("parent_id"):
        return {}
    return {"parent_id": row["parent_id"], "sweep_trial": row.get("sweep_trial")}


def event_object(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "fine_tuning.job.event",
        "created_at": row["created_at"],
        "level": row["level"],
        "message": row["message"],
        "data": row.get("data") or {},
        "type": row["type"],
    }


def checkpoint_object(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "fine_tuning.job.checkpoint",
        "created_at": row["created_at"],
        "fine_tuned_model_checkpoint": row["model_id"],
        "fine_tuning_job_id": row["job_id"],
        "metrics": row.get("metrics") or {},
        "step_number": row["step"],
    }


def page(items: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """OpenAI's list object; ``first_id``/``last_id`` as its cursor pages carry them."""
    return {
        "object": "list",
        "data": items,
        "has_more": has_more,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
    }
