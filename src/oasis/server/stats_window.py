"""Recent rates of each model's counters (tokens/s, requests/min, prefix-cache hits), for the
console's Server page.

A ``Sampler`` reads every model's cumulative counters every ``interval`` seconds into a ring
per model that holds ``keep`` seconds; nothing happens per request, and one reading is a few
attribute reads per model. Rates over a window are a counter's increase from the oldest sample
in the window to a reading taken now, over the time between them, so the page is fresh without
sampling often. A counter that goes down (a model added again, an engine replaced) is taken to
have started again from zero, as Prometheus' ``rate()`` does: rates are never negative.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from oasis.backends.base import Backend
from oasis.engine.base import EngineStats
from oasis.models.loader import ModelLoader

log = logging.getLogger(__name__)

Counters = Mapping[str, float]
# the engine counters the console shows rates of (summed across a model's loads by the loader)
ENGINE_COUNTERS = (
    "requests_total",
    "prompt_tokens_total",
    "generated_tokens_total",
    "cached_tokens_total",
    "prefix_cache_hits_total",
)


@dataclass(frozen=True)
class Sample:
    """One reading of one model's counters: ``mono`` for spans, ``wall`` (unix) for charts."""

    mono: float
    wall: float
    values: Counters


@dataclass(frozen=True)
class Delta:
    """How much each counter grew over ``seconds``."""

    seconds: float
    increase: Counters

    def per_second(self, name: str) -> float:
        return self.increase.get(name, 0.0) / self.seconds

    def per_minute(self, name: str) -> float:
        return 60.0 * self.per_second(name)


def increase(samples: Iterable[Sample]) -> dict[str, float]:
    """Each counter's growth along ``samples`` (oldest first); a fall counts as a restart."""
    out: dict[str, float] = {}
    prev: Sample | None = None
    for s in samples:
        if prev is not None:
            for name, value in s.values.items():
                before = prev.values.get(name, 0.0)
                out[name] = out.get(name, 0.0) + (value - before if value >= before else value)
        prev = s
    return out


class StatsWindow:
    """A bounded ring of samples per model, and the rates over a window of them."""

    def __init__(
        self, *, interval: float = 5.0, keep: float = 900.0, min_span: float = 1.0
    ) -> None:
        self.maxlen = max(2, int(keep / interval) + 1)
        self.min_span = min_span  # shorter spans give no rate (too noisy to show)
        self._rings: dict[str, deque[Sample]] = {}

    def record(self, mono: float, wall: float, readings: Mapping[str, Counters]) -> None:
        for key, values in readings.items():
            ring = self._rings.get(key)
            if ring is None:
                ring = self._rings[key] = deque(maxlen=self.maxlen)
            ring.append(Sample(mono, wall, dict(values)))
        for key in self._rings.keys() - readings.keys():  # a model no longer served
            del self._rings[key]

    def samples(self, key: str, since: float = float("-inf")) -> list[Sample]:
        """The model's samples taken at ``since`` (monotonic) or later, oldest first."""
        return [s for s in self._rings.get(key, ()) if s.mono >= since]

    def delta(self, key: str, now: Sample, window: float) -> Delta | None:
        """The counters' growth from the oldest sample within ``window`` seconds of ``now``
        (a reading taken now) to ``now``; None until the samples span ``min_span``."""
        chain = [s for s in self.samples(key, now.mono - window) if s.mono < now.mono]
        if not chain:
            return None
        seconds = now.mono - chain[0].mono
        if seconds < self.min_span:
            return None
        return Delta(seconds, increase([*chain, now]))

    def series(self, key: str, now: float, window: float) -> list[tuple[float, Delta]]:
        """One point per sample in the window after the first: its wall time and the growth
        since the sample before it."""
        chain = self.samples(key, now - window)
        return [
            (b.wall, Delta(b.mono - a.mono, increase((a, b))))
            for a, b in itertools.pairwise(chain)
            if b.mono > a.mono
        ]

    def __len__(self) -> int:
        return sum(len(r) for r in self._rings.values())


class Sampler:
    """Reads ``read()`` (model id -> counters) every ``interval`` seconds into a StatsWindow,
    from ``start`` (the app's lifespan) until ``close``."""

    def __init__(
        self,
        read: Callable[[], Mapping[str, Counters]],
        *,
        interval: float = 5.0,
        keep: float = 900.0,
        window: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.read = read
        self.interval = interval
        self.window_s = window  # the window the console's rates are over
        self.clock = clock
        self.wall = wall
        self.window = StatsWindow(interval=interval, keep=keep)
        self.started_at: float | None = None
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        """Take one sample of every model now."""
        self.window.record(self.clock(), self.wall(), self.read())

    def now(self) -> dict[str, Sample]:
        """A reading of every model now, not kept (the end of the window's rates)."""
        mono, wall = self.clock(), self.wall()
        return {key: Sample(mono, wall, dict(v)) for key, v in self.read().items()}

    def uptime(self) -> float:
        return 0.0 if self.started_at is None else max(0.0, self.clock() - self.started_at)

    def start(self) -> None:
        self.started_at = self.clock()
        self.sample()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="oasis-stats")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.sample()
            except Exception:  # a bad reading must not end the sampling
                log.exception("sampling the models' counters failed")


def engine_counters(stats: EngineStats) -> dict[str, float]:
    return {name: float(getattr(stats, name)) for name in ENGINE_COUNTERS}


def read_models(loader: ModelLoader, backends: Mapping[str, Backend]) -> dict[str, Counters]:
    """Every model's counters: a local model's engine counters (summed across its loads by
    the loader, as ``/metrics`` shows them), an upstream model's tries sent to its replicas."""
    out: dict[str, Counters] = {
        model: engine_counters(loader.stats(model)) for model in loader.entries
    }
    for model, backend in backends.items():
        if model not in out and (pools := backend.pools()):
            requests = sum(r.requests for p in pools for r in p.replicas)
            out[model] = {"requests_total": float(requests)}
    return out
