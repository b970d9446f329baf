"""The console's JSON API (routes/console_api.py) through the real app on the fake engine:
who may see what, the daily usage chart, the request log's pages and filters, hostile query
strings, finish_reason metering, the 0006 migration and the daily sums it keeps."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect, text

from oasis.engine.fake import FakeEngine
from oasis.server.app import create_app
from oasis.store import usage as usage_store
from oasis.store.db import MIGRATIONS, make_engine
from oasis.store.usage import DAY, Usage, UsageStore, day_of, join_reasons
from tests.conftest import API_KEY, make_app
from tests.fake_upstream import running
from tests.fuzz.strategies import url_part, url_texts
from tests.pg import pg_schema
from tests.unit.test_gateway import CHAT, as_key, gateway, new_key
from tests.unit.test_upstream import _settings as upstream_settings

TODAY = day_of(int(time.time()))


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[TestClient]:
    app = make_app(FakeEngine(n_ctx=8192), tmp=tmp_path)
    with TestClient(app, headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        yield client


def usage(
    n: int,
    *,
    key_id: int | None,
    model: str = "m1",
    at: int | None = None,
    status: int = 200,
    endpoint: str = "/v1/chat/completions",
    tag: str = "",
    finish_reason: str | None = "stop",
) -> Usage:
    return Usage(
        request_id=f"r{tag}{key_id}-{model}-{n}-{at}",
        created_at=TODAY + 3600 if at is None else at,
        key_id=key_id,
        model=model,
        endpoint=endpoint,
        prompt_tokens=10,
        cached_tokens=2,
        completion_tokens=5,
        cost_usd=0.5,
        latency_ms=12.5,
        ttft_ms=3.0,
        status=status,
        disconnected=False,
        finish_reason=finish_reason,
    )


def seed(http: TestClient) -> tuple[str, int, str, int]:
    """Two user keys (a: secret, id; b: secret, id) and records of a, b and the static key
    over the last few days, on two models; two of a's are errors."""
    a_secret, a = new_key(http, name="alice")
    b_secret, b = new_key(http, name="bob")
    a_id, b_id = int(a["id"][4:]), int(b["id"][4:])
    recs = [usage(i, key_id=a_id, at=TODAY - 2 * DAY + i) for i in range(5)]
    recs += [
        usage(
            i,
            key_id=a_id,
            model="m2",
            at=TODAY + i,
            status=500 if i < 2 else 200,
            finish_reason=None if i < 2 else "length",
        )
        for i in range(4)
    ]
    recs += [usage(i, key_id=b_id, at=TODAY - DAY + i) for i in range(3)]
    recs += [
        usage(i, key_id=None, model="m2", at=TODAY + 100 + i, endpoint="/v1/completions")
        for i in range(2)
    ]
    gateway(http).usage.add(recs)
    return a_secret, a_id, b_secret, b_id


def walk(
    http: TestClient, query: str = "", headers: dict[str, str] | None = None, limit: int = 3
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    before = ""
    while True:
        r = http.get(f"/console/api/requests?limit={limit}{before}{query}", headers=headers)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["data"]) <= limit
        rows += page["data"]
        if page["next_before"] is None:
            return rows
        # the next page starts below this one's rows (at its last row, or at the lower end
        # of the ids this page scanned)
        assert all(row["id"] >= page["next_before"] for row in page["data"])
        before = f"&before={page['next_before']}"


# -- /me ---------------------------------------------------------------------------------------


def test_me_says_who_is_signed_in(admin: TestClient) -> None:
    assert admin.get("/console/api/me").json() == {"admin": True, "auth": "static", "key": None}
    secret, key = new_key(admin, name="alice", rpm=5, budget_usd=2.5, models=["gpt-3.5-turbo"])
    me = admin.get("/console/api/me", headers=as_key(secret)).json()
    assert me["admin"] is False and me["auth"] == "key"
    k = me["key"]
    assert k["id"] == key["id"] and k["prefix"] == key["prefix"] and k["name"] == "alice"
    assert k["models"] == ["gpt-3.5-turbo"] and k["rpm"] == 5 and k["tpm"] is None
    assert k["budget_usd"] == 2.5 and k["budget_period_s"] == 30 * 86400
    assert k["spend_usd"] == 0.0 and k["expires_at"] is None
    assert secret not in str(me)
    admin_secret, _ = new_key(admin, admin=True)
    me = admin.get("/console/api/me", headers=as_key(admin_secret)).json()
    assert me["admin"] is True and me["auth"] == "key"
    assert admin.get("/console/api/me", headers=as_key("sk-oasis-wrong")).status_code == 401


# -- usage -------------------------------------------------------------------------------------


def test_usage_has_every_day_and_totals(admin: TestClient) -> None:
    seed(admin)
    r = admin.get("/console/api/usage")
    assert r.status_code == 200, r.text
    u = r.json()
    assert u["group_by"] == "model" and u["end"] == TODAY + DAY and u["start"] == TODAY - 6 * DAY
    assert [d["start"] for d in u["days"]] == [TODAY - k * DAY for k in range(6, -1, -1)]
    assert u["days"][0]["rows"] == [] and u["days"][0]["date"] == time.strftime(
        "%Y-%m-%d", time.gmtime(TODAY - 6 * DAY)
    )
    today = {row["group"]: row for row in u["days"][-1]["rows"]}
    assert today["m2"] == {
        "group": "m2",
        "requests": 6,
        "errors": 2,
        "prompt_tokens": 60,
        "cached_tokens": 12,
        "completion_tokens": 30,
        "tokens": 90,
        "cost_usd": 3.0,
    }
    assert u["groups"] == ["m1", "m2"]  # the most requests first
    assert u["totals"]["requests"] == 14 and u["totals"]["errors"] == 2
    assert u["totals"]["tokens"] == 14 * 15 and u["labels"] == {}
    assert len(admin.get("/console/api/usage?days=1").json()["days"]) == 1
    assert len(admin.get("/console/api/usage?days=366").json()["days"]) == 366
    # start/end widen to whole UTC days
    r = admin.get(f"/console/api/usage?start={TODAY - DAY + 5}&end={TODAY + 5}")
    assert [d["start"] for d in r.json()["days"]] == [TODAY - DAY, TODAY]
    assert r.json()["totals"]["requests"] == 3 + 6


def test_usage_by_key_names_the_keys_and_filters(admin: TestClient) -> None:
    _, a_id, _, b_id = seed(admin)
    u = admin.get("/console/api/usage?group_by=key").json()
    assert set(u["groups"]) == {f"key_{a_id}", f"key_{b_id}", "static"}
    assert u["groups"][0] == f"key_{a_id}"  # the most requests first
    assert u["labels"][f"key_{a_id}"].startswith("alice (sk-oasis-")
    assert "static" in u["labels"]["static"]
    only = admin.get(f"/console/api/usage?group_by=key&key=key_{b_id}").json()
    assert only["groups"] == [f"key_{b_id}"] and only["totals"]["requests"] == 3
    static = admin.get("/console/api/usage?key=static").json()
    assert static["totals"]["requests"] == 2 and static["groups"] == ["m2"]
    m1 = admin.get("/console/api/usage?model=m1").json()
    assert m1["groups"] == ["m1"] and m1["totals"]["requests"] == 8
    nobody = admin.get(f"/console/api/usage?key=key_{2**40}").json()
    assert nobody["totals"]["requests"] == 0 and nobody["groups"] == []


def test_a_user_key_sees_only_its_own_usage(admin: TestClient) -> None:
    a_secret, a_id, _, b_id = seed(admin)
    me = as_key(a_secret)
    for query in (
        "",
        "?group_by=key",
        "?model=m1",
        "?days=366",
        f"?key=key_{a_id}",
        f"?start={TODAY - 10 * DAY}&end={TODAY + DAY}",
    ):
        u = admin.get(f"/console/api/usage{query}", headers=me)
        assert u.status_code == 200, (query, u.text)
        body = u.json()
        assert body["totals"]["requests"] <= 9
        if "group_by" in query:
            assert body["groups"] == [f"key_{a_id}"]
            assert list(body["labels"]) == [f"key_{a_id}"]
    assert admin.get("/console/api/usage", headers=me).json()["totals"]["requests"] == 9
    for other in (f"key_{b_id}", "static", "key_999", f"key_{2**40}"):
        r = admin.get(f"/console/api/usage?key={other}", headers=me)
        assert r.status_code == 403, other
        assert r.json()["error"]["code"] == "insufficient_permissions"
        assert r.json()["error"]["param"] == "key"


# -- the request log ---------------------------------------------------------------------------


def test_log_pages_walk_every_row_exactly_once(admin: TestClient) -> None:
    seed(admin)
    rows = walk(admin, limit=3)
    ids = [r["id"] for r in rows]
    assert len(ids) == 14 == len(set(ids)) and ids == sorted(ids, reverse=True)
    assert walk(admin, limit=200) == rows
    first = admin.get("/console/api/requests").json()
    assert len(first["data"]) == 14 and first["next_before"] is None
    row = first["data"][0]
    assert set(row) == {
        "id",
        "request_id",
        "created_at",
        "key",
        "key_name",
        "key_prefix",
        "model",
        "endpoint",
        "status",
        "prompt_tokens",
        "cached_tokens",
        "completion_tokens",
        "cost_usd",
        "ttft_ms",
        "latency_ms",
        "finish_reason",
        "disconnected",
        "estimated",
        "batch_id",
    }
    assert row["key"] is None and row["key_name"] is None  # the static key's, newest


def test_log_filters(admin: TestClient) -> None:
    _, a_id, _, _ = seed(admin)
    alice = walk(admin, f"&key=key_{a_id}")
    assert len(alice) == 9 and {r["key"] for r in alice} == {f"key_{a_id}"}
    assert {r["key_name"] for r in alice} == {"alice"}
    assert all(r["key_prefix"].startswith("sk-oasis-") for r in alice)
    assert {r["key"] for r in walk(admin, "&key=static")} == {None}
    assert len(walk(admin, "&model=m2")) == 6
    assert len(walk(admin, "&endpoint=/v1/completions")) == 2
    errors = walk(admin, "&status=error")
    assert len(errors) == 2 and {r["finish_reason"] for r in errors} == {None}
    assert len(walk(admin, "&status=ok")) == 12
    assert len(walk(admin, "&status=500")) == 2 and walk(admin, "&status=404") == []
    assert len(walk(admin, f"&since={TODAY}")) == 6
    assert len(walk(admin, f"&since={TODAY - DAY}&until={TODAY}")) == 3
    assert len(walk(admin, f"&key=key_{a_id}&model=m2&status=ok")) == 2
    assert walk(admin, f"&key=key_{2**40}") == []
    assert walk(admin, "&model=nope") == []


def test_a_user_key_sees_only_its_own_log(admin: TestClient) -> None:
    a_secret, a_id, b_secret, b_id = seed(admin)
    for secret, kid, count in ((a_secret, a_id, 9), (b_secret, b_id, 3)):
        for query in (
            "",
            "&model=m1",
            "&status=ok",
            "&endpoint=/v1/completions",
            f"&key=key_{kid}",
            "&since=0",
        ):
            rows = walk(admin, query, as_key(secret))
            assert {r["key"] for r in rows} <= {f"key_{kid}"}, query
        assert len(walk(admin, "", as_key(secret))) == count
    for other in (f"key_{b_id}", "static"):
        r = admin.get(f"/console/api/requests?key={other}", headers=as_key(a_secret))
        assert r.status_code == 403 and r.json()["error"]["param"] == "key"


@pytest.mark.parametrize("ref", ["key_0", "key_00"])
@pytest.mark.parametrize("path", ["/console/api/usage", "/console/api/requests"])
def test_key_0_is_no_key(admin: TestClient, path: str, ref: str) -> None:
    """0 stands for the static key in usage_daily: key_0 would mean it in the chart and nothing
    in the log, so it is refused (the static key is ``key=static``)."""
    seed(admin)
    secret, _ = new_key(admin, name="carol")
    for headers in (None, as_key(secret)):
        r = admin.get(f"{path}?key={ref}", headers=headers)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "key"


# -- one page's work is bounded ----------------------------------------------------------------


@pytest.fixture
def small_slice(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(usage_store, "LOG_SLICE", 4)
    return 4


def test_a_filter_matching_nothing_walks_slice_by_slice(
    admin: TestClient, small_slice: int
) -> None:
    seed(admin)  # 14 records, ids 1..14
    for query in ("&status=418", "&endpoint=/x", "&model=m1&status=418", "&until=1"):
        marks = []
        before = ""
        while True:
            page = admin.get(f"/console/api/requests?limit=3{query}{before}").json()
            assert page["data"] == [], query
            marks.append(page["next_before"])
            if page["next_before"] is None:
                break
            before = f"&before={page['next_before']}"
        if query == "&until=1":
            assert marks == [None]  # no record before it: the id range is empty at once
        else:
            assert marks == [11, 7, 3, None], query  # each page scanned at most 4 ids


@pytest.mark.parametrize("limit", [1, 3, 200])
def test_small_slices_still_visit_every_row_once(
    admin: TestClient, small_slice: int, limit: int
) -> None:
    _, a_id, _, b_id = seed(admin)
    all_rows = walk(admin, limit=limit)
    ids = [r["id"] for r in all_rows]
    assert len(ids) == 14 == len(set(ids)) and ids == sorted(ids, reverse=True)
    for query, count in (
        (f"&key=key_{a_id}", 9),
        (f"&key=key_{b_id}", 3),
        ("&key=static", 2),
        ("&model=m2", 6),
        ("&status=error", 2),
        ("&status=ok", 12),
        (f"&since={TODAY}", 6),
        (f"&since={TODAY - DAY}&until={TODAY}", 3),
        (f"&key=key_{a_id}&model=m2&status=ok", 2),
    ):
        rows = walk(admin, query, limit=limit)
        assert len(rows) == count == len({r["id"] for r in rows}), query


def test_since_and_until_at_their_boundaries(admin: TestClient, small_slice: int) -> None:
    """``since`` inclusive, ``until`` exclusive, on records stored out of time order (a long
    request is stored after shorter later ones): the id range is only a bound."""
    t = TODAY - 10 * DAY
    times = [t + 5, t + 10, t + 20, t + 1, t + 30, t + 10, t + 2, t + 40, t + 19, t + 20]
    gateway(admin).usage.add(
        [usage(i, key_id=None, at=at, tag="b") for i, at in enumerate(times)]
    )
    for since, until in (
        (t + 10, t + 20),
        (t + 1, t + 2),
        (t + 2, t + 41),
        (t + 20, t + 21),
        (t, t + 1),
        (t + 41, None),
        (None, t + 10),
        (t + 19, None),
        (t + 40, t + 40),
    ):
        query = "" if since is None else f"&since={since}"
        query += "" if until is None else f"&until={until}"
        for limit in (1, 2, 50):
            got = sorted(r["created_at"] for r in walk(admin, query, limit=limit))
            want = sorted(
                at
                for at in times
                if (since is None or at >= since) and (until is None or at < until)
            )
            assert got == want, (query, limit)


def test_console_json_is_never_stored(admin: TestClient) -> None:
    seed(admin)
    for path in ("/console/api/me", "/console/api/usage", "/console/api/requests"):
        r = admin.get(path)
        assert r.status_code == 200 and r.headers["cache-control"] == "no-store", path
    created = admin.post("/admin/keys", json={"name": "dave"})
    assert created.headers["cache-control"] == "no-store"
    kid = created.json()["id"]
    for r in (
        admin.get("/admin/keys"),
        admin.get(f"/admin/keys/{kid}"),
        admin.patch(f"/admin/keys/{kid}", json={"rpm": 5}),
        admin.post(f"/admin/keys/{kid}/rotate"),
        admin.delete(f"/admin/keys/{kid}"),
    ):
        assert r.status_code == 200 and r.headers["cache-control"] == "no-store", r.url


HOSTILE = [
    ("limit", "0"),
    ("limit", "201"),
    ("limit", "-1"),
    ("limit", "1e3"),
    ("limit", "x"),
    ("limit", "9" * 5000),
    ("before", "0"),
    ("before", str(2**64)),
    ("before", "-5"),
    ("before", "abc"),
    ("since", "-1"),
    ("until", str(10**20)),
    ("status", "oops"),
    ("status", "99"),
    ("status", "600"),
    ("status", "²"),
    ("key", "bob"),
    ("key", "key_x"),
    ("key", "key_" + "9" * 40),
    ("key", "x" * 10_000),
    ("model", "m\x00"),
    ("model", "x" * 10_000),
    ("endpoint", "/v1\x00"),
    ("endpoint", "e" * 10_000),
    ("key", "key_1\x00"),
]


@pytest.mark.parametrize("secret_kind", ["static", "user"])
def test_hostile_queries_are_400s_naming_the_parameter(admin: TestClient, secret_kind: str) -> None:
    secret, _ = new_key(admin, name="mallory")
    headers = as_key(secret) if secret_kind == "user" else None
    for name, value in HOSTILE:
        r = admin.get("/console/api/requests", params={name: value}, headers=headers)
        if r.status_code == 403:  # a user naming a key that is well formed but not its own
            assert name == "key" and secret_kind == "user"
            continue
        assert r.status_code == 400, (name, value[:20], r.status_code, r.text[:200])
        assert r.json()["error"]["param"] == name, (name, value[:20])
    for name, value in [
        ("days", "0"),
        ("days", "367"),
        ("days", "-3"),
        ("days", "1.5"),
        ("days", "9" * 5000),
        ("start", "-1"),
        ("start", str(2**70)),
        ("end", "x"),
        ("group_by", "user"),
        ("group_by", "x" * 10_000),
        ("model", "\x00"),
        ("model", "y" * 10_000),
        ("key", "key_1\x7f"),
    ]:
        r = admin.get("/console/api/usage", params={name: value}, headers=headers)
        assert r.status_code == 400, (name, value[:20], r.text[:200])
        assert r.json()["error"]["param"] == name
    for query, param in [
        ("days=3&start=0", "days"),
        ("start=1000000&end=10", "end"),
        ("start=0&end=100000000", "start"),
    ]:
        r = admin.get(f"/console/api/usage?{query}", headers=headers)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, query
    # raw bytes that are not UTF-8 and an encoded lone surrogate
    for raw in ("model=%ff%fe", "model=%ed%a0%80", "key=%c0%80"):
        for path in ("/console/api/requests", "/console/api/usage"):
            r = admin.get(f"{path}?{raw}", headers=headers)
            assert r.status_code in (200, 400, 403), (path, raw, r.text[:200])


def test_no_auth_answers_like_the_admin_api(tmp_path: Path) -> None:
    with TestClient(make_app(tmp=tmp_path, no_auth=True), base_url="http://127.0.0.1") as http:
        assert http.get("/console/api/me").json() == {"admin": True, "auth": "none", "key": None}
        for path in (
            "/console/api/usage",
            "/console/api/requests",
            "/v1/organization/usage/completions?start_time=0",
        ):
            r = http.get(path)
            assert r.status_code == 400 and r.json()["error"]["code"] == "gateway_disabled"


def test_no_key_no_answer(admin: TestClient) -> None:
    for path in ("/console/api/me", "/console/api/usage", "/console/api/requests"):
        assert admin.get(path, headers={"Authorization": ""}).status_code == 401


# -- finish_reason -----------------------------------------------------------------------------


def test_requests_record_their_finish_reason(admin: TestClient) -> None:
    secret, key = new_key(admin, name="alice")
    me = as_key(secret)
    assert admin.post("/v1/chat/completions", json=CHAT, headers=me).status_code == 200
    r = admin.post("/v1/chat/completions", json={**CHAT, "max_tokens": 1}, headers=me)
    assert r.json()["choices"][0]["finish_reason"] == "length"
    with admin.stream(
        "POST", "/v1/chat/completions", json={**CHAT, "stream": True, "max_tokens": 1}, headers=me
    ) as s:
        assert s.status_code == 200 and "length" in "".join(s.iter_text())
    r = admin.post(
        "/v1/completions",
        json={"model": "gpt-3.5-turbo", "prompt": "hi", "max_tokens": 1},
        headers=me,
    )
    assert r.json()["choices"][0]["finish_reason"] == "length"
    r = admin.post("/v1/chat/completions", json={**CHAT, "model": "nope"}, headers=me)
    assert r.status_code == 404
    admin.portal.call(gateway(admin).ledger.flush)  # type: ignore[union-attr]
    rows = admin.get("/console/api/requests", headers=me).json()["data"]
    assert [r["finish_reason"] for r in rows] == [None, "length", "length", "length", "stop"]
    assert [r["status"] for r in rows] == [404, 200, 200, 200, 200]
    assert {r["key"] for r in rows} == {key["id"]} and rows[-1]["ttft_ms"] is not None


def test_ticket_joins_distinct_reasons_in_choice_order(admin: TestClient) -> None:
    ticket = gateway(admin).ticket(None, "/v1/chat/completions")
    assert ticket.finish_reason() is None
    ticket.choice_ended(2, "stop")
    ticket.choice_ended(0, "length")
    ticket.choice_ended(1, "stop")
    ticket.choice_ended(3, None)
    assert ticket.finish_reason() == "length,stop"
    for i, reason in enumerate(("tool_calls", "content_filter", "function_call", "stop")):
        ticket.choice_ended(4 + i, reason)
    # 46 characters joined: the whole reasons that fit the column, then "…"
    assert ticket.finish_reason() == "length,stop,tool_calls,…"


@pytest.mark.parametrize(
    ("reasons", "stored"),
    [
        ([], None),
        (["stop"], "stop"),
        (["stop", "stop", "length"], "stop,length"),
        (["stop", "length", "tool_calls"], "stop,length,tool_calls"),
        (["stop", "length", "tool_calls", "content_filter"], "stop,length,tool_calls,…"),
        (["content_filter", "function_call", "stop"], "content_filter,function_call,…"),
        (["content_filter", "function_call", "stop", "length"], "content_filter,function_call,…"),
        (["x" * 40, "stop"], "x" * 31 + "…"),
        (["stop", "y" * 40], "stop,…"),
    ],
)
def test_joined_reasons_fit_the_column_whole(reasons: list[str], stored: str | None) -> None:
    joined = join_reasons(reasons)
    assert joined == stored
    assert joined is None or len(joined) <= usage_store.FINISH_REASON_CHARS
    record = Usage.from_json({**usage(0, key_id=1).to_json(), "finish_reason": joined})
    assert record.finish_reason == stored  # kept as it is: nothing left to cut


def test_journal_records_without_finish_reason_still_load() -> None:
    data = usage(1, key_id=3).to_json()
    del data["finish_reason"]
    assert Usage.from_json(data).finish_reason is None
    long = Usage.from_json({**data, "finish_reason": "x\x00" * 40})
    assert long.finish_reason is not None and len(long.finish_reason) == 32
    assert "\x00" not in long.finish_reason
    with pytest.raises(ValueError):
        Usage.from_json({**data, "finish_reason": 5})


# -- the daily sums and the migration ----------------------------------------------------------


def _sums(store: UsageStore, start: int, end: int, width: int = DAY) -> list[Any]:
    """The buckets per key and model, in one order (databases sort NULL keys differently)."""
    rows = [
        (b.start, b.key_id, b.model, b.requests, b.errors, b.prompt_tokens, b.cost_usd)
        for b in store.buckets(start=start, end=end, width=width, group_by=("key", "model"))
    ]
    return sorted(rows, key=lambda r: (r[0], r[1] or 0, r[2]))


def test_daily_sums_agree_with_the_records_and_skip_duplicates(admin: TestClient) -> None:
    store = gateway(admin).usage
    recs = [
        usage(
            i,
            key_id=i % 3 or None,
            model=f"m{i % 2}",
            at=TODAY - (i % 5) * DAY + i,
            status=500 if i % 7 == 0 else 200,
        )
        for i in range(60)
    ]
    store.add(recs[:40])
    store.add(recs[30:], dedupe=True)  # 10 repeated
    store.add(recs[:5])  # all repeated: IntegrityError, retried with dedupe
    assert store.count() == 60
    daily = _sums(store, TODAY - 5 * DAY, TODAY + DAY)
    raw = _sums(store, TODAY - 5 * DAY, TODAY + DAY - 1)  # not whole days: the records
    assert daily == raw and sum(row[3] for row in daily) == 60


def _alembic(url_engine: Any, action: str, revision: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with url_engine.begin() as conn:
        cfg.attributes["connection"] = conn
        getattr(command, action)(cfg, revision)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migration_0006_upgrades_a_0005_database(tmp_path: Path, backend: str) -> None:
    def check(url: str) -> None:
        engine = make_engine(url)
        _alembic(engine, "upgrade", "0005")
        with engine.begin() as conn:
            for i in range(30):
                conn.execute(
                    text(
                        "INSERT INTO usage_records (request_id, created_at, key_id, model, "
                        "endpoint, prompt_tokens, cached_tokens, completion_tokens, cost_usd, "
                        "latency_ms, ttft_ms, status, disconnected, estimated) VALUES (:rid, :t, "
                        ":k, :m, 'e', 10, 1, 5, 0.25, 1.0, NULL, :s, :d, false)"
                    ),
                    {
                        "rid": f"old{i}",
                        "t": TODAY - (i % 4) * DAY + i,
                        "k": i % 3 or None,
                        "m": f"m{i % 2}",
                        "s": 429 if i % 5 == 0 else 200,
                        "d": i % 6 == 0,
                    },
                )
        _alembic(engine, "upgrade", "head")
        columns = {c["name"] for c in inspect(engine).get_columns("usage_records")}
        assert "finish_reason" in columns
        indexes = {ix["name"] for ix in inspect(engine).get_indexes("usage_records")}
        assert {"ix_usage_records_key_id_id", "ix_usage_records_model_id"} <= indexes
        store = UsageStore(engine)
        assert store.records()[0].finish_reason is None
        daily = _sums(store, TODAY - 4 * DAY, TODAY + DAY)
        assert daily == _sums(store, TODAY - 4 * DAY, TODAY + DAY - 1)
        assert sum(row[3] for row in daily) == 30 and sum(row[4] for row in daily) == 6
        store.add([usage(1, key_id=None, model="m0", at=TODAY)])
        assert _sums(store, TODAY, TODAY + DAY) == _sums(store, TODAY, TODAY + DAY - 1)
        _alembic(engine, "downgrade", "0005")
        assert "usage_daily" not in inspect(engine).get_table_names()
        _alembic(engine, "upgrade", "head")
        engine.dispose()

    if backend == "sqlite":
        check(f"sqlite:///{tmp_path / 'old.db'}")
    else:
        with pg_schema() as url:
            check(url)


# -- PostgreSQL, and reading while the ledger writes -------------------------------------------


def test_console_on_postgresql(tmp_path: Path) -> None:
    with (
        pg_schema() as url,
        TestClient(
            make_app(tmp=tmp_path, database_url=url),
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as http,
    ):
        a_secret, a_id, _, b_id = seed(http)
        rows = walk(http, limit=4)
        assert len(rows) == 14 == len({r["id"] for r in rows})
        assert len(walk(http, f"&key=key_{a_id}&status=error")) == 2
        assert {r["key"] for r in walk(http, "", as_key(a_secret))} == {f"key_{a_id}"}
        u = http.get("/console/api/usage?group_by=key").json()
        assert u["totals"]["requests"] == 14 and len(u["days"]) == 7
        mine = http.get("/console/api/usage", headers=as_key(a_secret)).json()
        assert mine["totals"]["requests"] == 9
        assert (
            http.get(f"/console/api/usage?key=key_{b_id}", headers=as_key(a_secret)).status_code
            == 403
        )


def test_pages_stay_consistent_while_the_ledger_writes(admin: TestClient) -> None:
    gw = gateway(admin)
    gw.usage.add([usage(i, key_id=None, tag="old") for i in range(300)])
    stop = threading.Event()
    written = 0

    def write() -> None:
        nonlocal written
        n = 0
        while not stop.wait(0.002):  # batches as the ledger writes them, between the pages
            gw.usage.add([usage(n + j, key_id=None, tag="new") for j in range(10)])
            n += 10
            written = n

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for _ in range(3):
            rows = walk(admin, limit=20)
            ids = [r["id"] for r in rows]
            assert len(ids) == len(set(ids)) and ids == sorted(ids, reverse=True)
            assert len(ids) >= 300
    finally:
        stop.set()
        writer.join()
    assert written > 0
    assert gw.usage.count() == 300 + written
    u = admin.get("/console/api/usage?days=1").json()
    assert u["totals"]["requests"] == 300 + written


def test_upstream_answers_record_their_finish_reason(tmp_path: Path) -> None:
    with running("a") as a, running("b") as b:
        app = create_app(upstream_settings(tmp_path, (a, b)))
        with TestClient(app, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
            chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}
            assert http.post("/v1/chat/completions", json=chat).status_code == 200
            r = http.post("/v1/chat/completions", json={**chat, "max_tokens": 2})
            assert r.json()["choices"][0]["finish_reason"] == "length"
            body = {**chat, "stream": True, "max_tokens": 2}
            with http.stream("POST", "/v1/chat/completions", json=body) as s:
                assert s.status_code == 200 and "length" in "".join(s.iter_text())
            r = http.post("/v1/completions", json={"model": "up", "prompt": "hi", "n": 2})
            assert r.status_code == 200
            http.portal.call(gateway(http).ledger.flush)  # type: ignore[union-attr]
            rows = http.get("/console/api/requests").json()["data"]
            assert [r["finish_reason"] for r in rows] == ["stop", "length", "length", "stop"]


_NAMES = (
    "days",
    "start",
    "end",
    "group_by",
    "key",
    "model",
    "limit",
    "before",
    "endpoint",
    "status",
    "since",
    "until",
)
_VALUES = st.one_of(
    st.builds(str, st.integers(-(10**20), 10**20)),
    st.sampled_from(
        (
            "",
            " 7",
            "1.5",
            "nan",
            "1e3",
            "ok",
            "error",
            "500",
            "model",
            "key",
            "static",
            "key_1",
            "key_2",
            "key_3",
            "key_0",
            f"key_{2**70}",
            "m1",
            "m2",
            "\x00",
            "x" * 300,
            "/v1/completions",
            "٣",
            "²",
        )
    ),
    url_texts(),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_query_is_answered_and_scoped(admin: TestClient, data: st.DataObject) -> None:
    if not hasattr(admin, "seeded"):
        admin.seeded = seed(admin)  # type: ignore[attr-defined]
    a_secret, a_id, _, _ = admin.seeded  # type: ignore[attr-defined]
    pairs = data.draw(st.lists(st.tuples(st.sampled_from(_NAMES), _VALUES), max_size=5))
    query = "&".join(f"{url_part(k)}={url_part(v)}" for k, v in pairs)
    user = data.draw(st.booleans())
    headers = as_key(a_secret) if user else None
    for path in ("/console/api/usage", "/console/api/requests"):
        r = admin.get(f"{path}?{query}", headers=headers)
        assert r.status_code in ((200, 400, 403) if user else (200, 400)), (path, query, r.text)
        if r.status_code != 200:
            error = r.json()["error"]
            assert error["param"] in _NAMES and error["type"] == "invalid_request_error"
        elif user and path.endswith("requests"):
            assert {row["key"] for row in r.json()["data"]} <= {f"key_{a_id}"}
        elif user:
            assert set(r.json()["labels"]) <= {f"key_{a_id}"}
            assert r.json()["totals"]["requests"] <= 9
