"""Server-sent events in OpenAI's framing: ``data: {json}`` lines and a final ``data: [DONE]``."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel

from oasis.errors import EngineError, OasisError

log = logging.getLogger(__name__)


def dump(obj: BaseModel) -> dict[str, Any]:
    """A response object as JSON-ready data; only fields we set (OpenAI's shape, no extras)."""
    return obj.model_dump(mode="json", exclude_unset=True)


async def sse_events(chunks: AsyncIterator[BaseModel]) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            yield b"data: " + json.dumps(dump(chunk), ensure_ascii=False).encode() + b"\n\n"
    except OasisError as exc:
        log.warning("stream failed: %s", exc)
        yield b"data: " + json.dumps(exc.to_dict()).encode() + b"\n\n"
    except Exception:
        log.exception("stream failed")
        err = EngineError("The server had an error while processing your request.")
        yield b"data: " + json.dumps(err.to_dict()).encode() + b"\n\n"
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
    yield b"data: [DONE]\n\n"
