"""The admin API refuses what a key cannot hold with OpenAI's 400 (naming the field), never a
500, and keeps answering afterwards; key ids no key can have are 404s; a bad row already in the
database does not break the key listing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from oasis.engine.fake import FakeEngine
from oasis.gateway.meter import Gateway
from oasis.store.models import ApiKey
from tests.conftest import API_KEY, make_app

CHAT = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "hi"}]}
HUGE = "100000000000000000000"  # 1e20 written out
USAGE = "/v1/organization/usage/completions"


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[TestClient]:
    app = make_app(FakeEngine(n_ctx=8192), tmp=tmp_path)
    with TestClient(app, headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        yield client


def gateway(http: TestClient) -> Gateway:
    gw = http.app.state.oasis.gateway  # type: ignore[attr-defined]
    assert gw is not None
    return gw


def send(http: TestClient, method: str, path: str, body: dict[str, Any] | str) -> Any:
    """A JSON body as written: a str is sent as is (``Infinity``, ``NaN``), a dict as JSON."""
    raw = body if isinstance(body, str) else json.dumps(body)
    return http.request(method, path, content=raw,
                        headers={"content-type": "application/json"})


def assert_400(r: Any, param: str) -> dict[str, Any]:
    assert r.status_code == 400, r.text
    error: dict[str, Any] = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param or error["param"].startswith(param + "."), error
    assert error["code"] in ("invalid_value", "invalid_type"), error
    return error


def still_serving(http: TestClient, keys: int) -> None:
    listed = http.get("/admin/keys")
    assert listed.status_code == 200, listed.text
    assert len(listed.json()["data"]) == keys
    assert http.post("/v1/chat/completions", json=CHAT).status_code == 200


BAD_CREATE = [
    # rates: past 64 bits, past the maximum, below 1, not whole numbers
    (json.dumps({"name": "x", "rpm": 2**63}), "rpm"),
    (json.dumps({"name": "x", "rpm": 2**64}), "rpm"),
    ('{"name": "x", "rpm": 1000000001}', "rpm"),
    ('{"name": "x", "rpm": -1}', "rpm"),
    ('{"name": "x", "rpm": 1.5}', "rpm"),
    ('{"name": "x", "rpm": 60.0}', "rpm"),
    ('{"name": "x", "rpm": 1e20}', "rpm"),
    ('{"name": "x", "rpm": true}', "rpm"),
    ('{"name": "x", "rpm": "60"}', "rpm"),
    (json.dumps({"name": "x", "tpm": 2**63}), "tpm"),
    ('{"name": "x", "tpm": -5}', "tpm"),
    ('{"name": "x", "tpm": false}', "tpm"),
    # budgets: non-finite, negative, absurd
    ('{"name": "x", "budget_usd": Infinity}', "budget_usd"),
    ('{"name": "x", "budget_usd": -Infinity}', "budget_usd"),
    ('{"name": "x", "budget_usd": NaN}', "budget_usd"),
    ('{"name": "x", "budget_usd": -1}', "budget_usd"),
    ('{"name": "x", "budget_usd": 1e308}', "budget_usd"),
    ('{"name": "x", "budget_usd": 1000000001}', "budget_usd"),
    ('{"name": "x", "budget_usd": true}', "budget_usd"),
    # periods and lifetimes: 1e20 seconds, huge day counts, negative, NaN, past the maximum
    (json.dumps({"name": "x", "budget_usd": 5, "budget_period": f"{HUGE}s"}), "budget_period"),
    ('{"name": "x", "budget_usd": 5, "budget_period": "1e20d"}', "budget_period"),
    ('{"name": "x", "budget_usd": 5, "budget_period": "-5d"}', "budget_period"),
    ('{"name": "x", "budget_usd": 5, "budget_period": "NaN"}', "budget_period"),
    ('{"name": "x", "budget_usd": 5, "budget_period": "3651d"}', "budget_period"),
    ('{"name": "x", "budget_usd": 5, "budget_period": 1e20}', "budget_period"),
    ('{"name": "x", "budget_period": "0d"}', "budget_period"),  # checked without a budget too
    (json.dumps({"name": "x", "expires": f"{HUGE}s"}), "expires"),
    (json.dumps({"name": "x", "expires": f"{HUGE}d"}), "expires"),
    ('{"name": "x", "expires": "1e20d"}', "expires"),
    ('{"name": "x", "expires": "-1d"}', "expires"),
    ('{"name": "x", "expires": "NaN"}', "expires"),
    ('{"name": "x", "expires": "36501d"}', "expires"),
    ('{"name": "x", "expires": ""}', "expires"),
    ('{"name": "x", "expires": 1e20}', "expires"),
    # names and models
    ('{"name": ""}', "name"),
    ('{"name": "   "}', "name"),
    (json.dumps({"name": "a" * 201}), "name"),
    ('{"name": "a\\u0000b"}', "name"),
    ('{"name": "a\\tb"}', "name"),
    ('{"name": 5}', "name"),
    ('{"name": null}', "name"),
    ('{"name": "x", "models": [""]}', "models"),
    ('{"name": "x", "models": ["gpt\\u0000"]}', "models"),
    ('{"name": "x", "models": "gpt-4o"}', "models"),
    ('{"name": "x", "models": [1]}', "models"),
]


@pytest.mark.parametrize(("body", "param"), BAD_CREATE)
def test_create_refuses_with_400_naming_the_field(admin: TestClient, body: str,
                                                  param: str) -> None:
    assert_400(send(admin, "POST", "/admin/keys", body), param)
    still_serving(admin, keys=0)


def test_messages_are_clear(admin: TestClient) -> None:
    error = assert_400(send(admin, "POST", "/admin/keys", {"name": ""}), "name")
    assert error["message"] == (
        "Invalid 'name': expected a non-empty string of at most 200 characters")
    error = assert_400(send(admin, "POST", "/admin/keys", {"name": "x", "rpm": 2**63}), "rpm")
    assert "Expected a value <= 1000000000" in error["message"]
    error = assert_400(send(admin, "POST", "/admin/keys", {"name": "x", "expires": "1e20d"}),
                       "expires")
    assert error["message"].startswith("Invalid 'expires': '1e20d' is not a duration")
    error = assert_400(send(admin, "POST", "/admin/keys", {"name": "x", "expires": "36501d"}),
                       "expires")
    assert "the longest allowed is 36500d" in error["message"]


def test_the_largest_values_are_accepted(admin: TestClient) -> None:
    body = {"name": "n" * 200, "rpm": 10**9, "tpm": 10**9, "budget_usd": 1e9,
            "budget_period": "3650d", "expires": "36500d",
            "models": ["gpt-3.5-turbo", "m" * 200]}
    r = send(admin, "POST", "/admin/keys", body)
    assert r.status_code == 201, r.text
    key = r.json()
    assert key["rpm"] == 10**9 and key["budget_period_seconds"] == 3650 * 86400
    assert key["expires_at"] > datetime(2120, 1, 1, tzinfo=UTC).timestamp()
    assert admin.get("/admin/keys").json()["data"][0]["spend_usd"] == 0
    assert admin.post("/v1/chat/completions", json=CHAT,
                      headers={"Authorization": f"Bearer {key['value']}"}).status_code == 200


BAD_UPDATE = [
    (json.dumps({"rpm": 2**63}), "rpm"),
    ('{"tpm": 1.5}', "tpm"),
    ('{"budget_usd": Infinity}', "budget_usd"),
    ('{"budget_usd": NaN}', "budget_usd"),
    ('{"budget_usd": 1e308}', "budget_usd"),
    (json.dumps({"budget_period": f"{HUGE}s"}), "budget_period"),
    ('{"budget_period": "1e20d"}', "budget_period"),
    ('{"name": ""}', "name"),
    ('{"models": [""]}', "models"),
]


@pytest.mark.parametrize(("body", "param"), BAD_UPDATE)
def test_update_refuses_with_400_naming_the_field(admin: TestClient, body: str,
                                                  param: str) -> None:
    r = send(admin, "POST", "/admin/keys", {"name": "alice", "rpm": 5})
    key_id = r.json()["id"]
    assert_400(send(admin, "PATCH", f"/admin/keys/{key_id}", body), param)
    unchanged = admin.get(f"/admin/keys/{key_id}").json()
    assert (unchanged["name"], unchanged["rpm"], unchanged["budget_usd"]) == ("alice", 5, None)
    still_serving(admin, keys=1)


@pytest.mark.parametrize("ref", [
    f"key_{2**70}", f"key_{2**63}", f"key_{2**31}", "key_" + "9" * 40, "key_0", "key_²",
    "sk-oasis-%00%00%00%00%00%00%00%00", "sk-oasis-%00", "%00",
])
def test_key_ids_no_key_can_have_are_404(admin: TestClient, ref: str) -> None:
    send(admin, "POST", "/admin/keys", {"name": "alice"})
    for method, path, body in [("GET", f"/admin/keys/{ref}", None),
                               ("PATCH", f"/admin/keys/{ref}", {"rpm": 5}),
                               ("DELETE", f"/admin/keys/{ref}", None),
                               ("POST", f"/admin/keys/{ref}/rotate", None)]:
        r = admin.request(method, path, json=body)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["error"]["code"] == "key_not_found"
        assert r.json()["error"]["param"] == "key"
    still_serving(admin, keys=1)


@pytest.mark.parametrize(("query", "param"), [
    ({"start_time": "1e20"}, "start_time"),
    ({"start_time": "-1e20"}, "start_time"),
    ({"start_time": HUGE}, "start_time"),
    ({"start_time": "-" + HUGE}, "start_time"),
    ({"start_time": "-1"}, "start_time"),
    ({"start_time": "253402300800"}, "start_time"),
    ({"start_time": "9" * 5000}, "start_time"),
    ({"start_time": "abc"}, "start_time"),
    ({"start_time": "nan"}, "start_time"),
    ({"start_time": "1.5"}, "start_time"),
    ({"start_time": "0", "end_time": HUGE}, "end_time"),
    ({"start_time": "0", "end_time": "-" + HUGE}, "end_time"),
    ({"start_time": "0", "end_time": "1e20"}, "end_time"),
    ({"start_time": "0", "end_time": "x"}, "end_time"),
    ({"start_time": "0", "page": HUGE}, "page"),
    ({"start_time": "0", "page": "-" + HUGE}, "page"),
    ({"start_time": "0", "page": "1e20"}, "page"),
    ({"start_time": "0", "page": "later"}, "page"),
    ({"start_time": "0", "limit": HUGE}, "limit"),
    ({"start_time": "0", "limit": "-" + HUGE}, "limit"),
    ({"start_time": "0", "limit": "1e20"}, "limit"),
    ({"start_time": "0", "limit": "0"}, "limit"),
    ({"start_time": "0", "limit": "32"}, "limit"),
    ({"start_time": "0", "limit": "many"}, "limit"),
    ({"start_time": "0", "api_key_ids": "key_²"}, "api_key_ids"),
    ({"start_time": "0", "api_key_ids": "12"}, "api_key_ids"),
    # key_0 is the daily sums' stand-in for the static key: not a key id anyone can name
    ({"start_time": "0", "api_key_ids": "key_0"}, "api_key_ids"),
    ({"start_time": "86400", "end_time": "172800", "api_key_ids": "key_00"}, "api_key_ids"),
    ({"start_time": "0", "models": "gpt\x00"}, "models"),
])
def test_usage_query_refused_with_400_naming_the_parameter(
        admin: TestClient, query: dict[str, str], param: str) -> None:
    assert_400(admin.get(USAGE, params=query), param)
    assert admin.get(USAGE, params={"start_time": "0"}).status_code == 200
    still_serving(admin, keys=0)


def test_usage_with_a_key_id_no_key_can_have_matches_nothing(admin: TestClient) -> None:
    admin.post("/v1/chat/completions", json=CHAT)
    gw = gateway(admin)
    admin.portal.call(gw.ledger.flush)  # type: ignore[union-attr]
    page = admin.get(USAGE, params={"start_time": 0, "api_key_ids": f"key_{2**70}",
                                    "bucket_width": "1d", "limit": 1}).json()
    assert [b["results"] for b in page["data"]] == [[]]
    # the largest times are still answered, with empty buckets
    last = admin.get(USAGE, params={"start_time": 253402300799 - 86400,
                                    "end_time": 253402300799})
    assert last.status_code == 200 and len(last.json()["data"]) == 1


def test_a_bad_row_does_not_break_the_listing(admin: TestClient) -> None:
    """Rows an older version let in: an infinite or NaN budget, a negative one, a budget period
    of 2**62 seconds, an rpm past 32 bits. They list, and their keys still work."""
    gw = gateway(admin)
    now = datetime.now(UTC)
    ids = []
    for i, values in enumerate([{"budget_usd": float("inf")}, {"budget_usd": float("nan")},
                                {"budget_usd": -5.0},
                                {"budget_usd": 5.0, "budget_period_s": 2**62},
                                {"rpm": 2**62}]):
        secret, info = None, None
        info, secret = gw.keys.create(f"old-{i}")
        ids.append((info.id, secret))
        with gw.keys.engine.begin() as conn:
            conn.execute(ApiKey.__table__.update().where(ApiKey.id == info.id)
                         .values(**values, created_at=now))
    gw.key_cache.invalidate()
    listed = admin.get("/admin/keys")
    assert listed.status_code == 200, listed.text
    by_name = {k["name"]: k for k in listed.json()["data"]}
    assert by_name["old-0"]["budget_usd"] is None and by_name["old-0"]["spend_usd"] is None
    assert by_name["old-2"]["budget_usd"] is None
    assert by_name["old-3"]["budget_period_seconds"] == 3650 * 86400
    assert by_name["old-3"]["spend_usd"] == 0
    for key_id, secret in ids:
        assert admin.get(f"/admin/keys/key_{key_id}").status_code == 200
        r = admin.post("/v1/chat/completions", json=CHAT,
                       headers={"Authorization": f"Bearer {secret}"})
        assert r.status_code == 200, r.text
    still_serving(admin, keys=5)
