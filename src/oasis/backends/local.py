"""The local backend: serving/ + engine/ in this process (llama.cpp, or the scripted fake)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from oasis.backends.base import Backend
from oasis.backends.upstream.pool import Pool
from oasis.config import Settings
from oasis.engine.base import Engine, Health
from oasis.models.registry import ModelSpec
from oasis.protocol.requests import ChatCompletionRequest, CompletionRequest
from oasis.serving.chat import ChatService
from oasis.serving.common import Meter, ServingContext
from oasis.serving.completions import CompletionService


@dataclass(frozen=True)
class LocalServing:
    """The serving layer over every local engine, shared by the local backends."""

    engines: Mapping[str, Engine]
    chat: ChatService
    completions: CompletionService

    @classmethod
    def over(cls, serving: ServingContext) -> LocalServing:
        return cls(serving.engines, ChatService(serving), CompletionService(serving))


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

    def backend(self, spec: ModelSpec, serving: LocalServing, settings: Settings) -> Backend:
        return LocalBackend(serving.engines[spec.id], serving)
