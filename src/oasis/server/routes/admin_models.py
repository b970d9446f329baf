"""The admin API of local models: their load state, and loading or unloading one now."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from oasis.errors import InvalidRequestError
from oasis.server.state import AppState

router = APIRouter()


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.oasis
    return state


def _local(state: AppState, model: str) -> str:
    """The id of a locally served model (a name or alias of one), else a 400/404."""
    spec = state.serving.registry.resolve(model)
    if spec.id not in state.loader.entries:
        raise InvalidRequestError(
            f"The model '{spec.id}' is not served by this process (backend "
            f"'{spec.backend}'): only local models load and unload.",
            param="model",
            code="model_not_local",
        )
    return spec.id


def model_json(state: AppState, model_id: str) -> dict[str, Any]:
    spec = state.serving.registry.resolve(model_id)
    return {
        "id": model_id,
        "object": "model.state",
        "kind": spec.kind,
        "path": str(spec.path),
        **state.loader.describe(model_id),
    }


@router.get("/admin/models")
async def list_models(request: Request) -> JSONResponse:
    """Every local model with its load state, and the server's max_loaded."""
    state = _state(request)
    data = [
        model_json(state, s.id)
        for s in state.serving.registry.specs
        if s.id in state.loader.entries
    ]
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "max_loaded": state.loader.max_loaded,
            "loaded": state.loader.loaded_count(),
        }
    )


@router.post("/admin/models/{model:path}/load")
async def load_model(model: str, request: Request) -> JSONResponse:
    """Load the model now (waits for the load; a no-op when it is loaded)."""
    state = _state(request)
    model_id = _local(state, model)
    await state.loader.load(model_id)
    return JSONResponse(model_json(state, model_id))


@router.post("/admin/models/{model:path}/unload")
async def unload_model(model: str, request: Request) -> JSONResponse:
    """Unload the model now: 409 while it serves requests."""
    state = _state(request)
    model_id = _local(state, model)
    await state.loader.unload(model_id)
    return JSONResponse(model_json(state, model_id))
