"""The gateway: who is calling (a short-lived key cache over the key store), may they (rate limits
and budget), and what did it cost (one usage record per request).

Each metered request gets a ``Ticket``. Serving calls ``admit`` once the prompt is tokenized
(this is where a 429 comes from: rate limits, and the budget, which holds the request's
worst-case cost until it settles), ``track`` with the engine handles, and ``first_token``; the
route calls ``finish`` when the response is complete, failed or abandoned, or ``refuse`` with
the error when it failed (a request refused before admission still counts against the key's
requests per minute). Tokens are read from the engine's handles, so a stream without
include_usage, or one the client abandoned, is billed for what was generated, and a prompt
only as far as the engine evaluated it.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import anyio
from anyio import to_thread

from oasis.engine.base import RequestHandle
from oasis.errors import OasisError
from oasis.gateway.access import may_use
from oasis.gateway.limits import (
    Budget,
    Decision,
    Hold,
    Limiter,
    Limits,
    QuotaExceededError,
    RateLimitError,
)
from oasis.gateway.report import budget_window, ledger_spend
from oasis.gateway.usage import Ledger, Price
from oasis.store.keys import KeyInfo, KeyStore
from oasis.store.usage import MODEL_CHARS, Usage, UsageStore, clean_text, join_reasons

T = TypeVar("T")


class KeyCache:
    """Verified keys for ``ttl`` seconds, so the hot path skips the database. A key revoked
    through this process's admin API stops at once; one revoked elsewhere (the CLI, another
    replica) within ``ttl`` seconds. Concurrent requests with the same key share one lookup."""

    def __init__(self, store: KeyStore, ttl: float, clock: Any = time.monotonic) -> None:
        self.store = store
        self.ttl = ttl
        self.clock = clock
        self._cache: dict[str, tuple[KeyInfo, float]] = {}
        self._inflight: dict[str, asyncio.Future[KeyInfo | None]] = {}

    async def verify(self, token: str) -> KeyInfo | None:
        digest = hashlib.sha256(token.encode()).hexdigest()
        now = self.clock()
        hit = self._cache.get(digest)
        if hit is not None and now - hit[1] < self.ttl:
            info = hit[0]
            if info.status(datetime.now(UTC)) == "active":  # it may have expired meanwhile
                return info
        pending = self._inflight.get(digest)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[KeyInfo | None] = asyncio.get_running_loop().create_future()
        self._inflight[digest] = future
        try:
            found: KeyInfo | None = await to_thread.run_sync(self.store.verify, token)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody logs it as lost
            raise
        else:
            future.set_result(found)
        finally:
            del self._inflight[digest]
        if found is None:
            self._cache.pop(digest, None)
            return None
        if len(self._cache) >= 10_000:
            self._cache.clear()
        if self.ttl > 0:
            self._cache[digest] = (found, now)
        return found

    def invalidate(self) -> None:
        self._cache.clear()


class Gateway:
    def __init__(
        self,
        keys: KeyStore,
        usage: UsageStore,
        ledger: Ledger,
        limiter: Limiter,
        *,
        prices: Mapping[str, Price] | None = None,
        key_cache_seconds: float = 1.0,
    ) -> None:
        self.keys = keys
        self.key_cache = KeyCache(keys, key_cache_seconds)
        self.usage = usage
        self.ledger = ledger
        self.limiter = limiter
        self.prices = dict(prices or {})

    def price(self, *names: str) -> Price:
        for name in (*names, "*"):
            if name in self.prices:
                return self.prices[name]
        return Price()

    def ticket(
        self,
        key: KeyInfo | None,
        endpoint: str,
        *,
        batch_id: str | None = None,
        discount: float = 0.0,
    ) -> Ticket:
        return Ticket(self, key, endpoint, batch_id=batch_id, discount=discount)

    async def spend(self, key: KeyInfo, now: float | None = None) -> float:
        """USD the key spent in its current budget period (the counter is loaded from the
        ledger the first time a period is asked about)."""
        t = time.time() if now is None else now
        _, end = budget_window(key, t)
        value = await self.limiter.spent(str(key.id), end)
        if value is None:
            ledger: float = await to_thread.run_sync(ledger_spend, self.usage, key, t)
            value = await self.limiter.load_spend(str(key.id), end, ledger)
        return value

    async def start(self) -> None:
        await self.ledger.start()

    async def close(self) -> None:
        await self.ledger.close()
        await self.limiter.close()


class Ticket:
    """One metered request."""

    def __init__(
        self,
        gateway: Gateway,
        key: KeyInfo | None,
        endpoint: str,
        *,
        batch_id: str | None = None,
        discount: float = 0.0,
    ) -> None:
        """``batch_id``: the request is a line of that batch. Batch lines are billed at
        ``1 - discount`` of the price, recorded with the batch's id, held to the key's budget
        but not to its rate limits (which are for interactive traffic; the batch runner paces
        its own lines)."""
        self.gateway = gateway
        self.key = key
        self.endpoint = endpoint
        self.batch_id = batch_id
        self._factor = 1.0 - discount
        self.model = ""
        self.price_names: tuple[str, ...] = ()
        self.request_id = uuid.uuid4().hex
        self.created = time.time()
        self._t0 = time.perf_counter()
        self._ttft: float | None = None
        self._finish: dict[int, str] = {}  # choice index -> finish reason
        self._handles: Sequence[RequestHandle] = ()
        self._prompt_tokens = 0
        self._counted = False  # took from the request bucket (or was refused by it)
        self._reserved = 0
        self._window_end: float | None = None
        self._hold: Hold | None = None
        self._limits = (
            Limits(key.rpm, key.tpm) if key is not None and batch_id is None else Limits()
        )
        self._decision_headers: dict[str, str] | None = None
        self._estimated = False
        self._readmit = False
        self.finished = False

    def target(self, model: str, *price_names: str) -> None:
        """The model asked for (recorded, made safe to store and quote: the client wrote it)
        and the names its price may be listed under."""
        self.model = clean_text(model, MODEL_CHARS)
        self.price_names = (self.model, *price_names)

    # -- called by serving -------------------------------------------------------------------
    async def admit(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        *,
        worst_completion_tokens: int | None = None,
    ) -> None:
        """Check the budget and take from the rate limits (one atomic step), or raise a 429.

        The token bucket reserves ``prompt_tokens + completion_tokens`` (``completion_tokens``:
        max_tokens per sequence, 0 when the request sets none). A budget holds the request's
        worst-case cost until it settles: the prompt at the input price plus
        ``worst_completion_tokens`` (the most the sequences can generate: the context they have
        left, when max_tokens is not set; default ``completion_tokens``) at the output price.
        """
        self._prompt_tokens = prompt_tokens
        key = self.key
        if self._readmit:
            self._readmit = False
            tokens = prompt_tokens + completion_tokens
            if key is not None and self._reserved and tokens != self._reserved:
                delta, self._reserved = tokens - self._reserved, tokens
                await self.gateway.limiter.settle(str(key.id), self._limits, delta, None, 0.0)
            return
        self._counted = True
        if key is None:
            return
        budget = None
        if key.budget_usd is not None:
            budget = Budget(key.budget_usd, budget_window(key, self.created)[1])
        if budget is None and not self._limits.any:
            return
        gw, kid = self.gateway, str(key.id)
        tokens = prompt_tokens + completion_tokens
        hold = None
        if budget is not None:
            worst = max(completion_tokens, worst_completion_tokens or 0)
            usd = gw.price(*self.price_names).cost(prompt_tokens, 0, worst) * self._factor
            hold = Hold(self.request_id, usd) if usd > 0 else None
        # Known before the call: a client that leaves while Redis runs the script (the task
        # is cancelled) must not leave a hold this ticket does not know of and never releases.
        # Releasing a hold that was not placed is harmless.
        self._window_end = budget.window_end if budget is not None else None
        self._hold = hold
        decision = await gw.limiter.acquire(kid, self._limits, tokens, budget, hold)
        if decision.blocked_by == "unloaded":
            await gw.spend(key, self.created)
            decision = await gw.limiter.acquire(kid, self._limits, tokens, budget, hold)
        if decision.allowed:
            self._reserved = tokens if self._limits.tpm else 0
        else:
            self._window_end = None
            self._hold = None
        self._decision_headers = decision.headers()
        if decision.blocked_by == "budget" and budget is not None:
            raise self._quota_error(key, budget, decision)
        if not decision.allowed:
            raise RateLimitError.of(decision, self.model, key.name)

    def _quota_error(self, key: KeyInfo, budget: Budget, d: Decision) -> QuotaExceededError:
        renews = f"{datetime.fromtimestamp(budget.window_end, UTC):%Y-%m-%d %H:%M} UTC"
        headers = dict(self._decision_headers or {})
        if d.spent >= budget.usd:
            headers["x-should-retry"] = "false"
            return QuotaExceededError(
                f"You exceeded your current quota: key {key.name!r} spent ${d.spent:.4f} of "
                f"its ${budget.usd:g} budget for this period, which renews at {renews}. Ask an "
                "admin to raise the budget or use another key.",
                headers=headers,
            )
        # what is left is held by requests in flight; they may cost less than their hold
        headers["retry-after"] = "1"
        return QuotaExceededError(
            f"You exceeded your current quota: key {key.name!r} spent ${d.spent:.4f} of its "
            f"${budget.usd:g} budget for this period and requests in flight hold "
            f"${d.held:.4f} (their worst-case cost) until they finish. Retry when they have "
            "finished, lower max_tokens, or ask an admin to raise the budget.",
            headers=headers,
        )

    def track(self, handles: Sequence[RequestHandle]) -> None:
        self._handles = handles

    def first_token(self) -> None:
        if self._ttft is None:
            self._ttft = time.perf_counter() - self._t0

    def choice_ended(self, index: int, reason: str | None) -> None:
        if reason is not None:
            self._finish[index] = reason

    def finish_reason(self) -> str | None:
        """The recorded finish reason: the distinct reasons of the choices that ended, in
        choice order, comma-joined ("stop", or "stop,length" for n > 1 choices that ended
        differently) and fit to the column by ``join_reasons`` ("stop,length,tool_calls,…");
        None when no choice ended (an error before the answer, a client that left)."""
        return join_reasons(self._finish[i] for i in sorted(self._finish))

    def measured(self, prompt_tokens: int, *, estimated: bool = False) -> None:
        self._prompt_tokens = prompt_tokens
        self._estimated = estimated

    async def fallback(self, model_id: str) -> bool:
        """The request moves to a fallback model: priced as that model from now on. Its
        backend admits it again, which corrects the token reservation but takes no second
        request and checks no limit (the request was admitted once); the budget hold placed
        for the first model stays until the request settles. A key whose allow-list does not
        name the fallback does not fall back to it."""
        if not may_use(self.key, model_id):
            return False
        self.price_names = (model_id,)
        self._handles = ()
        self._finish = {}
        self._estimated = False
        self._readmit = self._counted
        return True

    # -- called by the route -----------------------------------------------------------------
    async def headers(self) -> dict[str, str]:
        """x-ratelimit-* for this response (read without taking if the request was not
        admitted)."""
        if not self._limits.any or self.key is None:
            return {}
        if self._decision_headers is None:
            d = await self.gateway.limiter.peek(str(self.key.id), self._limits)
            self._decision_headers = d.headers()
        return self._decision_headers

    async def refuse(self, exc: OasisError) -> OasisError:
        """The request failed with ``exc``: record it, and return the error to answer with
        (``exc``, or a 429), carrying the x-ratelimit-* headers.

        A request refused before admission (invalid, an unknown model, too long for the
        context) counts against the key's requests per minute, as OpenAI counts it: it takes
        one request from the bucket, and once the bucket is empty the answer is that 429.
        """
        err = exc
        key = self.key
        if not self._counted and key is not None and self._limits.rpm:
            self._counted = True
            decision = await self.gateway.limiter.acquire(str(key.id), self._limits, 0)
            self._decision_headers = decision.headers()
            if not decision.allowed:
                err = RateLimitError.of(decision, self.model or "a model", key.name)
        err.headers = {**(await self.headers()), **err.headers}
        await self.finish(err.status)
        return err

    async def finish(self, status: int, *, disconnected: bool = False) -> None:
        """Record the request (once) and settle its reservation, hold and spend."""
        if self.finished:
            return
        self.finished = True
        with anyio.CancelScope(shield=True):
            await self._settle(status, disconnected)

    async def _settle(self, status: int, disconnected: bool) -> None:
        gw = self.gateway
        handles = self._handles
        completion = sum(h.generated for h in handles)
        # a prompt is billed as far as the engine evaluated it (a sequence cancelled while
        # queued evaluated none); sequences sharing a prompt count it once
        evaluated = sum(h.prompt_evaluated for h in handles)
        prompt = min(self._prompt_tokens, evaluated)
        cached = min(prompt, max((h.cached_tokens for h in handles), default=0))
        cost = gw.price(*self.price_names).cost(prompt, cached, completion) * self._factor
        key = self.key
        gw.ledger.record(
            Usage(
                request_id=self.request_id,
                created_at=int(self.created),
                key_id=key.id if key is not None else None,
                model=self.model,
                endpoint=self.endpoint,
                prompt_tokens=prompt,
                cached_tokens=cached,
                completion_tokens=completion,
                cost_usd=cost,
                latency_ms=(time.perf_counter() - self._t0) * 1000,
                ttft_ms=None if self._ttft is None else self._ttft * 1000,
                status=status,
                disconnected=disconnected,
                estimated=self._estimated,
                batch_id=self.batch_id,
                finish_reason=self.finish_reason(),
            )
        )
        if key is None:
            return
        delta = prompt + completion - self._reserved if self._reserved else 0
        release = self._hold.request_id if self._hold is not None else None
        if delta or (self._window_end is not None and cost) or release:
            await gw.limiter.settle(
                str(key.id), self._limits, delta, self._window_end, cost, release
            )

    async def metered(self, chunks: AsyncIterator[T]) -> AsyncIterator[T]:
        """A response stream that records the request when it ends: completed, failed, or
        abandoned by the client (status 499, as nginx logs a client that closed first)."""
        status, disconnected = 499, True
        try:
            async for chunk in chunks:
                yield chunk
            status, disconnected = 200, False
        except Exception as exc:
            status, disconnected = getattr(exc, "status", 500), False
            raise
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()  # cancel the engine work first: its token count is final
            await self.finish(status, disconnected=disconnected)
