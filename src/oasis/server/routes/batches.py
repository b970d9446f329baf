"""The Batch API: ``POST /v1/batches``, ``GET /v1/batches[/{id}]``,
``POST /v1/batches/{id}/cancel``. A batch belongs to the key that created it; its input file
must be that key's, uploaded with purpose ``batch``. The runner (batches/runner.py) does the
work in the background; these routes create, read and cancel."""

from __future__ import annotations

import time

from anyio import to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from oasis.batches.runner import WINDOWS
from oasis.errors import InvalidRequestError, NotFoundError
from oasis.protocol.batches import BatchCreateRequest
from oasis.server.routes.openai import _state, key_id_of
from oasis.server.validation import parse_json_body, validate

router = APIRouter()


def _missing(batch_id: str) -> NotFoundError:
    return NotFoundError(f"No batch found with id '{batch_id[:100]}'.")


@router.post("/v1/batches")
async def create_batch(request: Request) -> JSONResponse:
    state = _state(request)
    body = parse_json_body(await request.body(), max_depth=state.settings.max_json_depth)
    req = validate(BatchCreateRequest, body)
    key_id = key_id_of(request)
    if req.endpoint not in state.batch_endpoints:
        raise InvalidRequestError(
            f"This server does not run batches for {req.endpoint}: no model serves it.",
            param="endpoint",
            code="invalid_value",
        )
    found = await to_thread.run_sync(state.files.get, key_id, req.input_file_id)
    if found is None:
        raise InvalidRequestError(
            f"No such File object: {req.input_file_id[:100]}",
            param="input_file_id",
            code="invalid_value",
        )
    if found.purpose != "batch":
        raise InvalidRequestError(
            f"File {found.id} has purpose {found.purpose!r}: a batch's input file must be "
            "uploaded with purpose 'batch'.",
            param="input_file_id",
            code="invalid_value",
        )
    expires = req.output_expires_after.seconds if req.output_expires_after else None
    batch = await to_thread.run_sync(
        lambda: state.batches.create(
            key_id=key_id,
            endpoint=req.endpoint,
            input_file_id=found.id,
            completion_window=req.completion_window,
            window_seconds=WINDOWS[req.completion_window],
            metadata=req.metadata,
            output_expires_seconds=expires,
            now=int(time.time()),
        )
    )
    state.batch_runner.submit(batch.id)
    return JSONResponse(batch.to_openai())


@router.get("/v1/batches")
async def list_batches(request: Request, limit: int = 20, after: str | None = None) -> JSONResponse:
    if not 1 <= limit <= 100:
        raise InvalidRequestError(
            f"Invalid 'limit': integer above maximum value. Expected a value between 1 and "
            f"100, but got {limit} instead.",
            param="limit",
            code="integer_above_max_value" if limit > 100 else "integer_below_min_value",
        )
    state = _state(request)
    items, more = await to_thread.run_sync(
        lambda: state.batches.page(key_id_of(request), limit=limit, after=after)
    )
    data = [b.to_openai() for b in items]
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": more,
        }
    )


@router.get("/v1/batches/{batch_id}")
async def get_batch(batch_id: str, request: Request) -> JSONResponse:
    state = _state(request)
    found = await to_thread.run_sync(state.batches.get, key_id_of(request), batch_id)
    if found is None:
        raise _missing(batch_id)
    return JSONResponse(found.to_openai())


@router.post("/v1/batches/{batch_id}/cancel")
async def cancel_batch(batch_id: str, request: Request) -> JSONResponse:
    state = _state(request)
    found = await to_thread.run_sync(
        state.batches.cancel, key_id_of(request), batch_id, int(time.time())
    )
    if found is None:
        raise _missing(batch_id)
    if found.status == "cancelling":
        state.batch_runner.cancel(batch_id)
    return JSONResponse(found.to_openai())
