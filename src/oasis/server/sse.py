"""Server-sent events in OpenAI's framing: ``data: {json}`` lines and a final ``data: [DONE]``."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel

from oasis.errors import EngineError, OasisError
from oasis.serving.responses import StreamFailed

log = logging.getLogger(__name__)


def dump(obj: BaseModel) -> dict[str, Any]:
    """A response object as JSON-ready data; only fields we set (OpenAI's shape, no extras)."""
    return obj.model_dump(mode="json", exclude_unset=True)


def _reported(exc: Exception) -> OasisError:
    """The error a failed stream tells its client (logged; a bug gets a generic 500)."""
    if isinstance(exc, OasisError):
        log.warning("stream failed: %s", exc)
        return exc
    log.exception("stream failed")
    return EngineError("The server had an error while processing your request.")


async def sse_events(chunks: AsyncIterator[BaseModel]) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            yield b"data: " + json.dumps(dump(chunk), ensure_ascii=False).encode() + b"\n\n"
    except Exception as exc:
        err = _reported(exc)
        yield b"data: " + json.dumps(err.to_dict()).encode() + b"\n\n"
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
    yield b"data: [DONE]\n\n"


async def named_sse_events(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    """Server-sent events as the Responses API frames them: ``event: TYPE`` and ``data:
    JSON`` per event, no ``[DONE]``. A stream that already reported its failure (``error`` and
    ``response.failed`` events) ends there; any other failure becomes one ``error`` event."""
    try:
        async for event in events:
            data = json.dumps(event, ensure_ascii=False).encode()
            yield b"event: " + str(event["type"]).encode() + b"\ndata: " + data + b"\n\n"
    except StreamFailed:
        pass
    except Exception as exc:
        err = _reported(exc)
        body = {
            "type": "error",
            "code": err.code or err.error_type,
            "message": err.message,
            "param": err.param,
            "sequence_number": 0,
        }
        yield b"event: error\ndata: " + json.dumps(body).encode() + b"\n\n"
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
