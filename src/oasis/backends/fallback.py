"""Fallback models: when a model cannot take a request, the next model of its ``fallbacks``.

"Cannot take" means the request never started: every replica of an upstream model failed
before the first byte (502, 503, 504), or a local engine's queue is full or the engine is down
(503). Anything else is the answer: the client's 400, a 429 of the key's own limits, an
upstream's answer that does not match the json_schema (it was generated and is billed), and an
upstream that refuses oasis's own key or model name (a configuration error no fallback should
hide). The fallback's answer names the model that served it; the usage record keeps the name the
client asked for and is priced as the model that served. Fallbacks the key's allow-list does not
name are skipped; a fallback that refuses the request (say, too long for its context) leaves the
first model's error as the answer. A fallback's own fallbacks are not followed.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, TypeVar

from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import BaseModel

from oasis.backends.base import Backend
from oasis.backends.upstream.output import InvalidOutputError
from oasis.backends.upstream.pool import Pool
from oasis.engine.base import Health
from oasis.errors import (
    EngineError,
    InvalidRequestError,
    ModelLoadError,
    OverloadedError,
    UpstreamConfigError,
    UpstreamError,
)
from oasis.models.registry import ModelRegistry
from oasis.protocol.embeddings import EmbeddingRequest
from oasis.protocol.requests import ChatCompletionRequest, CompletionRequest
from oasis.serving.common import Meter

log = logging.getLogger(__name__)
Req = TypeVar("Req", ChatCompletionRequest, CompletionRequest, EmbeddingRequest)

# the errors that mean "this model could not start the request"
UNAVAILABLE = (UpstreamError, OverloadedError, EngineError, ModelLoadError)
FINAL = (UpstreamConfigError, InvalidOutputError)


class WithFallbacks:
    """A backend, then its fallbacks in order."""

    def __init__(self, primary: Backend, fallbacks: Sequence[tuple[str, Backend]]) -> None:
        self.primary = primary
        self.fallbacks = fallbacks

    async def chat(
        self, req: ChatCompletionRequest, meter: Meter
    ) -> ChatCompletion | AsyncIterator[ChatCompletionChunk]:
        try:
            return await self.primary.chat(req, meter)
        except FINAL:
            raise
        except UNAVAILABLE as exc:
            answer: ChatCompletion | AsyncIterator[ChatCompletionChunk] = await self._next(
                req, meter, exc, lambda b, r: b.chat(r, meter)
            )
            return answer

    async def completions(
        self, req: CompletionRequest, meter: Meter
    ) -> Completion | AsyncIterator[Completion]:
        try:
            return await self.primary.completions(req, meter)
        except FINAL:
            raise
        except UNAVAILABLE as exc:
            result: Completion | AsyncIterator[Completion] = await self._next(
                req, meter, exc, lambda b, r: b.completions(r, meter)
            )
            return result

    async def embeddings(self, req: EmbeddingRequest, meter: Meter) -> CreateEmbeddingResponse:
        try:
            return await self.primary.embeddings(req, meter)
        except FINAL:
            raise
        except UNAVAILABLE as exc:
            result: CreateEmbeddingResponse = await self._next(
                req, meter, exc, lambda b, r: b.embeddings(r, meter)
            )
            return result

    async def _next(self, req: Req, meter: Meter, error: Exception, call: Any) -> Any:
        for model_id, backend in self.fallbacks:
            if not await meter.fallback(model_id):
                continue
            log.warning("model %s unavailable (%s): falling back to %s", req.model, error, model_id)
            try:
                result: BaseModel | AsyncIterator[Any] = await call(
                    backend, req.model_copy(update={"model": model_id})
                )
                return result
            except (*UNAVAILABLE, InvalidRequestError) as exc:
                log.warning("fallback %s of model %s failed: %s", model_id, req.model, exc)
        raise error

    def health(self) -> Health:
        return self.primary.health()

    def pools(self) -> Sequence[Pool]:
        return self.primary.pools()

    def describe(self) -> dict[str, Any]:
        return {**self.primary.describe(), "fallbacks": [m for m, _ in self.fallbacks]}

    async def start(self) -> None:
        await self.primary.start()

    async def close(self) -> None:
        await self.primary.close()


def with_fallbacks(backends: Mapping[str, Backend], registry: ModelRegistry) -> dict[str, Backend]:
    """Each model's backend, wrapped with its fallbacks' (unwrapped) backends if it has any."""
    out: dict[str, Backend] = {}
    for spec in registry.specs:
        backend = backends[spec.id]
        if spec.fallbacks:
            backend = WithFallbacks(backend, [(m, backends[m]) for m in spec.fallbacks])
        out[spec.id] = backend
    return out
