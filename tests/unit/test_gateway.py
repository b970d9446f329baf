"""The gateway through HTTP and the official SDK (fake engine, real SQLite): admin API, rate
limits and their headers, budgets, and the usage ledger."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI
from sqlalchemy import update

from oasis.engine.fake import FakeEngine
from oasis.gateway.meter import Gateway
from oasis.store.models import ApiKey
from oasis.store.usage import Usage
from tests.conftest import API_KEY, make_app

CHAT = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[TestClient]:
    """A server whose operator key (--api-key) is an admin; prices make usage cost money."""
    app = make_app(
        FakeEngine(n_ctx=8192), tmp=tmp_path,
        prices={"gpt-3.5-turbo": {"input": 1000.0, "output": 2000.0}},
    )
    with TestClient(app, headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        yield client


def gateway(http: TestClient) -> Gateway:
    gw = http.app.state.oasis.gateway  # type: ignore[attr-defined]
    assert gw is not None
    return gw


def new_key(http: TestClient, **body: Any) -> tuple[str, dict[str, Any]]:
    r = http.post("/admin/keys", json={"name": "test", **body})
    assert r.status_code == 201, r.text
    data = r.json()
    return data.pop("value"), data


def as_key(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def records(http: TestClient) -> list[Usage]:
    gw = gateway(http)
    http.portal.call(gw.ledger.flush)  # type: ignore[union-attr]
    return gw.usage.records()


# -- admin API ---------------------------------------------------------------------------------

def test_admin_api_key_lifecycle(admin: TestClient) -> None:
    secret, key = new_key(admin, rpm=10, tpm=1000, models=["gpt-3.5-turbo"], expires="1d")
    assert key["object"] == "api_key" and key["id"].startswith("key_")
    assert key["prefix"].startswith("sk-oasis-") and secret.startswith(key["prefix"] + "-")
    assert key["status"] == "active" and key["rpm"] == 10 and key["expires_at"] > time.time()
    listed = admin.get("/admin/keys").json()["data"]
    assert [k["id"] for k in listed] == [key["id"]]
    assert "value" not in listed[0] and secret not in admin.get("/admin/keys").text
    assert admin.get(f"/admin/keys/{key['prefix']}").json()["id"] == key["id"]
    # the key works, and only for its models
    assert admin.post("/v1/chat/completions", json=CHAT, headers=as_key(secret)).status_code == 200
    r = admin.post("/v1/chat/completions", json={**CHAT, "model": "fake-model"},
                   headers=as_key(secret))
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    # limits change through PATCH
    patched = admin.patch(f"/admin/keys/{key['id']}", json={"rpm": 20, "budget_usd": 5})
    assert patched.json()["rpm"] == 20 and patched.json()["budget_usd"] == 5
    assert patched.json()["budget_period_seconds"] == 30 * 86400
    # rotation: the old secret stops at once, the new one works
    rotated = admin.post(f"/admin/keys/{key['id']}/rotate").json()
    assert rotated["id"] == key["id"] and rotated["prefix"] != key["prefix"]
    r = admin.post("/v1/chat/completions", json=CHAT, headers=as_key(secret))
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    new_secret = rotated["value"]
    assert admin.post("/v1/chat/completions", json=CHAT,
                      headers=as_key(new_secret)).status_code == 200
    # revocation: stops at once (the key cache is cleared)
    gone = admin.delete(f"/admin/keys/{key['id']}").json()
    assert gone["status"] == "revoked" and gone["deleted"] is True
    r = admin.post("/v1/chat/completions", json=CHAT, headers=as_key(new_secret))
    assert r.status_code == 401
    assert r.json()["error"] == {
        "message": r.json()["error"]["message"], "type": "invalid_request_error",
        "param": None, "code": "invalid_api_key"}
    assert admin.get("/admin/keys/key_999").status_code == 404


def test_admin_api_refuses_bad_input(admin: TestClient) -> None:
    r = admin.post("/admin/keys", json={"name": "x", "rpm": 0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "rpm"
    r = admin.post("/admin/keys", json={"name": "x", "colour": "red"})
    assert r.status_code == 400 and "colour" in r.json()["error"]["message"]
    r = admin.post("/admin/keys", json={"name": "x", "expires": "soon"})
    assert r.status_code == 400 and "duration" in r.json()["error"]["message"]


def test_non_admin_keys_cannot_reach_admin_routes(admin: TestClient) -> None:
    secret, _ = new_key(admin)
    for method, path in [("GET", "/admin/keys"), ("POST", "/admin/keys"),
                         ("DELETE", "/admin/keys/key_1"),
                         ("GET", "/v1/organization/usage/completions?start_time=0")]:
        r = admin.request(method, path, headers=as_key(secret), json={"name": "x"})
        assert r.status_code == 403, (method, path, r.text)
        assert r.json()["error"]["code"] == "insufficient_permissions"
    r = admin.get("/admin/keys", headers={"Authorization": "Bearer sk-oasis-wrong"})
    assert r.status_code == 401
    admin_secret, _ = new_key(admin, admin=True)
    assert admin.get("/admin/keys", headers=as_key(admin_secret)).status_code == 200


def test_expired_key_gets_401(admin: TestClient) -> None:
    secret, key = new_key(admin)
    gw = gateway(admin)
    with gw.keys.engine.begin() as conn:
        conn.execute(update(ApiKey).where(ApiKey.id == int(key["id"][4:]))
                     .values(expires_at=datetime(2020, 1, 1, tzinfo=UTC)))
    gw.key_cache.invalidate()
    r = admin.post("/v1/chat/completions", json=CHAT, headers=as_key(secret))
    assert r.status_code == 401 and "expired" in r.json()["error"]["message"]


def test_metrics_need_a_key(admin: TestClient) -> None:
    assert admin.get("/metrics", headers={"Authorization": ""}).status_code == 401
    assert admin.get("/metrics").status_code == 200
    assert admin.get("/health", headers={"Authorization": ""}).status_code == 200


# -- rate limits -------------------------------------------------------------------------------

def test_requests_per_minute_with_headers(admin: TestClient) -> None:
    secret, _ = new_key(admin, rpm=3)
    remaining = []
    for _ in range(3):
        r = admin.post("/v1/chat/completions", json=CHAT, headers=as_key(secret))
        assert r.status_code == 200
        assert r.headers["x-ratelimit-limit-requests"] == "3"
        remaining.append(int(r.headers["x-ratelimit-remaining-requests"]))
        assert r.headers["x-ratelimit-reset-requests"].endswith("s")
        assert "x-ratelimit-limit-tokens" not in r.headers  # no token limit on this key
    assert remaining == [2, 1, 0]
    r = admin.post("/v1/chat/completions", json=CHAT, headers=as_key(secret))
    assert r.status_code == 429
    err = r.json()["error"]
    assert err["code"] == "rate_limit_exceeded" and err["type"] == "requests"
    assert "requests per minute" in err["message"] and "limit 3" in err["message"]
    # one request comes back every 20 s
    assert 15 <= int(r.headers["retry-after"]) <= 20
    assert 15000 <= int(r.headers["retry-after-ms"]) <= 20000
    assert r.headers["x-ratelimit-remaining-requests"] == "0"
    # a request that fails validation counts against the limit too, as OpenAI counts it:
    # with the bucket empty it gets the 429, and still says where the client stands
    r = admin.post("/v1/chat/completions", json={"model": "gpt-3.5-turbo"},
                   headers=as_key(secret))
    assert r.status_code == 429 and r.headers["x-ratelimit-remaining-requests"] == "0"
    # the 429s were recorded, with no tokens
    statuses = sorted(u.status for u in records(admin))
    assert statuses == [200, 200, 200, 429, 429]


def test_tokens_per_minute_reserve_then_settle(admin: TestClient) -> None:
    secret, _ = new_key(admin, tpm=1000)
    r = admin.post("/v1/chat/completions", json={**CHAT, "max_tokens": 200},
                   headers=as_key(secret))
    assert r.status_code == 200
    usage = r.json()["usage"]
    # reserved: prompt + max_tokens (the refill during the request adds a token at most)
    left = int(r.headers["x-ratelimit-remaining-tokens"])
    assert 1000 - usage["prompt_tokens"] - 200 <= left <= 1000 - usage["prompt_tokens"] - 199
    assert r.headers["x-ratelimit-limit-tokens"] == "1000"
    # settled at the end: the next request sees only what the first really used
    r2 = admin.post("/v1/chat/completions", json={**CHAT, "max_tokens": 200},
                    headers=as_key(secret))
    used_first = usage["total_tokens"]
    expected = 1000 - used_first - usage["prompt_tokens"] - 200
    assert expected <= int(r2.headers["x-ratelimit-remaining-tokens"]) <= expected + 3
    # over the limit: the tokens bucket is named
    r3 = admin.post("/v1/chat/completions", json={**CHAT, "max_tokens": 800},
                    headers=as_key(secret))
    assert r3.status_code == 429 and r3.json()["error"]["type"] == "tokens"
    assert int(r3.headers["retry-after"]) >= 1
    # more than the whole limit can never pass: no point retrying
    r4 = admin.post("/v1/chat/completions", json={**CHAT, "max_tokens": 5000},
                    headers=as_key(secret))
    assert r4.status_code == 429 and "Request too large" in r4.json()["error"]["message"]
    assert r4.headers["x-should-retry"] == "false"


def test_the_sdk_retries_a_429_and_gets_through(admin: TestClient) -> None:
    secret, _ = new_key(admin, rpm=60)  # one request back every second
    client = OpenAI(base_url="http://testserver/v1", api_key=secret, http_client=admin,
                    max_retries=0)
    # the bucket refills while the burst runs, so go on until the first 429 (60 and a few)
    refused = None
    for _ in range(300):
        try:
            client.chat.completions.create(model="gpt-3.5-turbo", messages=CHAT["messages"])
        except openai.RateLimitError as exc:
            refused = exc
            break
    assert refused is not None and refused.code == "rate_limit_exceeded"
    retrying = client.with_options(max_retries=2)
    raw = retrying.chat.completions.with_raw_response.create(
        model="gpt-3.5-turbo", messages=CHAT["messages"])
    assert raw.http_request.headers.get("x-stainless-retry-count") in ("1", "2")
    assert raw.parse().choices[0].message.content


# -- budgets and usage -------------------------------------------------------------------------

def test_budget_exhausted_gives_insufficient_quota(admin: TestClient) -> None:
    secret, key = new_key(admin, budget_usd=0.01)
    r = admin.post("/v1/chat/completions", json=CHAT, headers=as_key(secret))
    assert r.status_code == 200
    u = r.json()["usage"]
    cost = (u["prompt_tokens"] * 1000 + u["completion_tokens"] * 2000) / 1e6
    assert cost > 0.01
    r = admin.post("/v1/chat/completions", json=CHAT, headers=as_key(secret))
    assert r.status_code == 429
    assert r.json()["error"]["type"] == "insufficient_quota"
    assert r.json()["error"]["code"] == "insufficient_quota"
    assert r.headers["x-should-retry"] == "false"
    shown = admin.get(f"/admin/keys/{key['id']}").json()
    assert shown["spend_usd"] == pytest.approx(cost)
    # an admin raises the budget: the key works again
    admin.patch(f"/admin/keys/{key['id']}", json={"budget_usd": 10})
    assert admin.post("/v1/chat/completions", json=CHAT, headers=as_key(secret)).status_code == 200


def test_every_request_is_recorded_with_engine_counts(admin: TestClient) -> None:
    secret, key = new_key(admin)
    r = admin.post("/v1/chat/completions", json={**CHAT, "n": 2}, headers=as_key(secret))
    c = admin.post("/v1/completions", json={"model": "text-davinci-002", "prompt": "Say",
                                            "max_tokens": 5}, headers=as_key(secret))
    # a stream without include_usage is metered all the same
    s = admin.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=as_key(secret))
    assert s.status_code == 200 and "usage" not in s.text
    rows = records(admin)
    assert [(u.endpoint, u.model, u.status) for u in rows] == [
        ("/v1/chat/completions", "gpt-3.5-turbo", 200),
        ("/v1/completions", "text-davinci-002", 200),
        ("/v1/chat/completions", "gpt-3.5-turbo", 200)]
    first, second, third = rows
    assert first.key_id == int(key["id"][4:])
    assert first.prompt_tokens == r.json()["usage"]["prompt_tokens"]
    assert first.completion_tokens == r.json()["usage"]["completion_tokens"]
    assert second.completion_tokens == c.json()["usage"]["completion_tokens"] == 5
    assert third.completion_tokens > 0 and not third.disconnected
    assert first.cost_usd == pytest.approx(
        (first.prompt_tokens * 1000 + first.completion_tokens * 2000) / 1e6)
    assert all(u.ttft_ms is not None and 0 < u.ttft_ms <= u.latency_ms for u in rows)


def test_usage_endpoint_in_openai_shape(admin: TestClient, schemas: Any) -> None:
    secret, key = new_key(admin)
    for _ in range(2):
        admin.post("/v1/chat/completions", json=CHAT, headers=as_key(secret))
    admin.post("/v1/chat/completions", json=CHAT)  # the operator key: no key id
    records(admin)
    start = int(time.time()) - 3600
    r = admin.get("/v1/organization/usage/completions",
                  params={"start_time": start, "bucket_width": "1h",
                          "group_by": ["api_key_id", "model"], "limit": 2})
    assert r.status_code == 200, r.text
    page = r.json()
    schemas.validate("UsageResponse", page)
    assert page["object"] == "page" and len(page["data"]) == 2
    assert page["data"][0]["start_time"] == start
    assert page["data"][0]["end_time"] == start + 3600
    results = [x for b in page["data"] for x in b["results"]]
    by_key = {x["api_key_id"]: x for x in results}
    # the requests may straddle the edge of the first hour's bucket (whole seconds): count
    # them over both buckets
    assert sum(x["num_model_requests"] for x in results if x["api_key_id"] == key["id"]) == 2
    assert by_key[key["id"]]["model"] == "gpt-3.5-turbo"
    assert sum(x["num_model_requests"] for x in results if x["api_key_id"] is None) == 1
    assert by_key[key["id"]]["cost_usd"] > 0
    filtered = admin.get("/v1/organization/usage/completions",
                         params={"start_time": start, "api_key_ids": key["id"]}).json()
    assert sum(x["num_model_requests"] for b in filtered["data"] for x in b["results"]) == 2
    bad = admin.get("/v1/organization/usage/completions",
                    params={"start_time": start, "group_by": "project_id"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "group_by"
    missing = admin.get("/v1/organization/usage/completions")
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "start_time"
