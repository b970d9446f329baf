"""Routing and health of an upstream model's replicas (backends/upstream/pool.py), on a clock
the tests move."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from oasis.backends.upstream.pool import Pool
from oasis.errors import UpstreamUnavailableError
from oasis.models.registry import UpstreamOptions


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pool(n: int = 2, **options: object) -> tuple[Pool, Clock]:
    clock = Clock()
    urls = tuple(f"http://r{i}:8000/v1" for i in range(1, n + 1))
    opts = UpstreamOptions(replicas=urls, upstream_model="m", **options)  # type: ignore[arg-type]
    return Pool("m", opts, clock=clock, rng=random.Random(7)), clock


def test_least_outstanding_picks_the_replica_with_fewest_requests_in_flight() -> None:
    p, _ = pool(3)
    a, b, c = p.replicas
    p.begin(a)
    p.begin(a)
    p.begin(b)
    assert p.pick(None, set()) is c
    p.begin(c)
    p.begin(c)
    assert p.pick(None, set()) is b


def test_a_retry_prefers_a_replica_not_tried_yet() -> None:
    p, _ = pool(2)
    a, b = p.replicas
    p.begin(b)  # b is busier, but a was tried
    assert p.pick(None, {a.index}) is b
    assert p.pick(None, {a.index, b.index}) in (a, b)  # all tried: any ready one


def test_affinity_sends_one_key_to_one_replica_and_spreads_keys() -> None:
    p, _ = pool(4, routing="affinity")
    homes = {p.pick(f"user-{i}", set()).index for _ in range(3) for i in range(40)}
    assert len(homes) == 4  # 40 keys land on all four replicas
    for i in range(40):
        first = p.pick(f"user-{i}", set())
        assert all(p.pick(f"user-{i}", set()) is first for _ in range(5))


def test_affinity_is_bounded_a_hot_key_spills_over_at_1_plus_e_times_the_mean() -> None:
    p, _ = pool(2, routing="affinity", affinity_balance=0.25)
    chosen = Counter()
    held = []
    for _ in range(40):  # 40 concurrent requests sharing one key
        r = p.pick("hot", set())
        p.begin(r)
        held.append(r)
        chosen[r.index] += 1
        mean = sum(x.in_flight for x in p.replicas) / 2
        assert max(x.in_flight for x in p.replicas) <= 1.25 * mean + 1
    assert min(chosen.values()) >= 15  # the second replica took the overflow
    for r in held:
        p.end(r)
    assert all(r.in_flight == 0 for r in p.replicas)


def test_a_refused_connection_ejects_at_once_other_failures_after_eject_after() -> None:
    p, _ = pool(2, eject_after=3)
    a, b = p.replicas
    p.failed(a, "connect", "refused", seconds=0.0, eject=True)
    assert a.state == "ejected"
    p.failed(b, "http_5xx", "500", seconds=0.1)
    p.failed(b, "http_5xx", "500", seconds=0.1)
    assert b.state == "healthy"
    p.succeeded(b, 0.1)  # a success in between resets the count
    for _ in range(2):
        p.failed(b, "timeout", "slow", seconds=1.0)
    assert b.state == "healthy"
    p.failed(b, "broken", "reset", seconds=1.0)
    assert b.state == "ejected" and b.errors == Counter(http_5xx=2, timeout=2, broken=1)


def test_an_ejected_replica_gets_no_traffic_until_a_probe_after_its_cool_down() -> None:
    p, clock = pool(2, eject_seconds=2.0, probe_interval=5.0)
    a, b = p.replicas
    p.eject(a, "down")
    assert all(p.pick(None, set()) is b for _ in range(20))
    assert a not in p.due()  # cooling down: not even probed
    clock.now += 2.0
    assert a in p.due()
    assert all(p.pick(None, set()) is b for _ in range(20))  # the cool-down alone is not enough
    p.probed(a, False, "refused", epoch=a.epoch)
    assert a.state == "ejected" and a.until == clock.now + 2.0  # another cool-down, not longer
    clock.now += 2.0
    p.probed(a, True, "HTTP 200", epoch=a.epoch)
    assert a.state == "healthy"
    assert {p.pick(None, set()).index for _ in range(40)} == {1, 2}


def test_cool_downs_double_up_to_sixty_times_and_reset_after_a_success() -> None:
    p, clock = pool(1, eject_seconds=1.0)
    (a,) = p.replicas
    waits = []
    for _ in range(9):
        p.eject(a, "x")
        waits.append(a.until - clock.now)
        p.probed(a, True, "ok", epoch=a.epoch)
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    p.succeeded(a, 0.1)
    p.eject(a, "x")
    assert a.until - clock.now == 1


def test_a_429_cools_the_replica_for_its_retry_after() -> None:
    p, clock = pool(2)
    a, b = p.replicas
    p.limited(a, 3.0, "429: slow down")
    assert all(p.pick(None, set()) is b for _ in range(10))
    clock.now += 3.0
    assert {p.pick(None, set()).index for _ in range(40)} == {1, 2}


def test_no_ready_replica_is_a_503_with_retry_after() -> None:
    p, _ = pool(2, eject_seconds=5.0)
    for r in p.replicas:
        p.eject(r, "down")
    with pytest.raises(UpstreamUnavailableError) as caught:
        p.pick(None, set())
    assert caught.value.status == 503 and caught.value.headers["Retry-After"] == "5"
    assert "replica 1 ejected" in caught.value.message


def test_healthy_replicas_are_probed_every_interval() -> None:
    p, clock = pool(2, probe_interval=5.0)
    assert [r.index for r in p.due()] == [1, 2]
    for r in p.replicas:
        p.probed(r, True, "ok", epoch=r.epoch)
    assert p.due() == []
    clock.now += 5.0
    assert [r.index for r in p.due()] == [1, 2]
    a, b = p.replicas
    p.probed(a, False, "refused", epoch=a.epoch, refused=True)  # nobody there: out at once
    assert a.state == "ejected"
    for _ in range(3):  # a slow or failing probe counts like a failed request
        assert b.state == "healthy"
        p.probed(b, False, "HTTP 503", epoch=b.epoch)
    assert b.state == "ejected" and b.errors["probe"] == 3


def test_a_probe_begun_before_an_ejection_does_not_bring_the_replica_back() -> None:
    p, clock = pool(1, eject_seconds=5.0)
    (a,) = p.replicas
    epoch = a.epoch  # a probe starts while the replica is healthy...
    p.failed(a, "connect", "refused", seconds=0.0, eject=True)  # ...requests eject it...
    p.probed(a, True, "HTTP 200", epoch=epoch)  # ...and the probe's late 200 arrives
    assert a.state == "ejected"
    clock.now += 5.0
    p.probed(a, True, "HTTP 200", epoch=a.epoch)  # a probe after the cool-down does
    assert a.state == "healthy"


def test_cooling_ends_with_its_time_and_a_429_does_not_revive_an_ejected_replica() -> None:
    p, clock = pool(1, eject_seconds=5.0)
    (a,) = p.replicas
    p.limited(a, 2.0, "429")
    p.succeeded(a, 0.1)  # an answer in flight before the 429 does not end the cool-down
    assert a.state == "cooling" and not a.routable(clock.now)
    clock.now += 2.0
    assert a.routable(clock.now)
    p.succeeded(a, 0.1)
    assert a.state == "healthy"
    p.eject(a, "down")
    p.limited(a, 1.0, "429")
    assert a.state == "ejected"


def test_describe_reports_state_in_flight_error_rate_and_latency() -> None:
    p, _ = pool(1)
    (a,) = p.replicas
    p.begin(a)
    for i in range(9):
        p.succeeded(a, 0.010 * (i + 1))
    p.failed(a, "http_5xx", "503: busy", seconds=0.5)
    (d,) = p.describe()
    assert d["in_flight"] == 1 and d["requests"] == 1 and d["state"] == "healthy"
    assert d["error_rate"] == 0.1 and d["errors"] == {"http_5xx": 1}
    # the latency of answers: the failure's 0.5 s is not one
    assert d["latency_p50_ms"] == 50.0 and d["latency_p99_ms"] == 90.0
    assert d["last_error"] == "503: busy"


def test_replica_labels_hide_credentials() -> None:
    opts = UpstreamOptions(replicas=("https://user:secret@gpu-1:8000/v1",), upstream_model="m")
    (r,) = Pool("m", opts).replicas
    assert r.label == "https://gpu-1:8000/v1" and Pool("m", opts).describe()[0]["url"] == r.label
