"""Which models a key may use: a key restricted to models gets 404 for the others, as OpenAI
answers for models a project cannot use."""

from __future__ import annotations

from oasis.errors import ModelNotFoundError
from oasis.store.keys import KeyInfo


def may_use(key: KeyInfo | None, model: str) -> bool:
    """A key without a model list (or the --api-key / --no-auth caller) may use every model."""
    return key is None or not key.models or model in key.models


def check_model(key: KeyInfo | None, model: str) -> None:
    if not may_use(key, model):
        raise ModelNotFoundError(model)
