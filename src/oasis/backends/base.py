"""What every backend kind provides."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from oasis.config import Settings
from oasis.engine.base import Embedder, Engine, Health
from oasis.models.registry import ModelSpec
from oasis.protocol.embeddings import EmbeddingRequest
from oasis.protocol.requests import ChatCompletionRequest, CompletionRequest
from oasis.serving.common import Meter

if TYPE_CHECKING:
    from oasis.backends.local import LocalServing
    from oasis.backends.upstream.pool import Pool


class Backend(Protocol):
    """One model's backend: an OpenAI request in, a response or a chunk stream out. Routes,
    the gateway (keys, limits, the meter) and the usage ledger sit above it, written once."""

    async def chat(
        self, req: ChatCompletionRequest, meter: Meter
    ) -> ChatCompletion | AsyncIterator[ChatCompletionChunk]: ...

    async def completions(
        self, req: CompletionRequest, meter: Meter
    ) -> Completion | AsyncIterator[Completion]: ...

    async def embeddings(self, req: EmbeddingRequest, meter: Meter) -> CreateEmbeddingResponse:
        """Vectors of the inputs (an embedding model's backend; routes send embedding requests
        only to embedding models, and chat requests only to chat models)."""
        ...

    def health(self) -> Health: ...

    def pools(self) -> Sequence[Pool]:
        """Its pools of upstream replicas (for /metrics); none for a local model."""
        ...

    def describe(self) -> dict[str, Any]:
        """Its state for ``GET /admin/backends`` (JSON-ready)."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class BackendKind(Protocol):
    """A kind of backend (``backend = "..."`` of a model in oasis.toml).

    Building is two steps because local backends share the serving layer: ``engine`` makes
    the token-level engine a kind runs in this process (None for kinds that run none), and
    ``backend`` wraps the model once the serving layer over every engine exists.
    """

    def engine(
        self, spec: ModelSpec, settings: Settings, on_fatal: Callable[[str], None] | None
    ) -> Engine | None: ...

    def backend(self, spec: ModelSpec, serving: LocalServing, settings: Settings) -> Backend: ...

    def embedder(self, spec: ModelSpec, settings: Settings) -> Embedder | None:
        """The embedding engine an embedding model of this kind runs in this process (None
        for kinds that run none)."""
        ...
