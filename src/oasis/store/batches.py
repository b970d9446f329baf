"""Batches of the Batch API (``/v1/batches``): the batch rows and each answered line.

A batch belongs to the key that created it (``key_id``; None is the static ``--api-key``): a
caller sees only its own, and another key's batch is indistinguishable from a missing one.

Each answered line is a row of ``batch_lines`` keyed by (batch, line), written in the same
transaction as the batch's counts: a line is answered at most once however often a batch is
resumed, and the counts always agree with the lines. The output and error files are written
from these rows, in input order, when the batch finalizes.

Which server process runs a batch is a lease (``owner`` until ``lease_until``): replicas on one
database never run the same batch, and a process killed mid-batch leaves a lease that runs
out, after which any process (the restarted one) takes the batch over and resumes it.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import Engine, and_, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from oasis.store.models import BatchLine, BatchRecord
from oasis.store.responses import storable_id

# Statuses a batch leaves only by being worked on (the runner resumes them after a restart).
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
FINAL = ("failed", "completed", "expired", "cancelled")


def new_batch_id() -> str:
    return "batch_" + secrets.token_hex(16)


@dataclass(frozen=True)
class StoredBatch:
    id: str
    key_id: int | None
    endpoint: str
    input_file_id: str
    completion_window: str
    status: str
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    expires_at: int
    in_progress_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    total: int
    completed: int
    failed: int
    input_tokens: int
    output_tokens: int
    metadata: dict[str, str] | None
    errors: list[dict[str, Any]] | None
    output_expires_seconds: int | None

    def to_openai(self) -> dict[str, Any]:
        """The Batch object as OpenAI sends it: times and files not reached yet are nulls
        (OpenAI's API sends them so, though its OpenAPI document types them as values)."""
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": None if self.errors is None else {"object": "list", "data": self.errors},
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "in_progress_at": self.in_progress_at,
            "expires_at": self.expires_at,
            "finalizing_at": self.finalizing_at,
            "completed_at": self.completed_at,
            "failed_at": self.failed_at,
            "expired_at": self.expired_at,
            "cancelling_at": self.cancelling_at,
            "cancelled_at": self.cancelled_at,
            "request_counts": {
                "total": self.total,
                "completed": self.completed,
                "failed": self.failed,
            },
            "usage": {
                "input_tokens": self.input_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": self.output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": self.input_tokens + self.output_tokens,
            },
            "metadata": self.metadata,
        }


_NAMES = [f.name for f in fields(StoredBatch)]


def _row(rec: BatchRecord) -> StoredBatch:
    values = {name: getattr(rec, name) for name in _NAMES if name not in ("metadata", "errors")}
    return StoredBatch(
        **values,
        metadata=json.loads(rec.metadata_json) if rec.metadata_json else None,
        errors=json.loads(rec.errors) if rec.errors else None,
    )


def _encoded(values: dict[str, Any]) -> dict[str, Any]:
    """Column values with ``errors`` as the JSON text it is stored as."""
    if values.get("errors") is not None:
        return {**values, "errors": json.dumps(values["errors"], ensure_ascii=True)}
    return values


def _owned(key_id: int | None) -> Any:
    return BatchRecord.key_id.is_(None) if key_id is None else BatchRecord.key_id == key_id


class BatchStore:
    def __init__(self, db: Engine) -> None:
        self.db = db

    def create(
        self,
        *,
        key_id: int | None,
        endpoint: str,
        input_file_id: str,
        completion_window: str,
        window_seconds: int,
        metadata: dict[str, str] | None,
        output_expires_seconds: int | None,
        now: int,
    ) -> StoredBatch:
        rec = BatchRecord(
            id=new_batch_id(),
            key_id=key_id,
            endpoint=endpoint,
            input_file_id=input_file_id,
            completion_window=completion_window,
            status="validating",
            created_at=now,
            expires_at=now + window_seconds,
            total=0,
            completed=0,
            failed=0,
            input_tokens=0,
            output_tokens=0,
            metadata_json=json.dumps(metadata, ensure_ascii=True) if metadata else None,
            output_expires_seconds=output_expires_seconds,
        )
        batch_id = rec.id
        with Session(self.db) as session, session.begin():
            session.add(rec)
        found = self.load(batch_id)
        assert found is not None
        return found

    def load(self, batch_id: str) -> StoredBatch | None:
        """A batch whoever owns it (for the runner)."""
        if not storable_id(batch_id):
            return None
        with Session(self.db) as session:
            rec = session.get(BatchRecord, batch_id)
            return None if rec is None else _row(rec)

    def get(self, key_id: int | None, batch_id: str) -> StoredBatch | None:
        """The caller's batch, or None (missing, or another key's)."""
        found = self.load(batch_id)
        if found is None or found.key_id != key_id:
            return None
        return found

    def page(
        self, key_id: int | None, *, limit: int, after: str | None = None
    ) -> tuple[list[StoredBatch], bool]:
        """The caller's batches, newest first, after the batch ``after`` (a cursor)."""
        query = select(BatchRecord).where(_owned(key_id))
        if after is not None:
            cursor = self.get(key_id, after)
            if cursor is None:
                return [], False
            query = query.where(
                or_(
                    BatchRecord.created_at < cursor.created_at,
                    and_(
                        BatchRecord.created_at == cursor.created_at,
                        BatchRecord.id < cursor.id,
                    ),
                )
            )
        query = query.order_by(BatchRecord.created_at.desc(), BatchRecord.id.desc())
        with Session(self.db) as session:
            rows = session.scalars(query.limit(limit + 1)).all()
            items = [_row(r) for r in rows[:limit]]
        return items, len(rows) > limit

    def unfinished(self) -> list[str]:
        """Batches some runner still has to work on, oldest first."""
        query = (
            select(BatchRecord.id)
            .where(BatchRecord.status.in_(ACTIVE))
            .order_by(BatchRecord.created_at, BatchRecord.id)
        )
        with self.db.connect() as conn:
            return [r[0] for r in conn.execute(query)]

    def claim(self, batch_id: str, owner: str, now: float, ttl: float) -> bool:
        """Take (or renew) the lease on a batch: True if ``owner`` now runs it."""
        query = (
            update(BatchRecord)
            .where(
                BatchRecord.id == batch_id,
                BatchRecord.status.in_(ACTIVE),
                or_(
                    BatchRecord.owner.is_(None),
                    BatchRecord.owner == owner,
                    BatchRecord.lease_until < now,
                ),
            )
            .values(owner=owner, lease_until=now + ttl)
        )
        with self.db.begin() as conn:
            return conn.execute(query).rowcount == 1

    def release(self, batch_id: str, owner: str) -> None:
        query = (
            update(BatchRecord)
            .where(BatchRecord.id == batch_id, BatchRecord.owner == owner)
            .values(owner=None, lease_until=None)
        )
        with self.db.begin() as conn:
            conn.execute(query)

    def update(self, batch_id: str, **values: Any) -> None:
        """Set columns of a batch (``errors`` as Python values)."""
        values = _encoded(values)
        with self.db.begin() as conn:
            conn.execute(update(BatchRecord).where(BatchRecord.id == batch_id).values(**values))

    def advance(self, batch_id: str, current: set[str], **values: Any) -> bool:
        """Set columns of a batch only if its status is still one of ``current`` (a cancel
        may have come meanwhile): True if it was."""
        values = _encoded(values)
        with self.db.begin() as conn:
            query = (
                update(BatchRecord)
                .where(BatchRecord.id == batch_id, BatchRecord.status.in_(current))
                .values(**values)
            )
            return conn.execute(query).rowcount == 1

    def cancel(self, key_id: int | None, batch_id: str, now: int) -> StoredBatch | None:
        """Ask for a batch to be cancelled: ``cancelling`` if it is still being worked on;
        a finished one is returned unchanged. None: not the caller's batch."""
        found = self.get(key_id, batch_id)
        if found is None:
            return None
        with self.db.begin() as conn:
            conn.execute(
                update(BatchRecord)
                .where(
                    BatchRecord.id == batch_id,
                    BatchRecord.status.in_(("validating", "in_progress")),
                )
                .values(status="cancelling", cancelling_at=now)
            )
        return self.load(batch_id)

    def answer(
        self,
        batch_id: str,
        line: int,
        *,
        ok: bool,
        result: dict[str, Any],
        input_tokens: int = 0,
        output_tokens: int = 0,
    ) -> bool:
        """Record one line's answer and count it, in one transaction. False if the line was
        already answered (nothing changes)."""
        text = json.dumps(result, ensure_ascii=True, separators=(",", ":"))
        counts: dict[str, Any] = {
            "input_tokens": BatchRecord.input_tokens + input_tokens,
            "output_tokens": BatchRecord.output_tokens + output_tokens,
        }
        if ok:
            counts["completed"] = BatchRecord.completed + 1
        else:
            counts["failed"] = BatchRecord.failed + 1
        try:
            with self.db.begin() as conn:
                conn.execute(
                    insert(BatchLine).values(batch_id=batch_id, line=line, ok=ok, result=text)
                )
                conn.execute(update(BatchRecord).where(BatchRecord.id == batch_id).values(**counts))
        except IntegrityError:
            return False
        return True

    def drop_lines(self, batch_id: str) -> None:
        """Forget a finished batch's lines (its output and error files hold them)."""
        with self.db.begin() as conn:
            conn.execute(delete(BatchLine).where(BatchLine.batch_id == batch_id))

    def answered(self, batch_id: str) -> set[int]:
        with self.db.connect() as conn:
            rows = conn.execute(select(BatchLine.line).where(BatchLine.batch_id == batch_id))
            return {r[0] for r in rows}

    def lines(self, batch_id: str, *, ok: bool) -> Iterator[str]:
        """The answered lines' JSON, in input order: the output file's (``ok``) or the error
        file's."""
        query = (
            select(BatchLine.result)
            .where(BatchLine.batch_id == batch_id, BatchLine.ok == ok)
            .order_by(BatchLine.line)
        )
        with self.db.connect() as conn:
            for row in conn.execution_options(yield_per=1000).execute(query):
                yield str(row[0])
