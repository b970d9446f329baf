"""What chat and completions share: model lookup, sampling, limits, ids, usage."""

from __future__ import annotations

import functools
import hashlib
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from openai.types.completion_usage import CompletionUsage, PromptTokensDetails

from oasis import __version__
from oasis.engine.base import (
    Engine,
    FinishEvent,
    GenerationRequest,
    RequestHandle,
    SamplingParams,
)
from oasis.errors import (
    ContextLengthExceededError,
    InvalidRequestError,
    UnsupportedParameterError,
)
from oasis.models.registry import ModelRegistry, ModelSpec


class Meter(Protocol):
    """What the gateway needs from serving: the token counts to admit a request by (this may
    raise a 429), the engine handles to bill, and when the first token came."""

    async def admit(self, prompt_tokens: int, completion_tokens: int) -> None: ...

    def track(self, handles: Sequence[RequestHandle]) -> None: ...

    def first_token(self) -> None: ...


class NoMeter:
    """Serving without a gateway (``--no-auth``, unit tests)."""

    async def admit(self, prompt_tokens: int, completion_tokens: int) -> None:
        return None

    def track(self, handles: Sequence[RequestHandle]) -> None:
        return None

    def first_token(self) -> None:
        return None


NO_METER = NoMeter()


@dataclass
class Target:
    """The engine a request runs on, and the name it asked for (echoed back as ``model``)."""

    spec: ModelSpec
    engine: Engine
    requested: str


class ServingContext:
    """The models and engines behind the API, plus a clock (tests may replace it)."""

    def __init__(
        self,
        registry: ModelRegistry,
        engines: Mapping[str, Engine],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.engines = engines
        self.clock = clock

    def target(self, name: str) -> Target:
        spec = self.registry.resolve(name)
        return Target(spec, self.engines[spec.id], name)


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_urlsafe(18).replace('-', 'x').replace('_', 'y')}"


@functools.lru_cache(maxsize=64)
def fingerprint(spec: ModelSpec) -> str:
    """Identifies the backend configuration, as OpenAI's ``system_fingerprint`` does."""
    digest = hashlib.sha256(f"{spec.id}:{spec.path.name}:{__version__}".encode()).hexdigest()
    return f"fp_{digest[:10]}"


def refuse_unsupported(names: list[str]) -> None:
    if names:
        name = names[0]
        raise UnsupportedParameterError(
            f"Unsupported parameter: '{name}' is not supported by oasis yet. "
            "See the README for what is supported.",
            param=name,
        )


def parse_logit_bias(raw: dict[str, float] | None, n_vocab: int) -> dict[int, float]:
    out: dict[int, float] = {}
    for key, value in (raw or {}).items():
        try:
            token = int(key)
        except ValueError:
            raise InvalidRequestError(
                f"Invalid key in 'logit_bias': {key}. Keys must be token ids (integers).",
                param="logit_bias",
                code="invalid_value",
            ) from None
        if not 0 <= token < n_vocab:
            raise InvalidRequestError(
                f"Invalid key in 'logit_bias': {key}. Token ids must be in [0, {n_vocab - 1}].",
                param="logit_bias",
                code="invalid_value",
            )
        out[token] = float(value)
    return out


def sampling_params(
    *,
    temperature: float | None,
    top_p: float | None,
    top_k: int | None,
    min_p: float | None,
    presence_penalty: float | None,
    frequency_penalty: float | None,
    repeat_penalty: float | None,
    logit_bias: dict[int, float],
    seed: int | None,
) -> SamplingParams:
    return SamplingParams(
        temperature=1.0 if temperature is None else temperature,
        top_p=1.0 if top_p is None else top_p,
        top_k=top_k or 0,
        min_p=min_p or 0.0,
        presence_penalty=presence_penalty or 0.0,
        frequency_penalty=frequency_penalty or 0.0,
        repeat_penalty=1.0 if repeat_penalty is None else repeat_penalty,
        logit_bias=logit_bias,
        seed=seed,
    )


def with_seed(params: SamplingParams, offset: int) -> SamplingParams:
    """Choice ``i`` of a seeded request uses ``seed + i``: reproducible, yet choices differ."""
    if params.seed is None or offset == 0:
        return params
    return SamplingParams(**{**params.__dict__, "seed": params.seed + offset})


def check_context(
    n_ctx: int, prompt_tokens: int, max_tokens: int | None, *, what: str, param: str
) -> int:
    """Return the completion budget, or raise OpenAI's context_length_exceeded."""
    if max_tokens is None:
        if prompt_tokens >= n_ctx:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {n_ctx} tokens. However, your {what} "
                f"resulted in {prompt_tokens} tokens. Please reduce the length of the {what}.",
                param=param,
            )
        return n_ctx - prompt_tokens
    if prompt_tokens + max_tokens > n_ctx:
        raise ContextLengthExceededError(
            f"This model's maximum context length is {n_ctx} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the {what}, {max_tokens} "
            f"in the completion). Please reduce the length of the {what} or completion.",
            param=param,
        )
    return max_tokens


def submit_all(
    engine: Engine, requests: list[GenerationRequest], *, param: str = "n"
) -> list[RequestHandle]:
    """Submit every sequence, or none: a refusal cancels those already submitted.

    A request needing more sequences than the server can ever hold at once gets a 400 naming
    the limit, not a 503 that no retry could get past.
    """
    limit = engine.info.max_sequences
    if len(requests) > limit:
        raise InvalidRequestError(
            f"This request needs {len(requests)} sequences (choices x prompts x best_of), but "
            f"this server runs at most {limit} at once (OASIS_PARALLEL + OASIS_MAX_QUEUE). "
            "Reduce n, best_of or the number of prompts, or split the request.",
            param=param,
            code="invalid_value",
        )
    handles: list[RequestHandle] = []
    try:
        for req in requests:
            handles.append(engine.submit(req))
    except BaseException:
        for h in handles:
            h.cancel()
        raise
    return handles


def usage_of(prompt_tokens: int, finishes: Iterable[FinishEvent]) -> CompletionUsage:
    """Usage of a response: prompt counted once, completions of every sequence summed."""
    done = list(finishes)
    return usage(
        prompt_tokens,
        sum(f.completion_tokens for f in done),
        max((f.cached_tokens for f in done), default=0),
    )


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> CompletionUsage:
    return CompletionUsage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens),
    )
