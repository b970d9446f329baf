"""``oasis backends``: each model's backend as a running server sees it (``GET
/admin/backends``): a local engine's state (and whether the model is loaded, and how long its
last load took), or every upstream replica's state, requests in flight, error rate and latency.
A table on a terminal, tab-separated lines when piped, ``--json`` for the server's own JSON."""

from __future__ import annotations

from typing import Annotated, Any

import httpx
import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from oasis.apps.client import ClientConfigError, resolve
from oasis.cli.usage import print_json, print_rows

err = Console(stderr=True, highlight=False, soft_wrap=True)

HEADER = (
    "model",
    "backend",
    "replica",
    "state",
    "in_flight",
    "requests",
    "error_rate",
    "p50_ms",
    "p99_ms",
    "last_error",
    "load_state",
    "load_s",
)


def _rows(data: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for item in data:
        model, kind = str(item.get("model")), str(item.get("backend"))
        if kind != "upstream":
            rows.append(
                [
                    model,
                    kind,
                    "-",
                    str(item.get("state", "")),
                    str(item.get("running", "")),
                    str(item.get("requests", "")),
                    "-",
                    "-",
                    "-",
                    str(item.get("detail", "")) if item.get("state") != "healthy" else "",
                    str(item.get("load_state", "-")),
                    "-" if item.get("load_seconds") is None else f"{item['load_seconds']:.2f}",
                ]
            )
            continue
        for r in item.get("replicas", []):

            def ms(v: Any) -> str:
                return "-" if v is None else f"{v:.1f}"

            rows.append(
                [
                    model,
                    kind,
                    str(r["url"]),
                    str(r["state"]),
                    str(r["in_flight"]),
                    str(r["requests"]),
                    f"{100 * r['error_rate']:.1f}%",
                    ms(r["latency_p50_ms"]),
                    ms(r["latency_p99_ms"]),
                    str(r.get("last_error") or ""),
                    "-",
                    "-",
                ]
            )
    return rows


def backends(
    base_url: Annotated[
        str | None, typer.Option("--base-url", help="The server [OPENAI_BASE_URL].")
    ] = None,
    api_key: Annotated[
        str | None, typer.Option("--api-key", help="An admin key [OPENAI_API_KEY].")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the server's JSON.")] = False,
) -> None:
    """Show each model's backend and upstream replicas on a running server."""
    try:
        url, key = resolve(base_url, api_key)
    except ClientConfigError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    root = url.rstrip("/").removesuffix("/v1")
    try:
        response = httpx.get(
            f"{root}/admin/backends", headers={"Authorization": f"Bearer {key}"}, timeout=30
        )
    except httpx.HTTPError as exc:
        err.print(f"[red]error:[/red] cannot reach {escape(root)}: {escape(str(exc))}")
        raise typer.Exit(1) from None
    if response.status_code != 200:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:300]
        err.print(f"[red]error:[/red] {response.status_code}: {escape(str(message))}")
        raise typer.Exit(1)
    data = response.json().get("data", [])
    if as_json:
        print_json(data)
        return
    rows = _rows(data)
    table = Table(box=box.SIMPLE_HEAVY)
    for name in HEADER:
        table.add_column(
            name,
            justify="right"
            if name in ("in_flight", "requests", "error_rate", "p50_ms", "p99_ms", "load_s")
            else "left",
        )
    for row in rows:
        style = "" if row[3] == "healthy" else "red"
        table.add_row(*(escape(c) for c in row), style=style)
    print_rows(HEADER, rows, table=table)
