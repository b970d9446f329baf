"""One batch line, run as the key that created the batch: the same parsing, allow-list,
backend (local or upstream, with fallbacks) and metering as a live request to its endpoint,
without HTTP. The answer is what the endpoint would have sent: its status and JSON body."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
from pydantic import BaseModel

from oasis.errors import EngineError, InvalidRequestError, OasisError
from oasis.protocol.embeddings import EmbeddingRequest
from oasis.protocol.requests import ChatCompletionRequest, CompletionRequest
from oasis.protocol.responses import ResponseCreateRequest
from oasis.server.routes.openai import (
    Call,
    backend_of,
    chat_call,
    completions_call,
    embeddings_call,
    prepare,
)
from oasis.server.routes.responses import responses_call
from oasis.server.sse import dump
from oasis.server.state import AppState
from oasis.serving.common import BACKGROUND, NO_METER, Meter
from oasis.store.keys import KeyInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Endpoint:
    """How a batch endpoint's line runs: its request model and the backend call."""

    request: type[BaseModel]
    call: Callable[[AppState, int | None], Call[Any]]


def _fixed(call: Call[Any]) -> Callable[[AppState, int | None], Call[Any]]:
    return lambda state, key_id: call


ENDPOINTS: dict[str, Endpoint] = {
    "/v1/chat/completions": Endpoint(ChatCompletionRequest, _fixed(chat_call)),
    "/v1/completions": Endpoint(CompletionRequest, _fixed(completions_call)),
    "/v1/responses": Endpoint(ResponseCreateRequest, responses_call),
    "/v1/embeddings": Endpoint(EmbeddingRequest, _fixed(embeddings_call)),
}


@dataclass(frozen=True)
class LineAnswer:
    status: int
    body: dict[str, Any]
    request_id: str
    # failed for a passing reason (the engine's queue full, an upstream down, a budget held
    # by requests in flight): worth trying again later
    retryable: bool = False


async def run_line(
    state: AppState,
    key: KeyInfo | None,
    endpoint: str,
    body: dict[str, Any],
    *,
    batch_id: str,
    discount: float,
) -> LineAnswer:
    """Run one line's request as background work; every failure is that line's answer."""
    BACKGROUND.set(True)  # this task's context only: its engine sequences yield to live ones
    gateway = state.gateway
    ticket = (
        gateway.ticket(key, endpoint, batch_id=batch_id, discount=discount)
        if gateway is not None
        else None
    )
    request_id = ticket.request_id if ticket is not None else secrets.token_hex(16)
    meter: Meter = ticket if ticket is not None else NO_METER
    try:
        spec = ENDPOINTS.get(endpoint)
        if spec is None:
            raise InvalidRequestError(f"This server does not run batches for {endpoint}.")
        # validated in a worker thread: a line's body may be large, and the loop serves live
        # requests meanwhile
        parsed = await prepare(state, key, spec.request, body, ticket, big=True)
        backend = backend_of(state, str(getattr(parsed, "model", "")))
        key_id = key.id if key is not None else None
        result = await spec.call(state, key_id)(backend, parsed, meter)
        if not isinstance(result, BaseModel):  # stream=true is refused when the file is read
            aclose = getattr(result, "aclose", None)
            if aclose is not None:
                await aclose()
            raise InvalidRequestError("Streaming is not supported in a batch.", param="stream")
    except OasisError as exc:
        if ticket is not None:
            await ticket.finish(exc.status)
        retry = exc.status in (502, 503, 504) or (
            exc.status == 429
            and "retry-after" in exc.headers
            and exc.headers.get("x-should-retry") != "false"
        )
        return LineAnswer(exc.status, exc.to_dict(), request_id, retryable=retry)
    except Exception:
        log.exception("batch %s: a line failed", batch_id)
        if ticket is not None:
            await ticket.finish(500)
        err = EngineError("The server had an error while processing this request.")
        return LineAnswer(500, err.to_dict(), request_id)
    except BaseException:  # cancelled with its batch: billed for what the engine did
        if ticket is not None:
            with anyio.CancelScope(shield=True):
                await ticket.finish(499, disconnected=True)
        raise
    if ticket is not None:
        await ticket.finish(200)
    return LineAnswer(200, dump(result), request_id)


def tokens_of(body: dict[str, Any]) -> tuple[int, int]:
    """(input, output) tokens of an endpoint's answer, from its ``usage``."""
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return 0, 0
    inp = usage.get("prompt_tokens", usage.get("input_tokens", 0))
    out = usage.get("completion_tokens", usage.get("output_tokens", 0))
    return (inp if isinstance(inp, int) else 0), (out if isinstance(out, int) else 0)
