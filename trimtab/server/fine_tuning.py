"""``/v1/fine_tuning/jobs``: create, list, retrieve, cancel, pause and resume jobs; their events
and checkpoints; a sweep job's trials (trimtab's extension).

The routes only parse and call the jobs service in a worker thread; the service checks the
request (naming the field at fault) and records the job, which a scheduler then runs. The
request body is taken as a plain JSON object because the service validates it itself, with
OpenAI's messages ("Unrecognized request argument supplied: ...").
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body
from fastapi import Request as HTTPRequest
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from trimtab.server.common import jobs_service, query_int

router = APIRouter()
JOBS = "/v1/fine_tuning/jobs"


def metadata_filter(request: HTTPRequest) -> dict[str, str] | None:
    """The ``metadata[key]=value`` query parameters (as OpenAI's clients send a metadata
    filter) as a dict, or None when there are none."""
    pairs = {
        key[len("metadata[") : -1]: value
        for key, value in request.query_params.multi_items()
        if key.startswith("metadata[") and key.endswith("]")
    }
    return pairs or None


@router.post(JOBS)
async def create_job(body: Annotated[dict[str, Any], Body()], http: HTTPRequest) -> JSONResponse:
    return JSONResponse(await run_in_threadpool(jobs_service(http).create_job, body))


@router.get(JOBS)
async def list_jobs(http: HTTPRequest) -> JSONResponse:
    service, limit = jobs_service(http), query_int(http, "limit", 20)
    after, metadata = http.query_params.get("after"), metadata_filter(http)
    page = await run_in_threadpool(
        lambda: service.list_jobs(after=after, limit=limit, metadata=metadata)
    )
    return JSONResponse(page)


@router.get(JOBS + "/{job_id}")
async def retrieve_job(job_id: str, http: HTTPRequest) -> JSONResponse:
    return JSONResponse(await run_in_threadpool(jobs_service(http).get_job, job_id))


@router.post(JOBS + "/{job_id}/cancel")
async def cancel_job(job_id: str, http: HTTPRequest) -> JSONResponse:
    return JSONResponse(await run_in_threadpool(jobs_service(http).cancel, job_id))


@router.post(JOBS + "/{job_id}/pause")
async def pause_job(job_id: str, http: HTTPRequest) -> JSONResponse:
    return JSONResponse(await run_in_threadpool(jobs_service(http).pause, job_id))


@router.post(JOBS + "/{job_id}/resume")
async def resume_job(job_id: str, http: HTTPRequest) -> JSONResponse:
    return JSONResponse(await run_in_threadpool(jobs_service(http).resume, job_id))


@router.get(JOBS + "/{job_id}/events")
async def list_events(job_id: str, http: HTTPRequest) -> JSONResponse:
    service, limit = jobs_service(http), query_int(http, "limit", 20)
    after = http.query_params.get("after")
    page = await run_in_threadpool(lambda: service.list_events(job_id, after=after, limit=limit))
    return JSONResponse(page)


@router.get(JOBS + "/{job_id}/checkpoints")
async def list_checkpoints(job_id: str, http: HTTPRequest) -> JSONResponse:
    service, limit = jobs_service(http), query_int(http, "limit", 10)
    after = http.query_params.get("after")
    page = await run_in_threadpool(
        lambda: service.list_checkpoints(job_id, after=after, limit=limit)
    )
    return JSONResponse(page)


@router.get(JOBS + "/{job_id}/trials")
async def list_trials(job_id: str, http: HTTPRequest) -> JSONResponse:
    """A sweep job's trials, in trial order (trimtab's extension): fine-tuning jobs whose
    ``trimtab`` field holds the trial's number, params, value and state."""
    return JSONResponse(await run_in_threadpool(jobs_service(http).list_trials, job_id))
