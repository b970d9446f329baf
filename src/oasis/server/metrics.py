"""GET /metrics: engine numbers in Prometheus' text format, read from the engines on scrape."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from oasis.engine.base import Engine


class EngineCollector(Collector):
    """One sample per model for every engine counter and gauge."""

    def __init__(self, engines: Mapping[str, Engine]) -> None:
        self.engines = engines

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
        }
        stats = {model: engine.stats() for model, engine in self.engines.items()}
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


def metrics_registry(engines: Mapping[str, Engine]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(engines))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
