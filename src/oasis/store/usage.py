"""The usage ledger's table: add records (idempotently, by request id), sum spend, bucket usage."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import Engine, case, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from oasis.store.models import UsageRecord


@dataclass(frozen=True)
class Usage:
    """One metered request. ``created_at`` is unix seconds; ``key_id`` is None for the static
    ``--api-key``."""

    request_id: str
    created_at: int
    key_id: int | None
    model: str
    endpoint: str
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    cost_usd: float
    latency_ms: float
    ttft_ms: float | None
    status: int
    disconnected: bool

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)  # flat fields: no need for asdict's recursive copy

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Usage:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


GROUPS = ("key", "model")


@dataclass(frozen=True)
class UsageBucket:
    """Totals of one time bucket, optionally per key and/or model."""

    start: int
    end: int
    key_id: int | None
    model: str | None
    requests: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    cost_usd: float
    errors: int
    disconnected: int


class UsageStore:
    """The usage_records table."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add(self, records: Sequence[Usage], *, dedupe: bool = False) -> int:
        """Insert records in one statement; returns how many were new.

        With ``dedupe`` (a replayed journal may repeat records already stored, or itself),
        records whose request id is stored already are skipped. Without it a duplicate is not
        expected, but if one turns up the batch is retried with ``dedupe``.
        """
        if not records:
            return 0
        if not dedupe:
            try:
                with self.engine.begin() as conn:
                    conn.execute(insert(UsageRecord), [r.to_json() for r in records])
                return len(records)
            except IntegrityError:
                return self.add(records, dedupe=True)
        with self.engine.begin() as conn:
            ids = [r.request_id for r in records]
            known: set[str] = set()
            for start in range(0, len(ids), 500):
                part = ids[start : start + 500]
                known.update(
                    conn.scalars(
                        select(UsageRecord.request_id).where(UsageRecord.request_id.in_(part))
                    )
                )
            new: dict[str, Usage] = {}
            for r in records:
                if r.request_id not in known:
                    new.setdefault(r.request_id, r)
            if new:
                conn.execute(insert(UsageRecord), [r.to_json() for r in new.values()])
        return len(new)

    def count(self) -> int:
        with Session(self.engine) as s:
            return int(s.scalar(select(func.count()).select_from(UsageRecord)) or 0)

    def spend(self, key_id: int, since: int) -> float:
        """USD spent by a key since a unix time."""
        with Session(self.engine) as s:
            total = s.scalar(
                select(func.coalesce(func.sum(UsageRecord.cost_usd), 0.0)).where(
                    UsageRecord.key_id == key_id, UsageRecord.created_at >= since
                )
            )
            return float(total or 0.0)

    def records(self, *, since: int = 0, key_id: int | None = None) -> list[Usage]:
        names = [f.name for f in fields(Usage)]
        with Session(self.engine) as s:
            q = select(UsageRecord).where(UsageRecord.created_at >= since)
            if key_id is not None:
                q = q.where(UsageRecord.key_id == key_id)
            rows = s.scalars(q.order_by(UsageRecord.id))
            return [Usage(**{n: getattr(r, n) for n in names}) for r in rows]

    def buckets(
        self,
        *,
        start: int,
        end: int,
        width: int,
        origin: int = 0,
        group_by: Iterable[str] = (),
        key_ids: Sequence[int] | None = None,
        models: Sequence[str] | None = None,
    ) -> list[UsageBucket]:
        """Sums per ``width``-second bucket (buckets start at ``origin + k * width``) in
        ``[start, end)``, split by key and/or model when asked; only buckets with requests are
        returned."""
        groups = set(group_by)
        unknown = groups - set(GROUPS)
        if unknown:
            raise ValueError(f"cannot group by {sorted(unknown)}")
        r = UsageRecord
        bucket = (origin + ((r.created_at - origin) // width) * width).label("bucket")
        cols: list[Any] = [bucket]
        if "key" in groups:
            cols.append(r.key_id)
        if "model" in groups:
            cols.append(r.model)
        q = select(
            *cols,
            func.count().label("requests"),
            func.sum(r.prompt_tokens),
            func.sum(r.cached_tokens),
            func.sum(r.completion_tokens),
            func.sum(r.cost_usd),
            func.sum(case((r.status >= 400, 1), else_=0)),
            func.sum(case((r.disconnected, 1), else_=0)),
        ).where(r.created_at >= start, r.created_at < end)
        if key_ids is not None:
            q = q.where(r.key_id.in_(list(key_ids)))
        if models is not None:
            q = q.where(r.model.in_(list(models)))
        q = q.group_by(*cols).order_by(*cols)
        out: list[UsageBucket] = []
        with Session(self.engine) as s:
            for row in s.execute(q):
                values = list(row)
                b = int(values.pop(0))
                key_id = values.pop(0) if "key" in groups else None
                model = values.pop(0) if "model" in groups else None
                requests, prompt, cached, completion, cost, errors, disc = values
                out.append(
                    UsageBucket(
                        start=b,
                        end=b + width,
                        key_id=key_id,
                        model=model,
                        requests=int(requests),
                        prompt_tokens=int(prompt or 0),
                        cached_tokens=int(cached or 0),
                        completion_tokens=int(completion or 0),
                        cost_usd=float(cost or 0.0),
                        errors=int(errors or 0),
                        disconnected=int(disc or 0),
                    )
                )
        return out
