"""``/v1/models``: the base models and fine-tuned runs the pool can serve; deleting a run.

Model ids may hold ``:`` and ``/`` (``ft:...`` ids, folder paths), so the routes take the rest
of the path. Only fine-tuned models can be deleted; asking to delete a base model is refused
with 403, as OpenAI refuses it.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi import Request as HTTPRequest
from fastapi.responses import JSONResponse

from trimtab.generation.types import ModelInfo
from trimtab.server import running
from trimtab.server.common import backend
from trimtab.server.errors import APIError
from trimtab.server.schemas import ModelDeleted, ModelList, ModelObject

router = APIRouter()


def model_object(info: ModelInfo) -> ModelObject:
    return ModelObject(
        id=info.id,
        created=info.created,
        owned_by=info.owned_by,
        parent=info.parent,
        root=info.root or info.id,
        task=info.task,
    )


@router.get("/v1/models")
async def list_models(http: HTTPRequest) -> JSONResponse:
    pool = backend(http).pool
    infos = await running.in_thread(pool.list)
    return JSONResponse(ModelList(data=[model_object(i) for i in infos]).model_dump())


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, http: HTTPRequest) -> JSONResponse:
    pool = backend(http).pool
    info = await running.in_thread(lambda: pool.info(model_id))
    return JSONResponse(model_object(info).model_dump())


@router.delete("/v1/models/{model_id:path}")
async def delete_model(model_id: str, http: HTTPRequest) -> JSONResponse:
    pool = backend(http).pool

    def delete() -> ModelInfo:
        info = pool.info(model_id)
        if not info.fine_tuned:
            raise APIError(
                403,
                f"You have insufficient permissions to delete the base model {info.id!r}: "
                "only fine-tuned models can be deleted.",
                param="model",
                code="model_not_deletable",
            )
        return pool.delete(model_id)

    info = await running.in_thread(delete)
    return JSONResponse(ModelDeleted(id=info.id, deleted=True).model_dump())
