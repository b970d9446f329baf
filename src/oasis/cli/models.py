"""``oasis pull`` and ``oasis models list|show|rm``: the local model store.

Models live in ``<data dir>/models`` (``OASIS_DATA_DIR``; oasis.models.store describes the
layout). ``pull`` downloads a GGUF file from the Hugging Face Hub (``HF_ENDPOINT`` and
``HF_TOKEN`` as huggingface_hub reads them). ``list`` prints a table on a terminal,
tab-separated lines when piped, and with ``--json`` one object per model; ``show`` prints every
manifest field; ``rm`` asks first on a terminal and, in a script, wants ``--yes``.
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from oasis.cli.usage import print_json, print_rows
from oasis.config import load_settings
from oasis.errors import OasisError
from oasis.models.store import ModelStore, StoredModel, check_name

app = typer.Typer(
    help="Models in the local store (<data dir>/models): list, show, remove. "
    "`oasis pull` adds them.",
    no_args_is_help=True,
)
out = Console()
err = Console(stderr=True)


def _store() -> ModelStore:
    return ModelStore(load_settings().data_dir / "models")


def _fail(exc: OasisError) -> typer.Exit:
    err.print(f"[red]error:[/red] {escape(exc.message)}", soft_wrap=True)
    return typer.Exit(1)


def human_size(n: int) -> str:
    """Bytes in decimal units, as the Hub shows file sizes (``94.5 MB``)."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def _as_json(m: StoredModel) -> dict[str, Any]:
    return {**asdict(m), "path": str(m.path)}


def pull(
    repo: Annotated[
        str,
        typer.Argument(
            help="A Hugging Face model repository, e.g. Qwen/Qwen2.5-0.5B-Instruct-GGUF."
        ),
    ],
    file: Annotated[
        str | None, typer.Option("--file", help="The GGUF file to pull (its name in the repo).")
    ] = None,
    quant: Annotated[
        str | None,
        typer.Option("--quant", help="The quantization to pull, e.g. Q4_K_M, Q8_0."),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(help="The name to serve it as (default: from the repository's name)."),
    ] = None,
    revision: Annotated[
        str, typer.Option(help="A branch, tag or commit of the repository.")
    ] = "main",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the pulled model as JSON on stdout.")
    ] = False,
) -> None:
    """Download a GGUF model from the Hugging Face Hub (HF_ENDPOINT, HF_TOKEN) into the store.

    Without --file or --quant: Q4_K_M, else Q4_K_S, Q5_K_M, Q4_0, Q8_0, else the smallest file.
    Run it again after an interruption to continue the download.
    """
    from oasis.models.hub import pull as hub_pull  # huggingface_hub only for this command

    store = _store()
    err.print(f"oasis: pulling {escape(repo)} ({escape(revision)})", soft_wrap=True)
    try:
        model = hub_pull(
            repo,
            store=store,
            file=file,
            quant=quant,
            name=name,
            revision=revision,
            progress=sys.stderr.isatty(),
        )
    except OasisError as exc:
        raise _fail(exc) from None
    except OSError as exc:  # the store's disk: permissions, space
        err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err.print(
            "\noasis: interrupted; run the same command again to continue the download.",
            soft_wrap=True,
        )
        raise typer.Exit(130) from None
    details = ", ".join(
        x
        for x in (
            human_size(model.size),
            model.quantization,
            model.architecture,
            f"context {model.context_length}" if model.context_length else None,
        )
        if x
    )
    err.print(
        f"oasis: pulled [bold]{escape(model.name)}[/bold] ({escape(details)})", soft_wrap=True
    )
    err.print(f"oasis: file {escape(str(model.path))}", soft_wrap=True)
    err.print(f"oasis: serve it with: oasis serve --model {escape(model.name)}", soft_wrap=True)
    if as_json:
        print_json(_as_json(model))


@app.command("list")
def list_models(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON array, one object per model.")
    ] = False,
) -> None:
    """The models in the store: name, size, quantization, context, architecture, source (a
    table on a terminal, tab-separated lines when piped)."""
    models = _store().list()
    if as_json:
        print_json([_as_json(m) for m in models])
        return
    header = ["name", "size", "quant", "context", "architecture", "source"]
    rows = [
        [
            m.name,
            human_size(m.size),
            m.quantization or "-",
            str(m.context_length) if m.context_length else "-",
            m.architecture or "-",
            m.source,
        ]
        for m in models
    ]
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for column in header:
        right = column in ("size", "context")
        table.add_column(column, justify="right" if right else "left", overflow="fold")
    for row in rows:
        table.add_row(*(escape(c) for c in row))
    if not models:
        err.print("oasis: no models yet; add one with `oasis pull OWNER/REPO`")
    print_rows(header, rows, table=table)


@app.command()
def show(
    name: Annotated[str, typer.Argument(help="The model's name (see `oasis models list`).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print it as a JSON object.")] = False,
) -> None:
    """Everything the store knows of a model: its manifest and where its file is."""
    try:
        model = _store().get(name)
    except OasisError as exc:
        raise _fail(exc) from None
    data = _as_json(model)
    if as_json:
        print_json(data)
        return
    data["size"] = f"{model.size} ({human_size(model.size)})"
    data["added_at"] = datetime.fromtimestamp(model.added_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    width = max(len(k) for k in data)
    for key, value in data.items():
        typer.echo(f"{key + ':':<{width + 1}} {'-' if value is None else value}")


@app.command("rm")
def remove(
    name: Annotated[str, typer.Argument(help="The model's name (see `oasis models list`).")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Remove a model from the store (its directory and file)."""
    store = _store()
    try:
        check_name(name)
        model = store.find(name)
        if model is None and not (store.root / name).is_dir():
            model = store.get(name)  # raises ModelNotFoundError
    except OasisError as exc:
        raise _fail(exc) from None
    what = (
        f"{name} ({human_size(model.size)}, {model.path})"
        if model is not None
        else f"{name} (a broken entry: {store.root / name})"
    )
    if not yes:
        if not sys.stdin.isatty():
            err.print(
                f"[red]error:[/red] not removing {escape(what)}: stdin is not a terminal, so "
                "nobody can confirm; pass --yes to remove it.",
                soft_wrap=True,
            )
            raise typer.Exit(1)
        if not typer.confirm(f"Remove {what}?", default=False, err=True):
            err.print("oasis: nothing removed")
            raise typer.Exit(1)
    try:
        store.remove(name)
    except OasisError as exc:
        raise _fail(exc) from None
    err.print(f"oasis: removed {escape(what)}", soft_wrap=True)
