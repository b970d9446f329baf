"""The OpenAI endpoints: models, chat completions, completions (and the legacy engines paths)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from openai.types import Model
from pydantic import BaseModel

from oasis.gateway.access import check_model, may_use
from oasis.protocol.requests import ChatCompletionRequest, CompletionRequest
from oasis.server.sse import dump, sse_events
from oasis.server.state import AppState
from oasis.server.validation import parse_json_body, validate

router = APIRouter()
M = TypeVar("M", bound=BaseModel)


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.oasis
    return state


def _respond(result: BaseModel | AsyncIterator[Any]) -> Response:
    if isinstance(result, BaseModel):
        return JSONResponse(dump(result))
    return StreamingResponse(
        sse_events(result),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _model(name: str, state: AppState) -> dict[str, Any]:
    spec = state.serving.registry.resolve(name)
    return dump(Model(id=name, object="model", created=spec.created, owned_by=spec.owned_by))


@router.get("/v1/models")
async def list_models(request: Request) -> JSONResponse:
    state = _state(request)
    key = request.state.api_key
    data = [_model(name, state) for name, _ in state.serving.registry.names() if may_use(key, name)]
    return JSONResponse({"object": "list", "data": data})


@router.get("/v1/models/{model:path}")
async def get_model(model: str, request: Request) -> JSONResponse:
    check_model(request.state.api_key, model)
    return JSONResponse(_model(model, _state(request)))


async def _parse(request: Request, model: type[M], engine: str | None = None) -> M:
    body = parse_json_body(await request.body())
    if engine is not None:
        body.setdefault("model", engine)  # the legacy /v1/engines/{engine}/... paths
    parsed = validate(model, body)
    check_model(request.state.api_key, str(getattr(parsed, "model", "")))
    return parsed


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    req = await _parse(request, ChatCompletionRequest)
    return _respond(await _state(request).chat.create(req))


@router.post("/v1/engines/{engine}/chat/completions")
async def engine_chat_completions(engine: str, request: Request) -> Response:
    req = await _parse(request, ChatCompletionRequest, engine)
    return _respond(await _state(request).chat.create(req))


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    req = await _parse(request, CompletionRequest)
    return _respond(await _state(request).completions.create(req))


@router.post("/v1/engines/{engine}/completions")
async def engine_completions(engine: str, request: Request) -> Response:
    req = await _parse(request, CompletionRequest, engine)
    return _respond(await _state(request).completions.create(req))
