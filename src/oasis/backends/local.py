"""The local backend: serving/ + engine/ in this process (llama.cpp, or the scripted fake)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from oasis.backends.base import Backend, Services
from oasis.config import Settings
from oasis.engine.base import Engine, Health
from oasis.models.registry import ModelSpec
from oasis.protocol.requests import ChatCompletionRequest, CompletionRequest
from oasis.serving.chat import ChatService
from oasis.serving.common import Meter, ServingContext
from oasis.serving.completions import CompletionService


class LocalServices:
    """The serving layer over every local engine: chat and completions as OpenAI requests."""

    def __init__(self, serving: ServingContext) -> None:
        self.engines = dict(serving.engines)
        self._chat = ChatService(serving)
        self._completions = CompletionService(serving)

    async def chat(
        self, req: ChatCompletionRequest, meter: Meter
    ) -> ChatCompletion | AsyncIterator[ChatCompletionChunk]:
        return await self._chat.create(req, meter)

    async def completions(
        self, req: CompletionRequest, meter: Meter
    ) -> Completion | AsyncIterator[Completion]:
        return await self._completions.create(req, meter)


class LocalBackend(Backend):
    """A model served by an engine in this process."""

    def __init__(self, engine: Engine, services: Services) -> None:
        self.engine = engine
        self._services = services

    async def chat(
        self, req: ChatCompletionRequest, meter: Meter
    ) -> ChatCompletion | AsyncIterator[ChatCompletionChunk]:
        return await self._services.chat(req, meter)

    async def completions(
        self, req: CompletionRequest, meter: Meter
    ) -> Completion | AsyncIterator[Completion]:
        return await self._services.completions(req, meter)

    def health(self) -> Health:
        return self.engine.health()

    def start(self) -> None:
        self.engine.start()

    def close(self) -> None:
        self.engine.close()


class LocalKind:
    """``backend = "local"`` (the default): a GGUF run by llama.cpp in this process, or the
    scripted fake engine with ``OASIS_ENGINE=fake`` (gateway benchmarks and tests)."""

    def engine(
        self, spec: ModelSpec, settings: Settings, on_fatal: Callable[[str], None] | None
    ) -> Engine:
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

    def backend(self, spec: ModelSpec, services: Services) -> Backend:
        return LocalBackend(services.engines[spec.id], services)
