"""``/v1/embeddings`` on a local embedding model: inputs checked and tokenized, admitted by
the gateway (prompt tokens against the key's TPM and budget), computed by the model's
embedder (batched with other requests' inputs; a batch line's are background work, computed
after every live request's), answered in OpenAI's shape (built off the event loop when large).

Limits, as OpenAI's: at most 2048 inputs, no empty input, each input within the model's
context (special tokens included), at most 300,000 tokens in all. Token arrays are this
model's token ids (not tiktoken's); the model's special tokens are added around them as around
a text, so a text and its tokens give the same vector.

``dimensions`` shortens a vector only on a model that was trained for it (Matryoshka
embeddings, ``matryoshka = true`` in the model's config); elsewhere any value but the model's
own size is refused, naming it, as OpenAI refuses it for text-embedding-ada-002.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from openai.types import CreateEmbeddingResponse, Embedding
from openai.types.create_embedding_response import Usage

from oasis.engine.base import Embedder, EmbeddingJob
from oasis.errors import ContextLengthExceededError, InvalidRequestError
from oasis.models.registry import ModelRegistry
from oasis.protocol.embeddings import EmbeddingRequest
from oasis.serving.common import BACKGROUND, Meter, in_thread

MAX_INPUTS = 2048
MAX_TOTAL_TOKENS = 300_000
_INLINE_CHARS = 32 * 1024  # tokenize inline below this, in a worker thread above
# build the answer inline up to this many vectors, in a worker thread above (2048 vectors of
# 384 floats take ~0.1 s to turn into lists, time the event loop would stand still)
_INLINE_VECTORS = 64


class _Tokens:
    """The billing handle of an embedding request (a RequestHandle's three counts): the
    inputs' tokens as far as the embedder computed them (``sync`` reads the job)."""

    generated = 0
    cached_tokens = 0
    prompt_evaluated = 0

    def __init__(self, job: EmbeddingJob) -> None:
        self._job = job

    def __aiter__(self) -> AsyncIterator[Any]:  # the RequestHandle shape; never iterated
        raise TypeError("an embedding request's tokens are not iterated")

    def cancel(self) -> None:
        self.sync()
        self._job.cancel()

    def sync(self) -> None:
        self.prompt_evaluated = self._job.evaluated


class EmbeddingService:
    def __init__(self, registry: ModelRegistry, embedders: Mapping[str, Embedder]) -> None:
        self.registry = registry
        self.embedders = embedders

    async def create(self, req: EmbeddingRequest, meter: Meter) -> CreateEmbeddingResponse:
        spec = self.registry.resolve(req.model)
        embedder = self.embedders[spec.id]
        info = embedder.info
        if req.dimensions is not None and req.dimensions != info.n_embd and not spec.matryoshka:
            raise InvalidRequestError(
                f"This model ({req.model}) does not support specifying dimensions: its "
                f"vectors have {info.n_embd} dimensions.",
                param="dimensions",
                code="invalid_value",
            )
        if req.dimensions is not None and req.dimensions > info.n_embd:
            raise InvalidRequestError(
                f"Invalid 'dimensions': {req.dimensions} is more than this model's {info.n_embd}.",
                param="dimensions",
                code="invalid_value",
            )
        inputs = _inputs(req.input)
        size = sum(len(x) if isinstance(x, str) else 1 for x in inputs)
        if size <= _INLINE_CHARS:
            tokens = _tokenize(embedder, inputs)
        else:
            tokens = await in_thread(lambda: _tokenize(embedder, inputs))
        total = _check(tokens, info.n_ctx, info.n_vocab)
        await meter.admit(total, 0)
        job = embedder.submit(tokens, background=BACKGROUND.get())
        handle = _Tokens(job)
        meter.track([handle])
        try:
            vectors = await job.result()
        finally:
            handle.sync()  # billed for what was computed, also when the client left
        meter.first_token()
        if len(vectors) <= _INLINE_VECTORS:
            return _response(req, vectors, total)
        return await asyncio.to_thread(_response, req, vectors, total)


def check_inputs(count: int) -> None:
    """At most MAX_INPUTS inputs (the route checks the raw body with this before validating
    every input)."""
    if count > MAX_INPUTS:
        raise InvalidRequestError(
            f"Invalid 'input': array too long. Expected an array with maximum length "
            f"{MAX_INPUTS}, but got an array with length {count} instead.",
            param="input",
            code="array_above_max_length",
        )


def _inputs(value: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    """The request's inputs, one per vector."""
    if isinstance(value, str):
        return [value]
    if not value:
        raise InvalidRequestError(
            "Invalid 'input': empty array. Expected an array with minimum length 1.",
            param="input",
            code="empty_array",
        )
    check_inputs(len(value))
    if isinstance(value[0], int):
        return [[t for t in value if isinstance(t, int)]]  # one token array
    return list(value)  # texts, or token arrays


def _tokenize(embedder: Embedder, inputs: Sequence[str | list[int]]) -> list[list[int]]:
    out: list[list[int]] = []
    for i, item in enumerate(inputs):
        if isinstance(item, str):
            if not item:
                raise InvalidRequestError(
                    f"Invalid 'input[{i}]': the input cannot be an empty string.",
                    param="input",
                    code="invalid_value",
                )
            out.append(embedder.tokenize(item))
        else:
            if not item:
                raise InvalidRequestError(
                    f"Invalid 'input[{i}]': a token array cannot be empty.",
                    param="input",
                    code="invalid_value",
                )
            out.append(embedder.wrap(item))
    return out


def _check(tokens: list[list[int]], n_ctx: int, n_vocab: int) -> int:
    total = 0
    for i, toks in enumerate(tokens):
        if len(toks) > n_ctx:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {n_ctx} tokens, however you requested "
                f"{len(toks)} tokens in input[{i}]. Please reduce the length of that input "
                "(split it into several inputs).",
                param="input",
            )
        total += len(toks)
    if total > MAX_TOTAL_TOKENS:
        raise InvalidRequestError(
            f"Requested {total} tokens, max {MAX_TOTAL_TOKENS} tokens per request: send the "
            "inputs in several requests.",
            param="input",
            code="max_tokens_per_request",
        )
    for i, toks in enumerate(tokens):
        bad = next((t for t in toks if t >= n_vocab), None)
        if bad is not None:
            raise InvalidRequestError(
                f"Invalid 'input[{i}]': token {bad} is not in this model's vocabulary "
                f"(0..{n_vocab - 1}). Token arrays are this model's token ids.",
                param="input",
                code="invalid_value",
            )
    return total


class _Embedding(Embedding):
    embedding: list[float] | str  # type: ignore[assignment]  # str: encoding_format base64


class EmbeddingsAnswer(CreateEmbeddingResponse):
    """OpenAI's answer; a vector is a base64 string when the request asked for base64 (the
    wire format; the SDK's type only knows the list it decodes that string into)."""

    data: list[_Embedding]  # type: ignore[assignment]


def _response(
    req: EmbeddingRequest, vectors: list[NDArray[np.float32]], tokens: int
) -> CreateEmbeddingResponse:
    as_base64 = req.encoding_format == "base64"
    data = []
    for i, vec in enumerate(vectors):
        if req.dimensions is not None and req.dimensions < vec.shape[0]:
            vec = vec[: req.dimensions]
            vec = vec / max(float(np.linalg.norm(vec)), 1e-12)
        vec = np.ascontiguousarray(vec, dtype="<f4")
        value: list[float] | str = (
            base64.b64encode(vec.tobytes()).decode("ascii") if as_base64 else vec.tolist()
        )
        # the SDK's type says list[float]; base64 is OpenAI's wire format all the same
        data.append(_Embedding.model_construct(embedding=value, index=i, object="embedding"))
    return EmbeddingsAnswer.model_construct(
        data=data,
        model=req.model,
        object="list",
        usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
    )
