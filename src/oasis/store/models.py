"""Tables."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Text,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class ApiKey(Base):
    """An API key. Only a hash of the secret is stored; ``prefix`` identifies it to people."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(32), unique=True, index=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    budget_usd: Mapped[float | None] = mapped_column(Float, nullable=True)
    budget_period_s: Mapped[int | None] = mapped_column(Integer, nullable=True)
    models: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class UsageRecord(Base):
    """One metered request: who, which model, tokens as the engine counted them, cost, timing."""

    __tablename__ = "usage_records"
    # the console's request log: newest first (keyset on id), filtered by key or model
    __table_args__ = (
        Index("ix_usage_records_key_id_id", "key_id", "id"),
        Index("ix_usage_records_model_id", "model", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    created_at: Mapped[int] = mapped_column(BigInteger, index=True)  # unix seconds, as OpenAI
    key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    model: Mapped[str] = mapped_column(String(200))
    endpoint: Mapped[str] = mapped_column(String(100))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    cached_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    cost_usd: Mapped[float] = mapped_column(Float)
    latency_ms: Mapped[float] = mapped_column(Float)
    ttft_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    status: Mapped[int] = mapped_column(Integer)
    disconnected: Mapped[bool] = mapped_column(Boolean)
    # tokens counted by oasis: the upstream that served the request reported no usage
    estimated: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # the batch (/v1/batches) the request was a line of
    batch_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # why the answer ended, as the client was told ("stop", "length", "tool_calls", ...;
    # "stop,length" when choices ended differently); null when none ended (an error)
    finish_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)


class UsageDaily(Base):
    """Usage records summed per UTC day, key and model, kept in the same transaction as the
    records (``UsageStore.add``): the console's chart reads a few thousand of these rows rather
    than summing a million records. ``key_id`` 0 stands for the static ``--api-key`` (NULL in
    usage_records), so the primary key can hold it."""

    __tablename__ = "usage_daily"

    day: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # unix seconds, 00:00 UTC
    key_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger)
    errors: Mapped[int] = mapped_column(BigInteger)
    disconnected: Mapped[int] = mapped_column(BigInteger)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger)
    cached_tokens: Mapped[int] = mapped_column(BigInteger)
    completion_tokens: Mapped[int] = mapped_column(BigInteger)
    cost_usd: Mapped[float] = mapped_column(Float)


class ResponseRecord(Base):
    """A stored Responses API response (``store: true``), readable by the key that made it
    until ``expires_at``. The JSON columns are text written with ``ensure_ascii`` (PostgreSQL
    text refuses NUL; escaped JSON never holds one)."""

    __tablename__ = "responses"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # resp_...
    key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)  # None: the static key
    created_at: Mapped[int] = mapped_column(BigInteger)  # unix seconds
    expires_at: Mapped[int] = mapped_column(BigInteger, index=True)  # the cleanup scans it
    model: Mapped[str] = mapped_column(String(200))
    previous_response_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str] = mapped_column(String(20))
    input_items: Mapped[str] = mapped_column(Text)  # a JSON array
    response: Mapped[str] = mapped_column(Text)  # a JSON object


class FileRecord(Base):
    """An uploaded (or batch-written) file's metadata; its bytes are under the data directory
    (``files/<id>``). It belongs to the key that uploaded it."""

    __tablename__ = "files"
    __table_args__ = (Index("ix_files_key_created", "key_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # file-...
    key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)  # None: the static key
    purpose: Mapped[str] = mapped_column(String(32))
    filename: Mapped[str] = mapped_column(String(255))
    bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[int] = mapped_column(BigInteger)  # unix seconds
    expires_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class BatchRecord(Base):
    """A batch (``/v1/batches``): its input file, status and the times it reached each, and
    its counts. ``metadata_json`` and ``errors`` are JSON text."""

    __tablename__ = "batches"
    __table_args__ = (Index("ix_batches_key_created", "key_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # batch_...
    key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    endpoint: Mapped[str] = mapped_column(String(64))
    input_file_id: Mapped[str] = mapped_column(String(64))
    completion_window: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(20), index=True)
    output_file_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_file_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    in_progress_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    finalizing_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    completed_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    failed_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    expired_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    cancelling_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    cancelled_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    total: Mapped[int] = mapped_column(Integer)
    completed: Mapped[int] = mapped_column(Integer)
    failed: Mapped[int] = mapped_column(Integer)
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    metadata_json: Mapped[str | None] = mapped_column("metadata", Text, nullable=True)
    errors: Mapped[str | None] = mapped_column(Text, nullable=True)
    # output_expires_after.seconds: the output and error files expire that long after made
    output_expires_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # the server process running the batch, until lease_until (unix seconds): several
    # replicas on one database never run the same batch; a killed one's lease runs out
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[float | None] = mapped_column(Float, nullable=True)


class BatchLine(Base):
    """One answered line of a batch: its line of the output file (``ok``) or of the error
    file, as JSON text. The primary key makes each line answered at most once."""

    __tablename__ = "batch_lines"

    batch_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    line: Mapped[int] = mapped_column(Integer, primary_key=True)
    ok: Mapped[bool] = mapped_column(Boolean)
    result: Mapped[str] = mapped_column(Text)
