"""What the app holds: built once in create_app, reached through ``app.state.oasis``."""

from __future__ import annotations

from dataclasses import dataclass

from oasis.config import Settings
from oasis.gateway.meter import Gateway
from oasis.serving.chat import ChatService
from oasis.serving.common import ServingContext
from oasis.serving.completions import CompletionService
from oasis.store.keys import KeyStore


@dataclass
class AppState:
    settings: Settings
    serving: ServingContext
    chat: ChatService
    completions: CompletionService
    keys: KeyStore | None = None
    gateway: Gateway | None = None  # None with --no-auth: no keys, limits or metering
