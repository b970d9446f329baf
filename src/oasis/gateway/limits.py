"""Per-key rate limits (requests and tokens per minute) and budgets.

Limits are token buckets, as OpenAI describes its own: a bucket holds at most ``limit`` and
refills continuously at ``limit`` per minute, so a key that stayed idle may burst up to its limit
and then runs at the refill rate. A request takes one request and ``prompt + max_tokens`` tokens
up front; when it finishes the difference to what it really used is given back (or charged).

A budget is a spend counter per period plus the *holds* of requests in flight: admission
refuses a key whose spend plus holds reached its budget, and places the admitted request's
worst-case cost as a hold in the same step; settlement drops the hold and adds the real cost.
So concurrent requests cannot all pass on the same spend-so-far: a burst overshoots the budget
by at most the last admitted request's cost.

``MemoryLimiter`` serves one process. ``RedisLimiter`` keeps the same state in Redis, updated by
one Lua script per call, so any number of replicas share one limit atomically; the script reads
Redis's own clock, so replicas' clocks do not matter.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

from oasis.errors import OasisError


@dataclass(frozen=True)
class Limits:
    """A key's limits; None means unlimited."""

    rpm: int | None = None
    tpm: int | None = None

    @property
    def any(self) -> bool:
        return bool(self.rpm or self.tpm)


Blocker = Literal["requests", "tokens", "budget", "unloaded"]
"""What refused a request: a bucket, the budget, or a spend counter not loaded yet."""

_BLOCKERS: dict[str, Blocker] = {
    "requests": "requests",
    "tokens": "tokens",
    "budget": "budget",
    "unloaded": "unloaded",
}


@dataclass(frozen=True, kw_only=True)
class Decision:
    """The buckets after a call. A request may pass when nothing blocked it; otherwise it must
    wait ``retry_after`` seconds (or can never pass: ``too_large``, when it wants more tokens
    than the whole limit). ``spent`` and ``held`` are the period's spend and the USD held by
    requests in flight, when a budget was checked."""

    limits: Limits
    requests_left: float
    tokens_left: float
    blocked_by: Blocker | None = None
    retry_after: float = 0.0
    too_large: bool = False
    spent: float = 0.0
    held: float = 0.0

    @property
    def allowed(self) -> bool:
        return self.blocked_by is None

    def headers(self) -> dict[str, str]:
        """OpenAI's x-ratelimit-* headers, for the limits the key has."""
        out: dict[str, str] = {}
        for kind, limit, left in (
            ("requests", self.limits.rpm, self.requests_left),
            ("tokens", self.limits.tpm, self.tokens_left),
        ):
            if not limit:
                continue
            remaining = max(0, math.floor(left))
            out[f"x-ratelimit-limit-{kind}"] = str(limit)
            out[f"x-ratelimit-remaining-{kind}"] = str(remaining)
            # time until the bucket is full again
            out[f"x-ratelimit-reset-{kind}"] = go_duration(max(0.0, limit - left) * 60 / limit)
        return out


def go_duration(seconds: float) -> str:
    """A duration the way OpenAI writes it (Go's format): ``20ms``, ``1.5s``, ``6m0s``."""
    ms = max(0, math.ceil(round(seconds * 1000, 6)))  # rounded first: 0.6 s is 600 ms, not 601
    if ms < 1000:
        return f"{ms}ms"
    seconds = ms / 1000
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    text = f"{secs:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    if minutes:
        return f"{minutes}m{text}"
    return text


class RateLimitError(OasisError):
    """429: over the key's requests or tokens per minute. The body's ``type`` names the limit
    (``requests`` or ``tokens``), as OpenAI's does."""

    status = 429
    error_type = "requests"
    default_code = "rate_limit_exceeded"

    def __init__(self, message: str, *, kind: str, headers: dict[str, str]) -> None:
        super().__init__(message, headers=headers)
        self.kind = kind

    def to_dict(self) -> dict[str, Any]:
        body = super().to_dict()
        body["error"]["type"] = self.kind
        return body

    @classmethod
    def of(cls, decision: Decision, model: str, key_name: str) -> RateLimitError:
        limits = decision.limits
        headers = decision.headers()
        if decision.too_large:
            headers["x-should-retry"] = "false"
            return cls(
                f"Request too large for {model} on key {key_name!r}: limit {limits.tpm} tokens "
                f"per minute, requested {int(decision.retry_after)} (prompt + max_tokens). Use a "
                "shorter prompt or a smaller max_tokens.",
                kind="tokens",
                headers=headers,
            )
        kind = "tokens" if decision.blocked_by == "tokens" else "requests"
        limit = limits.rpm if kind == "requests" else limits.tpm
        wait = decision.retry_after
        headers["retry-after"] = str(max(1, math.ceil(wait)))
        headers["retry-after-ms"] = str(max(1, math.ceil(round(wait * 1000, 6))))
        return cls(
            f"Rate limit reached for {model} on key {key_name!r} on {kind} per minute: "
            f"limit {limit}. Please try again in {go_duration(wait)}.",
            kind=kind,
            headers=headers,
        )


class QuotaExceededError(OasisError):
    """429: the key spent its budget for the current period (or requests in flight hold what
    is left of it)."""

    status = 429
    error_type = "insufficient_quota"
    default_code = "insufficient_quota"


@dataclass(frozen=True)
class Budget:
    """A key's budget for one period; ``window_end`` names the period's spend counter."""

    usd: float
    window_end: float


@dataclass(frozen=True)
class Hold:
    """What one request holds against its key's budget from admission until it settles: its
    worst-case cost. Admission counts the holds of requests in flight as spent, so a burst of
    concurrent requests cannot all pass on the same spend-so-far."""

    request_id: str
    usd: float


HOLD_SECONDS = 900.0
"""How long a hold lasts if its request never settles (its replica died): then it lapses."""


class Limiter(Protocol):
    """Buckets, spend counters and holds. Each method is one atomic step (one Redis round
    trip)."""

    async def acquire(
        self,
        key: str,
        limits: Limits,
        tokens: int,
        budget: Budget | None = None,
        hold: Hold | None = None,
    ) -> Decision:
        """Take one request and ``tokens`` tokens if both buckets allow and the budget is not
        used up (spend plus the holds of requests in flight), and place ``hold``; else take
        nothing. ``blocked_by`` is ``budget`` when it is used up, or ``unloaded`` when the
        period's spend counter must first be loaded (``load_spend``)."""
        ...

    async def settle(
        self,
        key: str,
        limits: Limits,
        tokens: int,
        window_end: float | None,
        usd: float,
        release: str | None = None,
    ) -> None:
        """A request ended: charge ``tokens`` more (or give back, if negative) than it reserved,
        add ``usd`` to the period's spend counter (if loaded) and drop the hold of request
        ``release``."""
        ...

    async def peek(self, key: str, limits: Limits) -> Decision: ...

    async def load_spend(self, key: str, window_end: float, usd: float) -> float:
        """Set the period's spend counter unless another replica did first; its value."""
        ...

    async def spent(self, key: str, window_end: float) -> float | None:
        """The period's spend counter, or None when not loaded."""
        ...

    async def forget_spend(self, key: str) -> None:
        """Drop the key's spend counters: they are loaded from the ledger again. Called when a
        key's budget or period changes (spend made while a key had no budget was counted
        nowhere but in the ledger)."""
        ...

    async def close(self) -> None: ...


def _refill(level: float | None, ts: float, now: float, cap: int) -> float:
    if level is None:
        return float(cap)
    return min(float(cap), level + (now - ts) * cap / 60.0)


class MemoryLimiter:
    """Buckets, spend counters and holds in this process's memory."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, hold_seconds: float = HOLD_SECONDS
    ) -> None:
        self.clock = clock
        self.hold_seconds = hold_seconds
        self._buckets: dict[str, tuple[float, float, float, float]] = {}
        self._spend: dict[tuple[str, float], float] = {}
        # per key: request id -> (USD held, when the hold lapses)
        self._holds: dict[str, dict[str, tuple[float, float]]] = {}

    def _levels(self, key: str, limits: Limits, now: float) -> tuple[float, float]:
        r, rt, t, tt = self._buckets.get(key, (math.nan, 0.0, math.nan, 0.0))
        req = _refill(None if math.isnan(r) else r, rt, now, limits.rpm or 0)
        tok = _refill(None if math.isnan(t) else t, tt, now, limits.tpm or 0)
        return req, tok

    def _held(self, key: str, now: float) -> float:
        holds = self._holds.get(key)
        if not holds:
            return 0.0
        for rid in [rid for rid, (_, until) in holds.items() if until <= now]:
            del holds[rid]
        return sum(usd for usd, _ in holds.values())

    async def acquire(
        self,
        key: str,
        limits: Limits,
        tokens: int,
        budget: Budget | None = None,
        hold: Hold | None = None,
    ) -> Decision:
        now = self.clock()
        req, tok = self._levels(key, limits, now)
        spent = held = 0.0
        if budget is not None:
            loaded = self._spend.get((key, budget.window_end))
            spent, held = loaded or 0.0, self._held(key, now)
            if loaded is None or spent + held >= budget.usd:
                blocked: Blocker = "unloaded" if loaded is None else "budget"
                return Decision(
                    limits=limits,
                    requests_left=req,
                    tokens_left=tok,
                    blocked_by=blocked,
                    spent=spent,
                    held=held,
                )
        decision = decide(limits, req, tok, tokens)
        if not decision.allowed:
            return decision
        if limits.any:
            self._buckets[key] = (decision.requests_left, now, decision.tokens_left, now)
        if budget is not None and hold is not None and hold.usd > 0:
            lapses = now + self.hold_seconds
            self._holds.setdefault(key, {})[hold.request_id] = (hold.usd, lapses)
        return replace(decision, spent=spent, held=held)

    async def settle(
        self,
        key: str,
        limits: Limits,
        tokens: int,
        window_end: float | None,
        usd: float,
        release: str | None = None,
    ) -> None:
        if release is not None:
            holds = self._holds.get(key)
            if holds is not None:
                holds.pop(release, None)
                if not holds:
                    del self._holds[key]
        if limits.tpm and tokens:
            now = self.clock()
            req, tok = self._levels(key, limits, now)
            self._buckets[key] = (req, now, min(float(limits.tpm), tok - tokens), now)
        slot = (key, window_end or 0.0)
        if window_end is not None and usd and slot in self._spend:
            self._spend[slot] += usd

    async def peek(self, key: str, limits: Limits) -> Decision:
        req, tok = self._levels(key, limits, self.clock())
        return Decision(limits=limits, requests_left=req, tokens_left=tok)

    async def load_spend(self, key: str, window_end: float, usd: float) -> float:
        return self._spend.setdefault((key, window_end), usd)

    async def spent(self, key: str, window_end: float) -> float | None:
        return self._spend.get((key, window_end))

    async def forget_spend(self, key: str) -> None:
        for slot in [s for s in self._spend if s[0] == key]:
            del self._spend[slot]

    async def close(self) -> None:
        pass


def decide(limits: Limits, requests: float, tokens_level: float, tokens: int) -> Decision:
    """The acquire rule for the buckets (the Redis script implements the same)."""
    wait = 0.0
    blocked: Blocker | None = None
    if limits.tpm and tokens > limits.tpm:
        return Decision(
            limits=limits,
            requests_left=requests,
            tokens_left=tokens_level,
            blocked_by="tokens",
            retry_after=float(tokens),
            too_large=True,
        )
    if limits.rpm and requests < 1:
        wait, blocked = (1 - requests) * 60 / limits.rpm, "requests"
    # a request that asks no tokens (a refused one, counted against RPM) is never held up by
    # a token bucket in debt
    if limits.tpm and tokens > 0 and tokens_level < tokens:
        t_wait = (tokens - tokens_level) * 60 / limits.tpm
        if t_wait > wait:
            wait, blocked = t_wait, "tokens"
    if blocked:
        return Decision(
            limits=limits,
            requests_left=requests,
            tokens_left=tokens_level,
            blocked_by=blocked,
            retry_after=wait,
        )
    return Decision(
        limits=limits,
        requests_left=requests - 1 if limits.rpm else requests,
        tokens_left=tokens_level - tokens if limits.tpm else tokens_level,
    )


# KEYS[1]: the key's bucket hash; KEYS[2]: the period's spend counter; KEYS[3]: the key's holds
# (request id -> "<USD> <lapses at>").
# ARGV: rpm, tpm, tokens, mode (acquire | settle | peek), budget USD (-1: none), USD to add,
# hold id ('' : none; placed by acquire, dropped by settle), hold USD, hold seconds.
# Returns {allowed, requests_left, tokens_left, retry_after, blocked_by, too_large, spent, held}.
_LIMITER_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rpm = tonumber(ARGV[1])
local tpm = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local mode = ARGV[4]
local budget = tonumber(ARGV[5])
local hold_id = ARGV[7]
local h = redis.call('HMGET', KEYS[1], 'r', 'rt', 't', 'tt')
local function level(v, ts, cap)
  if not v then return cap end
  local l = tonumber(v) + (now - tonumber(ts)) * cap / 60
  if l > cap then return cap end
  return l
end
local r = level(h[1], h[2], rpm)
local tk = level(h[3], h[4], tpm)
local allowed, wait, blocked, large, spent, held = 1, 0, '', 0, '0', 0
if mode == 'acquire' and budget >= 0 then
  local sp = redis.call('GET', KEYS[2])
  if not sp then
    return {'0', tostring(r), tostring(tk), '0', 'unloaded', '0', '0', '0'}
  end
  local holds = redis.call('HGETALL', KEYS[3])
  for i = 1, #holds, 2 do
    local usd, lapse = string.match(holds[i + 1], '^(%S+) (%S+)$')
    if tonumber(lapse) <= now then
      redis.call('HDEL', KEYS[3], holds[i])
    else
      held = held + tonumber(usd)
    end
  end
  if tonumber(sp) + held >= budget then
    return {'0', tostring(r), tostring(tk), '0', 'budget', '0', sp, tostring(held)}
  end
  spent = sp
end
if mode == 'acquire' then
  if tpm > 0 and cost > tpm then
    allowed, wait, blocked, large = 0, cost, 'tokens', 1
  else
    if rpm > 0 and r < 1 then
      allowed, wait, blocked = 0, (1 - r) * 60 / rpm, 'requests'
    end
    if tpm > 0 and cost > 0 and tk < cost then
      local tw = (cost - tk) * 60 / tpm
      if tw > wait then wait = tw; blocked = 'tokens' end
      allowed = 0
    end
    if allowed == 1 then
      if rpm > 0 then r = r - 1 end
      if tpm > 0 then tk = tk - cost end
      if budget >= 0 and hold_id ~= '' and tonumber(ARGV[8]) > 0 then
        local secs = tonumber(ARGV[9])
        redis.call('HSET', KEYS[3], hold_id, ARGV[8] .. ' ' .. tostring(now + secs))
        redis.call('EXPIRE', KEYS[3], math.ceil(secs))
      end
    end
  end
elseif mode == 'settle' then
  if hold_id ~= '' then
    redis.call('HDEL', KEYS[3], hold_id)
  end
  if tonumber(ARGV[6]) > 0 and redis.call('EXISTS', KEYS[2]) == 1 then
    redis.call('INCRBYFLOAT', KEYS[2], ARGV[6])
  end
  if tpm > 0 and cost ~= 0 then
    tk = tk - cost
    if tk > tpm then tk = tpm end
  else
    return {'1', tostring(r), tostring(tk), '0', '', '0', '0', '0'}
  end
end
if mode ~= 'peek' and allowed == 1 and (rpm > 0 or tpm > 0) then
  redis.call('HSET', KEYS[1], 'r', tostring(r), 'rt', tostring(now), 't', tostring(tk),
             'tt', tostring(now))
  redis.call('EXPIRE', KEYS[1], 120)
end
return {tostring(allowed), tostring(r), tostring(tk), tostring(wait), blocked, tostring(large),
        spent, tostring(held)}
"""


class RedisLimiter:
    """The same buckets, counters and holds in Redis, shared by every replica using the same
    ``OASIS_REDIS_URL``: one script call per step."""

    def __init__(self, url: str, prefix: str = "oasis", hold_seconds: float = HOLD_SECONDS) -> None:
        import redis.asyncio as aioredis

        self.redis: Any = aioredis.Redis.from_url(url)
        self.prefix = prefix
        self.hold_seconds = hold_seconds
        self._script = self.redis.register_script(_LIMITER_LUA)

    def _spend_key(self, key: str, window_end: float | None) -> str:
        return f"{self.prefix}:spend:{key}:{int(window_end or 0)}"

    async def _call(
        self,
        key: str,
        limits: Limits,
        tokens: int,
        mode: str,
        budget: float = -1,
        window_end: float | None = None,
        usd: float = 0.0,
        hold: Hold | None = None,
        release: str | None = None,
    ) -> Decision:
        hold_id = hold.request_id if hold is not None else (release or "")
        raw = await self._script(
            keys=[
                f"{self.prefix}:rl:{key}",
                self._spend_key(key, window_end),
                f"{self.prefix}:holds:{key}",
            ],
            args=[
                limits.rpm or 0,
                limits.tpm or 0,
                tokens,
                mode,
                budget,
                repr(usd),
                hold_id,
                repr(hold.usd if hold is not None else 0.0),
                repr(self.hold_seconds),
            ],
        )
        allowed, req, tok, wait, blocked, large, spent, held = (
            v.decode() if isinstance(v, bytes) else str(v) for v in raw
        )
        return Decision(
            limits=limits,
            requests_left=float(req),
            tokens_left=float(tok),
            blocked_by=None if allowed == "1" else _BLOCKERS[blocked],
            retry_after=float(wait),
            too_large=large == "1",
            spent=float(spent),
            held=float(held),
        )

    async def acquire(
        self,
        key: str,
        limits: Limits,
        tokens: int,
        budget: Budget | None = None,
        hold: Hold | None = None,
    ) -> Decision:
        if budget is None:
            return await self._call(key, limits, tokens, "acquire")
        return await self._call(
            key, limits, tokens, "acquire", budget.usd, budget.window_end, hold=hold
        )

    async def settle(
        self,
        key: str,
        limits: Limits,
        tokens: int,
        window_end: float | None,
        usd: float,
        release: str | None = None,
    ) -> None:
        if (limits.tpm and tokens) or (window_end is not None and usd) or release:
            await self._call(
                key, limits, tokens, "settle", window_end=window_end, usd=usd, release=release
            )

    async def peek(self, key: str, limits: Limits) -> Decision:
        return await self._call(key, limits, 0, "peek")

    async def load_spend(self, key: str, window_end: float, usd: float) -> float:
        name = self._spend_key(key, window_end)
        ttl = max(1, int(window_end - time.time()) + 60)
        await self.redis.set(name, repr(usd), nx=True, ex=ttl)
        return float(await self.redis.get(name) or 0.0)

    async def spent(self, key: str, window_end: float) -> float | None:
        value = await self.redis.get(self._spend_key(key, window_end))
        return None if value is None else float(value)

    async def forget_spend(self, key: str) -> None:
        names = [n async for n in self.redis.scan_iter(match=f"{self.prefix}:spend:{key}:*")]
        if names:
            await self.redis.delete(*names)

    async def close(self) -> None:
        await self.redis.aclose()
