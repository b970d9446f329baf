"""The replicas of one upstream model: which one takes a request, and which are fit to.

Routing picks among the replicas that may take traffic: by default the one with the fewest
requests in flight; with ``affinity`` the replica a request's prefix key hashes to first
(rendezvous hashing), unless that would put it above ``(1 + balance)`` times the mean in-flight
count (consistent hashing with bounded loads), in which case the next in the key's order.

Health is passive and active. A refused connection ejects a replica at once; other failures
(5xx, timeouts, broken streams, answers that are not OpenAI's shape) after ``eject_after`` in
a row. An ejected replica gets no traffic until a probe succeeds, and is not probed before its
cool-down has passed (``eject_seconds``, doubled for each ejection in a row, up to 60x). A 429
cools a replica for its ``Retry-After``. Probes also run on healthy replicas, so a replica
that died while idle is found before a request is sent to it.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from oasis.errors import UpstreamUnavailableError
from oasis.models.registry import UpstreamOptions

State = Literal["healthy", "cooling", "ejected"]

# Histogram bounds (seconds) of time to first byte and latency, for /metrics.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_WINDOW = 200  # recent requests kept per replica for the error rate and latency percentiles


@dataclass
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds


@dataclass
class Replica:
    """One upstream server (a base URL ending in ``/v1``) and what is known of it."""

    index: int
    url: str
    state: State = "healthy"
    until: float = 0.0  # cooling: no traffic before; ejected: no probe before
    in_flight: int = 0
    failures: int = 0  # in a row
    ejections: int = 0  # in a row, for the cool-down's doubling
    last_error: str | None = None
    requests: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    ejected_total: int = 0
    recent: deque[tuple[bool, float]] = field(default_factory=lambda: deque(maxlen=_WINDOW))
    ttfb: Histogram = field(default_factory=Histogram)
    latency: Histogram = field(default_factory=Histogram)
    last_probe: float = -math.inf
    epoch: int = 0  # counts state changes: a probe begun before one does not count

    def routable(self, now: float) -> bool:
        return self.state == "healthy" or (self.state == "cooling" and now >= self.until)

    @property
    def name(self) -> str:
        return f"{self.index}"

    @property
    def label(self) -> str:
        """The URL without any ``user:password@`` (shown in /metrics and the admin view)."""
        parts = urlsplit(self.url)
        if "@" not in parts.netloc:
            return self.url
        return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))

    def describe(self, now: float) -> dict[str, Any]:
        outcomes = [ok for ok, _ in self.recent]
        times = sorted(t for ok, t in self.recent if ok)  # latency of answers, not failures
        state = "healthy" if self.routable(now) else self.state
        return {
            "url": self.label,
            "state": state,
            "in_flight": self.in_flight,
            "requests": self.requests,
            "errors": dict(self.errors),
            "error_rate": round(outcomes.count(False) / len(outcomes), 4) if outcomes else 0.0,
            "latency_p50_ms": _ms(times, 0.5),
            "latency_p99_ms": _ms(times, 0.99),
            "ejections": self.ejected_total,
            "retry_in_s": round(max(0.0, self.until - now), 3) if state != "healthy" else 0.0,
            "last_error": self.last_error,
        }


def _ms(sorted_times: list[float], q: float) -> float | None:
    if not sorted_times:
        return None
    i = min(len(sorted_times) - 1, int(q * len(sorted_times)))
    return round(sorted_times[i] * 1000, 3)


def _rank(key: str, url: str) -> bytes:
    return hashlib.blake2b(f"{key}\0{url}".encode(), digest_size=8).digest()


class Pool:
    """The replicas of one upstream model, their health and the routing between them."""

    def __init__(
        self,
        model: str,
        options: UpstreamOptions,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.model = model
        self.options = options
        self.clock = clock
        self.rng = rng or random.Random()
        self.replicas = [Replica(i + 1, url) for i, url in enumerate(options.replicas)]
        self.retries = 0
        self.affinity = options.routing == "affinity"

    # -- routing ---------------------------------------------------------------------------
    def pick(self, key: str | None, tried: set[int]) -> Replica:
        """The replica for the next try: one not tried yet if any may take traffic, else one
        tried before; ``UpstreamUnavailableError`` when none may."""
        now = self.clock()
        ready = [r for r in self.replicas if r.routable(now)]
        if not ready:
            wait = min((r.until - now for r in self.replicas), default=1.0)
            states = ", ".join(f"replica {r.name} {r.state}" for r in self.replicas)
            raise UpstreamUnavailableError(
                f"No upstream server of model {self.model!r} can take requests now ({states}).",
                retry_after=max(1, math.ceil(wait)),
            )
        fresh = [r for r in ready if r.index not in tried] or ready
        if self.affinity and key is not None:
            return self._by_affinity(key, fresh, ready)
        low = min(r.in_flight for r in fresh)
        return self.rng.choice([r for r in fresh if r.in_flight == low])

    def _by_affinity(self, key: str, fresh: list[Replica], ready: list[Replica]) -> Replica:
        total = sum(r.in_flight for r in ready) + 1
        bound = math.ceil((1 + self.options.affinity_balance) * total / len(ready))
        ranked = sorted(fresh, key=lambda r: _rank(key, r.url), reverse=True)
        for replica in ranked:
            if replica.in_flight + 1 <= bound:
                return replica
        return min(ranked, key=lambda r: r.in_flight)

    # -- outcomes --------------------------------------------------------------------------
    def begin(self, replica: Replica) -> None:
        replica.in_flight += 1
        replica.requests += 1

    def end(self, replica: Replica) -> None:
        replica.in_flight -= 1

    def first_byte(self, replica: Replica, seconds: float) -> None:
        replica.ttfb.observe(seconds)

    def succeeded(self, replica: Replica, seconds: float) -> None:
        replica.failures = 0
        replica.ejections = 0
        replica.recent.append((True, seconds))
        replica.latency.observe(seconds)
        if replica.state == "cooling" and self.clock() >= replica.until:
            replica.state = "healthy"

    def answered(self, replica: Replica) -> None:
        """The replica answered (a client error it relayed, say): it is alive."""
        replica.failures = 0
        if replica.state == "cooling" and self.clock() >= replica.until:
            replica.state = "healthy"

    def failed(
        self, replica: Replica, kind: str, detail: str, *, seconds: float, eject: bool = False
    ) -> None:
        """A try failed with ``kind`` (connect, timeout, http_5xx, broken, bad_response)."""
        replica.errors[kind] += 1
        replica.recent.append((False, seconds))
        replica.last_error = detail
        replica.failures += 1
        if eject or replica.failures >= self.options.eject_after:
            self.eject(replica, detail)

    def limited(self, replica: Replica, retry_after: float, detail: str) -> None:
        """A 429: no traffic to the replica for ``retry_after`` seconds."""
        replica.errors["http_429"] += 1
        replica.recent.append((False, 0.0))
        replica.last_error = detail
        if replica.state != "ejected":
            replica.state = "cooling"
            replica.until = max(replica.until, self.clock() + retry_after)

    def eject(self, replica: Replica, detail: str, *, again: bool = False) -> None:
        """Take the replica out (``again``: one already out failed its probe, so its next
        probe waits another cool-down). Requests that were in flight when it went out do not
        extend it."""
        if replica.state == "ejected" and not again:
            return
        if replica.state != "ejected":
            replica.ejected_total += 1
            replica.ejections += 1
        # the cool-down doubles with each ejection in a row (a flapping replica), not with
        # each failed probe: a replica that is back is found within one cool-down
        factor = min(2 ** (replica.ejections - 1), 60)
        replica.state = "ejected"
        replica.epoch += 1
        replica.until = self.clock() + self.options.eject_seconds * factor
        replica.last_error = detail

    # -- probes ----------------------------------------------------------------------------
    def due(self) -> list[Replica]:
        """The replicas to probe now: ejected ones whose cool-down has passed, healthy ones
        not probed for ``probe_interval`` seconds."""
        now = self.clock()
        interval = self.options.probe_interval
        out = []
        for r in self.replicas:
            if r.state == "ejected":
                if now >= r.until and now - r.last_probe >= min(interval, 1.0):
                    out.append(r)
            elif now - r.last_probe >= interval:
                out.append(r)
        return out

    def probed(
        self, replica: Replica, ok: bool, detail: str, *, epoch: int, refused: bool = False
    ) -> None:
        """A probe begun at ``epoch`` answered. One begun before the replica's last change
        of state says nothing of its state now: only when it was probed is recorded. A failed
        probe of a replica in service counts as a failure (a refused connection takes it out
        at once); of an ejected one, it lengthens the cool-down."""
        replica.last_probe = self.clock()
        if epoch != replica.epoch:
            return
        if ok:
            if replica.state == "ejected":
                replica.state = "healthy"
                replica.failures = 0
                replica.epoch += 1
            return
        replica.errors["probe"] += 1
        if replica.state == "ejected":
            self.eject(replica, f"probe failed: {detail}", again=True)
        else:
            replica.last_error = f"probe failed: {detail}"
            replica.failures += 1
            if refused or replica.failures >= self.options.eject_after:
                self.eject(replica, f"probe failed: {detail}")

    def describe(self) -> list[dict[str, Any]]:
        now = self.clock()
        return [r.describe(now) for r in self.replicas]

    def up(self) -> int:
        now = self.clock()
        return sum(r.routable(now) for r in self.replicas)
