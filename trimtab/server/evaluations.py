"""``/v1/evaluations`` (a trimtab extension): ``trimtab eval`` of a served model on an uploaded
test file; its status and results, its report and plots, and cancelling it.

The routes only parse and call the evaluations service
(:class:`~trimtab.jobs.evaluations.EvaluationService`) in a worker thread: it reads and writes
the evaluations' folders and starts their processes. Its refusals are
:class:`~trimtab.jobs.objects.ApiProblem`, answered in OpenAI's error shape.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Body
from fastapi import Request as HTTPRequest
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from trimtab.server.common import query_int

if TYPE_CHECKING:
    from trimtab.jobs.evaluations import EvaluationService

router = APIRouter()
EVALUATIONS = "/v1/evaluations"


def evaluations(request: HTTPRequest) -> EvaluationService:
    """The evaluations service the app was built with."""
    service: EvaluationService = request.app.state.evaluations
    return service


@router.post(EVALUATIONS)
async def create_evaluation(
    body: Annotated[dict[str, Any], Body()], http: HTTPRequest
) -> JSONResponse:
    return JSONResponse(await run_in_threadpool(evaluations(http).create, body))


@router.get(EVALUATIONS)
async def list_evaluations(http: HTTPRequest) -> JSONResponse:
    service, limit = evaluations(http), query_int(http, "limit", 20)
    after = http.query_params.get("after")
    page = await run_in_threadpool(lambda: service.list_evaluations(after=after, limit=limit))
    return JSONResponse(page)


@router.get(EVALUATIONS + "/{eval_id}")
async def retrieve_evaluation(eval_id: str, http: HTTPRequest) -> JSONResponse:
    return JSONResponse(await run_in_threadpool(evaluations(http).get, eval_id))


@router.post(EVALUATIONS + "/{eval_id}/cancel")
async def cancel_evaluation(eval_id: str, http: HTTPRequest) -> JSONResponse:
    return JSONResponse(await run_in_threadpool(evaluations(http).cancel, eval_id))


@router.get(EVALUATIONS + "/{eval_id}/report")
async def evaluation_report(eval_id: str, http: HTTPRequest) -> FileResponse:
    """The report.html; its plots are embedded, and served on their own below."""
    path = await run_in_threadpool(evaluations(http).report_path, eval_id)
    return FileResponse(path, media_type="text/html; charset=utf-8")


@router.get(EVALUATIONS + "/{eval_id}/plots/{name}")
async def evaluation_plot(eval_id: str, name: str, http: HTTPRequest) -> FileResponse:
    """A plot of the report (``plots/NAME`` relative to the report's URL resolves here)."""
    path = await run_in_threadpool(evaluations(http).plot_path, eval_id, name)
    return FileResponse(path, media_type="image/png")
