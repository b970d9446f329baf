"""What the app holds: built once in create_app, reached through ``app.state.oasis``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from oasis.backends import Backend
from oasis.config import Settings
from oasis.gateway.meter import Gateway
from oasis.serving.common import ServingContext
from oasis.store.files import FileStore
from oasis.store.keys import KeyStore
from oasis.store.responses import ResponseStore


@dataclass
class AppState:
    settings: Settings
    serving: ServingContext
    backends: Mapping[str, Backend]  # by model id
    responses: ResponseStore
    files: FileStore
    keys: KeyStore | None = None
    gateway: Gateway | None = None  # None with --no-auth: no keys, limits or metering
