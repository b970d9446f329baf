"""Every error leaves as OpenAI's envelope; a 500 never leaks a traceback."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from oasis.errors import (
    EngineError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    OasisError,
)

log = logging.getLogger(__name__)


def error_response(exc: OasisError) -> JSONResponse:
    return JSONResponse(exc.to_dict(), status_code=exc.status, headers=exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OasisError)
    async def _oasis(request: Request, exc: OasisError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
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
        return JSONResponse(err.to_dict(), status_code=exc.status_code, headers=err.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(
            EngineError("The server had an error while processing your request. Sorry about that!")
        )
