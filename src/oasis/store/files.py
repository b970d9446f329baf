"""Files of ``/v1/files``: the metadata in the ``files`` table, the bytes in ``<root>/<id>``
(``root`` is ``<data_dir>/files``).

Ownership: a file belongs to the key that uploaded it (or, for a file the server wrote, such as
a batch's output, the key the server wrote it for). Every read and delete names the caller's
key and a key sees only its own files; ``key_id`` None is the static ``--api-key``, a key like
any other. To a caller, another key's file is indistinguishable from an absent one.

Writes never leave half a file behind: content is written to a scratch file under
``<root>/.partial``, renamed to ``<root>/<id>`` (atomic on one filesystem), and only then is
the row inserted; if the insert fails the content is removed. A reader therefore never sees a
row whose content is still being written. The one crash window (after the rename, before the
insert) leaves content without a row, which nothing reads; ``purge`` clears stale scratch
files. Files are immutable once stored, so the recorded size is the content's length.

Expiry: a file with ``expires_at <= now`` is invisible at once; ``purge`` (called periodically
by the server) removes its row and content in bounded batches.

File ids are minted here (``file-`` and 24 letters and digits), never by a client. Ids a
client sends are checked before any query: one too long or holding characters no database
takes (NUL, lone surrogates) is simply not found. A content path is only ever built from an
id of the minted form, so no id can name a path outside ``root``.
"""

from __future__ import annotations

import io
import os
import re
import secrets
import shutil
import string
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

from sqlalchemy import ColumnElement, Engine, RowMapping, and_, delete, insert, or_, select

from oasis.errors import FileTooLargeError
from oasis.store.models import FileRecord
from oasis.store.usage import clean_text

ID_CHARS = 64  # the id column's length
FILENAME_CHARS = 255
PURPOSE_CHARS = 32
CHUNK = 1024 * 1024  # bytes per read and write when copying content
PARTIAL = ".partial"  # scratch files, under root
STALE_PARTIAL_SECONDS = 86400  # a scratch file untouched this long is abandoned

_ALPHABET = string.ascii_letters + string.digits
_MINTED = re.compile(r"file-[A-Za-z0-9]{24}")

_F = FileRecord
_COLUMNS = (
    _F.id,
    _F.key_id,
    _F.purpose,
    _F.filename,
    _F.bytes,
    _F.created_at,
    _F.expires_at,
)


def new_file_id() -> str:
    """A fresh file id: ``file-`` and 24 random letters and digits (143 bits)."""
    return "file-" + "".join(secrets.choice(_ALPHABET) for _ in range(24))


def storable_id(text: str) -> bool:
    """Whether ``text`` could be a stored file's id: not empty, fits its column, and holds no
    character a database refuses."""
    return 0 < len(text) <= ID_CHARS and clean_text(text, ID_CHARS) == text


def safe_filename(name: str) -> str:
    """A client's file name made safe to store: unsafe characters (NUL, other control
    characters, lone surrogates) replaced by U+FFFD, cut to 255 characters."""
    return clean_text(name, FILENAME_CHARS)


@dataclass(frozen=True)
class StoredFile:
    """One stored file's metadata. Times are unix seconds; ``expires_at`` None never expires;
    ``key_id`` None is the static ``--api-key``."""

    id: str
    key_id: int | None
    purpose: str
    filename: str
    bytes: int
    created_at: int
    expires_at: int | None = None

    def to_openai(self) -> dict[str, Any]:
        """The File object OpenAI sends (``openai.types.FileObject``); ``expires_at`` only
        when the file expires, as OpenAI's schema has it an integer, not a null."""
        body: dict[str, Any] = {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
        }
        if self.expires_at is not None:
            body["expires_at"] = self.expires_at
        return body


def _from_row(m: RowMapping) -> StoredFile:
    expires_at = m["expires_at"]
    return StoredFile(
        id=m["id"],
        key_id=m["key_id"],
        purpose=m["purpose"],
        filename=m["filename"],
        bytes=int(m["bytes"]),
        created_at=int(m["created_at"]),
        expires_at=None if expires_at is None else int(expires_at),
    )


def _owned(key_id: int | None) -> ColumnElement[bool]:
    """Rows of this key (the static key's are those with a NULL key id)."""
    return _F.key_id.is_(None) if key_id is None else _F.key_id == key_id


def _visible(now: int) -> ColumnElement[bool]:
    return or_(_F.expires_at.is_(None), _F.expires_at > now)


@dataclass(frozen=True)
class _Meta:
    """What a new file is stored with, checked before any byte is written."""

    key_id: int | None
    purpose: str
    filename: str
    expires_at: int | None
    expires_after: int | None

    def __post_init__(self) -> None:
        if not 0 < len(self.purpose) <= PURPOSE_CHARS or not self.purpose.isascii():
            raise ValueError("a file's purpose must be 1 to 32 ASCII characters")
        if self.expires_at is not None and self.expires_after is not None:
            raise ValueError("give expires_at or expires_after, not both")
        if self.expires_after is not None and self.expires_after < 0:
            raise ValueError("expires_after must not be negative")


class FileStore:
    """The files table and the content directory. Each method is synchronous and short in
    database terms (one transaction); routes call them in a worker thread.

    A new file may expire: at ``expires_at`` (unix seconds), or ``expires_after`` seconds
    after its ``created_at`` (OpenAI's ``expires_after`` with anchor ``created_at``); with
    neither it is kept until deleted."""

    def __init__(
        self, engine: Engine, root: Path, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.engine = engine
        self.root = root
        self.clock = clock

    # -- writing

    def add(
        self,
        key_id: int | None,
        purpose: str,
        filename: str,
        source: BinaryIO | Path,
        *,
        expires_at: int | None = None,
        expires_after: int | None = None,
        max_bytes: int | None = None,
    ) -> StoredFile:
        """Store a copy of ``source`` (a binary file object read from its current position
        to its end, or a path, which is left in place), read in chunks. Over ``max_bytes`` it
        is a ``FileTooLargeError`` and nothing is stored; on any failure no content and no
        row remain."""
        meta = _Meta(key_id, purpose, filename, expires_at, expires_after)
        if isinstance(source, Path):
            with source.open("rb") as handle:
                return self._copy(meta, handle, max_bytes)
        return self._copy(meta, source, max_bytes)

    def add_bytes(
        self,
        key_id: int | None,
        purpose: str,
        filename: str,
        data: bytes,
        *,
        expires_at: int | None = None,
        expires_after: int | None = None,
    ) -> StoredFile:
        """Store ``data`` (for small server-written files)."""
        meta = _Meta(key_id, purpose, filename, expires_at, expires_after)
        return self._copy(meta, io.BytesIO(data), None)

    def scratch_path(self) -> Path:
        """A fresh path under the store's scratch directory, on the content's filesystem:
        write a file there and hand it to ``add_path``, which then renames it into the store
        without copying. Nothing is created at the path; one abandoned for a day is removed
        by ``purge``."""
        partial = self.root / PARTIAL
        partial.mkdir(parents=True, exist_ok=True)
        return partial / secrets.token_hex(16)

    def add_path(
        self,
        key_id: int | None,
        purpose: str,
        filename: str,
        path: Path,
        *,
        expires_at: int | None = None,
        expires_after: int | None = None,
    ) -> StoredFile:
        """Store the file at ``path`` by moving it into the store: a rename when it is on the
        content's filesystem (a ``scratch_path()`` always is; so is any path under
        ``root``), else a copy and a removal. Once the move is done the file is the store's:
        if storing then fails it is removed, and the error raised."""
        meta = _Meta(key_id, purpose, filename, expires_at, expires_after)
        scratch = self.scratch_path()
        shutil.move(path, scratch)
        try:
            return self._commit(scratch, meta, scratch.stat().st_size)
        finally:
            scratch.unlink(missing_ok=True)  # gone already if it was stored

    def _copy(self, meta: _Meta, source: BinaryIO, max_bytes: int | None) -> StoredFile:
        scratch = self.scratch_path()
        try:
            size = 0
            with scratch.open("xb") as out:
                while chunk := source.read(CHUNK):
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise FileTooLargeError(max_bytes)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            return self._commit(scratch, meta, size)
        finally:
            scratch.unlink(missing_ok=True)

    def _commit(self, scratch: Path, meta: _Meta, size: int) -> StoredFile:
        """Rename a finished scratch file to its id's path, then insert its row."""
        created_at = int(self.clock())
        expires_at = meta.expires_at
        if meta.expires_after is not None:
            expires_at = created_at + meta.expires_after
        stored = StoredFile(
            id=new_file_id(),
            key_id=meta.key_id,
            purpose=meta.purpose,
            filename=safe_filename(meta.filename),
            bytes=size,
            created_at=created_at,
            expires_at=expires_at,
        )
        final = self.path(stored)
        os.replace(scratch, final)
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(_F).values(
                        id=stored.id,
                        key_id=stored.key_id,
                        purpose=stored.purpose,
                        filename=stored.filename,
                        bytes=stored.bytes,
                        created_at=stored.created_at,
                        expires_at=stored.expires_at,
                    )
                )
        except BaseException:
            final.unlink(missing_ok=True)
            raise
        return stored

    # -- reading

    def get(self, key_id: int | None, file_id: str) -> StoredFile | None:
        """The file, or None if it is absent, expired or another key's."""
        if not storable_id(file_id):
            return None
        now = int(self.clock())
        with self.engine.begin() as conn:
            row = conn.execute(
                select(*_COLUMNS).where(_F.id == file_id, _owned(key_id), _visible(now))
            ).first()
        return None if row is None else _from_row(row._mapping)

    def list(
        self,
        key_id: int | None,
        purpose: str | None = None,
        limit: int = 10000,
        after: str | None = None,
        order: Literal["asc", "desc"] = "desc",
    ) -> tuple[list[StoredFile], bool]:
        """A page of this key's files (of one purpose, if given), ordered by ``created_at``
        then id, and whether more follow. ``after`` is the last id of the previous page; one
        that is not a visible file of this key gives an empty page."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        now = int(self.clock())
        where: list[ColumnElement[bool]] = [_owned(key_id), _visible(now)]
        if purpose is not None:
            where.append(_F.purpose == purpose)
        desc = order == "desc"
        with self.engine.begin() as conn:
            if after is not None:
                if not storable_id(after):
                    return [], False
                cursor = conn.execute(
                    select(_F.created_at, _F.id).where(_F.id == after, *where)
                ).first()
                if cursor is None:
                    return [], False
                at, cid = cursor
                if desc:
                    where.append(or_(_F.created_at < at, and_(_F.created_at == at, _F.id < cid)))
                else:
                    where.append(or_(_F.created_at > at, and_(_F.created_at == at, _F.id > cid)))
            keys = (_F.created_at.desc(), _F.id.desc()) if desc else (_F.created_at, _F.id)
            rows = conn.execute(
                select(*_COLUMNS).where(*where).order_by(*keys).limit(limit + 1)
            ).all()
        items = [_from_row(r._mapping) for r in rows[:limit]]
        return items, len(rows) > limit

    def path(self, file: StoredFile) -> Path:
        """Where the file's content is. Only minted ids have a path (a ValueError else)."""
        if not _MINTED.fullmatch(file.id):
            raise ValueError("not a file id this store minted")
        return self.root / file.id

    def open(self, file: StoredFile) -> BinaryIO:
        """The file's content, opened for reading (the caller closes it). It stays readable
        to the end even if the file is deleted meanwhile. ``FileNotFoundError`` if the
        content is gone (the data directory was tampered with)."""
        return self.path(file).open("rb")

    # -- removing

    def delete(self, key_id: int | None, file_id: str) -> bool:
        """Delete a file of this key, row and content; True if one was deleted. An expired
        file is removed too but reported as absent (False), as ``get`` would see it."""
        if not storable_id(file_id):
            return False
        where = (_F.id == file_id, _owned(key_id))
        with self.engine.begin() as conn:
            row = conn.execute(select(_F.expires_at).where(*where)).first()
            if row is None:
                return False
            deleted = conn.execute(delete(_F).where(*where)).rowcount > 0
        if not deleted:  # a concurrent delete won
            return False
        (self.root / file_id).unlink(missing_ok=True)  # a deleted row's id was minted here
        expires_at = row[0]
        return expires_at is None or expires_at > int(self.clock())

    def purge(self, now: int, batch: int = 500, max_batches: int = 20) -> int:
        """Delete expired files (``expires_at <= now``), rows then content, at most ``batch``
        per transaction and ``max_batches`` transactions per call, and scratch files left
        untouched for a day; returns how many files were deleted."""
        if batch < 1 or max_batches < 1:
            raise ValueError("batch and max_batches must be at least 1")
        deleted = 0
        for _ in range(max_batches):
            with self.engine.begin() as conn:
                ids = list(
                    conn.scalars(
                        select(_F.id)
                        .where(_F.expires_at <= now)
                        .order_by(_F.expires_at)
                        .limit(batch)
                    )
                )
                if ids:
                    conn.execute(delete(_F).where(_F.id.in_(ids)))
            for file_id in ids:
                if _MINTED.fullmatch(file_id):
                    (self.root / file_id).unlink(missing_ok=True)
            deleted += len(ids)
            if len(ids) < batch:
                break
        self._sweep_scratch(now)
        return deleted

    def _sweep_scratch(self, now: int) -> None:
        partial = self.root / PARTIAL
        try:
            entries = list(os.scandir(partial))
        except FileNotFoundError:
            return
        for entry in entries:
            try:
                if entry.stat().st_mtime < now - STALE_PARTIAL_SECONDS:
                    os.unlink(entry.path)
            except FileNotFoundError:
                continue
