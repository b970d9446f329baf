"""The outermost layer of request handling: size limits and the last word on exceptions.

``RequestGuard`` is a plain ASGI middleware (no per-request objects beyond a closure):

- headers larger than ``max_header_bytes`` in all get a 431 before any route runs;
- a body larger than ``max_body_bytes`` gets a 400 naming the limit, from its
  ``Content-Length`` before a byte is read, or as soon as a chunked body passes the limit;
  a route given an ``Allowance`` (``POST /v1/files``: an upload of up to the file limit) has
  its own limit and its own error in place of these;
- any exception that escaped the routes' own handling becomes one logged 500 in OpenAI's
  envelope. Starlette's own catch-all sends its response and then re-raises, so the server
  logged the traceback twice and dropped the keep-alive connection without ``Connection:
  close``; here the exception ends with the response and the connection stays usable.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from oasis.errors import EngineError, InvalidRequestError, OasisError

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyTooLargeError(InvalidRequestError):
    """400: the request body is over the server's limit."""

    default_code = "request_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"The request body is too large: this server accepts at most {limit} bytes "
            "(OASIS_MAX_BODY_BYTES).",
        )


class HeadersTooLargeError(InvalidRequestError):
    """431: the request's headers are over the server's limit."""

    status = 431
    default_code = "request_header_fields_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"The request's headers are too large: this server accepts at most {limit} bytes "
            "of headers (OASIS_MAX_HEADER_BYTES)."
        )


@dataclass(frozen=True)
class Allowance:
    """A body limit of one route (by method and path) in place of ``max_body_bytes``, and
    the error a body over it gets."""

    limit: int
    error: Callable[[], OasisError]


async def send_error(send: Send, exc: OasisError) -> None:
    body = json.dumps(exc.to_dict()).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in exc.headers.items()),
    ]
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        max_header_bytes: int,
        allowances: Mapping[tuple[str, str], Allowance] | None = None,
    ) -> None:
        self.app = app
        self.max_body = max_body_bytes
        self.max_headers = max_header_bytes
        self.allowances = dict(allowances or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers") or []
        if sum(len(k) + len(v) for k, v in headers) > self.max_headers:
            await send_error(send, HeadersTooLargeError(self.max_headers))
            return
        allowance = self.allowances.get((str(scope.get("method")), str(scope.get("path"))))
        limit = self.max_body if allowance is None else allowance.limit

        def too_large() -> OasisError:
            return BodyTooLargeError(limit) if allowance is None else allowance.error()

        for k, v in headers:
            if k == b"content-length":
                try:
                    declared = int(v)
                except ValueError:
                    declared = 0
                if declared > limit:
                    await send_error(send, too_large())
                    return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise too_large()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except Exception as exc:
            if started:
                log.exception("error after the response started: %s %s", *_where(scope))
                return
            if isinstance(exc, OasisError):
                await send_error(send, exc)
                return
            log.exception("unhandled error on %s %s", *_where(scope))
            await send_error(
                send,
                EngineError(
                    "The server had an error while processing your request. Sorry about that!"
                ),
            )


def _where(scope: Scope) -> tuple[str, str]:
    return str(scope.get("method", "")), str(scope.get("path", ""))
