"""``oasis keys``: create, list, revoke and rotate API keys in the configured database.

``list`` prints a table on a terminal, tab-separated lines when stdout is not a terminal (nothing
cut, dates in full), and with ``--json`` the keys as ``GET /admin/keys`` shows them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy import Engine

from oasis.cli.usage import print_json, print_rows, stdout_is_terminal
from oasis.config import load_settings
from oasis.errors import OasisError
from oasis.gateway.report import key_object, ledger_spend
from oasis.store.db import database_url, make_engine, migrate
from oasis.store.keys import MAX_BUDGET_PERIOD_S, KeyInfo, KeyStore, parse_duration
from oasis.store.usage import UsageStore

app = typer.Typer(
    help="Manage API keys (stored hashed in the oasis database).", no_args_is_help=True
)
out = Console()
err = Console(stderr=True)


def _engine() -> Engine:
    settings = load_settings()
    engine = make_engine(database_url(settings.database_url, settings.data_dir))
    migrate(engine)
    return engine


def _store() -> KeyStore:
    return KeyStore(_engine())


def _fail(exc: OasisError) -> typer.Exit:
    err.print(f"[red]error:[/red] {escape(exc.message)}", soft_wrap=True)
    return typer.Exit(1)


def _limits(k: KeyInfo) -> str:
    parts = []
    if k.rpm:
        parts.append(f"{k.rpm} rpm")
    if k.tpm:
        parts.append(f"{k.tpm} tpm")
    if k.budget_usd is not None:
        days = (k.budget_period_s or 0) / 86400
        parts.append(f"${k.budget_usd:g}/{days:g}d")
    if k.models:
        parts.append("models: " + ",".join(k.models))
    return "; ".join(parts) or "-"


def _period(text: str) -> int:
    return parse_duration(text, param="--budget-period", maximum=MAX_BUDGET_PERIOD_S)


def _when(value: datetime | None, *, full: bool) -> str:
    if value is None:
        return "never"
    return value.strftime("%Y-%m-%dT%H:%M:%SZ" if full else "%Y-%m-%d %H:%M")


@app.command()
def create(
    name: Annotated[str, typer.Option(help="Who or what the key is for.")],
    rpm: Annotated[int | None, typer.Option(min=1, help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(min=1, help="Tokens per minute.")] = None,
    budget: Annotated[float | None, typer.Option(min=0, help="Budget in USD per period.")] = None,
    budget_period: Annotated[str, typer.Option(help="Budget period, e.g. 30d.")] = "30d",
    models: Annotated[str | None, typer.Option(help="Allowed models, comma-separated.")] = None,
    expires: Annotated[str | None, typer.Option(help="Lifetime, e.g. 90d.")] = None,
    admin: Annotated[bool, typer.Option(help="May call the admin API.")] = False,
) -> None:
    """Create a key and print its secret (shown only this once)."""
    try:
        info, secret = _store().create(
            name,
            is_admin=admin,
            rpm=rpm,
            tpm=tpm,
            budget_usd=budget,
            budget_period_s=_period(budget_period) if budget is not None else None,
            models=[m.strip() for m in models.split(",") if m.strip()] if models else None,
            expires_in_s=parse_duration(expires, param="--expires") if expires else None,
        )
    except OasisError as exc:
        raise _fail(exc) from None
    err.print(
        f"created key {info.prefix} ({escape(info.name)}); the secret is shown only once:",
        soft_wrap=True,
    )
    out.print(secret, soft_wrap=True)


@app.command("list")
def list_keys(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON array, one object per key.")
    ] = False,
) -> None:
    """Keys with their id, prefix, name, limits, spend this period, status and last use (a
    table on a terminal, tab-separated lines when piped)."""
    now = datetime.now(UTC)
    engine = _engine()
    usage = UsageStore(engine)
    keys = KeyStore(engine).list()
    spend = {
        k.id: ledger_spend(usage, k, now.timestamp()) for k in keys if k.budget_usd is not None
    }
    if as_json:
        print_json([key_object(k, spend.get(k.id), now) for k in keys])
        return
    full = not stdout_is_terminal()
    rows = [
        [
            k.public_id,
            k.prefix,
            k.name,
            "yes" if k.is_admin else "",
            _limits(k),
            f"${spend[k.id]:.4f}" if k.id in spend else "-",
            k.status(now),
            _when(k.last_used_at, full=full),
        ]
        for k in keys
    ]
    # On a narrow terminal cells wrap (fold), so nothing is cut.
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for name in ("id", "prefix", "name", "admin", "limits", "spend", "status", "last used"):
        table.add_column(name, overflow="fold", justify="right" if name == "spend" else "left")
    for row in rows:
        table.add_row(*row)
    header = ["id", "prefix", "name", "admin", "limits", "spend", "status", "last_used"]
    print_rows(header, rows, table=table)


@app.command()
def update(
    key: Annotated[str, typer.Argument(help="The key's prefix (sk-oasis-...) or id (key_12).")],
    name: Annotated[str | None, typer.Option(help="A new name.")] = None,
    rpm: Annotated[int | None, typer.Option(min=0, help="Requests per minute (0: none).")] = None,
    tpm: Annotated[int | None, typer.Option(min=0, help="Tokens per minute (0: none).")] = None,
    budget: Annotated[
        float | None, typer.Option(min=-1, help="Budget in USD per period (-1: none).")
    ] = None,
    budget_period: Annotated[str | None, typer.Option(help="Budget period, e.g. 30d.")] = None,
    models: Annotated[
        str | None, typer.Option(help="Allowed models, comma-separated ('' for all).")
    ] = None,
) -> None:
    """Change a key's name or limits (servers pick it up within OASIS_KEY_CACHE_SECONDS)."""
    changes: dict[str, Any] = {}
    if rpm is not None:
        changes["rpm"] = rpm or None
    if tpm is not None:
        changes["tpm"] = tpm or None
    if budget is not None:
        changes["budget_usd"] = None if budget < 0 else budget
    if models is not None:
        changes["models"] = [m.strip() for m in models.split(",") if m.strip()] or None
    try:
        if budget_period is not None:
            changes["budget_period_s"] = _period(budget_period)
        info = _store().update(key, name=name, **changes)
    except OasisError as exc:
        raise _fail(exc) from None
    err.print(f"updated {info.prefix} ({escape(info.name)}): {_limits(info)}", soft_wrap=True)


@app.command()
def revoke(
    prefix: Annotated[str, typer.Argument(help="The key's prefix (sk-oasis-...) or id (key_12).")],
) -> None:
    """Revoke a key: it stops working at once."""
    try:
        info = _store().revoke(prefix)
    except OasisError as exc:
        raise _fail(exc) from None
    err.print(f"revoked {info.prefix} ({escape(info.name)})", soft_wrap=True)


@app.command()
def rotate(
    prefix: Annotated[str, typer.Argument(help="The key's prefix (sk-oasis-...) or id (key_12).")],
) -> None:
    """Give a key a new secret (and prefix); the old secret stops working at once."""
    try:
        info, secret = _store().rotate(prefix)
    except OasisError as exc:
        raise _fail(exc) from None
    err.print(
        f"rotated {prefix} -> {info.prefix} ({escape(info.name)}); the new secret, shown once:",
        soft_wrap=True,
    )
    out.print(secret, soft_wrap=True)
