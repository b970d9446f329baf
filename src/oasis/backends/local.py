"""The local backend: serving/ + engine/ in this process (llama.cpp, or the scripted fake)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from oasis.backends.base import Backend
from oasis.backends.upstream.pool import Pool
from oasis.config import Settings
from oasis.engine.base import Embedder, Engine, Health
from oasis.errors import InvalidRequestError
from oasis.models.registry import ModelSpec
from oasis.protocol.embeddings import EmbeddingRequest
from oasis.protocol.requests import ChatCompletionRequest, CompletionRequest
from oasis.serving.chat import ChatService
from oasis.serving.common import Meter, ServingContext
from oasis.serving.completions import CompletionService
from oasis.serving.embeddings import EmbeddingService


@dataclass(frozen=True)
class LocalServing:
    """The serving layer over every local engine, shared by the local backends."""

    engines: Mapping[str, Engine]
    chat: ChatService
    completions: CompletionService
    embedders: Mapping[str, Embedder]
    embeddings: EmbeddingService

    @classmethod
    def over(
        cls, serving: ServingContext, embedders: Mapping[str, Embedder] | None = None
    ) -> LocalServing:
        embedders = embedders or {}
        return cls(
            serving.engines,
            ChatService(serving),
            CompletionService(serving),
            embedders,
            EmbeddingService(serving.registry, embedders),
        )


def not_embedding(model: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"The model '{model[:200]}' is not an embedding model: /v1/embeddings needs one "
        "(GET /v1/models lists them; the bundled one is all-MiniLM-L6-v2, also named "
        "text-embedding-3-small).",
        param="model",
        code="model_not_supported",
    )


def not_generative(model: str, endpoint: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"The model '{model[:200]}' is an embedding model: it serves /v1/embeddings, not "
        f"{endpoint}.",
        param="model",
        code="model_not_supported",
    )


class LocalBackend(Backend):
    """A model served by an engine in this process."""

    def __init__(self, engine: Engine, serving: LocalServing) -> None:
        self.engine = engine
        self._serving = serving

    async def chat(
        self, req: ChatCompletionRequest, meter: Meter
    ) -> ChatCompletion | AsyncIterator[ChatCompletionChunk]:
        return await self._serving.chat.create(req, meter)

    async def completions(
        self, req: CompletionRequest, meter: Meter
    ) -> Completion | AsyncIterator[Completion]:
        return await self._serving.completions.create(req, meter)

    async def embeddings(self, req: EmbeddingRequest, meter: Meter) -> CreateEmbeddingResponse:
        raise not_embedding(req.model)

    def health(self) -> Health:
        return self.engine.health()

    def pools(self) -> Sequence[Pool]:
        return ()

    def describe(self) -> dict[str, Any]:
        health = self.engine.health()
        stats = self.engine.stats()
        return {
            "backend": "local",
            "state": "healthy" if health.ok else "down",
            "detail": health.detail,
            "running": stats.running,
            "waiting": stats.waiting,
            "requests": stats.requests_total,
        }

    async def start(self) -> None:
        self.engine.start()

    async def close(self) -> None:
        self.engine.close()


class LocalEmbeddingBackend(Backend):
    """An embedding model served by an embedder in this process."""

    def __init__(self, embedder: Embedder, serving: LocalServing) -> None:
        self.embedder = embedder
        self._serving = serving

    async def chat(
        self, req: ChatCompletionRequest, meter: Meter
    ) -> ChatCompletion | AsyncIterator[ChatCompletionChunk]:
        raise not_generative(req.model, "/v1/chat/completions")

    async def completions(
        self, req: CompletionRequest, meter: Meter
    ) -> Completion | AsyncIterator[Completion]:
        raise not_generative(req.model, "/v1/completions")

    async def embeddings(self, req: EmbeddingRequest, meter: Meter) -> CreateEmbeddingResponse:
        return await self._serving.embeddings.create(req, meter)

    def health(self) -> Health:
        return self.embedder.health()

    def pools(self) -> Sequence[Pool]:
        return ()

    def describe(self) -> dict[str, Any]:
        health = self.embedder.health()
        stats = self.embedder.stats()
        return {
            "backend": "local",
            "kind": "embedding",
            "state": "healthy" if health.ok else "down",
            "detail": health.detail,
            "requests": stats.requests_total,
        }

    async def start(self) -> None:
        self.embedder.start()

    async def close(self) -> None:
        self.embedder.close()


class LocalKind:
    """``backend = "local"`` (the default): a GGUF run by llama.cpp in this process, or the
    scripted fake engine with ``OASIS_ENGINE=fake`` (gateway benchmarks and tests)."""

    def engine(
        self, spec: ModelSpec, settings: Settings, on_fatal: Callable[[str], None] | None
    ) -> Engine | None:
        if spec.is_embedding:
            return None
        if settings.engine == "fake":
            from oasis.engine.fake import FakeEngine

            return FakeEngine(
                n_ctx=spec.ctx_size or settings.ctx_size,
                name=spec.id,
                max_sequences=settings.parallel + settings.max_queue,
            )
        from oasis.engine.llamacpp import LlamaEngine

        return LlamaEngine(
            spec.path,
            name=spec.id,
            n_ctx=spec.ctx_size or settings.ctx_size,
            n_parallel=settings.parallel,
            n_threads=settings.threads,
            n_batch=settings.batch_size,
            max_queue=settings.max_queue,
            prefix_cache=settings.prefix_cache,
            on_fatal=on_fatal,
        )

    def embedder(self, spec: ModelSpec, settings: Settings) -> Embedder | None:
        if not spec.is_embedding:
            return None
        if settings.engine == "fake":
            from oasis.engine.fake import FakeEmbedder

            return FakeEmbedder(name=spec.id)
        from oasis.engine.llamacpp.embedder import LlamaEmbedder

        return LlamaEmbedder(spec.path, name=spec.id, n_threads=settings.threads)

    def backend(self, spec: ModelSpec, serving: LocalServing, settings: Settings) -> Backend:
        if spec.is_embedding:
            return LocalEmbeddingBackend(serving.embedders[spec.id], serving)
        return LocalBackend(serving.engines[spec.id], serving)
