"""Every error leaves as OpenAI's envelope; a 500 never leaks a traceback."""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from oasis.errors import (
    EngineError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    OasisError,
)

log = logging.getLogger(__name__)


def error_response(exc: OasisError, status: int | None = None) -> Response:
    # ASCII-escaped JSON: a message quoting client text stays encodable whatever it holds
    return Response(
        json.dumps(exc.to_dict()),
        status_code=exc.status if status is None else status,
        headers=exc.headers,
        media_type="application/json",
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OasisError)
    async def _oasis(request: Request, exc: OasisError) -> Response:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        err: OasisError
        if exc.status_code == 404:
            err = NotFoundError(
                f"Invalid URL ({request.method} {request.url.path})", code="unknown_url"
            )
        elif exc.status_code == 405:
            err = MethodNotAllowedError(
                f"Invalid method for URL ({request.method} {request.url.path})"
            )
        elif exc.status_code < 500:
            err = InvalidRequestError(str(exc.detail))
        else:
            err = EngineError("The server had an error while processing your request.")
        return error_response(err, exc.status_code)

    # Any other exception is turned into a 500 by server/guard.py's RequestGuard, once.
