"""Token buckets in memory and in the real Redis: the same rules, shared across instances."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from oasis.gateway.limits import (
    Budget,
    Decision,
    Hold,
    Limiter,
    Limits,
    MemoryLimiter,
    RateLimitError,
    RedisLimiter,
    go_duration,
)

REDIS = "redis://127.0.0.1:6379/0"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_go_duration_matches_openais_format() -> None:
    assert go_duration(0.0172) == "18ms"
    assert go_duration(1) == "1s"
    assert go_duration(1.5) == "1.5s"
    assert go_duration(60) == "1m0s"
    assert go_duration(366.2) == "6m6.2s"
    assert go_duration(3725) == "1h2m5s"


def test_memory_bucket_refills_continuously() -> None:
    async def run() -> None:
        clock = Clock()
        lim = MemoryLimiter(clock=clock)
        limits = Limits(rpm=2, tpm=100)
        d = await lim.acquire("k", limits, 60)
        assert d.allowed and d.requests_left == 1 and d.tokens_left == 40
        d = await lim.acquire("k", limits, 50)  # 40 tokens left: wait for 10 more
        assert not d.allowed and d.blocked_by == "tokens"
        assert d.retry_after == pytest.approx(6.0)  # 10 tokens at 100/min
        clock.now += 6
        d = await lim.acquire("k", limits, 50)
        assert d.allowed and d.tokens_left == pytest.approx(0)
        d = await lim.acquire("k", limits, 1)
        assert not d.allowed and d.blocked_by == "requests"
        assert d.retry_after == pytest.approx(30 - 6)  # one request back every 30 s
        # a finished request gives back what it reserved and did not use
        await lim.settle("k", limits, -30, None, 0.0)
        assert (await lim.peek("k", limits)).tokens_left == pytest.approx(30)
        # never more than the limit
        clock.now += 3600
        peek = await lim.peek("k", limits)
        assert peek.requests_left == 2 and peek.tokens_left == 100
        too_big = await lim.acquire("k", limits, 101)
        assert not too_big.allowed and too_big.too_large

    asyncio.run(run())


def test_headers_and_error_body() -> None:
    d = Decision(limits=Limits(rpm=60, tpm=1000), requests_left=59.4, tokens_left=250.0)
    assert d.headers() == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "600ms",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "250",
        "x-ratelimit-reset-tokens": "45s",
    }
    blocked = Decision(limits=Limits(tpm=1000), requests_left=0, tokens_left=10.0,
                       blocked_by="tokens", retry_after=2.5)
    assert not blocked.allowed and d.allowed
    err = RateLimitError.of(blocked, "gpt-4o", "alice")
    body = err.to_dict()["error"]
    assert body["type"] == "tokens" and body["code"] == "rate_limit_exceeded"
    assert "tokens per minute" in body["message"] and "2.5s" in body["message"]
    assert err.status == 429 and err.headers["retry-after"] == "3"
    assert err.headers["retry-after-ms"] == "2500"


@pytest.fixture
async def redis_pair() -> AsyncIterator[tuple[Limiter, Limiter]]:
    prefix = f"oasis-test-{uuid.uuid4().hex[:8]}"
    a, b = RedisLimiter(REDIS, prefix=prefix), RedisLimiter(REDIS, prefix=prefix)
    yield a, b
    keys = await a.redis.keys(f"{prefix}:*")  # type: ignore[attr-defined]
    if keys:
        await a.redis.delete(*keys)  # type: ignore[attr-defined]
    await a.close()
    await b.close()


@pytest.mark.anyio
async def test_redis_replicas_share_one_limit(redis_pair: tuple[Limiter, Limiter]) -> None:
    a, b = redis_pair
    limits = Limits(rpm=10, tpm=1000)
    # 40 concurrent acquires through two clients: exactly 10 pass
    results = await asyncio.gather(*[(a if i % 2 else b).acquire("k1", limits, 10)
                                     for i in range(40)])
    assert sum(d.allowed for d in results) == 10
    refused = [d for d in results if not d.allowed]
    assert all(d.blocked_by == "requests" and 0 < d.retry_after <= 6.1 for d in refused)
    peek = await b.peek("k1", limits)
    assert peek.requests_left < 1 and peek.tokens_left == pytest.approx(900, abs=5)
    await a.settle("k1", limits, -50, None, 0.0)
    assert (await b.peek("k1", limits)).tokens_left == pytest.approx(950, abs=5)
    big = await a.acquire("k2", limits, 1001)
    assert not big.allowed and big.too_large
    # an unknown key starts full
    fresh = await b.peek("k3", limits)
    assert fresh.requests_left == 10 and fresh.tokens_left == 1000


@pytest.mark.anyio
async def test_budget_is_checked_in_the_same_step(redis_pair: tuple[Limiter, Limiter]) -> None:
    a, b = redis_pair
    limits = Limits(rpm=100)
    budget = Budget(usd=2.0, window_end=2e9)
    # the period's counter is not loaded yet: nothing is taken
    first = await a.acquire("k", limits, 10, budget)
    assert not first.allowed and first.blocked_by == "unloaded"
    assert (await a.peek("k", limits)).requests_left == 100
    assert await a.load_spend("k", 2e9, 1.5) == 1.5
    assert await b.load_spend("k", 2e9, 9.0) == 1.5  # the first replica to load wins
    ok = await b.acquire("k", limits, 10, budget)
    assert ok.allowed and ok.spent == 1.5
    await a.settle("k", limits, 0, 2e9, 0.75)  # the request cost $0.75
    assert await b.spent("k", 2e9) == 2.25
    over = await a.acquire("k", limits, 10, budget)
    assert not over.allowed and over.blocked_by == "budget" and over.spent == 2.25
    # adding to a counter nobody loaded does nothing: the ledger stays the truth
    await a.settle("other", limits, 0, 2e9, 5.0)
    assert await a.spent("other", 2e9) is None


def test_memory_budget_matches() -> None:
    async def run() -> None:
        lim = MemoryLimiter()
        budget = Budget(usd=1.0, window_end=5.0)
        assert (await lim.acquire("k", Limits(), 1, budget)).blocked_by == "unloaded"
        await lim.load_spend("k", 5.0, 0.5)
        assert (await lim.acquire("k", Limits(), 1, budget)).allowed
        await lim.settle("k", Limits(), 0, 5.0, 0.5)
        d = await lim.acquire("k", Limits(), 1, budget)
        assert d.blocked_by == "budget" and d.spent == 1.0

    asyncio.run(run())


@pytest.fixture(params=["memory", "redis"])
async def pair(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Limiter, Limiter]]:
    """Two replicas' limiters: one process's memory (the same object twice), or Redis."""
    if request.param == "memory":
        mem = MemoryLimiter()
        yield mem, mem
        return
    prefix = f"oasis-test-{uuid.uuid4().hex[:8]}"
    a, b = RedisLimiter(REDIS, prefix=prefix), RedisLimiter(REDIS, prefix=prefix)
    yield a, b
    keys = await a.redis.keys(f"{prefix}:*")  # type: ignore[attr-defined]
    if keys:
        await a.redis.delete(*keys)  # type: ignore[attr-defined]
    await a.close()
    await b.close()


@pytest.mark.anyio
async def test_holds_of_requests_in_flight_count_as_spent(
    pair: tuple[Limiter, Limiter],
) -> None:
    a, b = pair
    limits = Limits(rpm=100)
    budget = Budget(usd=1.0, window_end=2e9)
    await a.load_spend("k", 2e9, 0.25)
    # 16 requests at once, each holding its worst case of $0.30: admitted while spend + holds
    # is under the budget (0.25, 0.55, 0.85), so the burst can overshoot by one request at most
    results = await asyncio.gather(*[
        (a if i % 2 else b).acquire("k", limits, 1, budget, Hold(f"r{i}", 0.3))
        for i in range(16)])
    admitted = [i for i, d in enumerate(results) if d.allowed]
    assert len(admitted) == 3
    refused = [d for d in results if not d.allowed]
    assert all(d.blocked_by == "budget" and d.spent == 0.25 for d in refused)
    assert all(d.held == pytest.approx(0.9) for d in refused)
    # refused requests took nothing from the buckets
    assert (await a.peek("k", limits)).requests_left == pytest.approx(97, abs=0.1)
    # one settles at its real cost: its hold goes, its cost is spent
    await b.settle("k", limits, 0, 2e9, 0.05, f"r{admitted[0]}")
    assert await a.spent("k", 2e9) == pytest.approx(0.3)
    ok = await a.acquire("k", limits, 1, budget, Hold("late", 0.3))
    assert ok.allowed and ok.spent == pytest.approx(0.3) and ok.held == pytest.approx(0.6)
    no = await b.acquire("k", limits, 1, budget, Hold("later", 0.3))
    assert no.blocked_by == "budget" and no.held == pytest.approx(0.9)
    # releasing a hold twice (or one never placed) changes nothing
    await b.settle("k", limits, 0, 2e9, 0.0, f"r{admitted[0]}")
    await b.settle("k", limits, 0, 2e9, 0.0, "unknown")
    assert (await a.acquire("k", limits, 1, budget)).blocked_by == "budget"
    for rid in [f"r{admitted[1]}", f"r{admitted[2]}", "late"]:
        await a.settle("k", limits, 0, 2e9, 0.0, rid)
    d = await b.acquire("k", limits, 1, budget)
    assert d.allowed and d.held == 0


def test_a_hold_whose_request_never_settles_lapses() -> None:
    async def run() -> None:
        clock = Clock()
        lim = MemoryLimiter(clock=clock, hold_seconds=60)
        budget = Budget(usd=1.0, window_end=5e9)
        await lim.load_spend("k", 5e9, 0.0)
        assert (await lim.acquire("k", Limits(), 1, budget, Hold("lost", 5.0))).allowed
        assert (await lim.acquire("k", Limits(), 1, budget)).blocked_by == "budget"
        clock.now += 61  # its replica died: the hold lapses
        d = await lim.acquire("k", Limits(), 1, budget)
        assert d.allowed and d.held == 0

    asyncio.run(run())


@pytest.mark.anyio
async def test_a_redis_hold_lapses() -> None:
    prefix = f"oasis-test-{uuid.uuid4().hex[:8]}"
    lim = RedisLimiter(REDIS, prefix=prefix, hold_seconds=0.3)
    try:
        budget = Budget(usd=1.0, window_end=5e9)
        await lim.load_spend("k", 5e9, 0.0)
        assert (await lim.acquire("k", Limits(), 1, budget, Hold("lost", 5.0))).allowed
        assert (await lim.acquire("k", Limits(), 1, budget)).blocked_by == "budget"
        await asyncio.sleep(0.4)
        d = await lim.acquire("k", Limits(), 1, budget)
        assert d.allowed and d.held == 0
    finally:
        keys = await lim.redis.keys(f"{prefix}:*")
        if keys:
            await lim.redis.delete(*keys)
        await lim.close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
