"""``GET /console/api/server`` (admin keys only): the console's Server page.

Every served model with its state, slots busy and queue (local models), replicas (upstream
models) and, over the last ``window_s`` seconds (or since start, if shorter):

- ``tokens_per_s``: tokens generated per second;
- ``prompt_tokens_per_s``: prompt tokens the engine evaluated per second (prefix-cache hits
  excluded: they cost no compute); an embedding model's input tokens;
- ``requests_per_min``: sequences admitted (local) or tries sent to a replica (upstream);
- ``prefix_cache_hit_rate``: the share of prompt tokens read from the prefix cache instead of
  evaluated, ``cached / (cached + evaluated)`` (``prefix_cache_request_hit_rate`` is the share
  of requests that reused a cached prefix at all);
- ``series``: one point per sample (every few seconds), for a sparkline.

Rates are null until the window spans a second, and where a model has no such counter.
Nothing here names a secret: replica URLs are shown without their ``user:password@``, and
upstream API keys are never read.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from oasis.backends.upstream.pool import Pool
from oasis.models.registry import ModelSpec
from oasis.server.routes.admin import NO_STORE
from oasis.server.state import AppState
from oasis.server.stats_window import Delta, Sample, Sampler

router = APIRouter()


def _rate(delta: Delta | None, name: str, per_minute: bool = False) -> float | None:
    if delta is None:
        return None
    value = delta.per_minute(name) if per_minute else delta.per_second(name)
    return round(value, 3)


def _number(x: float) -> float | int:
    return int(x) if x == int(x) else x


def _share(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole > 0 else None


def _rates(delta: Delta | None, kind: str) -> dict[str, float | None]:
    if kind == "upstream":
        return {
            "tokens_per_s": None,
            "prompt_tokens_per_s": None,
            "requests_per_min": _rate(delta, "requests_total", per_minute=True),
        }
    return {
        "tokens_per_s": None if kind == "embedding" else _rate(delta, "generated_tokens_total"),
        "prompt_tokens_per_s": _rate(delta, "prompt_tokens_total"),
        "requests_per_min": _rate(delta, "requests_total", per_minute=True),
    }


def _cache(delta: Delta | None, kind: str) -> dict[str, float | None]:
    if delta is None or kind != "local":
        return {"prefix_cache_hit_rate": None, "prefix_cache_request_hit_rate": None}
    cached = delta.increase.get("cached_tokens_total", 0.0)
    evaluated = delta.increase.get("prompt_tokens_total", 0.0)
    return {
        "prefix_cache_hit_rate": _share(cached, cached + evaluated),
        "prefix_cache_request_hit_rate": _share(
            delta.increase.get("prefix_cache_hits_total", 0.0),
            delta.increase.get("requests_total", 0.0),
        ),
    }


def _local_state(state: AppState, model: str) -> str:
    """loaded, unloaded, loading, unloading, or failed (its last load failed, or its engine
    gave up)."""
    entry = state.loader.entries[model]
    if entry.state == "loaded" and not state.loader.health(model).ok:
        return "failed"
    if entry.state == "unloaded" and entry.error is not None:
        return "failed"
    return entry.state


def _local(state: AppState, spec: ModelSpec) -> dict[str, Any]:
    stats = state.loader.stats(spec.id)
    embedding = spec.is_embedding
    kv = _share(stats.kv_used_cells, stats.kv_total_cells) if not embedding else None
    return {
        "kind": "embedding" if embedding else "local",
        "state": _local_state(state, spec.id),
        "slots": None if embedding else state.settings.parallel,
        "slots_busy": stats.running,
        "queue": stats.waiting,
        "kv_used": kv,
        "replicas": None,
    }


def _replicas(pool: Pool) -> list[dict[str, Any]]:
    now = pool.clock()
    out = []
    for r in pool.replicas:
        d = r.describe(now)
        out.append(
            {
                "url": r.label,
                "state": d["state"],
                "in_flight": r.in_flight,
                "error_rate": d["error_rate"] if r.recent else None,
                "latency_ms_p50": d["latency_p50_ms"],
            }
        )
    return out


def _upstream(pools: list[Pool]) -> dict[str, Any]:
    replicas = [d for p in pools for d in _replicas(p)]
    up = sum(p.up() for p in pools)
    health = "healthy" if up == len(replicas) else "down" if up == 0 else "degraded"
    return {
        "kind": "upstream",
        "state": health,
        "slots": None,
        "slots_busy": None,
        "queue": None,
        "kv_used": None,
        "replicas": replicas,
    }


def _series(sampler: Sampler | None, model: str, kind: str) -> list[dict[str, Any]]:
    if sampler is None:
        return []
    points = sampler.window.series(model, sampler.clock(), sampler.window_s)
    return [{"t": round(t, 3), **_rates(delta, kind)} for t, delta in points]


def model_view(
    state: AppState, spec: ModelSpec, sampler: Sampler | None, now: dict[str, Sample]
) -> dict[str, Any]:
    """One model's row of the Server page."""
    if spec.id in state.loader.entries:
        body = _local(state, spec)
    elif pools := list(state.backends[spec.id].pools()):
        body = _upstream(pools)
    else:  # a kind that runs nothing here and has no replicas
        ok = state.backends[spec.id].health().ok
        body = {
            "kind": "upstream",
            "state": "healthy" if ok else "down",
            "slots": None,
            "slots_busy": None,
            "queue": None,
            "kv_used": None,
            "replicas": None,
        }
    kind = body["kind"]
    delta = None
    if sampler is not None and spec.id in now:
        delta = sampler.window.delta(spec.id, now[spec.id], sampler.window_s)
    return {
        "id": spec.id,
        **body,
        **_rates(delta, kind),
        **_cache(delta, kind),
        "series": _series(sampler, spec.id, kind),
    }


@router.get("/console/api/server")
async def server_page(request: Request) -> JSONResponse:
    """The models, their state and their recent rates (see the module docstring)."""
    state: AppState = request.app.state.oasis
    sampler = state.server_stats
    now = sampler.now() if sampler is not None else {}
    models = [model_view(state, spec, sampler, now) for spec in state.serving.registry.specs]
    return JSONResponse(
        {
            "uptime_s": round(sampler.uptime(), 3) if sampler is not None else 0.0,
            "window_s": _number(sampler.window_s) if sampler is not None else 0,
            "models": models,
        },
        headers=NO_STORE,
    )
