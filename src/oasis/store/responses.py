"""Stored responses of the Responses API: what ``store: true`` keeps so that
``GET /v1/responses/{id}``, ``DELETE``, ``.../input_items`` and ``previous_response_id`` work.

Ownership: a response belongs to the key that made it. Every read and delete names the caller's
key, and a key sees only its own responses, admin keys included (an admin key manages keys, it
does not read other keys' conversations). ``key_id`` None is the static ``--api-key``, and it
is a key like any other: it sees only rows stored without a key id, and a numbered key never
sees those. To a caller, a response of another key is indistinguishable from an absent one.

Retention: the caller sets ``expires_at`` from the configured retention when it stores a
response. An expired response is invisible at once (``expires_at <= now``) and its row is
removed by ``purge``, which the server calls periodically; purge deletes in bounded batches,
so one call never holds a long transaction or a huge lock on a busy table.

Response ids are minted by the server (``resp_...``), never by a client, so ``add`` replaces a
row with the same id (a streamed response may be stored again when it ends). Ids a client sends
to read, chain or delete are checked before any query: one too long or holding characters no
database takes (NUL, lone surrogates) is simply not found rather than an error from PostgreSQL.

The JSON is kept as text written with ``ensure_ascii``: PostgreSQL text refuses NUL, and
escaped JSON never holds one, while a ``"\\u0000"`` inside a string survives the round trip.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Engine, RowMapping, delete, func, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from oasis.store.models import ResponseRecord
from oasis.store.usage import MODEL_CHARS, clean_text

ID_CHARS = 64  # the id and previous_response_id columns' length
STATUS_CHARS = 20

_R = ResponseRecord
_COLUMNS = (
    _R.id,
    _R.key_id,
    _R.created_at,
    _R.expires_at,
    _R.model,
    _R.previous_response_id,
    _R.status,
    _R.input_items,
    _R.response,
)


def storable_id(text: str) -> bool:
    """Whether ``text`` could be a stored response's id: not empty, fits its column, and
    holds no character a database refuses."""
    return 0 < len(text) <= ID_CHARS and clean_text(text, ID_CHARS) == text


@dataclass(frozen=True)
class StoredResponse:
    """One stored response. ``input_items`` are this request's own input items (each with an
    ``id``), not its predecessors'; ``response`` is the Response object as JSON. Times are
    unix seconds; ``key_id`` None is the static ``--api-key``.

    The model name is made safe to store (cut to its column, unsafe characters replaced), as
    a usage record's is; an id or status that cannot be stored is a ValueError."""

    id: str
    key_id: int | None
    created_at: int
    expires_at: int
    model: str
    previous_response_id: str | None
    status: str
    input_items: list[dict[str, Any]]
    response: dict[str, Any]

    def __post_init__(self) -> None:
        if not storable_id(self.id):
            raise ValueError("a stored response's id must be 1 to 64 storable characters")
        if self.previous_response_id is not None and not storable_id(self.previous_response_id):
            raise ValueError("previous_response_id must be 1 to 64 storable characters")
        if not 0 < len(self.status) <= STATUS_CHARS or not self.status.isascii():
            raise ValueError("a stored response's status must be 1 to 20 ASCII characters")
        model = clean_text(self.model, MODEL_CHARS)
        if model is not self.model:
            object.__setattr__(self, "model", model)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"))


def _values(r: StoredResponse) -> dict[str, Any]:
    return {
        "id": r.id,
        "key_id": r.key_id,
        "created_at": r.created_at,
        "expires_at": r.expires_at,
        "model": r.model,
        "previous_response_id": r.previous_response_id,
        "status": r.status,
        "input_items": _dumps(r.input_items),
        "response": _dumps(r.response),
    }


def _from_row(m: RowMapping) -> StoredResponse:
    return StoredResponse(
        id=m["id"],
        key_id=m["key_id"],
        created_at=int(m["created_at"]),
        expires_at=int(m["expires_at"]),
        model=m["model"],
        previous_response_id=m["previous_response_id"],
        status=m["status"],
        input_items=json.loads(m["input_items"]),
        response=json.loads(m["response"]),
    )


def _owned(key_id: int | None) -> ColumnElement[bool]:
    """Rows of this key: the static key's (None) are those with a NULL key id (IS NULL, as
    ``= NULL`` would match nothing)."""
    return _R.key_id.is_(None) if key_id is None else _R.key_id == key_id


class ResponseStore:
    """The responses table. Each method is one short transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add(self, r: StoredResponse) -> None:
        """Store a response; one with the same id is replaced (atomically, as an upsert on
        SQLite and PostgreSQL)."""
        values = _values(r)
        dialect = self.engine.dialect.name
        with self.engine.begin() as conn:
            if dialect in ("postgresql", "sqlite"):
                stmt = (pg_insert if dialect == "postgresql" else sqlite_insert)(_R).values(values)
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=[_R.id],
                        set_={k: stmt.excluded[k] for k in values if k != "id"},
                    )
                )
            else:  # other databases: replace in one transaction
                conn.execute(delete(_R).where(_R.id == r.id))
                conn.execute(insert(_R).values(values))

    def get(self, response_id: str, key_id: int | None, now: int) -> StoredResponse | None:
        """The response, or None if it is absent, expired (``expires_at <= now``) or another
        key's."""
        if not storable_id(response_id):
            return None
        with self.engine.begin() as conn:
            row = conn.execute(
                select(*_COLUMNS).where(_R.id == response_id, _owned(key_id), _R.expires_at > now)
            ).first()
        return None if row is None else _from_row(row._mapping)

    def chain(
        self, response_id: str, key_id: int | None, now: int, limit: int = 100
    ) -> list[StoredResponse]:
        """The response and its ``previous_response_id`` ancestors, oldest first: at most
        ``limit`` of them (the newest ones). The walk stops at an ancestor that is absent,
        expired or another key's (what was found before it is returned), and at a cycle; if
        the response itself is not visible, the chain is empty."""
        found: list[StoredResponse] = []
        seen: set[str] = set()
        current = response_id
        with self.engine.begin() as conn:
            while len(found) < limit and current not in seen and storable_id(current):
                seen.add(current)
                row = conn.execute(
                    select(*_COLUMNS).where(_R.id == current, _owned(key_id), _R.expires_at > now)
                ).first()
                if row is None:
                    break
                found.append(_from_row(row._mapping))
                if found[-1].previous_response_id is None:
                    break
                current = found[-1].previous_response_id
        found.reverse()
        return found

    def delete(self, response_id: str, key_id: int | None, now: int | None = None) -> bool:
        """Delete a response of this key; True if one was deleted. With ``now``, an expired
        row is still removed but reported as absent (False), as ``get`` would see it."""
        if not storable_id(response_id):
            return False
        where = (_R.id == response_id, _owned(key_id))
        with self.engine.begin() as conn:
            expires_at = conn.scalar(select(_R.expires_at).where(*where))
            if expires_at is None:
                return False
            conn.execute(delete(_R).where(*where))
        return now is None or expires_at > now

    def purge(self, now: int, batch: int = 500, max_batches: int = 20) -> int:
        """Delete expired rows (``expires_at <= now``), at most ``batch`` per transaction and
        ``max_batches`` transactions per call; returns how many were deleted. A row replaced
        with a later expiry between a batch's select and its delete is kept."""
        if batch < 1 or max_batches < 1:
            raise ValueError("batch and max_batches must be at least 1")
        deleted = 0
        for _ in range(max_batches):
            with self.engine.begin() as conn:
                ids = list(
                    conn.scalars(
                        select(_R.id)
                        .where(_R.expires_at <= now)
                        .order_by(_R.expires_at)
                        .limit(batch)
                    )
                )
                if ids:
                    result = conn.execute(delete(_R).where(_R.id.in_(ids), _R.expires_at <= now))
                    deleted += result.rowcount
            if len(ids) < batch:
                break
        return deleted

    def count(self) -> int:
        """How many rows are stored, expired ones not yet purged included."""
        with self.engine.begin() as conn:
            return int(conn.scalar(select(func.count()).select_from(_R)) or 0)
