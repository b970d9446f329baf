"""What chat and completions share: model lookup, sampling, limits, ids, usage."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import hashlib
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Generic, Protocol, TypeVar

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

T = TypeVar("T")

# Set (in its own task) by work that runs in the background: the batch runner's lines. The
# engine serves interactive requests first (GenerationRequest.background). A context
# variable rather than a parameter: a batch line goes through the same backends, services and
# fallbacks as a live request, none of which needs to know.
BACKGROUND: ContextVar[bool] = ContextVar("oasis_background", default=False)


async def in_thread(work: Callable[[], T]) -> T:
    """``work()`` in a worker thread (with this context's variables), like
    ``asyncio.to_thread``, except that a cancelled caller still waits for the thread to end
    before the cancellation goes on. A thread cannot be stopped, and its work uses the model
    (tokenizer, chat template): the request holds its model until this returns
    (``backends.local.holding``), so the model is never unloaded under a running thread."""
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    future = loop.run_in_executor(None, functools.partial(context.run, work))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        while not future.done():  # (cancelled again: the thread still runs, so wait on)
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([future])
        if not future.cancelled():
            future.exception()  # the work's own error, if any, is not news to anyone now
        raise


class SamplingFields(Protocol):
    """The sampling parameters chat and completions requests share."""

    @property
    def temperature(self) -> float | None: ...
    @property
    def top_p(self) -> float | None: ...
    @property
    def top_k(self) -> int | None: ...
    @property
    def min_p(self) -> float | None: ...
    @property
    def presence_penalty(self) -> float | None: ...
    @property
    def frequency_penalty(self) -> float | None: ...
    @property
    def repeat_penalty(self) -> float | None: ...
    @property
    def logit_bias(self) -> dict[str, float] | None: ...
    @property
    def seed(self) -> int | None: ...


class Meter(Protocol):
    """What the gateway needs from serving: the token counts to admit a request by (this may
    raise a 429), the engine handles to bill, and when the first token came."""

    async def admit(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        *,
        worst_completion_tokens: int | None = None,
    ) -> None: ...

    def track(self, handles: Sequence[RequestHandle]) -> None: ...

    def first_token(self) -> None: ...

    def choice_ended(self, index: int, reason: str | None) -> None:
        """Choice ``index`` ended, for ``reason`` (the finish_reason its client is given)."""
        ...

    def measured(self, prompt_tokens: int, *, estimated: bool = False) -> None:
        """The prompt's token count, known only after admission (an upstream's usage, or
        oasis's count when the upstream reported none: ``estimated``); billed instead of the
        count the request was admitted by."""
        ...

    async def fallback(self, model_id: str) -> bool:
        """The request moves to another model (``fallbacks``), priced as ``model_id``; that
        model's backend admits it again. False if the caller may not use that model (then
        the fallback is skipped)."""
        ...


class NoMeter:
    """Serving without a gateway (``--no-auth``, unit tests)."""

    async def admit(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        *,
        worst_completion_tokens: int | None = None,
    ) -> None:
        return None

    def track(self, handles: Sequence[RequestHandle]) -> None:
        return None

    def first_token(self) -> None:
        return None

    def choice_ended(self, index: int, reason: str | None) -> None:
        return None

    def measured(self, prompt_tokens: int, *, estimated: bool = False) -> None:
        return None

    async def fallback(self, model_id: str) -> bool:
        return True


NO_METER = NoMeter()


@dataclass
class Target:
    """The engine a request runs on, and the name it asked for (echoed back as ``model``)."""

    spec: ModelSpec
    engine: Engine
    requested: str


@dataclass(frozen=True)
class RequestLimits:
    """Bounds checked before a request's prompt is rendered or tokenized (400s naming them)."""

    max_messages: int = 2048
    max_prompt_chars: int = 1_000_000
    # Requests with less prompt text than this, and no grammar, are prepared on the event
    # loop (a thread hop costs more than they do); bigger ones in a worker thread.
    inline_chars: int = 8192


class ServingContext:
    """The models and engines behind the API, plus a clock (tests may replace it)."""

    def __init__(
        self,
        registry: ModelRegistry,
        engines: Mapping[str, Engine],
        clock: Callable[[], float] = time.time,
        limits: RequestLimits | None = None,
    ) -> None:
        self.registry = registry
        self.engines = engines
        self.clock = clock
        self.limits = limits or RequestLimits()

    async def prepare(self, heavy: bool, work: Callable[[], T]) -> T:
        """Run a request's preparation (templating, tokenizing, grammar building): inline when
        it is small, else in a worker thread, so that no request holds up the event loop and
        with it every other request, ``/health`` and the server's signal handling."""
        if not heavy:
            return work()
        return await in_thread(work)

    def check_messages(self, count: int) -> None:
        """At most ``max_messages`` messages (OpenAI's own limit is 2048). The route checks
        the raw body with this before validating it, so 20,000 messages are refused before
        pydantic spends the GIL on them."""
        limit = self.limits.max_messages
        if count > limit:
            raise InvalidRequestError(
                f"Invalid 'messages': array too long. Expected an array with maximum length "
                f"{limit}, but got an array with length {count} instead.",
                param="messages",
                code="array_above_max_length",
            )

    def check_chars(self, chars: int, *, param: str) -> None:
        limit = self.limits.max_prompt_chars
        if chars > limit:
            raise InvalidRequestError(
                f"Invalid '{param}': the request holds {chars} characters of text, more than "
                f"this server accepts ({limit}, OASIS_MAX_PROMPT_CHARS); no model here has a "
                "context that long.",
                param=param,
                code="string_above_max_length",
            )

    def target(self, name: str) -> Target:
        spec = self.registry.resolve(name)
        return Target(spec, self.engines[spec.id], name)


class EngineStream(Generic[T]):
    """A response's chunk stream that owns its engine sequences: closing it cancels them,
    even when it was never iterated (a client that left before the first chunk), which a
    plain async generator's ``finally`` cannot do."""

    def __init__(self, chunks: AsyncIterator[T], handles: Sequence[RequestHandle]) -> None:
        self._chunks = chunks
        self._handles = handles

    def __aiter__(self) -> EngineStream[T]:
        return self

    async def __anext__(self) -> T:
        return await self._chunks.__anext__()

    async def aclose(self) -> None:
        for h in self._handles:
            h.cancel()
        aclose = getattr(self._chunks, "aclose", None)
        if aclose is not None:
            await aclose()


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
    """``logit_bias`` by token id. A key is a token id in ASCII digits ("50256"): no sign,
    space or other script's digits, which Python's ``int()`` would take ("１" as 1)."""
    out: dict[int, float] = {}
    for key, value in (raw or {}).items():
        if not (key.isascii() and key.isdecimal()):
            raise InvalidRequestError(
                f"Invalid key in 'logit_bias': {key}. Keys must be token ids (integers).",
                param="logit_bias",
                code="invalid_value",
            )
        digits = key.lstrip("0") or "0"
        token = int(digits) if len(digits) <= 9 else n_vocab  # longer: past any vocabulary
        if not 0 <= token < n_vocab:
            raise InvalidRequestError(
                f"Invalid key in 'logit_bias': {key}. Token ids must be in [0, {n_vocab - 1}].",
                param="logit_bias",
                code="invalid_value",
            )
        out[token] = float(value)
    return out


def sampling_params(req: SamplingFields, n_vocab: int) -> SamplingParams:
    """The engine's sampling parameters from a chat or completions request (OpenAI's defaults
    for what is not set)."""
    return SamplingParams(
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=req.top_k or 0,
        min_p=req.min_p or 0.0,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        repeat_penalty=1.0 if req.repeat_penalty is None else req.repeat_penalty,
        logit_bias=parse_logit_bias(req.logit_bias, n_vocab),
        seed=req.seed,
    )


class StreamTally:
    """Usage of a streamed response, summed from the finish events as they pass."""

    def __init__(self, prompt_tokens: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.cached_tokens = 0

    def add(self, finish: FinishEvent) -> None:
        self.completion_tokens += finish.completion_tokens
        self.cached_tokens = max(self.cached_tokens, finish.cached_tokens)

    def usage(self) -> CompletionUsage:
        return usage(self.prompt_tokens, self.completion_tokens, self.cached_tokens)


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


def check_sequences(engine: Engine, count: int, param: str) -> None:
    """A request needing more sequences than the server can ever hold at once gets a 400
    naming the limit, not a 503 that no retry could get past."""
    limit = engine.info.max_sequences
    if count > limit:
        raise InvalidRequestError(
            f"This request needs {count} sequences (choices x prompts x best_of), but "
            f"this server runs at most {limit} at once (OASIS_PARALLEL + OASIS_MAX_QUEUE). "
            "Reduce n, best_of or the number of prompts, or split the request.",
            param=param,
            code="invalid_value",
        )


def submit_all(
    engine: Engine, requests: list[GenerationRequest], *, param: str = "n"
) -> list[RequestHandle]:
    """Submit every sequence, or none: a refusal cancels those already submitted. In a
    ``background()`` context (a batch line) the sequences are background work."""
    check_sequences(engine, len(requests), param)
    handles: list[RequestHandle] = []
    background = BACKGROUND.get()
    try:
        for req in requests:
            handles.append(engine.submit(replace(req, background=True) if background else req))
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
