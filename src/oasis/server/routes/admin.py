"""The admin API (admin keys only): manage keys, read usage.

Keys: ``GET/POST /admin/keys``, ``GET/PATCH/DELETE /admin/keys/{key}``,
``POST /admin/keys/{key}/rotate``; ``{key}`` is ``key_<id>`` or the key's prefix.
Usage: ``GET /v1/organization/usage/completions`` in the shape of OpenAI's organization usage
API (plus ``cost_usd`` per result).
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from oasis.errors import InvalidRequestError
from oasis.gateway.meter import Gateway
from oasis.gateway.report import MAX_TIME, UsageQuery, key_object, openai_page, usage_report
from oasis.server.query import query_int, query_list
from oasis.server.validation import parse_json_body, validate
from oasis.store.keys import (
    MAX_BUDGET_PERIOD_S,
    MAX_BUDGET_USD,
    MAX_KEY_ID,
    MAX_RATE,
    KeyInfo,
    key_id,
    parse_duration,
    text_problem,
)

router = APIRouter()
NO_STORE = {"Cache-Control": "no-store"}  # keys' answers: no cache keeps a copy


def gateway_of(request: Request) -> Gateway:
    """The gateway, or the 400 every usage or key endpoint answers under --no-auth."""
    gateway: Gateway | None = request.app.state.oasis.gateway
    if gateway is None:
        raise InvalidRequestError(
            "This server runs with --no-auth: there are no keys or usage records. Restart it "
            "without --no-auth to use the admin API.",
            code="gateway_disabled",
        )
    return gateway


async def key_json(gateway: Gateway, k: KeyInfo) -> dict[str, Any]:
    spend = await gateway.spend(k) if k.budget_usd is not None else None
    return key_object(k, spend)


# -- request bodies ----------------------------------------------------------------------------


def _text(value: str) -> str:
    problem = text_problem(value)
    if problem:
        raise ValueError(problem)
    return value


# The bounds are the key store's (store/keys.py), so the CLI and the API refuse the same values.
Name = Annotated[str, AfterValidator(_text)]
Rate = Annotated[int, Field(ge=1, le=MAX_RATE)]
Budget = Annotated[float, Field(ge=0, le=MAX_BUDGET_USD, allow_inf_nan=False)]


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    admin: bool = False
    rpm: Rate | None = None
    tpm: Rate | None = None
    budget_usd: Budget | None = None
    budget_period: str = "30d"
    models: list[Name] | None = None
    expires: str | None = None


class KeyUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    rpm: Rate | None = None
    tpm: Rate | None = None
    budget_usd: Budget | None = None
    budget_period: str | None = None
    models: list[Name] | None = None


def _period(text: str) -> int:
    return parse_duration(text, param="budget_period", maximum=MAX_BUDGET_PERIOD_S)


@router.get("/admin/keys")
async def list_keys(request: Request) -> JSONResponse:
    gw = gateway_of(request)
    keys = await to_thread.run_sync(gw.keys.list)
    return JSONResponse(
        {"object": "list", "data": [await key_json(gw, k) for k in keys]}, headers=NO_STORE
    )


@router.post("/admin/keys")
async def create_key(request: Request) -> JSONResponse:
    gw = gateway_of(request)
    body = validate(KeyCreate, parse_json_body(await request.body()))
    period = _period(body.budget_period)  # checked even when there is no budget to use it
    expires = parse_duration(body.expires, param="expires") if body.expires is not None else None
    info, secret = await to_thread.run_sync(
        lambda: gw.keys.create(
            body.name,
            is_admin=body.admin,
            rpm=body.rpm,
            tpm=body.tpm,
            budget_usd=body.budget_usd,
            budget_period_s=period if body.budget_usd is not None else None,
            models=body.models,
            expires_in_s=expires,
        )
    )
    return JSONResponse(
        {**(await key_json(gw, info)), "value": secret}, status_code=201, headers=NO_STORE
    )


@router.get("/admin/keys/{key}")
async def get_key(key: str, request: Request) -> JSONResponse:
    gw = gateway_of(request)
    return JSONResponse(
        await key_json(gw, await to_thread.run_sync(gw.keys.get, key)), headers=NO_STORE
    )


@router.patch("/admin/keys/{key}")
async def update_key(key: str, request: Request) -> JSONResponse:
    gw = gateway_of(request)
    raw = parse_json_body(await request.body())
    body = validate(KeyUpdate, raw)
    changes: dict[str, Any] = {
        k: raw[k] for k in ("rpm", "tpm", "budget_usd", "models") if k in raw
    }
    if body.name is not None:
        changes["name"] = body.name
    if body.budget_period is not None:
        changes["budget_period_s"] = _period(body.budget_period)
    info = await to_thread.run_sync(lambda: gw.keys.update(key, **changes))
    gw.key_cache.invalidate()
    if "budget_usd" in changes or "budget_period_s" in changes:
        # reloaded from the ledger, once this process's pending records are in it
        await gw.ledger.flush()
        await gw.limiter.forget_spend(str(info.id))
    return JSONResponse(await key_json(gw, info), headers=NO_STORE)


@router.delete("/admin/keys/{key}")
async def revoke_key(key: str, request: Request) -> JSONResponse:
    gw = gateway_of(request)
    info = await to_thread.run_sync(gw.keys.revoke, key)
    gw.key_cache.invalidate()
    return JSONResponse({**(await key_json(gw, info)), "deleted": True}, headers=NO_STORE)


@router.post("/admin/keys/{key}/rotate")
async def rotate_key(key: str, request: Request) -> JSONResponse:
    gw = gateway_of(request)
    info, secret = await to_thread.run_sync(gw.keys.rotate, key)
    gw.key_cache.invalidate()
    return JSONResponse({**(await key_json(gw, info)), "value": secret}, headers=NO_STORE)


# -- usage -------------------------------------------------------------------------------------

WIDTHS = {"1m": (60, 60, 1440), "1h": (3600, 24, 168), "1d": (86400, 7, 31)}  # width, default, max
GROUPS = {"api_key_id": "key", "model": "model"}
KNOWN_GROUPS = {"project_id", "user_id", "api_key_id", "model", "batch", "service_tier"}


def _usage_query(request: Request) -> UsageQuery:
    """The query of ``GET /v1/organization/usage/completions``, checked."""
    start = query_int(request, "start_time", 0, MAX_TIME)
    if start is None:
        raise InvalidRequestError(
            "Missing required parameter: 'start_time' (unix seconds).", param="start_time"
        )
    end = query_int(request, "end_time", 0, MAX_TIME)
    width_name = request.query_params.get("bucket_width", "1d")
    if width_name not in WIDTHS:
        raise InvalidRequestError(
            f"Invalid 'bucket_width': {width_name[:100]!r}; use one of 1m, 1h, 1d.",
            param="bucket_width",
            code="invalid_value",
        )
    width, default_limit, max_limit = WIDTHS[width_name]
    limit = query_int(request, "limit", 1, max_limit, f" with bucket_width={width_name}")
    page = query_int(request, "page", 0, MAX_TIME)
    groups = query_list(request, "group_by")
    for g in groups:
        if g not in KNOWN_GROUPS:
            raise InvalidRequestError(
                f"Invalid 'group_by' value: {g[:100]!r}.", param="group_by", code="invalid_value"
            )
        if g not in GROUPS:
            raise InvalidRequestError(
                f"Grouping by {g!r} is not supported by oasis (it has no projects, users, "
                "batches or service tiers); group by api_key_id or model.",
                param="group_by",
                code="unsupported_parameter",
            )
    key_ids: list[int] | None = None
    if refs := query_list(request, "api_key_ids"):
        key_ids = []
        for ref in refs:
            number = key_id(ref)
            if number is None or number < 1:  # key_0 would be the daily sums' static key
                raise InvalidRequestError(
                    f"Invalid 'api_key_ids' value: {ref[:100]!r}; key ids look like key_12.",
                    param="api_key_ids",
                    code="invalid_value",
                )
            if number <= MAX_KEY_ID:  # a larger one names no key: it matches nothing
                key_ids.append(number)
    models = query_list(request, "models") or None
    for name in ("project_ids", "user_ids", "batch"):
        if name in request.query_params:
            raise InvalidRequestError(
                f"Unsupported parameter: '{name}' is not supported by oasis.",
                param=name,
                code="unsupported_parameter",
            )
    return UsageQuery(
        start=start,
        end=int(time.time()) + 1 if end is None else end,
        width=width,
        group_by=tuple(GROUPS[g] for g in groups),
        key_ids=None if key_ids is None else tuple(key_ids),
        models=None if models is None else tuple(models),
        page=page,
        limit=default_limit if limit is None else limit,
    )


@router.get("/v1/organization/usage/completions")
async def usage_completions(request: Request) -> JSONResponse:
    gw = gateway_of(request)
    query = _usage_query(request)
    report = await to_thread.run_sync(usage_report, gw.usage, query)
    return JSONResponse(openai_page(report))


@router.get("/admin/backends")
async def list_backends(request: Request) -> JSONResponse:
    """Each model's backend: a local engine's state, or every upstream replica's state,
    in-flight count, error rate and latency."""
    state = request.app.state.oasis
    data = [
        {"model": spec.id, **state.backends[spec.id].describe()}
        for spec in state.serving.registry.specs
    ]
    return JSONResponse({"object": "list", "data": data})
