"""``oasis usage``: what was used, by day, key or model, from the usage ledger.

On a terminal it prints a table; when stdout is not a terminal (a pipe, a file) it prints
tab-separated lines, a header and then one line per row, with nothing cut; ``--json`` prints a
JSON array with one object per row. ``print_rows`` does the same for ``oasis keys list``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from oasis.config import load_settings
from oasis.errors import InvalidRequestError, OasisError
from oasis.gateway.report import MAX_TIME, Totals, UsageQuery, usage_report
from oasis.gateway.usage import Ledger
from oasis.store.db import database_url, make_engine, migrate
from oasis.store.keys import KeyStore, parse_duration
from oasis.store.usage import DAY, UsageBucket, UsageStore, day_of
from oasis.store.usage import rebuild_daily as rebuild_usage_daily

out = Console()
err = Console(stderr=True)


def stdout_is_terminal() -> bool:
    """Whether a person is looking at stdout (rich's own test also says yes to FORCE_COLOR,
    which a script's environment may set)."""
    return sys.stdout.isatty()


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _cell(value: str) -> str:
    return value.replace("\t", " ").replace("\r", " ").replace("\n", " ")


def print_rows(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    table: Table | None = None,
) -> None:
    """``table`` (already holding the rows) on a terminal; otherwise a tab-separated header and
    one tab-separated line per row."""
    if table is not None and stdout_is_terminal():
        out.print(table)
        return
    for row in (header, *rows):
        typer.echo("\t".join(_cell(c) for c in row))


def _since(text: str, now: float) -> int:
    """``7d`` (ago), ``2026-11-01`` or unix seconds."""
    text = text.strip()
    if text.isascii() and text.isdigit():
        if len(text) > 12 or int(text) > MAX_TIME:
            raise InvalidRequestError(f"Invalid '--since': {text} is after the year 9999.")
        return int(text)
    try:
        day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
        return int(day.timestamp())
    except ValueError:
        pass
    return max(0, int(now) - parse_duration(text, param="--since"))


def _bar(value: int, top: int, width: int = 24) -> str:
    if top <= 0:
        return ""
    eighths = round(value / top * width * 8)
    full, rest = divmod(eighths, 8)
    return "█" * full + ("▏▎▍▌▋▊▉"[rest - 1] if rest else "")


def _numbers(t: UsageBucket | Totals) -> list[str]:
    return [
        str(t.requests),
        str(t.errors),
        str(t.prompt_tokens),
        str(t.cached_tokens),
        str(t.completion_tokens),
        f"{t.cost_usd:.4f}",
    ]


app = typer.Typer(
    help="Requests, tokens and cost from the usage ledger; and its upkeep.",
    invoke_without_command=True,
    no_args_is_help=False,
)


@app.callback(invoke_without_command=True)
def usage(
    ctx: typer.Context,
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
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON array, one object per row.")
    ] = False,
) -> None:
    """Requests, tokens and cost from the usage ledger (a table on a terminal, tab-separated
    lines when piped)."""
    if ctx.invoked_subcommand is not None:
        return  # `oasis usage rebuild-daily`
    if group_by not in ("day", "key", "model"):
        err.print(
            f"[red]error:[/red] --group-by must be day, key or model, not {escape(repr(group_by))}"
        )
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
        key_ids = (keys.get(key).id,) if key else None
    except OasisError as exc:
        err.print(f"[red]error:[/red] {escape(exc.message)}", soft_wrap=True)
        raise typer.Exit(1) from None
    end = int(now) + 1
    by_day = group_by == "day"
    report = usage_report(
        store,
        UsageQuery(
            start=start,
            end=end,
            width=DAY if by_day else max(1, end - start),  # per key or model: one bucket
            origin=start - start % DAY if by_day else start,
            group_by=() if by_day else ("key" if group_by == "key" else "model",),
            key_ids=key_ids,
            models=(model,) if model else None,
        ),
    )
    rows = report.rows
    known = {k.id: k for k in keys.list()}

    def label(b: UsageBucket) -> str:
        if by_day:
            return datetime.fromtimestamp(b.start, UTC).strftime("%Y-%m-%d")
        if group_by == "key":
            if b.key_id is None:
                return "--api-key"
            k = known.get(b.key_id)
            return f"{k.prefix} ({k.name})" if k else f"key_{b.key_id}"
        return b.model or ""

    if as_json:
        data: list[dict[str, Any]] = []
        for b in rows:
            item: dict[str, Any] = {group_by: label(b)}
            if group_by == "key":
                k = known.get(b.key_id) if b.key_id is not None else None
                item["key_id"] = None if b.key_id is None else f"key_{b.key_id}"
                item["key_name"] = k.name if k else None
            item.update(
                requests=b.requests,
                errors=b.errors,
                disconnected=b.disconnected,
                prompt_tokens=b.prompt_tokens,
                cached_tokens=b.cached_tokens,
                completion_tokens=b.completion_tokens,
                cost_usd=round(b.cost_usd, 8),
            )
            data.append(item)
        print_json(data)
        return
    lines = [[label(b), *_numbers(b)] for b in rows]
    header = [group_by, "requests", "errors", "prompt_tokens", "cached_tokens"]
    header += ["completion_tokens", "cost_usd"]
    # On a terminal nothing is cut either: cells fold, and the bars get what width is left.
    bar = min(24, max(0, out.width - 80))
    table = Table(
        title=f"usage since {datetime.fromtimestamp(start, UTC):%Y-%m-%d %H:%M} UTC",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    table.add_column(group_by, overflow="fold")
    for name in ("requests", "errors", "prompt", "cached", "completion", "cost (USD)"):
        table.add_column(name, justify="right", overflow="fold")
    if bar:
        table.add_column("tokens", no_wrap=True)
    top = max((b.prompt_tokens + b.completion_tokens for b in rows), default=0)
    for b, line in zip(rows, lines, strict=True):
        tokens = _bar(b.prompt_tokens + b.completion_tokens, top, bar)
        table.add_row(*line, *([tokens] if bar else []))
    if rows:
        table.add_section()
        table.add_row("total", *_numbers(report.totals()), *([""] if bar else []))
    print_rows(header, lines, table=table)


@app.command("rebuild-daily")
def rebuild_daily(
    days: Annotated[
        int | None,
        typer.Option(min=1, help="Only the last N UTC days, today included (default: all)."),
    ] = None,
) -> None:
    """Recompute the daily sums (usage_daily, read by charts and reports) from the usage
    records, in one transaction: for sums that drifted from their records, e.g. records written
    by an older oasis during a rolling upgrade. Works on the configured database."""
    settings = load_settings()
    engine = make_engine(database_url(settings.database_url, settings.data_dir))
    migrate(engine)
    since = None if days is None else max(0, day_of(int(time.time())) - (days - 1) * DAY)
    with engine.begin() as conn:
        deleted, inserted = rebuild_usage_daily(conn, since)
    span = (
        "every day"
        if since is None
        else f"the days from {datetime.fromtimestamp(since, UTC):%Y-%m-%d}"
    )
    typer.echo(
        f"usage_daily rebuilt for {span} (UTC): {deleted} rows deleted, {inserted} rows "
        "summed from usage_records."
    )
