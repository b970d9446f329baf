"""Usage reports from a real ledger (SQLite and PostgreSQL): buckets, pages, totals, and spend
this budget period."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from oasis.gateway import meter
from oasis.gateway.report import (
    Totals,
    UsageQuery,
    budget_window,
    key_object,
    ledger_spend,
    openai_page,
    usage_report,
)
from oasis.store.keys import KeyStore
from oasis.store.usage import Usage, UsageStore

T0 = 1_700_000_000 - 1_700_000_000 % 86400  # a UTC midnight


def record(rid: str, t: int, *, key_id: int | None = 1, model: str = "m", cost: float = 0.5,
           status: int = 200) -> Usage:
    return Usage(request_id=rid, created_at=t, key_id=key_id, model=model,
                 endpoint="/v1/chat/completions", prompt_tokens=10, cached_tokens=4,
                 completion_tokens=5, cost_usd=cost, latency_ms=1.0, ttft_ms=0.5,
                 status=status, disconnected=False)


@pytest.fixture
def ledger(db: Engine) -> UsageStore:
    store = UsageStore(db)
    store.add([
        record("a", T0 + 10), record("b", T0 + 20, model="n"),
        record("c", T0 + 3600 + 5, key_id=None, status=429, cost=0.0),
        record("d", T0 + 86400 + 7, key_id=2),
    ])
    return store


def test_buckets_pages_and_empty_buckets(ledger: UsageStore) -> None:
    q = UsageQuery(start=T0, end=T0 + 4 * 3600, width=3600, group_by=("key", "model"), limit=2)
    first = usage_report(ledger, q)
    assert [(b.start, b.end) for b in first.buckets] == [(T0, T0 + 3600),
                                                         (T0 + 3600, T0 + 7200)]
    assert [(r.key_id, r.model, r.requests) for r in first.buckets[0].rows] == [
        (1, "m", 1), (1, "n", 1)]
    assert first.next_page == T0 + 7200
    second = usage_report(ledger, UsageQuery(**{**q.__dict__, "page": first.next_page}))
    assert [b.rows for b in second.buckets] == [[], []] and second.next_page is None
    assert first.totals() == Totals(requests=3, errors=1, prompt_tokens=30, cached_tokens=12,
                                    completion_tokens=15, cost_usd=1.0)


def test_openai_page_shape(ledger: UsageStore) -> None:
    page = openai_page(usage_report(ledger, UsageQuery(
        start=T0, end=T0 + 2 * 86400, width=86400, group_by=("key",), limit=7)))
    assert page["object"] == "page" and page["has_more"] is False and page["next_page"] is None
    day1, day2 = page["data"]
    assert day2["end_time"] == T0 + 2 * 86400
    by_key = {r["api_key_id"]: r for r in day1["results"]}
    assert by_key["key_1"]["num_model_requests"] == 2 and by_key["key_1"]["model"] is None
    assert by_key["key_1"]["input_uncached_tokens"] == 12 and by_key["key_1"]["cost_usd"] == 1
    assert by_key[None]["num_model_requests"] == 1
    assert [r["api_key_id"] for r in day2["results"]] == ["key_2"]


def test_days_from_any_start_are_utc_days(ledger: UsageStore) -> None:
    """``oasis usage``: buckets aligned on UTC midnight even when the start is not."""
    start = T0 + 15
    report = usage_report(ledger, UsageQuery(start=start, end=T0 + 2 * 86400, width=86400,
                                             origin=start - start % 86400))
    assert [(r.start, r.requests) for r in report.rows] == [(T0, 2), (T0 + 86400, 1)]
    assert report.buckets[0].start == start  # the first bucket begins where asked
    one = usage_report(ledger, UsageQuery(start=T0, end=T0 + 2 * 86400, width=2 * 86400,
                                          group_by=("model",)))
    assert {r.model: r.requests for r in one.rows} == {"m": 3, "n": 1}
    assert usage_report(ledger, UsageQuery(start=T0 + 10, end=T0, width=60)).buckets == []
    with pytest.raises(ValueError):
        UsageQuery(start=0, end=1, width=0)


def test_spend_this_period(db: Engine) -> None:
    created = datetime.fromtimestamp(T0, UTC)
    keys = KeyStore(db, clock=lambda: created)
    key, _ = keys.create("k", budget_usd=5, budget_period_s=86400)
    usage = UsageStore(db)
    usage.add([record("a", T0 + 10, key_id=key.id), record("b", T0 + 86400 + 1, key_id=key.id),
               record("c", T0 + 86400 + 2, key_id=key.id, cost=0.25)])
    now = T0 + 86400 + 100.0
    assert budget_window(key, now) == (T0 + 86400, T0 + 2 * 86400)
    assert ledger_spend(usage, key, now) == 0.75
    # the same window as the gateway's (until meter.py takes it from here)
    for at in (T0 - 5.0, T0 + 1.0, now, T0 + 400 * 86400.5):
        assert budget_window(key, at) == meter.budget_window(key, at)
    shown = key_object(key, ledger_spend(usage, key, now), created + timedelta(days=1))
    assert shown["spend_usd"] == 0.75 and shown["status"] == "active"
    assert shown["id"] == key.public_id and "value" not in shown
    assert key_object(key, float("inf"))["spend_usd"] is None
