"""The admin API (admin keys only): manage keys, read usage.

Keys: ``GET/POST /admin/keys``, ``GET/PATCH/DELETE /admin/keys/{key}``,
``POST /admin/keys/{key}/rotate``; ``{key}`` is ``key_<id>`` or the key's prefix.
Usage: ``GET /v1/organization/usage/completions`` in the shape of OpenAI's organization usage
API (plus ``cost_usd`` per result).
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from oasis.errors import InvalidRequestError
from oasis.gateway.meter import Gateway
from oasis.server.validation import parse_json_body, validate
from oasis.store.keys import KeyInfo, parse_duration

router = APIRouter()


def _gateway(request: Request) -> Gateway:
    gateway: Gateway | None = request.app.state.oasis.gateway
    if gateway is None:
        raise InvalidRequestError(
            "This server runs with --no-auth: there are no keys or usage records. Restart it "
            "without --no-auth to use the admin API.",
            code="gateway_disabled",
        )
    return gateway


def _ts(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


async def key_json(gateway: Gateway, k: KeyInfo) -> dict[str, Any]:
    now = datetime.now(k.created_at.tzinfo)
    out: dict[str, Any] = {
        "object": "api_key",
        "id": k.public_id,
        "name": k.name,
        "prefix": k.prefix,
        "redacted_value": f"{k.prefix}-****",
        "is_admin": k.is_admin,
        "status": k.status(now),
        "rpm": k.rpm,
        "tpm": k.tpm,
        "budget_usd": k.budget_usd,
        "budget_period_seconds": k.budget_period_s,
        "models": k.models,
        "created_at": _ts(k.created_at),
        "expires_at": _ts(k.expires_at),
        "revoked_at": _ts(k.revoked_at),
        "last_used_at": _ts(k.last_used_at),
    }
    if k.budget_usd is not None:
        out["spend_usd"] = round(await gateway.spend(k), 6)
    return out


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    admin: bool = False
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    budget_usd: float | None = Field(default=None, ge=0)
    budget_period: str = "30d"
    models: list[str] | None = None
    expires: str | None = None


class KeyUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    budget_usd: float | None = Field(default=None, ge=0)
    budget_period: str | None = None
    models: list[str] | None = None


@router.get("/admin/keys")
async def list_keys(request: Request) -> JSONResponse:
    gw = _gateway(request)
    keys = await to_thread.run_sync(gw.keys.list)
    return JSONResponse({"object": "list", "data": [await key_json(gw, k) for k in keys]})


@router.post("/admin/keys")
async def create_key(request: Request) -> JSONResponse:
    gw = _gateway(request)
    body = validate(KeyCreate, parse_json_body(await request.body()))
    period = parse_duration(body.budget_period) if body.budget_usd is not None else None
    expires = parse_duration(body.expires) if body.expires else None
    info, secret = await to_thread.run_sync(
        lambda: gw.keys.create(
            body.name,
            is_admin=body.admin,
            rpm=body.rpm,
            tpm=body.tpm,
            budget_usd=body.budget_usd,
            budget_period_s=period,
            models=body.models,
            expires_in_s=expires,
        )
    )
    return JSONResponse({**(await key_json(gw, info)), "value": secret}, status_code=201)


@router.get("/admin/keys/{key}")
async def get_key(key: str, request: Request) -> JSONResponse:
    gw = _gateway(request)
    return JSONResponse(await key_json(gw, await to_thread.run_sync(gw.keys.get, key)))


@router.patch("/admin/keys/{key}")
async def update_key(key: str, request: Request) -> JSONResponse:
    gw = _gateway(request)
    raw = parse_json_body(await request.body())
    body = validate(KeyUpdate, raw)
    changes: dict[str, Any] = {
        k: raw[k] for k in ("rpm", "tpm", "budget_usd", "models") if k in raw
    }
    if body.name is not None:
        changes["name"] = body.name
    if body.budget_period is not None:
        changes["budget_period_s"] = parse_duration(body.budget_period)
    info = await to_thread.run_sync(lambda: gw.keys.update(key, **changes))
    gw.key_cache.invalidate()
    return JSONResponse(await key_json(gw, info))


@router.delete("/admin/keys/{key}")
async def revoke_key(key: str, request: Request) -> JSONResponse:
    gw = _gateway(request)
    info = await to_thread.run_sync(gw.keys.revoke, key)
    gw.key_cache.invalidate()
    return JSONResponse({**(await key_json(gw, info)), "deleted": True})


@router.post("/admin/keys/{key}/rotate")
async def rotate_key(key: str, request: Request) -> JSONResponse:
    gw = _gateway(request)
    info, secret = await to_thread.run_sync(gw.keys.rotate, key)
    gw.key_cache.invalidate()
    return JSONResponse({**(await key_json(gw, info)), "value": secret})


# -- usage -------------------------------------------------------------------------------------

WIDTHS = {"1m": (60, 60, 1440), "1h": (3600, 24, 168), "1d": (86400, 7, 31)}  # width, default, max
GROUPS = {"api_key_id": "key", "model": "model"}
KNOWN_GROUPS = {"project_id", "user_id", "api_key_id", "model", "batch", "service_tier"}


def _query_list(request: Request, name: str) -> list[str]:
    """Array parameters as ``name=a&name=b``, ``name[]=a`` or ``name=a,b``."""
    values: list[str] = []
    for k, v in request.query_params.multi_items():
        if k in (name, f"{name}[]"):
            values.extend(part for part in v.split(",") if part)
    return values


def _query_int(request: Request, name: str, default: int | None = None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidRequestError(
            f"Invalid '{name}': expected an integer, got {raw!r}.", param=name, code="invalid_type"
        ) from None


@router.get("/v1/organization/usage/completions")
async def usage_completions(request: Request) -> JSONResponse:
    gw = _gateway(request)
    start = _query_int(request, "start_time")
    if start is None:
        raise InvalidRequestError(
            "Missing required parameter: 'start_time' (unix seconds).", param="start_time"
        )
    end = _query_int(request, "end_time", int(time.time()) + 1)
    assert end is not None
    width_name = request.query_params.get("bucket_width", "1d")
    if width_name not in WIDTHS:
        raise InvalidRequestError(
            f"Invalid 'bucket_width': {width_name!r}; use one of 1m, 1h, 1d.",
            param="bucket_width",
            code="invalid_value",
        )
    width, default_limit, max_limit = WIDTHS[width_name]
    limit = _query_int(request, "limit", default_limit)
    assert limit is not None
    if not 1 <= limit <= max_limit:
        raise InvalidRequestError(
            f"Invalid 'limit': {limit}; with bucket_width={width_name} it must be in "
            f"[1, {max_limit}].",
            param="limit",
            code="invalid_value",
        )
    page = _query_int(request, "page", None) if request.query_params.get("page") else None
    groups = _query_list(request, "group_by")
    for g in groups:
        if g not in KNOWN_GROUPS:
            raise InvalidRequestError(
                f"Invalid 'group_by' value: {g!r}.", param="group_by", code="invalid_value"
            )
        if g not in GROUPS:
            raise InvalidRequestError(
                f"Grouping by {g!r} is not supported by oasis (it has no projects, users, "
                "batches or service tiers); group by api_key_id or model.",
                param="group_by",
                code="unsupported_parameter",
            )
    key_ids: list[int] | None = None
    if refs := _query_list(request, "api_key_ids"):
        key_ids = []
        for ref in refs:
            if not (ref.startswith("key_") and ref[4:].isdigit()):
                raise InvalidRequestError(
                    f"Invalid 'api_key_ids' value: {ref!r}; key ids look like key_12.",
                    param="api_key_ids",
                    code="invalid_value",
                )
            key_ids.append(int(ref[4:]))
    models = _query_list(request, "models") or None
    for name in ("project_ids", "user_ids", "batch"):
        if name in request.query_params:
            raise InvalidRequestError(
                f"Unsupported parameter: '{name}' is not supported by oasis.",
                param=name,
                code="unsupported_parameter",
            )
    first = start if page is None else page
    stop = min(end, first + limit * width)
    rows = await to_thread.run_sync(
        lambda: gw.usage.buckets(
            start=first,
            end=stop,
            width=width,
            origin=start,
            group_by=[GROUPS[g] for g in groups],
            key_ids=key_ids,
            models=models,
        )
    )
    by_start: dict[int, list[dict[str, Any]]] = {}
    for b in rows:
        by_start.setdefault(b.start, []).append(
            {
                "object": "organization.usage.completions.result",
                "input_tokens": b.prompt_tokens,
                "output_tokens": b.completion_tokens,
                "input_cached_tokens": b.cached_tokens,
                "input_uncached_tokens": b.prompt_tokens - b.cached_tokens,
                "input_audio_tokens": 0,
                "output_audio_tokens": 0,
                "num_model_requests": b.requests,
                "project_id": None,
                "user_id": None,
                "api_key_id": (
                    (None if b.key_id is None else f"key_{b.key_id}")
                    if "api_key_id" in groups
                    else None
                ),
                "model": b.model if "model" in groups else None,
                "batch": None,
                "service_tier": None,
                "cost_usd": round(b.cost_usd, 8),
            }
        )
    data = []
    t = first
    while t < stop:
        data.append(
            {
                "object": "bucket",
                "start_time": t,
                "end_time": min(t + width, end),
                "results": by_start.get(t, []),
            }
        )
        t += width
    has_more = stop < end
    return JSONResponse(
        {
            "object": "page",
            "data": data,
            "has_more": has_more,
            "next_page": str(stop) if has_more else None,
        }
    )
