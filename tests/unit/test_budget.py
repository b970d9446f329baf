"""Budgets under concurrency, refused requests against the requests per minute, and billing of
prompts the engine never evaluated: through the real app, route, Ticket and Gateway, with the
fake engine, limits in memory or in the real Redis."""

from __future__ import annotations

import math
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from fastapi.testclient import TestClient

from oasis.engine.base import GenerationRequest
from oasis.engine.fake import FakeEngine
from oasis.errors import InvalidRequestError, ModelNotFoundError
from oasis.gateway.limits import Limits, QuotaExceededError, RateLimitError
from oasis.gateway.meter import Gateway, budget_window
from oasis.gateway.usage import Price
from oasis.store.keys import KeyInfo
from oasis.store.usage import Usage
from tests.conftest import API_KEY, make_app

T = TypeVar("T")
REDIS = "redis://127.0.0.1:6379/0"
PRICE = Price(input=1000.0, output=2000.0)  # USD per million tokens: a few cents a request
MAX_TOKENS = 8  # the fake reply is longer: every answer costs its worst case
CHAT = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": MAX_TOKENS}


@pytest.fixture(params=["memory", "redis"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    """The app with prices; limits in this process's memory or in Redis. Each answer takes
    the fake engine a few tens of milliseconds, so a burst's requests are in flight together."""
    options: dict[str, Any] = {}
    if request.param == "redis":
        options = {"redis_url": REDIS, "redis_prefix": f"oasis-test-{uuid.uuid4().hex[:8]}"}
    app = make_app(FakeEngine(n_ctx=4096, delay=0.005), tmp=tmp_path,
                   prices={"gpt-3.5-turbo": {"input": PRICE.input, "output": PRICE.output}},
                   **options)
    with TestClient(app, headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        yield client
        if request.param == "redis":
            limiter: Any = gateway(client).limiter
            keys = call(client, limiter.redis.keys, f"{options['redis_prefix']}:*")
            if keys:
                call(client, limiter.redis.delete, *keys)


def gateway(http: TestClient) -> Gateway:
    gw: Gateway | None = http.app.state.oasis.gateway  # type: ignore[attr-defined]
    assert gw is not None
    return gw


def call(http: TestClient, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run ``fn`` on the app's event loop."""
    assert http.portal is not None
    return http.portal.call(fn, *args)


def new_key(http: TestClient, **body: Any) -> tuple[str, int]:
    r = http.post("/admin/keys", json={"name": "burst", **body})
    assert r.status_code == 201, r.text
    return r.json()["value"], int(r.json()["id"][4:])


def records(http: TestClient, key_id: int) -> list[Usage]:
    gw = gateway(http)
    call(http, gw.ledger.flush)
    return gw.usage.records(key_id=key_id)


def test_a_concurrent_burst_overshoots_the_budget_by_one_request_at_most(
    server: TestClient,
) -> None:
    budget = 0.1
    secret, key_id = new_key(server, budget_usd=budget)
    auth = {"Authorization": f"Bearer {secret}"}

    def post(_: int) -> tuple[int, str | None]:
        r = server.post("/v1/chat/completions", json=CHAT, headers=auth)
        return r.status_code, r.json()["error"]["code"] if r.status_code != 200 else None

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(post, range(16)))
    admitted = [s for s, _ in results if s == 200]
    refused = [code for s, code in results if s != 200]
    rows = [u for u in records(server, key_id) if u.status == 200]
    assert len(rows) == len(admitted)
    one = max(PRICE.cost(u.prompt_tokens, 0, MAX_TOKENS) for u in rows)
    spent = sum(u.cost_usd for u in rows)
    # every answer costs its worst case (about $0.07), so exactly as many pass as it takes to
    # reach the budget, whether they run together or one after another
    assert len(admitted) == math.ceil(budget / one) and len(refused) == 16 - len(admitted)
    assert spent <= budget + one
    assert set(refused) == {"insufficient_quota"}
    # the spend counter agrees with the ledger, and the key stays shut
    counter = call(server, gateway(server).limiter.spent, str(key_id), window_end(server, key_id))
    assert counter == pytest.approx(spent)
    again = server.post("/v1/chat/completions", json=CHAT, headers=auth)
    assert again.status_code == 429 and again.headers["x-should-retry"] == "false"


def window_end(http: TestClient, key_id: int) -> float:
    info = gateway(http).keys.get(f"key_{key_id}")
    return budget_window(info, info.created_at.timestamp() + 1)[1]


def test_without_max_tokens_the_hold_is_the_context_left(server: TestClient) -> None:
    """What serving passes as worst_completion_tokens: the context a sequence has left."""
    _, key_id = new_key(server, budget_usd=0.1)
    gw = gateway(server)
    key = gw.keys.get(f"key_{key_id}")

    async def run() -> list[str]:
        outcomes = []
        for _ in range(3):
            t = gw.ticket(key, "/v1/chat/completions")
            t.target("gpt-3.5-turbo")
            try:
                # 30 prompt tokens, no max_tokens: up to 4066 completion tokens ($8.13)
                await t.admit(30, 0, worst_completion_tokens=4066)
                outcomes.append("admitted")
            except QuotaExceededError:
                outcomes.append("refused")
        return outcomes

    # the first holds more than the whole budget: nothing else passes while it runs
    assert call(server, run) == ["admitted", "refused", "refused"]


def test_a_refusal_by_holds_says_to_retry(server: TestClient) -> None:
    _, key_id = new_key(server, budget_usd=0.1)
    gw = gateway(server)
    key = gw.keys.get(f"key_{key_id}")

    async def run() -> QuotaExceededError | None:
        held = None
        first = gw.ticket(key, "/v1/chat/completions")
        first.target("gpt-3.5-turbo")
        await first.admit(30, 100)  # holds $0.23
        second = gw.ticket(key, "/v1/chat/completions")
        second.target("gpt-3.5-turbo")
        try:
            await second.admit(30, 8)
        except QuotaExceededError as exc:
            held = exc
        await first.finish(200)  # nothing was generated: the hold goes, $0 is spent
        third = gw.ticket(key, "/v1/chat/completions")
        third.target("gpt-3.5-turbo")
        await third.admit(30, 8)
        await third.finish(200)
        return held

    err = call(server, run)
    assert err is not None and err.status == 429 and err.code == "insufficient_quota"
    assert err.headers["retry-after"] == "1" and "x-should-retry" not in err.headers
    assert "in flight" in err.message


def test_refused_requests_count_against_requests_per_minute(server: TestClient) -> None:
    """A key with rpm 5 sending 10 invalid requests: the first 5 get their 400 (or 404), the
    rest a 429, as OpenAI counts them. (What the route does with every OasisError.)"""
    _, key_id = new_key(server, rpm=5)
    gw = gateway(server)
    key = gw.keys.get(f"key_{key_id}")
    huge = "m" * 1_000_000  # an invalid model name a client may send, stored bounded

    async def run() -> list[tuple[int, str | None, str | None]]:
        out = []
        for i in range(10):
            t = gw.ticket(key, "/v1/chat/completions")
            t.target(huge if i % 2 else "gpt-3.5-turbo")
            exc = ModelNotFoundError(huge) if i % 2 else InvalidRequestError("bad", param="x")
            err = await t.refuse(exc)
            out.append((err.status, err.code, err.headers.get("x-ratelimit-remaining-requests")))
        return out

    results = call(server, run)
    assert [s for s, _, _ in results] == [400, 404, 400, 404, 400, 429, 429, 429, 429, 429]
    assert [r for _, _, r in results[:5]] == ["4", "3", "2", "1", "0"]
    assert {c for s, c, _ in results if s == 429} == {"rate_limit_exceeded"}
    rows = records(server, key_id)
    assert [u.status for u in rows] == [400, 404, 400, 404, 400, 429, 429, 429, 429, 429]
    assert max(len(u.model) for u in rows) == 200
    assert all(u.prompt_tokens == u.completion_tokens == 0 and u.cost_usd == 0 for u in rows)
    # an admitted request is not counted twice when it fails afterwards
    t = gw.ticket(key, "/v1/chat/completions")
    assert isinstance(call(server, t.refuse, InvalidRequestError("x")), RateLimitError)


def test_an_error_after_admission_is_not_counted_again(server: TestClient) -> None:
    _, key_id = new_key(server, rpm=2)
    gw = gateway(server)
    key = gw.keys.get(f"key_{key_id}")

    async def run() -> list[int]:
        out = []
        for _ in range(2):
            t = gw.ticket(key, "/v1/chat/completions")
            t.target("gpt-3.5-turbo")
            await t.admit(10, 5)
            out.append((await t.refuse(InvalidRequestError("too many sequences"))).status)
        return out

    assert call(server, run) == [400, 400]
    assert call(server, gw.limiter.peek, str(key_id), key_limits(key)).requests_left < 1


def key_limits(key: KeyInfo) -> Limits:
    return Limits(key.rpm, key.tpm)


def test_a_request_cancelled_while_queued_pays_no_prompt(server: TestClient) -> None:
    _, key_id = new_key(server, budget_usd=10.0, tpm=1000)
    gw = gateway(server)
    key = gw.keys.get(f"key_{key_id}")
    engine = FakeEngine()
    prompt = list(range(3, 43))  # 40 tokens

    async def run() -> None:
        queued = gw.ticket(key, "/v1/chat/completions")
        queued.target("gpt-3.5-turbo")
        await queued.admit(40, 2 * 16)
        handles = [engine.submit(GenerationRequest(prompt=prompt, max_tokens=16))
                   for _ in range(2)]
        queued.track(handles)
        for h in handles:
            h.cancel()  # the client left before a slot was free: nothing was evaluated
        await queued.finish(499, disconnected=True)

        ran = gw.ticket(key, "/v1/chat/completions")
        ran.target("gpt-3.5-turbo")
        await ran.admit(40, 2 * 4)
        handles = [engine.submit(GenerationRequest(prompt=prompt, max_tokens=4))
                   for _ in range(2)]
        ran.track(handles)
        for h in handles:  # n=2 on one prompt: the prompt is billed once
            async for _ in h:
                pass
        await ran.finish(200)

    call(server, run)
    first, second = records(server, key_id)
    assert (first.prompt_tokens, first.completion_tokens, first.cost_usd) == (0, 0, 0.0)
    assert first.status == 499 and first.disconnected
    assert (second.prompt_tokens, second.completion_tokens) == (40, 8)
    assert second.cost_usd == pytest.approx(PRICE.cost(40, 0, 8))
    # the token bucket got back everything the cancelled request reserved
    left = call(server, gw.limiter.peek, str(key_id), key_limits(key)).tokens_left
    assert left == pytest.approx(1000 - 48, abs=2)
    assert call(server, gw.spend, key) == pytest.approx(second.cost_usd)


def test_lifting_and_restoring_a_budget_counts_what_was_spent_meanwhile(
    server: TestClient,
) -> None:
    """Spend made while a key had no budget is in the ledger only: when the budget comes back
    (or its period changes), the spend counter is loaded from the ledger again, not reused."""
    secret, key_id = new_key(server, budget_usd=0.2)
    auth = {"Authorization": f"Bearer {secret}"}
    assert server.post("/v1/chat/completions", json=CHAT, headers=auth).status_code == 200
    r = server.patch(f"/admin/keys/key_{key_id}", json={"budget_usd": None})
    assert r.status_code == 200, r.text
    for _ in range(4):  # about $0.07 each: well past the old budget
        assert server.post("/v1/chat/completions", json=CHAT, headers=auth).status_code == 200
    r = server.patch(f"/admin/keys/key_{key_id}", json={"budget_usd": 0.2})
    assert r.status_code == 200, r.text
    records(server, key_id)  # the ledger has every request
    again = server.post("/v1/chat/completions", json=CHAT, headers=auth)
    assert again.status_code == 429 and again.json()["error"]["code"] == "insufficient_quota"
