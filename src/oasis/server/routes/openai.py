"""The OpenAI endpoints: models, chat completions, completions (and the legacy engines paths)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from openai.types import Model
from pydantic import BaseModel

from oasis.protocol.requests import ChatCompletionRequest, CompletionRequest
from oasis.server.sse import dump, sse_events
from oasis.server.state import AppState
from oasis.server.validation import parse_json_body, validate

router = APIRouter()


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
    data = [_model(name, state) for name, _ in state.serving.registry.names()]
    return JSONResponse({"object": "list", "data": data})


@router.get("/v1/models/{model:path}")
async def get_model(model: str, request: Request) -> JSONResponse:
    return JSONResponse(_model(model, _state(request)))


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    body = parse_json_body(await request.body())
    req = validate(ChatCompletionRequest, body)
    return _respond(await _state(request).chat.create(req))


@router.post("/v1/engines/{engine}/chat/completions")
async def engine_chat_completions(engine: str, request: Request) -> Response:
    body = parse_json_body(await request.body())
    body.setdefault("model", engine)
    req = validate(ChatCompletionRequest, body)
    return _respond(await _state(request).chat.create(req))


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    body = parse_json_body(await request.body())
    req = validate(CompletionRequest, body)
    return _respond(await _state(request).completions.create(req))


@router.post("/v1/engines/{engine}/completions")
async def engine_completions(engine: str, request: Request) -> Response:
    body = parse_json_body(await request.body())
    body.setdefault("model", engine)
    req = validate(CompletionRequest, body)
    return _respond(await _state(request).completions.create(req))
