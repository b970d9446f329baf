"""The Responses API: ``POST /v1/responses``, and the stored responses (``GET`` and
``DELETE /v1/responses/{id}``, ``GET /v1/responses/{id}/input_items``).

A response is a chat request in another shape (serving/responses.py translates both ways), run
on the model's backend through the same gateway path as chat (``openai._generate``: keys,
allow-lists, limits, metering with endpoint ``/v1/responses``). Stored responses belong to the
key that made them (store/responses.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from oasis.backends import Backend
from oasis.errors import InvalidRequestError, NotFoundError
from oasis.protocol.responses import ResponseCreateRequest
from oasis.server.routes.openai import Call, _generate, _state, key_id_of
from oasis.server.state import AppState
from oasis.serving.common import Meter
from oasis.serving.responses import (
    EventStream,
    Shape,
    answer_with_truncation,
    as_response,
    check_supported,
    input_items,
    not_found,
    previous_items,
    response_of,
    to_messages,
)
from oasis.store.responses import ResponseStore, StoredResponse

router = APIRouter()
log = logging.getLogger(__name__)
RESPONSES = "/v1/responses"


def _store(request: Request) -> ResponseStore:
    store: ResponseStore = _state(request).responses
    return store


def _missing(response_id: str) -> NotFoundError:
    return NotFoundError(f"Response with id '{response_id[:100]}' not found.")


def responses_call(state: AppState, key_id: int | None) -> Call[ResponseCreateRequest]:
    """What ``POST /v1/responses`` asks of a model's backend, for the caller ``key_id``
    (stored responses are that key's). Shared by the route and the batch runner."""
    store = state.responses
    retention = int(state.settings.responses_retention_days * 86400)

    async def keep(shape: Shape, items: list[dict[str, Any]], body: dict[str, Any]) -> None:
        now = int(time.time())
        stored = StoredResponse(
            id=shape.id,
            key_id=key_id,
            created_at=shape.created_at,
            expires_at=now + retention,
            model=shape.req.model,
            previous_response_id=shape.req.previous_response_id,
            status=body["status"],
            input_items=items,
            response=body,
        )
        try:
            await to_thread.run_sync(store.add, stored)
        except Exception:  # the answer stands; only GET and previous_response_id miss it
            log.exception("storing response %s failed", shape.id)

    async def call(
        backend: Backend, req: ResponseCreateRequest, meter: Meter
    ) -> BaseModel | AsyncIterator[Any]:
        check_supported(req)
        history: list[dict[str, Any]] = []
        if req.previous_response_id is not None:
            chain = await to_thread.run_sync(
                store.chain, req.previous_response_id, key_id, int(time.time())
            )
            if not chain:
                raise not_found(req.previous_response_id, "previous_response_id")
            history = previous_items(chain)
        items = input_items(req)
        state.serving.check_messages(len(history) + len(items))
        messages = to_messages(req.instructions, history + items)
        shape = Shape(req)
        answer = await answer_with_truncation(req, messages, lambda chat: backend.chat(chat, meter))
        save = req.store is not False
        if req.stream:

            async def on_final(body: dict[str, Any]) -> None:
                if save:
                    await keep(shape, items, body)

            return EventStream(shape, answer, on_final)
        body = response_of(shape, answer)
        if save:
            await keep(shape, items, body)
        return as_response(body)

    return call


@router.post(RESPONSES)
async def create_response(request: Request) -> Response:
    call = responses_call(_state(request), key_id_of(request))
    return await _generate(request, ResponseCreateRequest, call, RESPONSES)


@router.get(RESPONSES + "/{response_id}")
async def get_response(response_id: str, request: Request) -> JSONResponse:
    found = await to_thread.run_sync(
        _store(request).get, response_id, key_id_of(request), int(time.time())
    )
    if found is None:
        raise _missing(response_id)
    return JSONResponse(found.response)


@router.delete(RESPONSES + "/{response_id}")
async def delete_response(response_id: str, request: Request) -> JSONResponse:
    store, key_id, now = _store(request), key_id_of(request), int(time.time())
    if not await to_thread.run_sync(store.delete, response_id, key_id, now):
        raise _missing(response_id)
    return JSONResponse({"id": response_id, "object": "response", "deleted": True})


def _page_query(request: Request) -> tuple[int, str, str | None]:
    q = request.query_params
    raw = q.get("limit", "20")
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 3 and 1 <= int(raw) <= 100):
        raise InvalidRequestError(
            f"Invalid 'limit': expected an integer from 1 to 100, got {raw[:20]!r}.",
            param="limit",
        )
    order = q.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequestError(
            f"Invalid 'order': expected 'asc' or 'desc', got {order[:20]!r}.", param="order"
        )
    return int(raw), order, q.get("after")


@router.get(RESPONSES + "/{response_id}/input_items")
async def list_input_items(response_id: str, request: Request) -> JSONResponse:
    limit, order, after = _page_query(request)
    found = await to_thread.run_sync(
        _store(request).get, response_id, key_id_of(request), int(time.time())
    )
    if found is None:
        raise _missing(response_id)
    items = list(found.input_items)
    if order == "desc":
        items.reverse()
    if after is not None:
        ids = [i.get("id") for i in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    page = items[:limit]
    return JSONResponse(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }
    )
