"""OpenAI's Files API: ``POST /v1/files`` (a multipart upload), ``GET /v1/files`` (a page of
the caller's files), ``GET /v1/files/{id}``, ``GET /v1/files/{id}/content`` and ``DELETE
/v1/files/{id}``.

Files belong to the key that uploaded them (store/files.py); another key's file is a 404. An
upload is spooled to a temporary file by Starlette's multipart parser and copied into the store
in chunks in a worker thread, so a 200 MB file is never held in memory; its body may exceed
``max_body_bytes`` up to the file limit (``upload_allowance``, given to the ``RequestGuard``).
Content is streamed from an open file.
"""

from __future__ import annotations

import functools
import os
from collections.abc import AsyncIterator
from typing import BinaryIO

from anyio import to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from oasis.errors import FileTooLargeError, InvalidRequestError, NotFoundError, shorten
from oasis.server.guard import Allowance
from oasis.server.routes.openai import _state, key_id_of
from oasis.store.files import CHUNK, FileStore, StoredFile

router = APIRouter()
FILES = "/v1/files"

# Room for the multipart framing around the file: boundaries, part headers, a long file name
# and the other fields.
UPLOAD_OVERHEAD = 64 * 1024
SUPPORTED = ("batch", "user_data")
UNSUPPORTED = ("assistants", "vision", "fine-tune", "evals")
SERVER_WRITTEN = ("batch_output", "assistants_output", "fine-tune-results")
PURPOSES = SUPPORTED + UNSUPPORTED + SERVER_WRITTEN
FIELDS = ("file", "purpose", "expires_after[anchor]", "expires_after[seconds]")
MIN_EXPIRY, MAX_EXPIRY = 3600, 2592000  # one hour to 30 days, as OpenAI
MAX_LIST = 10000
FIELD_BYTES = 16 * 1024  # the most a text field (purpose, expires_after[...]) may hold


def upload_allowance(max_file_bytes: int) -> Allowance:
    """The body limit of ``POST /v1/files``: the largest file plus its multipart framing; a
    body over it is the same 413 as a file over the limit."""
    return Allowance(max_file_bytes + UPLOAD_OVERHEAD, lambda: FileTooLargeError(max_file_bytes))


def _store(request: Request) -> FileStore:
    store: FileStore = _state(request).files
    return store


def _missing(file_id: str) -> NotFoundError:
    return NotFoundError(f"No such File object: {shorten(file_id, 100)}", param="id")


def _problem(exc: StarletteHTTPException) -> str:
    """What the multipart parser refused: Starlette's message, or the parser's own more
    precise one (such as "Maximum header size exceeded") when it is at hand."""
    found = str(exc.detail).rstrip(".")
    cause: BaseException | None = exc.__context__
    for _ in range(4):  # Starlette's MultiPartException, raised from the parser's error
        if cause is None:
            break
        if cause.__cause__ is not None:
            found = str(cause.__cause__).rstrip(".") or found
        cause = cause.__cause__ or cause.__context__
    return found


def _purpose(form: FormData) -> str:
    values = form.getlist("purpose")
    if not values:
        raise InvalidRequestError("Missing required parameter: 'purpose'.", param="purpose")
    purpose = values[0]
    if len(values) > 1 or not isinstance(purpose, str):
        raise InvalidRequestError("'purpose' must be given once, as a text field.", param="purpose")
    if purpose in SUPPORTED:
        return purpose
    if purpose in UNSUPPORTED:
        message = (
            f"Files with purpose '{purpose}' are not supported by this server: it accepts "
            "'batch' and 'user_data'."
        )
    elif purpose in SERVER_WRITTEN:
        message = (
            f"Files with purpose '{purpose}' are written by the server and cannot be uploaded."
        )
    else:
        message = (
            f"Invalid value for 'purpose': {shorten(purpose, 100)!r}; this server accepts "
            "'batch' and 'user_data'."
        )
    raise InvalidRequestError(message, param="purpose")


def _upload(form: FormData) -> UploadFile:
    values = form.getlist("file")
    if not values:
        raise InvalidRequestError("Missing required parameter: 'file'.", param="file")
    upload = values[0]
    if len(values) > 1 or not isinstance(upload, UploadFile):
        raise InvalidRequestError(
            "'file' must be given once, as a file part (a part with a filename).", param="file"
        )
    return upload


def _expires_after(form: FormData) -> int | None:
    """Seconds after creation the file expires (``expires_after[anchor]`` = ``created_at``
    and ``expires_after[seconds]``), or None."""
    anchor, seconds = form.getlist("expires_after[anchor]"), form.getlist("expires_after[seconds]")
    if not anchor and not seconds:
        return None
    if len(anchor) != 1 or anchor[0] != "created_at":
        raise InvalidRequestError(
            "Invalid 'expires_after[anchor]': expected 'created_at' (given once).",
            param="expires_after.anchor",
        )
    raw = seconds[0] if len(seconds) == 1 else None
    if not (
        isinstance(raw, str)
        and raw.isascii()
        and raw.isdigit()
        and len(raw) <= 8
        and MIN_EXPIRY <= int(raw) <= MAX_EXPIRY
    ):
        raise InvalidRequestError(
            f"Invalid 'expires_after[seconds]': expected an integer from {MIN_EXPIRY} to "
            f"{MAX_EXPIRY} (one hour to 30 days), given once.",
            param="expires_after.seconds",
        )
    return int(raw)


def _save(
    store: FileStore,
    key_id: int | None,
    purpose: str,
    filename: str,
    source: BinaryIO,
    expires_after: int | None,
    max_bytes: int,
) -> StoredFile:
    """Check the spooled upload's size, then copy it into the store (in a worker thread)."""
    source.seek(0, 2)
    size = source.tell()
    source.seek(0)
    if size == 0:
        raise InvalidRequestError("The file is empty.", param="file")
    if size > max_bytes:
        raise FileTooLargeError(max_bytes)
    return store.add(
        key_id, purpose, filename, source, expires_after=expires_after, max_bytes=max_bytes
    )


@router.post(FILES)
async def create_file(request: Request) -> JSONResponse:
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media != "multipart/form-data":
        raise InvalidRequestError(
            "Upload a file as multipart/form-data with the parts 'file' and 'purpose'.",
            param="file",
        )
    try:
        form = await request.form(max_files=1, max_fields=len(FIELDS), max_part_size=FIELD_BYTES)
    except StarletteHTTPException as exc:  # a malformed multipart body
        raise InvalidRequestError(
            f"Invalid multipart body: {_problem(exc)} (each part's headers, its file name "
            "included, may be at most 4 KB; text fields at most 16 KB).",
            param="file",
        ) from None
    try:
        for name in form:
            if name not in FIELDS:
                raise InvalidRequestError(
                    f"Unrecognized request argument supplied: {shorten(name, 100)}",
                    param=shorten(name, 100),
                )
        purpose = _purpose(form)
        upload = _upload(form)
        expires_after = _expires_after(form)
        save = functools.partial(
            _save,
            _store(request),
            key_id_of(request),
            purpose,
            upload.filename or "file",
            upload.file,
            expires_after,
            _state(request).settings.max_file_bytes,
        )
        stored = await to_thread.run_sync(save)
    finally:
        await form.close()
    return JSONResponse(stored.to_openai())


def _list_query(request: Request) -> tuple[str | None, int, str, str | None]:
    q = request.query_params
    purpose = q.get("purpose")
    if purpose is not None and purpose not in PURPOSES:
        raise InvalidRequestError(
            f"Invalid 'purpose': {shorten(purpose, 100)!r} is not one of {', '.join(PURPOSES)}.",
            param="purpose",
        )
    raw = q.get("limit", str(MAX_LIST))
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 5 and 1 <= int(raw) <= MAX_LIST):
        raise InvalidRequestError(
            f"Invalid 'limit': expected an integer from 1 to {MAX_LIST}, got {shorten(raw, 20)!r}.",
            param="limit",
        )
    order = q.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequestError(
            f"Invalid 'order': expected 'asc' or 'desc', got {shorten(order, 20)!r}.",
            param="order",
        )
    return purpose, int(raw), order, q.get("after")


@router.get(FILES)
async def list_files(request: Request) -> JSONResponse:
    purpose, limit, order, after = _list_query(request)
    listing = functools.partial(
        _store(request).list,
        key_id_of(request),
        purpose=purpose,
        limit=limit,
        after=after,
        order="asc" if order == "asc" else "desc",
    )
    items, has_more = await to_thread.run_sync(listing)
    return JSONResponse(
        {
            "object": "list",
            "data": [f.to_openai() for f in items],
            "first_id": items[0].id if items else None,
            "last_id": items[-1].id if items else None,
            "has_more": has_more,
        }
    )


@router.get(FILES + "/{file_id}")
async def retrieve_file(file_id: str, request: Request) -> JSONResponse:
    found = await to_thread.run_sync(_store(request).get, key_id_of(request), file_id)
    if found is None:
        raise _missing(file_id)
    return JSONResponse(found.to_openai())


@router.get(FILES + "/{file_id}/content")
async def file_content(file_id: str, request: Request) -> Response:
    store = _store(request)
    found = await to_thread.run_sync(store.get, key_id_of(request), file_id)
    if found is None:
        raise _missing(file_id)
    try:
        handle = await to_thread.run_sync(store.open, found)
    except FileNotFoundError:  # the row outlived its content (a concurrent delete)
        raise _missing(file_id) from None
    size = os.fstat(handle.fileno()).st_size

    async def chunks() -> AsyncIterator[bytes]:
        try:
            while chunk := await to_thread.run_sync(handle.read, CHUNK):
                yield chunk
        finally:
            handle.close()

    return StreamingResponse(
        chunks(),
        media_type="application/octet-stream",
        headers={"Content-Length": str(size)},
    )


@router.delete(FILES + "/{file_id}")
async def delete_file(file_id: str, request: Request) -> JSONResponse:
    if not await to_thread.run_sync(_store(request).delete, key_id_of(request), file_id):
        raise _missing(file_id)
    return JSONResponse({"id": file_id, "object": "file", "deleted": True})
