"""Usage reports from the ledger: records summed in time buckets (per key and/or model), their
totals, and what a key spent in its current budget period.

One module for every reader: the admin API's ``GET /v1/organization/usage/completions`` (OpenAI's
organization usage shape, ``openai_page``), ``GET /admin/keys`` (``key_object``), and the
``oasis usage`` / ``oasis keys list`` commands.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from oasis.store.keys import DEFAULT_BUDGET_PERIOD_S, KeyInfo
from oasis.store.usage import GROUPS, UsageBucket, UsageStore

MAX_TIME = 253402300799  # 9999-12-31 23:59:59 UTC, the last second a date can show


# -- spend this period -------------------------------------------------------------------------


def budget_window(key: KeyInfo, now: float) -> tuple[float, float]:
    """The key's current budget period: windows of ``budget_period_s`` from its creation."""
    period = float(key.budget_period_s or DEFAULT_BUDGET_PERIOD_S)
    created = key.created_at.timestamp()
    start = created + math.floor(max(0.0, now - created) / period) * period
    return start, start + period


def ledger_spend(usage: UsageStore, key: KeyInfo, now: float) -> float:
    """USD the key spent in its current budget period, as the ledger has it: the definition of
    "spend this period" (a server's spend counter starts from this and adds what it settles)."""
    start, _ = budget_window(key, now)
    return usage.spend(key.id, int(start))


# -- buckets -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class UsageQuery:
    """Which records, in which buckets. Buckets are ``width`` seconds long and start at
    ``origin + k * width`` (default origin: ``start``); ``group_by`` splits them by ``key``
    and/or ``model``. With ``limit``, one page of that many buckets is read, from ``page`` (a
    previous page's ``next_page``) or else from ``start``."""

    start: int
    end: int
    width: int
    origin: int | None = None
    group_by: tuple[str, ...] = ()
    key_ids: tuple[int | None, ...] | None = None  # None: the static key
    models: tuple[str, ...] | None = None
    page: int | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.width < 1:
            raise ValueError(f"bucket width must be at least 1 s, not {self.width}")
        unknown = set(self.group_by) - set(GROUPS)
        if unknown:
            raise ValueError(f"cannot group by {sorted(unknown)}")


@dataclass(frozen=True)
class Totals:
    """Sums over rows of a report."""

    requests: int = 0
    errors: int = 0
    disconnected: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def of(cls, rows: Iterable[UsageBucket | Totals]) -> Totals:
        t = cls()
        for r in rows:
            t = cls(
                requests=t.requests + r.requests,
                errors=t.errors + r.errors,
                disconnected=t.disconnected + r.disconnected,
                prompt_tokens=t.prompt_tokens + r.prompt_tokens,
                cached_tokens=t.cached_tokens + r.cached_tokens,
                completion_tokens=t.completion_tokens + r.completion_tokens,
                cost_usd=t.cost_usd + r.cost_usd,
            )
        return t


@dataclass(frozen=True)
class Bucket:
    """One time bucket, ``[start, end)``, with a row per group that had requests (none: an
    empty bucket)."""

    start: int
    end: int
    rows: list[UsageBucket]


@dataclass(frozen=True)
class UsageReport:
    query: UsageQuery
    buckets: list[Bucket]  # every bucket of the page, empty ones too
    next_page: int | None  # where the next page starts, if the query's range goes on

    @property
    def rows(self) -> list[UsageBucket]:
        """The rows of every bucket, in time order (empty buckets have none)."""
        return [r for b in self.buckets for r in b.rows]

    def totals(self) -> Totals:
        return Totals.of(self.rows)


def usage_report(store: UsageStore, query: UsageQuery) -> UsageReport:
    """Read one page of buckets from the ledger."""
    origin = query.start if query.origin is None else query.origin
    width = query.width
    first = query.start if query.page is None else query.page
    stop = query.end if query.limit is None else min(query.end, first + query.limit * width)
    if stop <= first:
        return UsageReport(query, [], None)
    rows = store.buckets(
        start=first,
        end=stop,
        width=width,
        origin=origin,
        group_by=query.group_by,
        key_ids=query.key_ids,
        models=query.models,
    )
    by_start: dict[int, list[UsageBucket]] = {}
    for row in rows:
        by_start.setdefault(row.start, []).append(row)
    buckets = []
    t = origin + (first - origin) // width * width  # the bucket ``first`` falls in
    while t < stop:
        buckets.append(Bucket(max(t, first), min(t + width, query.end), by_start.get(t, [])))
        t += width
    return UsageReport(query, buckets, stop if stop < query.end else None)


# -- shapes ------------------------------------------------------------------------------------


def openai_page(report: UsageReport) -> dict[str, Any]:
    """The report as OpenAI's organization usage API answers (``UsageResponse`` with
    ``UsageCompletionsResult``s), plus ``cost_usd`` per result."""
    groups = report.query.group_by
    return {
        "object": "page",
        "data": [
            {
                "object": "bucket",
                "start_time": b.start,
                "end_time": b.end,
                "results": [_openai_result(r, groups) for r in b.rows],
            }
            for b in report.buckets
        ],
        "has_more": report.next_page is not None,
        "next_page": None if report.next_page is None else str(report.next_page),
    }


def _openai_result(b: UsageBucket, groups: tuple[str, ...]) -> dict[str, Any]:
    key_id = None if "key" not in groups or b.key_id is None else f"key_{b.key_id}"
    return {
        "object": "organization.usage.completions.result",
        "input_tokens": b.prompt_tokens,
        "output_tokens": b.completion_tokens,
        "input_cached_tokens": b.cached_tokens,
        "input_uncached_tokens": b.prompt_tokens - b.cached_tokens,
        "input_audio_tokens": 0,
        "output_audio_tokens": 0,
        "num_model_requests": b.requests,
        "project_id": None,
        "user_id": None,
        "api_key_id": key_id,
        "model": b.model if "model" in groups else None,
        "batch": None,
        "service_tier": None,
        "cost_usd": round(b.cost_usd, 8),
    }


def _ts(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


def key_object(
    key: KeyInfo, spend_usd: float | None, now: datetime | None = None
) -> dict[str, Any]:
    """A key as the admin API and ``oasis keys list --json`` show it (never its secret);
    ``spend_usd`` is what it spent this budget period, null for a key without a budget."""
    now = now or datetime.now(key.created_at.tzinfo)
    spend = None
    if key.budget_usd is not None and spend_usd is not None and math.isfinite(spend_usd):
        spend = round(spend_usd, 6)
    return {
        "object": "api_key",
        "id": key.public_id,
        "name": key.name,
        "prefix": key.prefix,
        "redacted_value": f"{key.prefix}-****",
        "is_admin": key.is_admin,
        "status": key.status(now),
        "rpm": key.rpm,
        "tpm": key.tpm,
        "budget_usd": key.budget_usd,
        "budget_period_seconds": key.budget_period_s,
        "models": key.models,
        "spend_usd": spend,
        "created_at": _ts(key.created_at),
        "expires_at": _ts(key.expires_at),
        "revoked_at": _ts(key.revoked_at),
        "last_used_at": _ts(key.last_used_at),
    }
