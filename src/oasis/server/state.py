"""What the app holds: built once in create_app, reached through ``app.state.oasis``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from oasis.backends import Backend
from oasis.config import Settings
from oasis.gateway.meter import Gateway
from oasis.models.loader import ModelLoader
from oasis.serving.common import ServingContext
from oasis.store.batches import BatchStore
from oasis.store.files import FileStore
from oasis.store.keys import KeyStore
from oasis.store.responses import ResponseStore

if TYPE_CHECKING:
    from oasis.batches.runner import BatchRunner
    from oasis.server.stats_window import Sampler


@dataclass
class AppState:
    settings: Settings
    serving: ServingContext
    backends: Mapping[str, Backend]  # by model id
    responses: ResponseStore
    files: FileStore
    batches: BatchStore
    keys: KeyStore | None = None
    gateway: Gateway | None = None  # None with --no-auth: no keys, limits or metering
    # the endpoints a batch may name: those some model here serves
    batch_endpoints: frozenset[str] = frozenset()
    # the local models, loaded on demand (the admin API loads and unloads them)
    loader: ModelLoader = field(default_factory=ModelLoader)
    # set by create_app once the state exists (the runner runs lines against it)
    batch_runner: BatchRunner = field(init=False)
    # each model's recent rates for the console's Server page (started by the lifespan)
    server_stats: Sampler | None = None
