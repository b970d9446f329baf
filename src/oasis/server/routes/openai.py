"""The OpenAI endpoints: models, chat completions, completions (and the legacy engines paths)."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from openai.types import Model
from pydantic import BaseModel

from oasis.backends import Backend
from oasis.backends.local import not_embedding, not_generative
from oasis.errors import OasisError
from oasis.gateway.access import check_model, may_use
from oasis.gateway.meter import Ticket
from oasis.protocol.embeddings import EmbeddingRequest
from oasis.protocol.requests import ChatCompletionRequest, CompletionRequest
from oasis.protocol.responses import ResponseCreateRequest
from oasis.server.sse import dump, named_sse_events, sse_events
from oasis.server.state import AppState
from oasis.server.validation import parse_json_body, validate
from oasis.serving.common import NO_METER, Meter
from oasis.serving.embeddings import check_inputs
from oasis.store.keys import KeyInfo

router = APIRouter()
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
R = TypeVar("R", bound=BaseModel, contravariant=True)
CHAT, COMPLETIONS, EMBEDDINGS = "/v1/chat/completions", "/v1/completions", "/v1/embeddings"
ENDPOINT_OF: dict[type[BaseModel], str] = {
    ChatCompletionRequest: CHAT,
    CompletionRequest: COMPLETIONS,
    ResponseCreateRequest: "/v1/responses",
}


def key_id_of(request: Request) -> int | None:
    """The caller's key id: what its stored objects (responses, files, batches) belong to
    (None: the static --api-key, or no auth)."""
    key = request.state.api_key
    return key.id if key is not None else None


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.oasis
    return state


class _EventStream(StreamingResponse):
    """An SSE response that runs ``on_close`` however it ends: streamed to the end, failed,
    or left by a client, even one that left before the first chunk was made (then the chunk
    generators never started, so their own ``finally`` clauses never run)."""

    def __init__(
        self,
        chunks: AsyncIterator[Any],
        on_close: Callable[[], Awaitable[None]],
        named: bool = False,
        **kw: Any,
    ) -> None:
        frames = named_sse_events(chunks) if named else sse_events(chunks)
        super().__init__(frames, media_type="text/event-stream", **kw)
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._on_close()


async def _close(stream: AsyncIterator[Any]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()  # an EngineStream cancels its engine sequences


def _respond(
    result: BaseModel | AsyncIterator[Any],
    headers: dict[str, str] | None = None,
    on_close: Callable[[], Awaitable[None]] | None = None,
    named: bool = False,
) -> Response:
    if isinstance(result, BaseModel):
        return JSONResponse(dump(result), headers=headers)
    return _EventStream(
        result,
        on_close or functools.partial(_close, result),
        named=named or getattr(result, "named_events", False),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})},
    )


_HEAVY_ITEMS = 64  # an answer with more items than this is serialized in a worker thread


def _heavy(result: BaseModel) -> bool:
    """An answer big enough that turning it into JSON would stall the event loop (2048
    embeddings of 384 floats: ~0.8 s in json.dumps)."""
    data = getattr(result, "data", None)
    return isinstance(data, list) and len(data) > _HEAVY_ITEMS


def _render(result: BaseModel) -> bytes:
    """``result``'s JSON body, encoded exactly as JSONResponse encodes it."""
    return json.dumps(
        dump(result), ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")


async def _respond_off_loop(result: BaseModel, headers: dict[str, str] | None) -> Response:
    body = await asyncio.to_thread(_render, result)
    return Response(content=body, media_type="application/json", headers=headers)


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


# Bodies larger than this are parsed in a worker thread, so that a big one never holds up the
# event loop (and every other request) while it is decoded and checked.
_PARSE_INLINE_BYTES = 64 * 1024


async def _parse(request: Request, model: type[M], engine: str | None, ticket: Ticket | None) -> M:
    raw = await request.body()
    depth = _state(request).settings.max_json_depth
    big = len(raw) > _PARSE_INLINE_BYTES
    if not big:
        body = parse_json_body(raw, max_depth=depth)
    else:
        body = await asyncio.to_thread(parse_json_body, raw, max_depth=depth)
    if engine is not None:
        body.setdefault("model", engine)  # the legacy /v1/engines/{engine}/... paths
    return await prepare(_state(request), request.state.api_key, model, body, ticket, big=big)


async def prepare(
    state: AppState,
    key: KeyInfo | None,
    model: type[M],
    body: dict[str, Any],
    ticket: Ticket | None,
    *,
    big: bool = False,
) -> M:
    """A parsed JSON body as the request ``model``, checked against the key's allow-list
    (``big``: validate in a worker thread). Shared by the routes and the batch runner."""
    if ticket is not None and isinstance(body.get("model"), str):
        ticket.target(body["model"])
    embedding = model is EmbeddingRequest
    for field in ("messages", "input"):  # chat's messages, a response's items
        items = body.get(field)
        if isinstance(items, list):
            if embedding:
                check_inputs(len(items))  # before validating them all
            else:
                state.serving.check_messages(len(items))
    parsed = await asyncio.to_thread(validate, model, body) if big else validate(model, body)
    name = str(getattr(parsed, "model", ""))
    check_model(key, name)
    spec = state.serving.registry.resolve(name)
    if embedding and not spec.is_embedding:
        raise not_embedding(name)
    if not embedding and spec.is_embedding:
        raise not_generative(name, ENDPOINT_OF.get(model, "this endpoint"))
    if ticket is not None:
        ticket.target(name, spec.id)
    return parsed


class _ClientLeft(Exception):
    """The client closed the connection before the answer was ready."""


async def _left(request: Request) -> None:
    # The body has been read, so the next ASGI message is the disconnect (uvicorn sends it
    # when the client goes away, or once the response is complete): no polling.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_client_leaves(request: Request, work: Awaitable[T]) -> T:
    """``work``'s result, or ``_ClientLeft`` with ``work`` cancelled (which cancels its engine
    sequences) when the client disconnects first: a non-streamed answer nobody will read is
    not generated to the end. ``work`` runs in this task; one watcher task cancels it."""
    me = asyncio.current_task()
    assert me is not None
    left = False

    async def watch() -> None:
        nonlocal left
        await _left(request)
        left = True
        me.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if not left:
            raise  # cancelled for another reason (shutdown)
        me.uncancel()
        raise _ClientLeft from None
    finally:
        watcher.cancel()


class Call(Protocol[R]):
    """What a route asks of the model's backend (``Backend.chat`` or ``.completions``)."""

    def __call__(self, backend: Backend, req: R, meter: Meter) -> Awaitable[Any]: ...


def chat_call(backend: Backend, req: ChatCompletionRequest, meter: Meter) -> Awaitable[Any]:
    return backend.chat(req, meter)


def completions_call(backend: Backend, req: CompletionRequest, meter: Meter) -> Awaitable[Any]:
    return backend.completions(req, meter)


def backend_of(state: AppState, model: str) -> Backend:
    return state.backends[state.serving.registry.resolve(model).id]


def embeddings_call(backend: Backend, req: EmbeddingRequest, meter: Meter) -> Awaitable[Any]:
    return backend.embeddings(req, meter)


def _backend(request: Request, model: str) -> Backend:
    return backend_of(_state(request), model)


async def _generate(
    request: Request, kind: type[M], call: Call[M], endpoint: str, engine: str | None = None
) -> Response:
    """Parse, run on the model's backend and (through the gateway) meter one request."""
    gateway = _state(request).gateway
    if gateway is None:
        parsed = await _parse(request, kind, engine, None)
        backend = _backend(request, str(getattr(parsed, "model", "")))
        try:
            work = call(backend, parsed, NO_METER)
            answer = await _unless_client_leaves(request, work)
        except _ClientLeft:
            return Response(status_code=499)  # nobody reads it (nginx's "client closed")
        if isinstance(answer, BaseModel) and _heavy(answer):
            return await _respond_off_loop(answer, None)
        return _respond(answer)
    ticket = gateway.ticket(request.state.api_key, endpoint)
    try:
        parsed = await _parse(request, kind, engine, ticket)
        backend = _backend(request, str(getattr(parsed, "model", "")))
        result = await _unless_client_leaves(request, call(backend, parsed, ticket))
    except _ClientLeft:
        # billed for what the engine generated before it stopped, flagged as disconnected
        await ticket.finish(499, disconnected=True)
        return Response(status_code=499)
    except OasisError as exc:
        # recorded; a refused request still counts against the key's RPM (maybe the 429)
        err = await ticket.refuse(exc)
        if err is exc:
            raise
        raise err from exc
    except BaseException:
        await ticket.finish(500)
        raise
    try:
        headers = await ticket.headers()
    except BaseException:
        if not isinstance(result, BaseModel):
            with anyio.CancelScope(shield=True):
                await _close(result)  # its engine sequences, and its hold on the model
        await ticket.finish(500)
        raise
    if isinstance(result, BaseModel):
        await ticket.finish(200)
        if _heavy(result):
            return await _respond_off_loop(result, headers)
        return _respond(result, headers)
    stream = result

    async def on_close() -> None:
        try:
            await _close(stream)
        finally:
            await ticket.finish(499, disconnected=True)  # no-op unless the stream never ran

    named = getattr(stream, "named_events", False)
    return _respond(ticket.metered(stream), headers, on_close, named)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await _generate(request, ChatCompletionRequest, chat_call, CHAT)


@router.post("/v1/engines/{engine}/chat/completions")
async def engine_chat_completions(engine: str, request: Request) -> Response:
    return await _generate(request, ChatCompletionRequest, chat_call, CHAT, engine)


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    return await _generate(request, CompletionRequest, completions_call, COMPLETIONS)


@router.post("/v1/engines/{engine}/completions")
async def engine_completions(engine: str, request: Request) -> Response:
    return await _generate(request, CompletionRequest, completions_call, COMPLETIONS, engine)


@router.post("/v1/embeddings")
async def embeddings(request: Request) -> Response:
    return await _generate(request, EmbeddingRequest, embeddings_call, EMBEDDINGS)


@router.post("/v1/engines/{engine}/embeddings")
async def engine_embeddings(engine: str, request: Request) -> Response:
    return await _generate(request, EmbeddingRequest, embeddings_call, EMBEDDINGS, engine)
