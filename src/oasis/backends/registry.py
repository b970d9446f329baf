"""The kinds of backend a model may have, by the name oasis.toml gives them."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from oasis.backends.base import BackendKind
from oasis.backends.local import LocalKind
from oasis.backends.upstream.backend import UpstreamKind
from oasis.errors import ConfigError
from oasis.models.registry import ModelSpec

KINDS: Mapping[str, BackendKind] = MappingProxyType(
    {"local": LocalKind(), "upstream": UpstreamKind()}
)


def kind_of(spec: ModelSpec) -> BackendKind:
    try:
        return KINDS[spec.backend]
    except KeyError:
        raise ConfigError(
            f"model {spec.id!r}: unknown backend {spec.backend!r} (known: {', '.join(KINDS)})"
        ) from None
