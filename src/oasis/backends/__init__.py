"""The request-level seam: per model, a backend takes a validated OpenAI request and returns a
response or a stream of chunks. ``local`` runs serving/ + engine/ in this process; other kinds
(an upstream OpenAI-compatible server) plug into the same registry of kinds."""

from oasis.backends.base import Backend, BackendKind
from oasis.backends.local import LocalBackend, LocalKind, LocalServing
from oasis.backends.registry import KINDS, kind_of

__all__ = [
    "KINDS",
    "Backend",
    "BackendKind",
    "LocalBackend",
    "LocalKind",
    "LocalServing",
    "kind_of",
]
