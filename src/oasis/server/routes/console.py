"""The web console's static files, and the security headers every response carries.

The console is a single page (``console/index.html``) and plain ES modules: no build step, no
CDN, nothing fetched from elsewhere at run time. Why no framework or bundle: browsers load ES
modules natively, the whole console is a few thousand lines, and what ships is what is in the
repository (nothing to rebuild, nothing to drift from its source, nothing for ``make serve`` to
run). The files hold no data, so they need no key; the page asks for one, keeps it in
``sessionStorage`` and sends it as ``Authorization: Bearer`` on every JSON call. No cookie
carries any authority, so another site cannot make a browser act for its user (CSRF-safe by
construction); the admin pages' JSON endpoints check for an admin key on the server.

- ``GET /`` is ``index.html`` (``Cache-Control: no-store``). It names its assets under
  ``/console/static/<build>/``, where ``<build>`` is a hash of every file in the folder: those
  URLs change whenever a file does, so they are cached for a year (``immutable``), and the
  modules' relative imports inherit the same prefix.
- ``GET /console/static/{path}``: a file in the folder (with or without the build prefix; without
  it, or with a stale one, the answer must be revalidated, by its ``ETag``). Only plain files
  directly in the folder with a known type are served, from a map read when the router is made:
  any other name is a 404 that touches no disk (no traversal, no dot files, no directories, no
  name too long for the file system).

``SecurityHeaders`` (installed by ``create_app`` around the whole app) adds a strict
Content-Security-Policy (scripts and styles from this origin only, no inline script, no
framing), ``nosniff``, ``no-referrer`` and ``X-Frame-Options: DENY`` to every HTTP response
that does not set them itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from oasis.errors import NotFoundError

FOLDER = Path(__file__).resolve().parent.parent / "console"
STATIC = "/console/static"

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)
TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
IMMUTABLE = "public, max-age=31536000, immutable"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class SecurityHeaders:
    """Plain ASGI middleware: the headers above on every HTTP response (a header the response
    already has is left as it is). Streams pass through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                have = {name.lower() for name, _ in headers}
                headers.extend(h for h in HEADERS if h[0] not in have)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


def build_id(folder: Path) -> str:
    """A short hash of every file's name and contents: the assets' cache-busting prefix."""
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


Asset = tuple[bytes, str, str]  # contents, media type, ETag


def read_assets(folder: Path) -> dict[str, Asset]:
    """The files the console serves, read once: plain files directly in ``folder`` (a link is
    followed once, here) with a known type and a name not starting with a dot. A request for
    any other name is a 404 without touching the disk, so no name (too long for the file
    system, with a NUL, a backslash or an encoded slash) can reach ``open`` or ``stat``."""
    assets: dict[str, Asset] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix not in TYPES or not path.is_file():
            continue
        data = path.read_bytes()
        etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
        assets[path.name] = (data, TYPES[path.suffix], etag)
    return assets


def make_router(folder: Path = FOLDER) -> APIRouter:
    """The console's routes over ``folder``; the page, the build id and the files are read
    once, here (a changed file is served after a restart, as its build id changes then)."""
    build = build_id(folder)
    page = (folder / "index.html").read_text(encoding="utf-8").replace("{{BUILD}}", build)
    assets = read_assets(folder)
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    @router.get(STATIC + "/{path:path}", include_in_schema=False)
    async def asset(path: str, request: Request) -> Response:
        parts = path.split("/")
        current = len(parts) == 2 and parts[0] == build
        if len(parts) == 2 and not current and len(parts[0]) == len(build):
            parts = parts[1:]  # an older page's build: served, but not to be kept
        name = parts[-1] if len(parts) == 1 or current else ""
        found = assets.get(name)
        if found is None:
            raise NotFoundError(f"No console file {path[:100]!r}.")
        data, media_type, etag = found
        headers = {"Cache-Control": IMMUTABLE if current else "no-cache", "ETag": etag}
        if etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        return Response(data, media_type=media_type, headers=headers)

    return router
