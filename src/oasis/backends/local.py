"""The local backend: serving/ + engine/ in this process (llama.cpp, or the scripted fake).

A local model is loaded on demand by the ModelLoader: each request holds the model (so it is
not unloaded under it) from before the serving layer reads its engine until the answer, or the
last chunk of its stream, is out."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from oasis.backends.base import Backend
from oasis.backends.upstream.pool import Pool
from oasis.config import Settings
from oasis.engine.base import Embedder, Engine, Health
from oasis.errors import InvalidRequestError
from oasis.models.loader import ModelLoader
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
    loader: ModelLoader

    @classmethod
    def over(cls, serving: ServingContext, loader: ModelLoader) -> LocalServing:
        """``serving`` reads its engines from ``loader.engines`` (the loaded ones)."""
        return cls(
            serving.engines,
            ChatService(serving),
            CompletionService(serving),
            loader.embedders,
            EmbeddingService(serving.registry, loader.embedders),
            loader,
        )


T = TypeVar("T")
log = logging.getLogger(__name__)


class _Held:
    """A stream that holds its model loaded until it ends or is closed. A stream that fails
    closes itself (its engine sequences are cancelled before the model is released); one
    dropped without being closed releases the model when it is collected, with a warning."""

    def __init__(self, chunks: AsyncIterator[Any], release: Callable[[], None]) -> None:
        self._chunks = chunks
        self._release: Callable[[], None] | None = release
        self._loop = asyncio.get_running_loop()

    def __aiter__(self) -> _Held:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self._chunks.__anext__()
        except StopAsyncIteration:
            self._done()
            raise
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        try:
            aclose = getattr(self._chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            self._done()

    def _done(self) -> None:
        if self._release is not None:
            release, self._release = self._release, None
            release()

    def __del__(self) -> None:
        if self._release is not None and not self._loop.is_closed():
            log.warning("a response stream was dropped without being closed")
            self._loop.call_soon_threadsafe(self._done)  # the loader lives on the loop


async def holding(loader: ModelLoader, model_id: str, work: Callable[[], Awaitable[T]]) -> T:
    """``work()`` with the model loaded and held: until it returns, or for a stream (an async
    iterator) until the stream ends or is closed."""
    await loader.acquire(model_id)
    try:
        answer = await work()
    except BaseException:
        loader.release(model_id)
        raise
    if isinstance(answer, AsyncIterator):
        return cast(T, _Held(answer, lambda: loader.release(model_id)))
    loader.release(model_id)
    return answer


def _describe(loader: ModelLoader, model_id: str, stats: dict[str, Any]) -> dict[str, Any]:
    health = loader.health(model_id)
    return {
        "backend": "local",
        **stats,
        "state": "healthy" if health.ok else "down",
        "detail": health.detail,
        **loader.describe(model_id),
    }


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

    def __init__(self, model_id: str, serving: LocalServing) -> None:
        self.model_id = model_id
        self._serving = serving
        self._loader = serving.loader

    @property
    def engine(self) -> Engine | None:
        """The engine while the model is loaded."""
        return self._serving.engines.get(self.model_id)

    async def chat(
        self, req: ChatCompletionRequest, meter: Meter
    ) -> ChatCompletion | AsyncIterator[ChatCompletionChunk]:
        return await holding(
            self._loader, self.model_id, lambda: self._serving.chat.create(req, meter)
        )

    async def completions(
        self, req: CompletionRequest, meter: Meter
    ) -> Completion | AsyncIterator[Completion]:
        return await holding(
            self._loader, self.model_id, lambda: self._serving.completions.create(req, meter)
        )

    async def embeddings(self, req: EmbeddingRequest, meter: Meter) -> CreateEmbeddingResponse:
        raise not_embedding(req.model)

    def health(self) -> Health:
        return self._loader.health(self.model_id)

    def pools(self) -> Sequence[Pool]:
        return ()

    def describe(self) -> dict[str, Any]:
        stats = self._loader.stats(self.model_id)
        return _describe(
            self._loader,
            self.model_id,
            {"running": stats.running, "waiting": stats.waiting, "requests": stats.requests_total},
        )

    async def start(self) -> None:
        """Nothing: the loader loads the model (at start when preloaded, else on demand)."""

    async def close(self) -> None:
        """Nothing: the loader unloads every model when the server stops."""


class LocalEmbeddingBackend(Backend):
    """An embedding model served by an embedder in this process."""

    def __init__(self, model_id: str, serving: LocalServing) -> None:
        self.model_id = model_id
        self._serving = serving
        self._loader = serving.loader

    async def chat(
        self, req: ChatCompletionRequest, meter: Meter
    ) -> ChatCompletion | AsyncIterator[ChatCompletionChunk]:
        raise not_generative(req.model, "/v1/chat/completions")

    async def completions(
        self, req: CompletionRequest, meter: Meter
    ) -> Completion | AsyncIterator[Completion]:
        raise not_generative(req.model, "/v1/completions")

    async def embeddings(self, req: EmbeddingRequest, meter: Meter) -> CreateEmbeddingResponse:
        return await holding(
            self._loader, self.model_id, lambda: self._serving.embeddings.create(req, meter)
        )

    def health(self) -> Health:
        return self._loader.health(self.model_id)

    def pools(self) -> Sequence[Pool]:
        return ()

    def describe(self) -> dict[str, Any]:
        stats = self._loader.stats(self.model_id)
        return _describe(
            self._loader, self.model_id, {"kind": "embedding", "requests": stats.requests_total}
        )

    async def start(self) -> None:
        """Nothing: the loader loads it."""

    async def close(self) -> None:
        """Nothing: the loader unloads it."""


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
            jump_forward=settings.jump_forward,
            prompt_lookup=settings.prompt_lookup,
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
            return LocalEmbeddingBackend(spec.id, serving)
        return LocalBackend(spec.id, serving)
