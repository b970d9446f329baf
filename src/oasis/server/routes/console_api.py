"""The console's JSON API for who is signed in, usage and the request log (any valid key).

- ``GET /console/api/me``: the caller (``admin``, ``auth`` "key" / "static" / "none", and its
  key as the admin API shows it, plus ``budget_period_s``).
- ``GET /console/api/usage``: usage per UTC day, stacked by model or by key, with totals.
- ``GET /console/api/requests``: the per-request log, newest first, keyset-paginated by the
  record's id (``before`` = the previous page's ``next_before``); no total count, which would
  cost a full scan of a large log. A page may hold fewer than ``limit`` records (even none)
  while ``next_before`` is not null: one page scans at most ``LOG_SLICE`` (200,000) ids, so a
  filter that matches little cannot make one request walk the whole table; the client asks
  again from ``next_before``. Only ``next_before: null`` means the end.

Every answer is ``Cache-Control: no-store``: it holds one key's data.

A user key sees only its own records, whatever it asks (naming another key is a 403); an admin
key or the static ``--api-key`` sees all and may filter by ``key``. Under ``--no-auth`` there
are no records: usage and the log answer the admin API's ``gateway_disabled`` 400.

Speed at a million records (bench/console_usage.py). The log reads at most ``limit + 1`` rows by
an index in its order: the primary key, or (key_id, id) / (model, id) for those filters
(migration 0006), within one slice of ids; ``since`` and ``until`` become that id range first
(``UsageStore.log``). The chart does not sum the records: ``GROUP BY`` day and model over the 7 days
of a million records spread over 30 days (~233,000 rows) took 550-720 ms on SQLite alone, past
the 500 ms budget for the whole page and growing with the range, so the ledger keeps
``usage_daily`` (sums per UTC day, key and model) in the same transaction as the records it
inserts, and the chart reads those few thousand rows (``UsageStore.buckets`` does so for any
whole-day query, the admin usage API's included).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from oasis.errors import InvalidRequestError, PermissionDeniedError
from oasis.gateway.meter import Gateway
from oasis.gateway.report import MAX_TIME, Totals, UsageQuery, UsageReport, usage_report
from oasis.server.query import query_int, query_text
from oasis.server.routes.admin import NO_STORE, gateway_of, key_json
from oasis.store.keys import MAX_KEY_ID, KeyInfo, key_id
from oasis.store.usage import (
    DAY,
    ENDPOINT_CHARS,
    MAX_ID,
    MODEL_CHARS,
    LogFilter,
    LogRow,
    UsageBucket,
    day_of,
)

router = APIRouter()

MAX_DAYS = 366
DEFAULT_DAYS = 7
MAX_LIMIT = 200
DEFAULT_LIMIT = 50
STATIC = "static"  # the group and key filter naming records of the static --api-key
KEY_REF_CHARS = 40


@router.get("/console/api/me")
async def me(request: Request) -> JSONResponse:
    state = request.app.state.oasis
    key: KeyInfo | None = request.state.api_key
    auth = "key" if key is not None else "none" if state.settings.no_auth else "static"
    shown = None
    if key is not None and state.gateway is not None:
        shown = {**(await key_json(state.gateway, key)), "budget_period_s": key.budget_period_s}
    return JSONResponse(
        {"admin": bool(request.state.is_admin), "auth": auth, "key": shown}, headers=NO_STORE
    )


# -- who may see what --------------------------------------------------------------------------


def _key_scope(request: Request) -> tuple[int | None, ...] | None:
    """The keys whose records the caller asks for and may see: None for all (an admin
    without a ``key`` filter). A user key gets its own, whatever it asks; naming another
    key is a 403."""
    ref = query_text(request, "key", KEY_REF_CHARS)
    wanted: int | None = None
    if ref is not None and ref != STATIC:
        number = key_id(ref)
        if number is None or number < 1:  # key_0 would be the chart's stand-in for static
            raise InvalidRequestError(
                f"Invalid 'key': {ref[:100]!r}; key ids look like key_12 (or {STATIC!r}).",
                param="key",
                code="invalid_value",
            )
        wanted = number
    if request.state.is_admin:
        if ref is None:
            return None
        if wanted is not None and wanted > MAX_KEY_ID:
            return ()  # names no key: matches nothing
        return (wanted,)
    own: KeyInfo | None = request.state.api_key
    own_id = own.id if own is not None else None
    if ref is not None and wanted != own_id:
        raise PermissionDeniedError(
            "You have insufficient permissions for this operation: a user key sees only its "
            "own usage; reading another key's needs an admin key.",
            param="key",
        )
    return (own_id,)


def _key_ref(number: int | None) -> str:
    return STATIC if number is None else f"key_{number}"


# -- usage -------------------------------------------------------------------------------------


def _days(request: Request) -> tuple[int, int]:
    """The range asked for, as whole UTC days ``[start, end)``: ``days`` (default 7) up to
    and including the day of ``end`` (default now), or ``start`` to ``end`` (unix seconds),
    widened to the days they fall in; at most 366 days."""
    days = query_int(request, "days", 1, MAX_DAYS)
    start = query_int(request, "start", 0, MAX_TIME)
    end = query_int(request, "end", 0, MAX_TIME)
    if days is not None and start is not None:
        raise InvalidRequestError(
            "Give either 'days' or 'start' (and 'end'), not both.", param="days"
        )
    last = int(time.time()) if end is None else max(end - 1, 0)
    stop = day_of(last) + DAY
    first = stop - (days or DEFAULT_DAYS) * DAY if start is None else day_of(start)
    first = max(first, 0)
    if first >= stop:
        raise InvalidRequestError(
            "Invalid 'end': it must come after 'start'.", param="end", code="invalid_value"
        )
    if stop - first > MAX_DAYS * DAY:
        raise InvalidRequestError(
            f"Invalid 'start': the range is at most {MAX_DAYS} days.",
            param="start",
            code="invalid_value",
        )
    return first, stop


def _sums(t: UsageBucket | Totals) -> dict[str, Any]:
    return {
        "requests": t.requests,
        "errors": t.errors,
        "prompt_tokens": t.prompt_tokens,
        "cached_tokens": t.cached_tokens,
        "completion_tokens": t.completion_tokens,
        "tokens": t.prompt_tokens + t.completion_tokens,
        "cost_usd": round(t.cost_usd, 8),
    }


def _label(k: KeyInfo) -> str:
    return f"{k.name} ({k.prefix}…)"


def _usage_json(report: UsageReport, group_by: str, keys: list[KeyInfo]) -> dict[str, Any]:
    def group(b: UsageBucket) -> str:
        return _key_ref(b.key_id) if group_by == "key" else str(b.model)

    volume: dict[str, int] = {}
    for row in report.rows:
        volume[group(row)] = volume.get(group(row), 0) + row.requests
    labels: dict[str, str] = {}
    if group_by == "key":
        names = {k.public_id: _label(k) for k in keys}
        labels = {g: names.get(g, "static key (--api-key)" if g == STATIC else g) for g in volume}
    return {
        "start": report.query.start,
        "end": report.query.end,
        "group_by": group_by,
        "groups": sorted(volume, key=lambda g: (-volume[g], g)),  # the biggest first
        "labels": labels,
        "days": [
            {
                "start": b.start,
                "date": datetime.fromtimestamp(b.start, UTC).strftime("%Y-%m-%d"),
                "rows": [{"group": group(r), **_sums(r)} for r in b.rows],
            }
            for b in report.buckets
        ],
        "totals": _sums(report.totals()),
    }


@router.get("/console/api/usage")
async def usage(request: Request) -> JSONResponse:
    gw = gateway_of(request)
    start, end = _days(request)
    group_by = request.query_params.get("group_by") or "model"
    if group_by not in ("model", "key"):
        raise InvalidRequestError(
            f"Invalid 'group_by': {group_by[:100]!r}; use model or key.",
            param="group_by",
            code="invalid_value",
        )
    scope = _key_scope(request)
    model = query_text(request, "model", MODEL_CHARS)
    query = UsageQuery(
        start=start,
        end=end,
        width=DAY,
        origin=0,
        group_by=(group_by,),
        key_ids=scope,
        models=None if model is None else (model,),
    )

    def read(g: Gateway) -> tuple[UsageReport, list[KeyInfo]]:
        report = usage_report(g.usage, query)
        return report, g.keys.list() if group_by == "key" else []

    report, keys = await to_thread.run_sync(read, gw)
    return JSONResponse(_usage_json(report, group_by, keys), headers=NO_STORE)


# -- the request log ---------------------------------------------------------------------------


def _status(request: Request) -> str | int | None:
    raw = query_text(request, "status", 10)
    if raw is None or raw in ("ok", "error"):
        return raw
    if raw.isascii() and raw.isdigit() and 100 <= int(raw) <= 599:
        return int(raw)
    raise InvalidRequestError(
        f"Invalid 'status': {raw!r}; use ok, error or an HTTP status code (100-599).",
        param="status",
        code="invalid_value",
    )


def _row_json(row: LogRow) -> dict[str, Any]:
    u = row.usage
    return {
        "id": row.id,
        "request_id": u.request_id,
        "created_at": u.created_at,
        "key": None if u.key_id is None else f"key_{u.key_id}",
        "key_name": row.key_name,
        "key_prefix": row.key_prefix,
        "model": u.model,
        "endpoint": u.endpoint,
        "status": u.status,
        "prompt_tokens": u.prompt_tokens,
        "cached_tokens": u.cached_tokens,
        "completion_tokens": u.completion_tokens,
        "cost_usd": round(u.cost_usd, 8),
        "ttft_ms": None if u.ttft_ms is None else round(u.ttft_ms, 3),
        "latency_ms": round(u.latency_ms, 3),
        "finish_reason": u.finish_reason,
        "disconnected": u.disconnected,
        "estimated": u.estimated,
        "batch_id": u.batch_id,
    }


@router.get("/console/api/requests")
async def requests_log(request: Request) -> JSONResponse:
    gw = gateway_of(request)
    limit = query_int(request, "limit", 1, MAX_LIMIT) or DEFAULT_LIMIT
    where = LogFilter(
        before=query_int(request, "before", 1, MAX_ID),
        key_ids=_key_scope(request),
        model=query_text(request, "model", MODEL_CHARS),
        endpoint=query_text(request, "endpoint", ENDPOINT_CHARS),
        status=_status(request),
        since=query_int(request, "since", 0, MAX_TIME),
        until=query_int(request, "until", 0, MAX_TIME),
    )
    page = await to_thread.run_sync(gw.usage.log, where, limit)
    return JSONResponse(
        {"data": [_row_json(r) for r in page.rows], "next_before": page.next_before},
        headers=NO_STORE,
    )
