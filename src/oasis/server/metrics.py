"""GET /metrics: engine and model-loading numbers in Prometheus' text format, read on scrape."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from oasis.backends.base import Backend
from oasis.backends.upstream.pool import BUCKETS, Pool
from oasis.models.loader import ModelLoader


class EngineCollector(Collector):
    """One sample per local chat model for every engine counter and gauge (counters add up
    across the model's loads; gauges are 0 while it is not loaded)."""

    def __init__(self, loader: ModelLoader) -> None:
        self.loader = loader

    def collect(self) -> Iterator[Metric]:
        gauges = {
            "running": ("oasis_requests_running", "Sequences in a slot, being generated."),
            "waiting": ("oasis_requests_waiting", "Sequences waiting for a free slot."),
            "kv_used_cells": (
                "oasis_kv_cache_used_tokens",
                "Tokens held in the KV cache (running and kept for reuse).",
            ),
            "kv_total_cells": ("oasis_kv_cache_capacity_tokens", "KV cache size in tokens."),
        }
        counters = {
            "requests_total": ("oasis_requests", "Sequences admitted into a slot."),
            "cancelled_total": (
                "oasis_requests_cancelled",
                "Sequences cancelled (client went away) before finishing.",
            ),
            "prompt_tokens_total": (
                "oasis_prompt_tokens_evaluated",
                "Prompt tokens evaluated (prefix-cache hits excluded).",
            ),
            "generated_tokens_total": ("oasis_generated_tokens", "Tokens generated."),
            "prefix_cache_hits_total": (
                "oasis_prefix_cache_hits",
                "Requests that reused a cached prompt prefix.",
            ),
            "cached_tokens_total": (
                "oasis_prefix_cache_tokens",
                "Prompt tokens reused from the prefix cache.",
            ),
            "kv_copies_total": (
                "oasis_kv_cache_copies",
                "KV streams copied between slots (prefix reuse, n > 1).",
            ),
            "steps_total": ("oasis_engine_steps", "Engine steps (one llama_decode each)."),
            "step_seconds_total": (
                "oasis_engine_step_seconds",
                "Time spent in engine steps, in seconds.",
            ),
            "restarts_total": (
                "oasis_engine_restarts",
                "Times the engine loop failed, failed its requests and restarted.",
            ),
            "draft_tokens_total": (
                "oasis_draft_tokens",
                "Speculative tokens decoded (jump-forward from grammars, prompt lookup).",
            ),
            "draft_accepted_total": (
                "oasis_draft_tokens_accepted",
                "Speculative tokens kept: equal to what sampling produced at their position.",
            ),
        }
        stats = {
            model: self.loader.stats(model)
            for model, entry in self.loader.entries.items()
            if entry.kind == "engine"
        }
        for attr, (name, doc) in gauges.items():
            g = GaugeMetricFamily(name, doc, labels=["model"])
            for model, s in stats.items():
                g.add_metric([model], float(getattr(s, attr)))
            yield g
        for attr, (name, doc) in counters.items():
            c = CounterMetricFamily(name, doc, labels=["model"])
            for model, s in stats.items():
                c.add_metric([model], float(getattr(s, attr)))
            yield c


class ModelCollector(Collector):
    """Per local model: whether it is loaded, its loads and their time, its unloads."""

    def __init__(self, loader: ModelLoader) -> None:
        self.loader = loader

    def collect(self) -> Iterator[Metric]:
        loaded = GaugeMetricFamily(
            "oasis_model_loaded", "1 if the model is loaded, else 0.", labels=["model"]
        )
        in_use = GaugeMetricFamily(
            "oasis_model_in_use", "Requests holding the model loaded.", labels=["model"]
        )
        loads = CounterMetricFamily(
            "oasis_model_loads", "Times the model was loaded.", labels=["model"]
        )
        load_seconds = CounterMetricFamily(
            "oasis_model_load_seconds",
            "Time spent loading the model, in seconds.",
            labels=["model"],
        )
        last_load = GaugeMetricFamily(
            "oasis_model_last_load_seconds",
            "How long the model's last load took.",
            labels=["model"],
        )
        unloads = CounterMetricFamily(
            "oasis_model_unloads",
            "Times the model was unloaded, by reason (idle, evicted, admin).",
            labels=["model", "reason"],
        )
        for model, e in self.loader.entries.items():
            loaded.add_metric([model], 1.0 if e.state == "loaded" else 0.0)
            in_use.add_metric([model], float(e.users))
            loads.add_metric([model], float(e.loads))
            load_seconds.add_metric([model], e.load_seconds_total)
            if e.load_seconds is not None:
                last_load.add_metric([model], e.load_seconds)
            for reason, count in sorted(e.unloads.items()):
                unloads.add_metric([model, reason], float(count))
        yield from (loaded, in_use, loads, load_seconds, last_load, unloads)


class PoolCollector(Collector):
    """Per upstream replica: requests, errors by kind, in flight, up, ejections, time to
    first byte and latency; per model: retries."""

    def __init__(self, pools: Sequence[Pool]) -> None:
        self.pools = pools

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "replica"]
        requests = CounterMetricFamily(
            "oasis_backend_requests", "Tries sent to an upstream replica.", labels=labels
        )
        errors = CounterMetricFamily(
            "oasis_backend_errors",
            "Failed tries by kind (connect, timeout, http_5xx, http_429, broken, probe).",
            labels=[*labels, "kind"],
        )
        in_flight = GaugeMetricFamily(
            "oasis_backend_in_flight", "Requests in flight to a replica.", labels=labels
        )
        up = GaugeMetricFamily(
            "oasis_backend_up", "1 if the replica takes traffic, else 0.", labels=labels
        )
        ejections = CounterMetricFamily(
            "oasis_backend_ejections", "Times a replica was taken out.", labels=labels
        )
        retries = CounterMetricFamily(
            "oasis_backend_retries", "Tries after a first one failed.", labels=["model"]
        )
        ttfb = HistogramMetricFamily(
            "oasis_backend_first_byte_seconds",
            "Time to a stream's first event from a replica.",
            labels=labels,
        )
        latency = HistogramMetricFamily(
            "oasis_backend_latency_seconds", "Time to a replica's whole answer.", labels=labels
        )
        for pool in self.pools:
            retries.add_metric([pool.model], pool.retries)
            for r, d in zip(pool.replicas, pool.describe(), strict=True):
                ids = [pool.model, r.label]
                requests.add_metric(ids, r.requests)
                for kind, count in sorted(r.errors.items()):
                    errors.add_metric([*ids, kind], count)
                in_flight.add_metric(ids, r.in_flight)
                up.add_metric(ids, 1.0 if d["state"] == "healthy" else 0.0)
                ejections.add_metric(ids, r.ejected_total)
                for family, hist in ((ttfb, r.ttfb), (latency, r.latency)):
                    cumulative, buckets = 0, []
                    for bound, count in zip((*BUCKETS, math.inf), hist.counts, strict=True):
                        cumulative += count
                        label = "+Inf" if bound == math.inf else repr(float(bound))
                        buckets.append((label, cumulative))
                    family.add_metric(ids, buckets, hist.total)
        yield from (requests, errors, in_flight, up, ejections, retries, ttfb, latency)


def metrics_registry(
    loader: ModelLoader, backends: Mapping[str, Backend] | None = None
) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(loader))
    registry.register(ModelCollector(loader))
    pools = [p for b in (backends or {}).values() for p in b.pools()]
    if pools:
        registry.register(PoolCollector(pools))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
