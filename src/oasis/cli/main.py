"""``oasis``: the command-line entry point."""

from __future__ import annotations

import ipaddress
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import ValidationError
from rich.console import Console

from oasis.cli import apps as apps_cli
from oasis.cli import backends as backends_cli
from oasis.cli import keys as keys_cli
from oasis.cli import models as models_cli
from oasis.cli import usage as usage_cli
from oasis.config import load_settings
from oasis.errors import ConfigError, OasisError

if TYPE_CHECKING:  # the server is imported by `oasis serve` only: other commands start faster
    from oasis.server.state import AppState

app = typer.Typer(
    name="oasis",
    help="A self-hosted, OpenAI-compatible API server on real local models.",
    no_args_is_help=True,
    add_completion=False,
)
err = Console(stderr=True, soft_wrap=True)  # an error is one line, whatever the width
app.add_typer(keys_cli.app, name="keys")
app.command("pull")(models_cli.pull)
app.add_typer(models_cli.app, name="models")
app.add_typer(usage_cli.app, name="usage")
app.command("backends")(backends_cli.backends)
apps_cli.register(app)


@app.callback()
def _root() -> None:
    """oasis: the OpenAI API on your own machine."""


@app.command()
def serve(
    model: Annotated[
        Path | None, typer.Option(help="A GGUF file to serve instead of the bundled model.")
    ] = None,
    alias: Annotated[
        list[str] | None, typer.Option(help="Another name for --model (repeatable).")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind [OASIS_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [OASIS_PORT].")] = None,
    api_key: Annotated[
        str | None, typer.Option(help="Require this bearer key [OASIS_API_KEY].")
    ] = None,
    ctx_size: Annotated[
        int | None, typer.Option(help="Total KV context, shared by the slots [OASIS_CTX_SIZE].")
    ] = None,
    parallel: Annotated[
        int | None, typer.Option(help="Concurrent sequences (slots) [OASIS_PARALLEL].")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads [OASIS_THREADS].")] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Where state lives [OASIS_DATA_DIR].")
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="Log level [OASIS_LOG_LEVEL].")] = None,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="No key check (loopback only) [OASIS_NO_AUTH].")
    ] = False,
    prompt_lookup: Annotated[
        bool | None,
        typer.Option(
            "--prompt-lookup/--no-prompt-lookup",
            help="Speculative drafts from the prompt for every request (default: only those "
            'that send "prompt_lookup": true) [OASIS_PROMPT_LOOKUP].',
            show_default=False,
        ),
    ] = None,
    jump_forward: Annotated[
        bool | None,
        typer.Option(
            "--jump-forward/--no-jump-forward",
            help="Draft the text a grammar forces (structured outputs, tool calls); on by "
            "default [OASIS_JUMP_FORWARD].",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Start the OpenAI-compatible API server."""
    import uvicorn

    from oasis.server import create_app

    try:
        settings = load_settings(
            model=model,
            alias=alias,
            host=host,
            port=port,
            api_key=api_key,
            ctx_size=ctx_size,
            parallel=parallel,
            threads=threads,
            data_dir=data_dir,
            log_level=log_level,
            no_auth=no_auth or None,
            prompt_lookup=prompt_lookup,
            jump_forward=jump_forward,
        )
    except ValidationError as exc:
        err.print(
            f"[red]error:[/red] invalid setting: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}"
        )
        raise typer.Exit(2) from None
    if settings.no_auth and not _is_loopback(settings.host):
        err.print(
            f"[red]error:[/red] --no-auth is refused on {settings.host}: anyone on the network "
            "could use the server. Bind 127.0.0.1, or create keys with `oasis keys create`."
        )
        raise typer.Exit(2)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        application = create_app(settings)
    except (ConfigError, OasisError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    _bootstrap_admin_key(application.state.oasis)
    names = ", ".join(n for n, _ in application.state.oasis.serving.registry.names())
    err.print(f"oasis: serving [bold]{names}[/bold]")
    err.print(f"oasis: OpenAI-compatible API at http://{settings.host}:{settings.port}/v1")
    try:
        uvicorn.run(
            application,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level.lower(),
            access_log=False,
            loop="auto",
            http="auto",
            # SIGTERM lets running requests finish for up to 10 s, then cancels them
            timeout_graceful_shutdown=10,
        )
    except (ConfigError, OasisError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _bootstrap_admin_key(state: AppState) -> None:
    """First start with an empty key database: create an admin key and show it once."""
    if state.keys is None or state.settings.api_key is not None or state.keys.count() > 0:
        return
    _, secret = state.keys.create("admin (created by the first `oasis serve`)", is_admin=True)
    err.print("oasis: no API keys yet, so an admin key was created. It is shown only once:")
    err.print(f"\n    [bold]{secret}[/bold]\n", soft_wrap=True)
    err.print(
        "oasis: use it as the SDK's api_key; make more with `oasis keys create --name NAME`.",
        soft_wrap=True,
    )


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
