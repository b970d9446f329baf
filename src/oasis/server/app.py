"""create_app: everything the server holds is built here and passed in, nothing is global."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Literal

from anyio import to_thread
from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import Engine as Database

from oasis import __version__
from oasis.backends import Backend, LocalServing, kind_of
from oasis.backends.fallback import with_fallbacks
from oasis.batches.runner import BatchRunner
from oasis.config import Settings
from oasis.engine.base import Embedder, Engine
from oasis.errors import ConfigError, ModelNotFoundError
from oasis.gateway.limits import Limiter, MemoryLimiter, RedisLimiter
from oasis.gateway.meter import Gateway
from oasis.gateway.usage import Ledger, Price
from oasis.models.loader import ModelLoader
from oasis.models.registry import ModelRegistry, ModelSpec, specs_from_settings
from oasis.server.auth import require_admin, require_api_key
from oasis.server.errors import install_error_handlers
from oasis.server.guard import RequestGuard
from oasis.server.metrics import metrics_registry, render
from oasis.server.routes import admin as admin_routes
from oasis.server.routes import admin_models as admin_models_routes
from oasis.server.routes import batches as batches_routes
from oasis.server.routes import console as console_routes
from oasis.server.routes import console_api as console_api_routes
from oasis.server.routes import console_server as console_server_routes
from oasis.server.routes import files as files_routes
from oasis.server.routes import openai as openai_routes
from oasis.server.routes import responses as responses_routes
from oasis.server.state import AppState
from oasis.server.stats_window import Sampler, read_models
from oasis.serving.common import RequestLimits, ServingContext
from oasis.store.batches import BatchStore
from oasis.store.db import database_url, make_engine, migrate
from oasis.store.files import FileStore
from oasis.store.keys import KeyStore
from oasis.store.responses import ResponseStore
from oasis.store.usage import UsageStore

log = logging.getLogger(__name__)


def build_loader(
    settings: Settings,
    registry: ModelRegistry,
    engines: Mapping[str, Engine] | None = None,
    embedders: Mapping[str, Embedder] | None = None,
) -> ModelLoader:
    """The local models (llama.cpp, or the scripted fake), each loaded on demand by its
    backend kind. ``engines``/``embedders`` given (tests, embedded use) are served as given,
    always loaded. An engine that gives up after repeated failures is unloaded, and loaded
    afresh by the next request (``ModelLoader.engine_down``), rather than stopping the server
    with every other model in it."""
    loader = ModelLoader(max_loaded=settings.max_loaded, wait_seconds=settings.model_wait_seconds)
    given: dict[str, Engine | Embedder] = {**(engines or {}), **(embedders or {})}
    for spec in registry.specs:
        role: Literal["engine", "embedder"] = "embedder" if spec.is_embedding else "engine"
        if spec.id in given:
            loader.add(spec.id, role, loaded=given[spec.id])
        elif (embedders if spec.is_embedding else engines) is None and _build(spec, settings, None):
            down = functools.partial(loader.engine_down, spec.id)
            loader.add(
                spec.id,
                role,
                functools.partial(_built, spec, settings, down),
                keep_alive=spec.keep_alive,
            )
    return loader


def _build(
    spec: ModelSpec, settings: Settings, on_fatal: Callable[[str], None] | None
) -> Engine | Embedder | None:
    """The engine (or embedder) the model's backend kind runs in this process, if any; not
    started (building one loads nothing)."""
    kind = kind_of(spec)
    if spec.is_embedding:
        return kind.embedder(spec, settings)
    return kind.engine(spec, settings, on_fatal)


def _built(
    spec: ModelSpec, settings: Settings, on_fatal: Callable[[str], None] | None
) -> Engine | Embedder:
    made = _build(spec, settings, on_fatal)
    assert made is not None, f"{spec.id}: its kind runs no engine here"
    return made


def served(registry: ModelRegistry) -> str:
    return ", ".join(s.id for s in registry.specs)


def preloaded(settings: Settings, registry: ModelRegistry, loader: ModelLoader) -> tuple[str, ...]:
    """The models loaded at start: ``preload``, else the first chat model served locally."""
    if settings.preload is not None:
        names = [n for n in settings.preload if n.lower() != "none"]
        try:
            ids = tuple(registry.resolve(n).id for n in names)
        except ModelNotFoundError as exc:
            raise ConfigError(f"preload: {exc.message} (served: {served(registry)})") from None
        remote = [i for i in ids if i not in loader.entries]
        if remote:
            raise ConfigError(f"preload: {', '.join(remote)} is not a local model")
        if len(ids) > settings.max_loaded:
            raise ConfigError(f"preload names {len(ids)} models, more than max_loaded")
    else:
        ids = tuple(s.id for s in registry.specs if not s.is_embedding)[:1]
    return tuple(i for i in ids if i in loader.entries)


def batch_endpoints(registry: ModelRegistry) -> frozenset[str]:
    """The endpoints a batch may run: chat, completions and responses when a chat model is
    served, embeddings when an embedding model is."""
    out: set[str] = set()
    if any(not s.is_embedding for s in registry.specs):
        out |= {"/v1/chat/completions", "/v1/completions", "/v1/responses"}
    if any(s.is_embedding for s in registry.specs):
        out.add("/v1/embeddings")
    return frozenset(out)


def build_database(settings: Settings) -> Database:
    """The configured database (SQLite in the data directory by default), migrated."""
    db = make_engine(database_url(settings.database_url, settings.data_dir))
    migrate(db)
    return db


def build_gateway(settings: Settings, db: Database) -> Gateway:
    """Keys, limits and the usage ledger on the database (and Redis, if set)."""
    usage = UsageStore(db)
    limiter: Limiter
    if settings.redis_url:
        limiter = RedisLimiter(settings.redis_url, prefix=settings.redis_prefix)
    else:
        limiter = MemoryLimiter()
    prices = {
        name: Price(input=p.input, output=p.output, cached_input=p.cached_input)
        for name, p in settings.prices.items()
    }
    return Gateway(
        KeyStore(db),
        usage,
        Ledger(usage, settings.data_dir / "journal", flush_interval=settings.usage_flush_seconds),
        limiter,
        prices=prices,
        key_cache_seconds=settings.key_cache_seconds,
    )


async def _purge_expired(store: ResponseStore, files: FileStore, every: float = 600.0) -> None:
    """Remove expired stored responses and files: at start, then every ``every`` seconds
    (each pass deletes in bounded batches, so a backlog is worked off over a few passes)."""
    while True:
        try:
            removed = await to_thread.run_sync(store.purge, int(time.time()))
            if removed:
                log.info("removed %d expired stored responses", removed)
        except Exception:
            log.exception("removing expired stored responses failed")
        try:
            removed = await to_thread.run_sync(files.purge, int(time.time()))
            if removed:
                log.info("removed %d expired files", removed)
        except Exception:
            log.exception("removing expired files failed")
        await asyncio.sleep(every)


def create_app(
    settings: Settings,
    *,
    registry: ModelRegistry | None = None,
    engines: Mapping[str, Engine] | None = None,
    embedders: Mapping[str, Embedder] | None = None,
) -> FastAPI:
    """Build the app. Tests pass a registry and fake engines (and embedders); ``oasis serve``
    passes neither."""
    registry = registry or ModelRegistry(specs_from_settings(settings))
    loader = build_loader(settings, registry, engines, embedders)
    preload = preloaded(settings, registry, loader)
    limits = RequestLimits(
        max_messages=settings.max_messages, max_prompt_chars=settings.max_prompt_chars
    )
    serving = ServingContext(registry, loader.engines, limits=limits)
    local = LocalServing.over(serving, loader)
    backends = with_fallbacks(
        {spec.id: kind_of(spec).backend(spec, local, settings) for spec in registry.specs},
        registry,
    )
    db = build_database(settings)
    gateway = None if settings.no_auth else build_gateway(settings, db)
    responses = ResponseStore(db)
    files = FileStore(db, settings.data_dir / "files")
    state = AppState(
        settings=settings,
        serving=serving,
        backends=backends,
        responses=responses,
        files=files,
        batches=BatchStore(db),
        keys=gateway.keys if gateway else None,
        gateway=gateway,
        batch_endpoints=batch_endpoints(registry),
        loader=loader,
    )
    state.batch_runner = BatchRunner(
        state,
        state.batches,
        files,
        concurrency=settings.batch_concurrency or settings.parallel,
        discount=settings.batch_discount,
        lease_seconds=settings.batch_lease_seconds,
    )
    server_stats = state.server_stats = Sampler(functools.partial(read_models, loader, backends))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        started: list[Backend] = []
        cleaner = asyncio.get_running_loop().create_task(_purge_expired(responses, files))
        try:
            server_stats.start()
            if gateway is not None:
                await gateway.start()
            await loader.start(preload)
            for backend in backends.values():
                await backend.start()
                started.append(backend)
            await state.batch_runner.start()
            yield
        finally:
            cleaner.cancel()
            await server_stats.close()
            await state.batch_runner.close()
            for backend in started:
                await backend.close()
            await loader.close()
            if gateway is not None:
                await gateway.close()

    # No /docs, /redoc or /openapi.json: every route but /health needs a key, and the wire
    # format is OpenAI's own (its OpenAPI document describes it), not FastAPI's view of it.
    app = FastAPI(
        title="oasis",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.oasis = state
    install_error_handlers(app)
    app.add_middleware(
        RequestGuard,
        max_body_bytes=settings.max_body_bytes,
        max_header_bytes=settings.max_header_bytes,
        allowances={
            ("POST", files_routes.FILES): files_routes.upload_allowance(settings.max_file_bytes)
        },
    )
    # outermost: even the guard's own refusals carry the CSP and the other security headers
    app.add_middleware(console_routes.SecurityHeaders)
    app.include_router(openai_routes.router, dependencies=[Depends(require_api_key)])
    app.include_router(responses_routes.router, dependencies=[Depends(require_api_key)])
    app.include_router(files_routes.router, dependencies=[Depends(require_api_key)])
    app.include_router(batches_routes.router, dependencies=[Depends(require_api_key)])
    app.include_router(console_api_routes.router, dependencies=[Depends(require_api_key)])
    app.include_router(admin_routes.router, dependencies=[Depends(require_admin)])
    app.include_router(admin_models_routes.router, dependencies=[Depends(require_admin)])
    app.include_router(console_server_routes.router, dependencies=[Depends(require_admin)])
    app.include_router(console_routes.make_router())  # the web console's page and files

    metrics = metrics_registry(loader, backends)

    @app.get("/metrics", dependencies=[Depends(require_api_key)])
    async def prometheus_metrics() -> Response:
        return Response(render(metrics), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health")
    async def health() -> JSONResponse:
        """200 while every engine can serve; 503 naming the failing ones otherwise."""
        down = {
            spec.id: h.detail for spec in registry.specs if not (h := backends[spec.id].health()).ok
        }
        body: dict[str, Any] = {
            "status": "ok" if not down else "unhealthy",
            "models": [s.id for s in registry.specs],
        }
        if down:
            body["errors"] = down
        return JSONResponse(body, status_code=503 if down else 200)

    return app
