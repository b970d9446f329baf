"""``oasis keys``: create, list, revoke and rotate API keys in the configured database."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine

from oasis.config import load_settings
from oasis.errors import OasisError
from oasis.gateway.meter import budget_window
from oasis.store.db import database_url, make_engine, migrate
from oasis.store.keys import KeyInfo, KeyStore, parse_duration
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
    err.print(f"[red]error:[/red] {exc.message}")
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
            budget_period_s=parse_duration(budget_period) if budget is not None else None,
            models=[m.strip() for m in models.split(",") if m.strip()] if models else None,
            expires_in_s=parse_duration(expires) if expires else None,
        )
    except OasisError as exc:
        raise _fail(exc) from None
    err.print(f"created key {info.prefix} ({info.name}); the secret is shown only once:")
    out.print(secret, soft_wrap=True)


@app.command("list")
def list_keys() -> None:
    """Keys with their prefix, name, limits, spend this period, status and last use."""
    now = datetime.now(UTC)
    engine = _engine()
    usage = UsageStore(engine)
    table = Table()
    table.add_column("id", no_wrap=True)
    table.add_column("prefix", no_wrap=True)
    table.add_column("name")
    table.add_column("admin")
    table.add_column("limits")
    table.add_column("spend", justify="right")
    table.add_column("status", no_wrap=True)
    table.add_column("last used")
    for k in KeyStore(engine).list():
        last = k.last_used_at.strftime("%Y-%m-%d %H:%M") if k.last_used_at else "never"
        start, _ = budget_window(k, now.timestamp())
        spend = f"${usage.spend(k.id, int(start)):.4f}" if k.budget_usd is not None else "-"
        table.add_row(
            k.public_id,
            k.prefix,
            k.name,
            "yes" if k.is_admin else "",
            _limits(k),
            spend,
            k.status(now),
            last,
        )
    out.print(table)


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
            changes["budget_period_s"] = parse_duration(budget_period)
        info = _store().update(key, name=name, **changes)
    except OasisError as exc:
        raise _fail(exc) from None
    err.print(f"updated {info.prefix} ({info.name}): {_limits(info)}")


@app.command()
def revoke(
    prefix: Annotated[str, typer.Argument(help="The key's prefix (sk-oasis-...) or id (key_12).")],
) -> None:
    """Revoke a key: it stops working at once."""
    try:
        info = _store().revoke(prefix)
    except OasisError as exc:
        raise _fail(exc) from None
    err.print(f"revoked {info.prefix} ({info.name})")


@app.command()
def rotate(
    prefix: Annotated[str, typer.Argument(help="The key's prefix (sk-oasis-...) or id (key_12).")],
) -> None:
    """Give a key a new secret (and prefix); the old secret stops working at once."""
    try:
        info, secret = _store().rotate(prefix)
    except OasisError as exc:
        raise _fail(exc) from None
    err.print(f"rotated {prefix} -> {info.prefix} ({info.name}); the new secret, shown once:")
    out.print(secret, soft_wrap=True)
