"""The usage ledger's table on SQLite and PostgreSQL: idempotent adds, spend, buckets."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import DataError

from oasis.store.models import UsageRecord
from oasis.store.usage import MODEL_CHARS, Usage, UsageStore

DAY = 86400
T0 = 1_780_000_000 - 1_780_000_000 % DAY  # a midnight UTC


def rec(rid: str, t: int, key: int | None = 1, model: str = "gpt-4o", **kw: object) -> Usage:
    fields: dict[str, object] = dict(
        request_id=rid, created_at=t, key_id=key, model=model, endpoint="/v1/chat/completions",
        prompt_tokens=10, cached_tokens=4, completion_tokens=5, cost_usd=0.5, latency_ms=12.0,
        ttft_ms=3.0, status=200, disconnected=False,
    )
    fields.update(kw)
    return Usage(**fields)  # type: ignore[arg-type]


def test_add_is_idempotent_by_request_id(db: Engine) -> None:
    store = UsageStore(db)
    assert store.add([rec("a", T0), rec("b", T0)]) == 2
    # a replayed journal repeats records already stored, and may repeat itself
    assert store.add([rec("b", T0), rec("c", T0), rec("c", T0)]) == 1
    assert store.count() == 3
    assert [r.request_id for r in store.records()] == ["a", "b", "c"]
    assert store.records()[0] == rec("a", T0)


def test_spend_sums_a_keys_cost_since_a_time(db: Engine) -> None:
    store = UsageStore(db)
    store.add([rec("a", T0, cost_usd=0.25), rec("b", T0 + 10, cost_usd=0.5),
               rec("c", T0 + 10, key=2, cost_usd=9.0), rec("d", T0 - 1, cost_usd=100.0)])
    assert store.spend(1, T0) == 0.75
    assert store.spend(2, T0) == 9.0
    assert store.spend(3, T0) == 0.0


def test_buckets_by_day_key_and_model(db: Engine) -> None:
    store = UsageStore(db)
    store.add([
        rec("a", T0 + 5),
        rec("b", T0 + 100, key=2, model="gpt-4"),
        rec("c", T0 + DAY + 1, status=429, completion_tokens=0),
        rec("d", T0 + DAY + 2, key=None, disconnected=True),
        rec("e", T0 + 3 * DAY),  # outside the window
    ])
    days = store.buckets(start=T0, end=T0 + 2 * DAY, width=DAY, origin=T0)
    assert [(b.start, b.requests, b.prompt_tokens, b.completion_tokens) for b in days] == [
        (T0, 2, 20, 10), (T0 + DAY, 2, 20, 5)]
    assert days[1].errors == 1 and days[1].disconnected == 1 and days[1].cached_tokens == 8
    assert days[0].cost_usd == 1.0 and days[0].end == T0 + DAY
    per_key = store.buckets(start=T0, end=T0 + 2 * DAY, width=2 * DAY, origin=T0,
                            group_by=["key"])
    assert {(b.key_id, b.requests) for b in per_key} == {(1, 2), (2, 1), (None, 1)}
    per_model = store.buckets(start=T0, end=T0 + 2 * DAY, width=2 * DAY, origin=T0,
                              group_by=["model"], key_ids=[1, 2])
    assert {(b.model, b.requests) for b in per_model} == {("gpt-4o", 2), ("gpt-4", 1)}
    only = store.buckets(start=T0, end=T0 + 4 * DAY, width=DAY, origin=T0, models=["gpt-4"])
    assert [(b.start, b.requests) for b in only] == [(T0, 1)]
    # buckets start at the origin, not at the epoch's midnight
    shifted = store.buckets(start=T0 + 50, end=T0 + 50 + DAY, width=DAY, origin=T0 + 50)
    assert [(b.start, b.requests) for b in shifted] == [(T0 + 50, 3)]


def test_client_text_is_made_storable(db: Engine) -> None:
    """A model name is the client's text: lone surrogates, NUL and control characters are
    replaced and the length is cut to the column's, so any database stores it."""
    store = UsageStore(db)
    weird = rec("a", T0, model="\ud800x\x00\x1b[31m" + "y" * 1000)
    assert weird.model == "\ufffdx\ufffd\ufffd[31m" + "y" * 192
    assert len(weird.model) == MODEL_CHARS == UsageRecord.__table__.c.model.type.length  # type: ignore[attr-defined]
    assert rec("b", T0, model="модель-ü").model == "модель-ü"  # text that is fine stays
    assert store.add([weird, rec("b", T0, model="\udfff")]) == 2
    assert [r.model for r in store.records()] == [weird.model, "\ufffd"]


def test_from_json_refuses_what_is_no_record() -> None:
    good = rec("a", T0).to_json()
    assert Usage.from_json(good) == rec("a", T0)
    for bad in ([1], {**good, "prompt_tokens": "10"}, {**good, "status": True},
                {**good, "key_id": 1.5}, {k: v for k, v in good.items() if k != "model"},
                {**good, "request_id": "x" * 65}, {**good, "request_id": ""}):
        with pytest.raises(ValueError):
            Usage.from_json(bad)
    assert Usage.from_json({**good, "extra": 1, "cost_usd": 1}).cost_usd == 1


def test_add_or_refuse_stores_around_a_bad_record(db: Engine) -> None:
    store = UsageStore(db)
    store.add([rec("dup", T0)])
    added, refused = store.add_or_refuse(
        [rec("a", T0), rec("big", T0, prompt_tokens=10**30), rec("dup", T0), rec("b", T0)])
    assert added == 2
    [(bad, error)] = refused
    assert bad.request_id == "big" and isinstance(error, (OverflowError, DataError))
    assert sorted(r.request_id for r in store.records()) == ["a", "b", "dup"]
    assert store.add_or_refuse([rec("c", T0)]) == (1, [])
