"""``/v1/files``: upload, list, retrieve, read back and delete fine-tuning files; and trimtab's
extension ``/v1/files/{id}/report``: what ``trimtab prepare`` would say about a file.

The routes only parse and call the jobs service (:class:`~trimtab.jobs.service.JobsService`);
its refusals are :class:`~trimtab.jobs.objects.ApiProblem`, answered in OpenAI's error shape by
:mod:`trimtab.server.errors`. The service reads and writes files and the database, so every
call runs in a worker thread, never on the event loop. An upload reaches the route as a
spooled temporary file (the app's guard streams it through, counting its size, rather than
buffering it) and the service copies it into the data folder in chunks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO
from urllib.parse import quote

from fastapi import APIRouter, File, Form, UploadFile
from fastapi import Request as HTTPRequest
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from trimtab.jobs.objects import ApiProblem
from trimtab.server.common import jobs_service, query_int

if TYPE_CHECKING:
    from trimtab.jobs.reports import FileReports

router = APIRouter()
CHUNK_BYTES = 1 << 20


@router.post("/v1/files")
async def create_file(
    http: HTTPRequest, file: Annotated[UploadFile, File()], purpose: Annotated[str, Form()]
) -> JSONResponse:
    service = jobs_service(http)
    made = await run_in_threadpool(service.upload, file.filename or "", file.file, purpose)
    return JSONResponse(made)


@router.get("/v1/files")
async def list_files(http: HTTPRequest) -> JSONResponse:
    service, query = jobs_service(http), http.query_params
    limit = query_int(http, "limit", 10000)
    page = await run_in_threadpool(
        lambda: service.list_files(
            purpose=query.get("purpose"),
            limit=limit,
            order=query.get("order", "desc"),
            after=query.get("after"),
        )
    )
    return JSONResponse(page)


@router.get("/v1/files/{file_id}")
async def retrieve_file(file_id: str, http: HTTPRequest) -> JSONResponse:
    return JSONResponse(await run_in_threadpool(jobs_service(http).get_file, file_id))


@router.get("/v1/files/{file_id}/content")
async def file_content(file_id: str, http: HTTPRequest) -> StreamingResponse:
    service = jobs_service(http)

    def open_content() -> tuple[dict[str, Any], BinaryIO]:
        info = service.get_file(file_id)
        # Opened here, before the answer starts: a file deleted meanwhile is a 404 now, and one
        # deleted while it streams is still read whole from the open descriptor.
        try:
            return info, open(service.file_path(file_id), "rb")
        except FileNotFoundError:
            raise ApiProblem(404, f"No such file: '{file_id}'", code="file_not_found") from None

    info, stream = await run_in_threadpool(open_content)
    headers = {
        "content-length": str(os.fstat(stream.fileno()).st_size),
        "content-disposition": f"attachment; filename*=utf-8''{quote(info['filename'])}",
    }
    return StreamingResponse(
        _chunks(stream), media_type="application/octet-stream", headers=headers
    )


@router.get("/v1/files/{file_id}/report")
async def file_report(file_id: str, http: HTTPRequest) -> JSONResponse:
    """Prepare's checks on the file (nothing fixed, nothing written); ``model``: a model id
    whose tokenizer counts the tokens (default: whitespace words)."""
    reports: FileReports = http.app.state.reports
    model = http.query_params.get("model") or None
    return JSONResponse(await run_in_threadpool(reports.report, file_id, model))


def _chunks(stream: BinaryIO) -> Iterator[bytes]:
    # A plain iterator: Starlette reads it in a worker thread, one chunk at a time.
    with stream:
        while chunk := stream.read(CHUNK_BYTES):
            yield chunk


@router.delete("/v1/files/{file_id}")
async def delete_file(file_id: str, http: HTTPRequest) -> JSONResponse:
    return JSONResponse(await run_in_threadpool(jobs_service(http).delete_file, file_id))
