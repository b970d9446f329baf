"""``oasis usage``: what was used, by day, key or model, from the usage ledger."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from oasis.config import load_settings
from oasis.errors import OasisError
from oasis.gateway.usage import Ledger
from oasis.store.db import database_url, make_engine, migrate
from oasis.store.keys import KeyStore, parse_duration
from oasis.store.usage import UsageBucket, UsageStore

out = Console()
err = Console(stderr=True)

DAY = 86400


def _since(text: str, now: float) -> int:
    """``7d`` (ago), ``2026-11-01`` or unix seconds."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
        return int(day.timestamp())
    except ValueError:
        pass
    return int(now) - parse_duration(text)


def _bar(value: int, top: int, width: int = 24) -> str:
    if top <= 0:
        return ""
    eighths = round(value / top * width * 8)
    full, rest = divmod(eighths, 8)
    return "█" * full + ("▏▎▍▌▋▊▉"[rest - 1] if rest else "")


def usage(
    key: Annotated[
        str | None, typer.Option(help="Only this key (its prefix sk-oasis-... or key_<id>).")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Only this model name.")] = None,
    since: Annotated[
        str, typer.Option(help="Start: a duration ago (7d, 12h), a date (2026-11-01) or unix time.")
    ] = "30d",
    group_by: Annotated[
        str, typer.Option("--group-by", help="Rows per day, key or model.")
    ] = "day",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Requests, tokens and cost from the usage ledger."""
    if group_by not in ("day", "key", "model"):
        err.print(f"[red]error:[/red] --group-by must be day, key or model, not {group_by!r}")
        raise typer.Exit(2)
    settings = load_settings()
    engine = make_engine(database_url(settings.database_url, settings.data_dir))
    migrate(engine)
    store = UsageStore(engine)
    keys = KeyStore(engine)
    # records a crashed server journaled but never stored are counted too
    Ledger(store, settings.data_dir / "journal").replay()
    now = time.time()
    try:
        start = _since(since, now)
        key_ids = [int(keys.get(key).public_id[4:])] if key else None
    except OasisError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from None
    end = int(now) + 1
    if group_by == "day":
        origin = start - start % DAY
        rows = store.buckets(
            start=start,
            end=end,
            width=DAY,
            origin=origin,
            key_ids=key_ids,
            models=[model] if model else None,
        )
    else:
        rows = store.buckets(
            start=start,
            end=end,
            width=end - start,
            origin=start,
            group_by=["key" if group_by == "key" else "model"],
            key_ids=key_ids,
            models=[model] if model else None,
        )
    names = {k.id: f"{k.prefix} ({k.name})" for k in keys.list()}

    def label(b: UsageBucket) -> str:
        if group_by == "day":
            return datetime.fromtimestamp(b.start, UTC).strftime("%Y-%m-%d")
        if group_by == "key":
            return "--api-key" if b.key_id is None else names.get(b.key_id, f"key_{b.key_id}")
        return b.model or ""

    if as_json:
        data = [
            {
                group_by: label(b),
                "requests": b.requests,
                "errors": b.errors,
                "disconnected": b.disconnected,
                "prompt_tokens": b.prompt_tokens,
                "cached_tokens": b.cached_tokens,
                "completion_tokens": b.completion_tokens,
                "cost_usd": round(b.cost_usd, 8),
            }
            for b in rows
        ]
        out.print_json(json.dumps(data))
        return
    table = Table(title=f"usage since {datetime.fromtimestamp(start, UTC):%Y-%m-%d %H:%M} UTC")
    table.add_column(group_by)
    for name in ("requests", "errors", "prompt", "cached", "completion", "cost (USD)"):
        table.add_column(name, justify="right")
    table.add_column("tokens")
    top = max((b.prompt_tokens + b.completion_tokens for b in rows), default=0)
    for b in rows:
        table.add_row(
            label(b),
            str(b.requests),
            str(b.errors),
            str(b.prompt_tokens),
            str(b.cached_tokens),
            str(b.completion_tokens),
            f"{b.cost_usd:.4f}",
            _bar(b.prompt_tokens + b.completion_tokens, top),
        )
    if rows:
        table.add_section()
        table.add_row(
            "total",
            str(sum(b.requests for b in rows)),
            str(sum(b.errors for b in rows)),
            str(sum(b.prompt_tokens for b in rows)),
            str(sum(b.cached_tokens for b in rows)),
            str(sum(b.completion_tokens for b in rows)),
            f"{sum(b.cost_usd for b in rows):.4f}",
            "",
        )
    out.print(table)
