"""create_app: everything the server holds is built here and passed in, nothing is global."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from oasis import __version__
from oasis.config import Settings
from oasis.engine.base import Engine
from oasis.models.registry import ModelRegistry, specs_from_settings
from oasis.server.auth import require_api_key
from oasis.server.errors import install_error_handlers
from oasis.server.metrics import metrics_registry, render
from oasis.server.routes import openai as openai_routes
from oasis.server.state import AppState
from oasis.serving.chat import ChatService
from oasis.serving.common import ServingContext
from oasis.serving.completions import CompletionService
from oasis.store.db import database_url, make_engine, migrate
from oasis.store.keys import KeyStore

log = logging.getLogger(__name__)


def build_engines(settings: Settings, registry: ModelRegistry) -> dict[str, Engine]:
    """One llama.cpp engine per configured model."""
    from oasis.engine.llamacpp import LlamaEngine

    engines: dict[str, Engine] = {}
    for spec in registry.specs:
        engines[spec.id] = LlamaEngine(
            spec.path,
            name=spec.id,
            n_ctx=spec.ctx_size or settings.ctx_size,
            n_parallel=settings.parallel,
            n_threads=settings.threads,
            n_batch=settings.batch_size,
            max_queue=settings.max_queue,
            prefix_cache=settings.prefix_cache,
        )
    return engines


def create_app(
    settings: Settings,
    *,
    registry: ModelRegistry | None = None,
    engines: Mapping[str, Engine] | None = None,
) -> FastAPI:
    """Build the app. Tests pass a registry and fake engines; ``oasis serve`` passes neither."""
    registry = registry or ModelRegistry(specs_from_settings(settings))
    engines = engines if engines is not None else build_engines(settings, registry)
    serving = ServingContext(registry, engines)
    keys = None
    if not settings.no_auth:
        db = make_engine(database_url(settings.database_url, settings.data_dir))
        migrate(db)
        keys = KeyStore(db)
    state = AppState(
        settings=settings,
        serving=serving,
        chat=ChatService(serving),
        completions=CompletionService(serving),
        keys=keys,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        started: list[Engine] = []
        try:
            for engine in engines.values():
                engine.start()
                started.append(engine)
            yield
        finally:
            for engine in started:
                engine.close()

    app = FastAPI(
        title="oasis",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.oasis = state
    install_error_handlers(app)
    app.include_router(openai_routes.router, dependencies=[Depends(require_api_key)])

    metrics = metrics_registry(engines)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(render(metrics), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok", "models": [s.id for s in registry.specs]})

    return app
