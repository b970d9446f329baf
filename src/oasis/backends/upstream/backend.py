"""The upstream backend: a model answered by OpenAI-compatible servers over HTTP (vLLM,
llama.cpp's llama-server, another oasis, OpenAI itself).

A request was validated by oasis's own protocol models before it gets here; it is sent on as
the upstream's model, with the same parameters. Before the first byte reaches the client, a
refused connection, a timeout, a 5xx, a 429 or an answer that is not OpenAI's shape moves it
to another replica (``max_attempts`` tries, with a short jittered pause); when every try
failed the error is a 502, 503 or 504 carrying the last upstream's message (and the model's
fallbacks, if any, are tried by ``backends.fallback``). An upstream's other 4xx is the
client's: relayed as OpenAI's 400, no retry. Once a stream has begun nothing is retried: a
failure ends it with one error event, as a local engine's does.

Streams are relayed chunk by chunk as they arrive, renamed to the model the client asked
for. The upstream is always asked for ``stream_options.include_usage`` so the stream can be
billed; the usage chunk (and the ``usage: null`` of every other chunk) is removed when the
client did not ask for it. A client that leaves closes the upstream connection, which
cancels the upstream's work.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import BaseModel, ValidationError

from oasis.backends.upstream.output import SchemaCheck
from oasis.backends.upstream.pool import Pool, Replica
from oasis.backends.upstream.relay import (
    UpstreamChat,
    UpstreamChatChunk,
    UpstreamCompletion,
    UpstreamEmbeddings,
    UpstreamTokens,
    answer_tokens,
    chat_affinity,
    chunk_tokens,
    completion_affinity,
    error_message,
    estimate_chat,
    estimate_completion,
    estimate_embeddings,
    sse_data,
)
from oasis.config import Settings
from oasis.engine.base import Health
from oasis.errors import (
    ConfigError,
    InvalidRequestError,
    OasisError,
    UpstreamConfigError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from oasis.models.registry import ModelSpec, UpstreamOptions
from oasis.protocol.embeddings import EmbeddingRequest
from oasis.protocol.requests import ChatCompletionRequest, CompletionRequest
from oasis.serving.common import Meter

log = logging.getLogger(__name__)
R = TypeVar("R", bound=BaseModel)

CHAT_PATH, COMPLETIONS_PATH, EMBEDDINGS_PATH = "/chat/completions", "/completions", "/embeddings"
# Requests with less prompt text than this are prepared on the event loop; bigger ones (and
# answers over 8x this) in a worker thread.
_INLINE_CHARS = 64 * 1024


class _Retry(Exception):
    """One try failed in a way another replica may not: try again (``error`` if none is
    left)."""

    def __init__(self, error: OasisError) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass
class _Call:
    """One request to forward: its body, and how to read and bill the answer."""

    path: str
    body: bytes
    requested: str  # the model name the client asked for, echoed back
    whole: type[BaseModel]
    chunk: type[BaseModel]
    check: SchemaCheck | None
    text_of: Callable[[dict[str, Any]], str]
    stream: bool = False
    wants_usage: bool = False
    affinity: str | None = None
    estimate: int = 0  # the prompt's tokens by oasis's count (billed if the upstream reports none)
    tokens: UpstreamTokens = field(default_factory=UpstreamTokens)


class UpstreamBackend:
    """One model served by a pool of upstream replicas."""

    def __init__(self, spec: ModelSpec, options: UpstreamOptions, ctx_size: int) -> None:
        self.spec = spec
        self.options = options
        self.ctx_size = spec.ctx_size or ctx_size
        self.pool = Pool(spec.id, options)
        self._headers = {"Content-Type": "application/json"}
        self._session: aiohttp.ClientSession | None = None
        self._probes: aiohttp.ClientSession | None = None  # never waits behind requests
        self._prober: asyncio.Task[None] | None = None
        env = options.api_key_env
        if env is not None:
            key = os.environ.get(env)
            if not key:
                raise ConfigError(f"model {spec.id!r}: api_key_env names {env!r}, which is not set")
            self._headers["Authorization"] = f"Bearer {key}"

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        opts = self.options
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=opts.max_connections * len(opts.replicas),
                limit_per_host=opts.max_connections,
            ),
            headers=self._headers,
            trust_env=False,
        )
        self._probes = aiohttp.ClientSession(headers=self._headers, trust_env=False)
        self._prober = asyncio.get_running_loop().create_task(self._probe_forever())

    async def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
        for session in (self._session, self._probes):
            if session is not None:
                await session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the upstream backend was not started")
        return self._session

    def pools(self) -> Sequence[Pool]:
        return (self.pool,)

    def health(self) -> Health:
        up = self.pool.up()
        # an upstream's outage is not this server's: /health stays 200 (admin/backends says)
        return Health(True, f"{up}/{len(self.pool.replicas)} replicas up")

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "upstream",
            "upstream_model": self.options.upstream_model,
            "routing": self.options.routing,
            "retries": self.pool.retries,
            "replicas": self.pool.describe(),
        }

    # -- the Backend protocol --------------------------------------------------------------
    async def chat(
        self, req: ChatCompletionRequest, meter: Meter
    ) -> ChatCompletion | AsyncIterator[ChatCompletionChunk]:
        size = sum(len(m.content) if isinstance(m.content, str) else 64 for m in req.messages)
        prompt, body = await self._prepare(req, estimate_chat, size)
        n = req.n or 1
        limit = req.max_completion_tokens or req.max_tokens
        fmt = req.response_format
        check = None
        if fmt is not None and fmt.type == "json_schema":
            check = SchemaCheck.of(getattr(fmt, "json_schema", None), self.spec.id)
        call = _Call(
            CHAT_PATH, body, req.model, UpstreamChat, UpstreamChatChunk, check, _message_text
        )
        answer: ChatCompletion | AsyncIterator[ChatCompletionChunk] = await self._forward(
            call, req, meter, prompt, n, limit, chat_affinity
        )
        return answer

    async def completions(
        self, req: CompletionRequest, meter: Meter
    ) -> Completion | AsyncIterator[Completion]:
        p = req.prompt
        size = len(p) if isinstance(p, str) else sum(len(x) for x in p or () if isinstance(x, str))
        prompt, body = await self._prepare(req, estimate_completion, size)
        prompts = len(req.prompt) if isinstance(req.prompt, list) and req.prompt else 1
        if isinstance(req.prompt, list) and req.prompt and isinstance(req.prompt[0], int):
            prompts = 1
        n = (req.n or 1) * prompts
        limit = req.max_tokens if req.max_tokens is not None else 16
        call = _Call(
            COMPLETIONS_PATH,
            body,
            req.model,
            UpstreamCompletion,
            UpstreamCompletion,
            None,
            _choice_text,
        )
        result: Completion | AsyncIterator[Completion] = await self._forward(
            call, req, meter, prompt, n, limit, completion_affinity
        )
        return result

    async def embeddings(self, req: EmbeddingRequest, meter: Meter) -> CreateEmbeddingResponse:
        inputs = req.input
        size = (
            len(inputs)
            if isinstance(inputs, str)
            else sum(len(x) if isinstance(x, str | list) else 1 for x in inputs)
        )
        prompt, body = await self._prepare(req, estimate_embeddings, size)
        call = _Call(
            EMBEDDINGS_PATH,
            body,
            req.model,
            UpstreamEmbeddings,
            UpstreamEmbeddings,
            None,
            lambda _: "",
        )
        await meter.admit(prompt, 0)
        call.estimate = prompt
        meter.track([call.tokens])
        answer: Any = await self._run(call, meter)
        return cast(CreateEmbeddingResponse, answer)

    async def _forward(
        self,
        call: _Call,
        req: Any,
        meter: Meter,
        prompt: int,
        n: int,
        limit: int | None,
        affinity: Callable[[Any], str],
    ) -> Any:
        """Admit the request, then run it on the pool (what chat and completions share)."""
        await self._admit(meter, prompt, n, limit)
        call.stream = bool(req.stream)
        call.wants_usage = bool(req.stream_options and req.stream_options.include_usage)
        call.estimate = prompt
        # the prefix key is hashed only when the pool routes by it (not on every request)
        call.affinity = affinity(req) if self.pool.affinity else None
        meter.track([call.tokens])
        return await self._run(call, meter)

    async def _admit(self, meter: Meter, prompt: int, n: int, limit: int | None) -> None:
        worst = n * (limit if limit is not None else max(self.ctx_size - prompt, 1))
        await meter.admit(prompt, n * (limit or 0), worst_completion_tokens=worst)

    async def _prepare(self, req: R, estimate: Callable[[R], int], size: int) -> tuple[int, bytes]:
        """The prompt's estimated tokens and the body to send upstream: on the event loop for
        a small request, in a worker thread for a big one (as the local backend prepares)."""

        def work() -> tuple[int, bytes]:
            body = req.model_dump(mode="json", by_alias=True, exclude_unset=True)
            body["model"] = self.options.upstream_model
            if body.get("stream"):
                options = body.get("stream_options") or {}
                body["stream_options"] = {**options, "include_usage": True}
            return estimate(req), json.dumps(body, ensure_ascii=False).encode()

        if size <= _INLINE_CHARS:
            return work()
        return await asyncio.to_thread(work)

    # -- forwarding ------------------------------------------------------------------------
    async def _run(self, call: _Call, meter: Meter) -> BaseModel | AsyncIterator[BaseModel]:
        tried: set[int] = set()
        last: OasisError | None = None
        for attempt in range(self.options.max_attempts):
            if attempt:
                self.pool.retries += 1
                await asyncio.sleep(random.uniform(0, 0.025 * 2**attempt))
            try:
                replica = self.pool.pick(call.affinity, tried)
            except UpstreamUnavailableError as exc:
                raise (last or exc) from None
            tried.add(replica.index)
            call.tokens.reset()
            try:
                if call.stream:
                    return await self._open_stream(call, replica, meter)
                return await self._whole(call, replica, meter)
            except _Retry as retry:
                last = retry.error
                log.warning(
                    "model %s: replica %s (%s) failed: %s",
                    self.spec.id,
                    replica.name,
                    replica.label,
                    retry.error.message,
                )
        assert last is not None
        raise last

    def _post(self, call: _Call, replica: Replica, timeout: aiohttp.ClientTimeout) -> Any:
        """The request to one replica (an aiohttp request context)."""
        return self.session.post(replica.url + call.path, data=call.body, timeout=timeout)

    def _fail(
        self, call: _Call, replica: Replica, exc: Exception, t0: float, what: str = ""
    ) -> _Retry:
        """A failed try: the replica's health, and the error to answer with if none is left."""
        seconds = time.perf_counter() - t0
        name = f"replica {replica.name} of model {self.spec.id!r}"
        if isinstance(exc, aiohttp.ClientConnectorError):
            self.pool.failed(replica, "connect", str(exc) or "refused", seconds=seconds, eject=True)
            return _Retry(UpstreamError(f"The upstream server ({name}) refused the connection."))
        if isinstance(exc, TimeoutError):
            self.pool.failed(replica, "timeout", f"timed out {what}".strip(), seconds=seconds)
            return _Retry(
                UpstreamTimeoutError(f"The upstream server ({name}) timed out {what}.".strip())
            )
        detail = str(exc) or type(exc).__name__
        self.pool.failed(replica, "broken", detail, seconds=seconds)
        return _Retry(UpstreamError(f"The upstream server ({name}) failed: {detail}"))

    def _refused(
        self, replica: Replica, response: aiohttp.ClientResponse, body: bytes, t0: float
    ) -> None:
        """A non-200 answer: raise the client's error (no retry) or a ``_Retry``."""
        status = response.status
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        message = error_message(payload, body[:500].decode("utf-8", "replace") or "no message")
        name = f"replica {replica.name} of model {self.spec.id!r}"
        seconds = time.perf_counter() - t0
        if status == 429:
            wait = _retry_after(response.headers.get("retry-after"))
            self.pool.limited(replica, wait, f"429: {message}")
            raise _Retry(
                UpstreamUnavailableError(
                    f"The upstream server ({name}) is rate limited: {message}",
                    retry_after=max(1, round(wait)),
                )
            )
        if status >= 500:
            self.pool.failed(replica, "http_5xx", f"{status}: {message}", seconds=seconds)
            raise _Retry(
                UpstreamError(f"The upstream server ({name}) answered {status}: {message}")
            )
        self.pool.answered(replica)
        if status in (401, 403, 404) or status < 400:
            # the client's request was valid here: oasis's credentials or configuration are not
            raise UpstreamConfigError(
                f"The upstream server ({name}) refused the request with {status}: {message} "
                "(check the model's replicas, upstream_model and api_key_env)."
            )
        param = code = None
        if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
            err = payload["error"]
            param = err.get("param") if isinstance(err.get("param"), str) else None
            code = err.get("code") if isinstance(err.get("code"), str) else None
        raise InvalidRequestError(message, param=param, code=code)

    async def _whole(self, call: _Call, replica: Replica, meter: Meter) -> BaseModel:
        self.pool.begin(replica)
        t0 = time.perf_counter()
        try:
            timeout = aiohttp.ClientTimeout(
                total=self.options.timeout, connect=self.options.connect_timeout
            )
            try:
                async with self._post(call, replica, timeout) as response:
                    body = await _read_capped(response.content_length, response.content.iter_any())
            except (aiohttp.ClientError, TimeoutError, AnswerTooLargeError) as exc:
                raise self._fail(call, replica, exc, t0) from None
            if response.status != 200:
                self._refused(replica, response, body, t0)
            try:
                if len(body) <= _INLINE_CHARS * 8:
                    data, answer = _parse_answer(body, call)
                else:
                    data, answer = await asyncio.to_thread(_parse_answer, body, call)
            except (ValueError, ValidationError) as exc:
                raise self._fail(
                    call, replica, ValueError(f"an answer that is not OpenAI's shape ({exc})"), t0
                ) from None
            self.pool.succeeded(replica, time.perf_counter() - t0)
        finally:
            self.pool.end(replica)
        tokens = call.tokens
        if isinstance(data.get("usage"), dict):
            tokens.report(data["usage"])
        if not tokens.reported:
            tokens.prompt_evaluated = call.estimate
            tokens.generated = sum(answer_tokens(c) for c in data.get("choices", ()))
        meter.measured(tokens.prompt_evaluated, estimated=not tokens.reported)
        for i, choice in enumerate(data.get("choices", ())):
            if isinstance(choice, dict) and isinstance(choice.get("finish_reason"), str):
                index = choice.get("index")
                meter.choice_ended(index if type(index) is int else i, choice["finish_reason"])
        if call.check is not None:
            for choice in data["choices"]:
                finish = choice.get("finish_reason") if isinstance(choice, dict) else None
                await call.check.verify(call.text_of(choice), finish, replica.name)
        return answer

    async def _open_stream(
        self, call: _Call, replica: Replica, meter: Meter
    ) -> AsyncIterator[BaseModel]:
        """Send the request and read up to the first event (a failure until then may be
        retried); the rest is relayed by ``_relay``."""
        self.pool.begin(replica)
        t0 = time.perf_counter()
        response: aiohttp.ClientResponse | None = None
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self.options.connect_timeout, sock_read=self.options.read_timeout
        )
        try:
            try:
                async with asyncio.timeout(self.options.first_byte_timeout):
                    response = await self._post(call, replica, timeout)
                    if response.status != 200:
                        body = await _read_capped(
                            response.content_length, response.content.iter_any()
                        )
                        self._refused(replica, response, body, t0)
                    events = sse_data(_capped_lines(_parts(response.content)))
                    first = await anext(events, None)
            except (aiohttp.ClientError, TimeoutError, AnswerTooLargeError) as exc:
                raise self._fail(call, replica, exc, t0, "before its first byte") from None
            if first is None:
                raise self._fail(call, replica, ValueError("an empty stream"), t0)
            self.pool.first_byte(replica, time.perf_counter() - t0)
            try:
                head = self._chunk(call, first, meter)
            except UpstreamError as exc:
                raise self._fail(call, replica, ValueError(exc.message), t0) from None
            except InvalidRequestError:
                self.pool.answered(replica)  # the client's error, sent as an event
                raise
            if not call.tokens.reported:  # accepted: from here on the prompt is billed
                call.tokens.prompt_evaluated = call.estimate
                meter.measured(call.estimate, estimated=True)
        except BaseException:
            if response is not None:
                response.close()
            self.pool.end(replica)
            raise
        return _Relay(self, call, replica, response, events, head, meter, t0)

    def _chunk(self, call: _Call, data: str, meter: Meter) -> BaseModel | None:
        """One event of the upstream's stream as the client's chunk (None: nothing to send);
        raises ``UpstreamError`` for an error event or one that is not OpenAI's shape."""
        try:
            obj = json.loads(data)
        except ValueError:
            raise UpstreamError(
                f"The upstream of model {self.spec.id!r} sent an event that is not JSON: "
                f"{data[:200]!r}"
            ) from None
        if not isinstance(obj, dict):
            raise UpstreamError(f"The upstream of model {self.spec.id!r} sent a malformed event.")
        choices = obj.get("choices")
        if "error" in obj and not choices:
            message = error_message(obj, "an error event")
            err = obj["error"] if isinstance(obj["error"], dict) else {}
            code = err.get("code")
            if err.get("type") == "invalid_request_error" or (
                isinstance(code, int) and 400 <= code < 500 and code != 429
            ):
                raise InvalidRequestError(message)  # e.g. a prompt over the upstream's context
            raise UpstreamError(f"The upstream of model {self.spec.id!r} failed: {message}")
        usage = obj.get("usage")
        if isinstance(usage, dict):
            call.tokens.report(usage)
            meter.measured(call.tokens.prompt_evaluated)
        if not isinstance(choices, list):
            raise UpstreamError(f"The upstream of model {self.spec.id!r} sent a malformed event.")
        if not call.tokens.reported:
            count = chunk_tokens(choices)
            if count:
                call.tokens.generated += count
        if not call.wants_usage:
            if not choices:
                return None  # the usage chunk oasis asked for, not the client
            obj.pop("usage", None)
        obj["model"] = call.requested
        try:
            return call.chunk.model_validate(obj)
        except ValidationError as exc:
            raise UpstreamError(
                f"The upstream of model {self.spec.id!r} sent a chunk that is not OpenAI's "
                f"shape: {exc.errors()[0]['msg']}"
            ) from None

    # -- probes ----------------------------------------------------------------------------
    async def _probe_forever(self) -> None:
        tick = min(0.5, self.options.probe_interval)
        while True:
            due = self.pool.due()
            if due:
                await asyncio.gather(*(self._probe(r) for r in due))
            await asyncio.sleep(tick)

    async def _probe(self, replica: Replica) -> None:
        url = replica.url + "/models"
        if self.options.probe_path:
            parts = urlsplit(replica.url)
            url = urlunsplit((parts.scheme, parts.netloc, self.options.probe_path, "", ""))
        epoch, refused = replica.epoch, False
        try:
            assert self._probes is not None
            timeout = aiohttp.ClientTimeout(total=self.options.connect_timeout * 2)
            async with self._probes.get(url, timeout=timeout) as response:
                ok, detail = response.status < 400, f"HTTP {response.status}"
        except aiohttp.ClientConnectorError as exc:
            ok, detail, refused = False, f"connection refused ({exc})", True
        except (aiohttp.ClientError, TimeoutError) as exc:
            ok, detail = False, f"{type(exc).__name__}: {exc}".rstrip(": ")
        except Exception as exc:  # a probe must never end the loop
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        before = replica.state
        self.pool.probed(replica, ok, detail, epoch=epoch, refused=refused)
        if before != replica.state:
            log.warning(
                "model %s: replica %s (%s) is %s (%s)",
                self.spec.id,
                replica.name,
                replica.label,
                replica.state,
                detail,
            )


class _Relay:
    """The rest of a stream, relayed as it arrives; closing it closes the upstream
    connection (the upstream stops generating)."""

    def __init__(
        self,
        backend: UpstreamBackend,
        call: _Call,
        replica: Replica,
        response: aiohttp.ClientResponse,
        events: AsyncIterator[str],
        head: BaseModel | None,
        meter: Meter,
        t0: float,
    ) -> None:
        self._backend = backend
        self._call = call
        self._replica = replica
        self._response = response
        self._events = events
        self._head = head
        self._meter = meter
        self._t0 = t0
        self._done = False
        self._closed = False
        self._started: set[int] = set()  # choice indexes seen
        self._texts: dict[int, list[str]] = {}
        self._finished: dict[int, str] = {}

    def __aiter__(self) -> _Relay:
        return self

    async def __anext__(self) -> BaseModel:
        if self._head is not None:
            head, self._head = self._head, None
            return self._seen(head)
        while not self._done:
            try:
                data = await anext(self._events, None)
            except TimeoutError:
                self._broken("timed out between two chunks")
                raise UpstreamTimeoutError(
                    f"The upstream of model {self._backend.spec.id!r} stopped sending "
                    "(timed out between two chunks)."
                ) from None
            except (aiohttp.ClientError, AnswerTooLargeError) as exc:
                self._broken(f"{type(exc).__name__}: {exc}")
                raise UpstreamError(
                    f"The upstream of model {self._backend.spec.id!r} broke off the stream."
                ) from None
            if data is None:
                if len(self._finished) < self._choices():
                    self._broken("closed the stream before it finished")
                    raise UpstreamError(
                        f"The upstream of model {self._backend.spec.id!r} closed the stream "
                        "before it finished."
                    )
                await self._end()
                raise StopAsyncIteration
            if data.strip() == "[DONE]":
                await self._end()
                raise StopAsyncIteration
            try:
                chunk = self._backend._chunk(self._call, data, self._meter)
            except UpstreamError as exc:
                self._broken(exc.message)
                raise
            if chunk is not None:
                return self._seen(chunk)
        raise StopAsyncIteration

    def _choices(self) -> int:
        return max(len(self._started), 1)

    def _seen(self, chunk: BaseModel) -> BaseModel:
        choices = getattr(chunk, "choices", None) or ()
        keep = self._call.check is not None  # the text is kept only to check it at the end
        for c in choices:
            delta = getattr(c, "delta", None)
            text = (
                getattr(delta, "content", None) if delta is not None else getattr(c, "text", None)
            )
            self._started.add(c.index)
            if text:
                self._meter.first_token()
                if keep:
                    self._texts.setdefault(c.index, []).append(text)
            if c.finish_reason is not None:
                self._finished[c.index] = c.finish_reason
                self._meter.choice_ended(c.index, c.finish_reason)
        return chunk

    def _broken(self, detail: str) -> None:
        self._done = True
        backend = self._backend
        seconds = time.perf_counter() - self._t0
        backend.pool.failed(self._replica, "broken", detail, seconds=seconds)
        self._settle()

    async def _end(self) -> None:
        self._done = True
        backend = self._backend
        backend.pool.succeeded(self._replica, time.perf_counter() - self._t0)
        self._settle()
        check = self._call.check
        if check is not None:
            for index in sorted(self._started):
                text = "".join(self._texts.get(index, ()))
                await check.verify(text, self._finished.get(index), self._replica.name)

    def _settle(self) -> None:
        tokens = self._call.tokens
        if not tokens.reported:
            self._meter.measured(tokens.prompt_evaluated, estimated=True)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._done:
                self._response.release()  # read to the end: the connection is reused
            else:
                self._done = True
                self._settle()  # the client left: billed for what was relayed
                self._response.close()  # the upstream sees its client go and stops
        finally:
            self._backend.pool.end(self._replica)


# The most an upstream's answer (or one line of its stream) may hold: a broken or hostile
# upstream must not make the gateway buffer without end.
MAX_ANSWER_BYTES = 64 * 1024 * 1024


class AnswerTooLargeError(Exception):
    """An upstream's answer, or a line of its stream, is over ``MAX_ANSWER_BYTES``."""


async def _read_capped(length: int | None, parts: AsyncIterator[bytes]) -> bytes:
    if length is not None and length > MAX_ANSWER_BYTES:
        raise AnswerTooLargeError(f"an answer of {length} bytes (the limit is {MAX_ANSWER_BYTES})")
    got: list[bytes] = []
    total = 0
    async for part in parts:
        total += len(part)
        if total > MAX_ANSWER_BYTES:
            raise AnswerTooLargeError(f"an answer over {MAX_ANSWER_BYTES} bytes")
        got.append(part)
    return b"".join(got)


async def _parts(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """The bytes of a stream as they arrive, and, when the connection breaks, what arrived
    before it broke (aiohttp raises at once and would drop those bytes: chunks the upstream
    sent before it died are still the client's)."""
    while True:
        try:
            part = await content.readany()
        except aiohttp.ClientPayloadError:
            left = getattr(content, "_read_nowait", None)  # aiohttp's own unread bytes
            if left is not None:
                with contextlib.suppress(Exception):
                    rest = left(-1)
                    if rest:
                        yield rest
            raise
        if not part:
            return
        yield part


async def _capped_lines(parts: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """The stream's lines (LF or CRLF ends), none longer than ``MAX_ANSWER_BYTES``: a line is
    checked while it is still arriving, not once it is whole."""
    pending: list[bytes] = []  # the unfinished line's parts
    size = 0
    async for part in parts:
        if b"\n" not in part:
            pending.append(part)
            size += len(part)
            if size > MAX_ANSWER_BYTES:
                raise AnswerTooLargeError(f"a stream line over {MAX_ANSWER_BYTES} bytes")
            continue
        first, *lines, rest = part.split(b"\n")
        for line in (b"".join((*pending, first)), *lines):
            yield line.removesuffix(b"\r").decode("utf-8", "replace")
        pending, size = [rest], len(rest)
    if size:
        yield b"".join(pending).decode("utf-8", "replace")


def _message_text(choice: dict[str, Any]) -> str:
    message = choice.get("message")
    if isinstance(message, dict) and isinstance(message.get("content"), str):
        return str(message["content"])
    return ""


def _choice_text(choice: dict[str, Any]) -> str:
    text = choice.get("text")
    return text if isinstance(text, str) else ""


def _retry_after(value: str | None) -> float:
    """Seconds of a ``Retry-After`` header (an HTTP date, or nonsense: 1 s)."""
    try:
        seconds = float(value) if value else 1.0
    except ValueError:
        return 1.0
    return min(max(seconds, 0.0), 3600.0) if math.isfinite(seconds) else 1.0


def _parse_answer(body: bytes, call: _Call) -> tuple[dict[str, Any], BaseModel]:
    """A whole answer as JSON and as the SDK's object, renamed to the client's model."""
    data = json.loads(body)
    items = "data" if call.path == EMBEDDINGS_PATH else "choices"
    if not isinstance(data, dict) or not isinstance(data.get(items), list):
        raise ValueError(f"no {items}")
    data["model"] = call.requested
    return data, call.whole.model_validate(data)


class UpstreamKind:
    """``backend = "upstream"``: OpenAI-compatible servers over HTTP (``replicas``)."""

    def engine(self, spec: ModelSpec, settings: Settings, on_fatal: Any) -> None:
        return None

    def embedder(self, spec: ModelSpec, settings: Settings) -> None:
        return None

    def backend(self, spec: ModelSpec, serving: Any, settings: Settings) -> UpstreamBackend:
        if spec.upstream is None:
            raise ConfigError(f"model {spec.id!r}: an upstream model needs replicas")
        return UpstreamBackend(spec, spec.upstream, settings.ctx_size)
