"""The Responses API as a translation over chat: items in, a chat request to the model's
backend, and the chat answer (or its chunk stream) back as a Response (or its events).

No second generation path: whatever a model's backend does for chat (the local engine's
constrained decoding and tool grammar, an upstream's passthrough, metering) is what a response
gets. Items are handled as JSON (what is stored, listed and replayed), so a conversation
continued by ``previous_response_id`` reads the stored items exactly as they were given.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response
from pydantic import ValidationError

from oasis.errors import (
    ContextLengthExceededError,
    EngineError,
    InvalidRequestError,
    OasisError,
    UnsupportedParameterError,
)
from oasis.protocol.requests import ChatCompletionRequest
from oasis.protocol.responses import (
    FunctionChoice,
    FunctionToolDef,
    ResponseCreateRequest,
    TextFormatJSONObject,
    TextFormatJSONSchema,
)

LOGPROBS = "message.output_text.logprobs"


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


# -- the request ---------------------------------------------------------------------------


def check_supported(req: ResponseCreateRequest) -> None:
    names = req.unsupported()
    if names:
        first = names[0]
        param = first.split(":", 1)[0]
        raise UnsupportedParameterError(
            f"Unsupported parameter: '{first}' is not supported by this server "
            f"(everything unsupported here: {', '.join(names)}).",
            param=param,
        )


def input_items(req: ResponseCreateRequest) -> list[dict[str, Any]]:
    """This request's input as stored items: each with an id (OpenAI gives every item one),
    string content as an ``input_text`` part."""
    if req.input is None:
        return []
    if isinstance(req.input, str):
        text = [{"type": "input_text", "text": req.input}]
        return [
            {
                "id": new_id("msg"),
                "type": "message",
                "role": "user",
                "content": text,
                "status": "completed",
            }
        ]
    items = []
    for item in req.input:
        data = item.model_dump(mode="json", by_alias=True, exclude_none=True)
        data.setdefault("type", "message")
        if data["type"] == "message" and isinstance(data.get("content"), str):
            kind = "output_text" if data.get("role") == "assistant" else "input_text"
            part: dict[str, Any] = {"type": kind, "text": data["content"]}
            if kind == "output_text":
                part["annotations"] = []
            data["content"] = [part]
        prefix = {"message": "msg", "function_call": "fc", "function_call_output": "fco"}
        data.setdefault("id", new_id(prefix[data["type"]]))
        data.setdefault("status", "completed")  # as OpenAI lists input items
        items.append(data)
    return items


def _text(parts: Any) -> str:
    if isinstance(parts, str):
        return parts
    return "".join(
        p.get("text", "") for p in parts or () if p.get("type") in ("input_text", "output_text")
    )


def to_messages(instructions: str | None, items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat messages for ``items`` (the history's, then this request's), after
    ``instructions`` as a system message. A function call joins the assistant message before
    it (the text of the same turn), or opens one; its output is a tool message."""
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    for item in items:
        kind = item.get("type", "message")
        if kind == "message":
            role, content = item["role"], item.get("content")
            last = messages[-1] if messages else None
            if (
                role == "assistant"
                and last is not None
                and last["role"] == "assistant"
                and last.get("tool_calls")
                and not last.get("content")
            ):
                last["content"] = _text(content)  # text after the calls, in the same turn
                continue
            if role == "assistant":
                refusal = (
                    "".join(p.get("refusal", "") for p in content or () if isinstance(p, dict))
                    if isinstance(content, list)
                    else ""
                )
                message: dict[str, Any] = {"role": "assistant", "content": _text(content)}
                if refusal:
                    message["refusal"] = refusal
                messages.append(message)
            elif isinstance(content, list):
                parts = [
                    {"type": "text", "text": p["text"]}
                    for p in content
                    if p.get("type") in ("input_text", "output_text")
                ]
                messages.append({"role": role, "content": parts or ""})
            else:
                messages.append({"role": role, "content": content})
        elif kind == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
                if last.get("content") == "":
                    last["content"] = None
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": item["call_id"],
                    "content": _text(item.get("output")),
                }
            )
    return messages


def to_chat(req: ResponseCreateRequest, messages: list[dict[str, Any]]) -> ChatCompletionRequest:
    """The chat request that answers ``req`` with ``messages`` as its conversation."""
    body: dict[str, Any] = {"model": req.model, "messages": messages, "n": 1}
    if req.max_output_tokens is not None:
        body["max_completion_tokens"] = req.max_output_tokens
    for name in (
        "temperature",
        "top_p",
        "parallel_tool_calls",
        "user",
        "safety_identifier",
        "prompt_cache_key",
    ):
        value = getattr(req, name)
        if value is not None:
            body[name] = value
    if req.tools:
        # the Responses API's functions are strict unless they say otherwise (chat's are not)
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    **t.model_dump(exclude={"type"}, exclude_none=True),
                    "strict": True if t.strict is None else t.strict,
                },
            }
            for t in req.tools
            if isinstance(t, FunctionToolDef)
        ]
    choice = req.tool_choice
    if isinstance(choice, str):
        body["tool_choice"] = choice
    elif isinstance(choice, FunctionChoice):
        body["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    fmt = req.text.format if req.text is not None else None
    if isinstance(fmt, TextFormatJSONSchema):
        spec: dict[str, Any] = {"name": fmt.name, "schema": fmt.schema_}
        if fmt.description is not None:
            spec["description"] = fmt.description
        if fmt.strict is not None:
            spec["strict"] = fmt.strict
        body["response_format"] = {"type": "json_schema", "json_schema": spec}
    elif isinstance(fmt, TextFormatJSONObject):
        body["response_format"] = {"type": "json_object"}
    if LOGPROBS in (req.include or ()):
        body["logprobs"] = True
        body["top_logprobs"] = req.top_logprobs or 0
    if req.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:  # the items do not make a valid conversation
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidRequestError(
            f"Invalid 'input': the items do not make a valid conversation ({where}: "
            f"{first['msg']}).",
            param="input",
        ) from None


def _too_long(exc: InvalidRequestError) -> bool:
    return isinstance(exc, ContextLengthExceededError) or exc.code == "context_length_exceeded"


def _drop_oldest_turn(messages: list[dict[str, Any]], head: int) -> bool:
    """Drop the oldest message after ``head`` (an assistant message with its tool outputs),
    and any tool output left without its call; False if only the last message would be
    left."""
    if len(messages) - head <= 1:
        return False
    first = messages.pop(head)
    calls = {c["id"] for c in first.get("tool_calls") or ()}
    while (
        len(messages) - head > 1
        and messages[head]["role"] == "tool"
        and (not calls or messages[head].get("tool_call_id") in calls)
    ):
        del messages[head]
    return len(messages) - head >= 1 and messages[head]["role"] != "tool"


async def answer_with_truncation(
    req: ResponseCreateRequest,
    messages: list[dict[str, Any]],
    call: Callable[[ChatCompletionRequest], Awaitable[Any]],
) -> Any:
    """``call`` on the chat request; with ``truncation: "auto"``, a conversation over the
    model's context loses its oldest turns (never the instructions, never the last message,
    never a tool output without its call) until it fits, as OpenAI's truncation drops items
    from the start. The first refusal is the answer when nothing more can go."""
    first_error: InvalidRequestError | None = None
    head = 1 if messages and messages[0]["role"] == "system" and req.instructions else 0
    for _ in range(len(messages) + 1):
        try:
            return await call(to_chat(req, messages))
        except InvalidRequestError as exc:
            if req.truncation != "auto" or not _too_long(exc):
                raise
            first_error = first_error or exc
            if not _drop_oldest_turn(messages, head):
                raise first_error from None
    assert first_error is not None
    raise first_error


# -- the response --------------------------------------------------------------------------


@dataclass
class Shape:
    """What a response echoes of its request, and its identity."""

    req: ResponseCreateRequest
    id: str = field(default_factory=lambda: new_id("resp"))
    created_at: int = field(default_factory=lambda: int(time.time()))

    def body(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None,
        *,
        incomplete: str | None = None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        req = self.req
        fmt = req.text.format if req.text is not None else None
        tools = [
            {
                "type": "function",
                "name": t.name,
                "description": t.description,
                "parameters": t.parameters,
                "strict": True if t.strict is None else t.strict,
            }
            for t in req.tools or ()
            if isinstance(t, FunctionToolDef)
        ]
        choice: Any = req.tool_choice or "auto"
        if not isinstance(choice, str):
            choice = choice.model_dump(mode="json")
        body = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": False,
            "error": error,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
            "instructions": req.instructions,
            "max_output_tokens": req.max_output_tokens,
            "max_tool_calls": None,
            "model": req.model,
            "output": output,
            "parallel_tool_calls": True
            if req.parallel_tool_calls is None
            else req.parallel_tool_calls,
            "previous_response_id": req.previous_response_id,
            "prompt_cache_key": req.prompt_cache_key,
            "reasoning": {"effort": None, "summary": None},
            "safety_identifier": req.safety_identifier,
            "service_tier": "default",
            "store": req.store is not False,
            "temperature": 1.0 if req.temperature is None else req.temperature,
            "text": {
                "format": fmt.model_dump(mode="json", by_alias=True, exclude_none=True)
                if fmt is not None
                else {"type": "text"},
                "verbosity": (req.text.verbosity if req.text and req.text.verbosity else "medium"),
            },
            "tool_choice": choice,
            "tools": tools,
            "top_logprobs": req.top_logprobs or 0,
            "top_p": 1.0 if req.top_p is None else req.top_p,
            "truncation": req.truncation or "disabled",
            "usage": usage,
            "user": req.user,
            "metadata": req.metadata or {},
            **({"completed_at": int(time.time())} if status == "completed" else {}),
        }
        # OpenAI leaves these out rather than sending null
        for key in ("user", "usage"):
            if body[key] is None:
                del body[key]
        return body


def usage_of(usage: Any) -> dict[str, Any] | None:
    if usage is None:
        return None
    details = getattr(usage, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None) or 0
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def _logprobs(entries: Any) -> list[dict[str, Any]]:
    return [
        {
            "token": e.token,
            "logprob": e.logprob,
            "bytes": e.bytes or [],
            "top_logprobs": [
                {"token": t.token, "logprob": t.logprob, "bytes": t.bytes or []}
                for t in e.top_logprobs or ()
            ],
        }
        for e in entries or ()
    ]


def _text_part(text: str, logprobs: list[dict[str, Any]] | None) -> dict[str, Any]:
    # OpenAI always sends `logprobs` (empty unless include asked for them)
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}


def output_of(answer: ChatCompletion, with_logprobs: bool) -> tuple[list[dict[str, Any]], str]:
    """A chat answer's output items, and the response status."""
    choice = answer.choices[0]
    message = choice.message
    status = "incomplete" if choice.finish_reason in _INCOMPLETE else "completed"
    items: list[dict[str, Any]] = []
    if message.content or message.refusal or not message.tool_calls:
        content: list[dict[str, Any]] = []
        if message.refusal:
            content.append({"type": "refusal", "refusal": message.refusal})
        else:
            lp = _logprobs(choice.logprobs.content if choice.logprobs else None)
            content.append(_text_part(message.content or "", lp if with_logprobs else None))
        items.append(
            {
                "id": new_id("msg"),
                "type": "message",
                "role": "assistant",
                "status": status,
                "content": content,
            }
        )
    for call in message.tool_calls or ():
        fn = getattr(call, "function", None)
        if fn is None:
            continue
        items.append(
            {
                "id": new_id("fc"),
                "type": "function_call",
                "status": status,
                "call_id": call.id,
                "name": fn.name,
                "arguments": fn.arguments,
            }
        )
    return items, status


def response_of(shape: Shape, answer: ChatCompletion) -> dict[str, Any]:
    items, status = output_of(answer, LOGPROBS in (shape.req.include or ()))
    reason = _INCOMPLETE.get(answer.choices[0].finish_reason or "")
    return shape.body(status, items, usage_of(answer.usage), incomplete=reason)


def as_response(body: dict[str, Any]) -> Response:
    return Response.model_validate(body)


# -- streams -------------------------------------------------------------------------------


class StreamFailed(Exception):
    """A stream that already told its client why it failed (``error`` and ``response.failed``
    events): nothing more to write; ``status`` is what the usage record says."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


@dataclass
class _Call:
    item: dict[str, Any]
    output_index: int
    arguments: list[str] = field(default_factory=list)


class EventStream:
    """A chat chunk stream as the Responses API's events (each a JSON-ready dict with its
    ``type`` and ``sequence_number``). ``final`` holds the finished response body (to store)
    once the stream has ended, however it ended."""

    named_events = True  # framed as `event: TYPE` + `data: JSON`, with no [DONE]

    def __init__(
        self,
        shape: Shape,
        chunks: AsyncIterator[ChatCompletionChunk],
        on_final: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
    ) -> None:
        self.shape = shape
        self._chunks = chunks
        self._on_final = on_final
        self._seq = 0
        self._output: list[dict[str, Any]] = []
        self._message: dict[str, Any] | None = None
        self._message_index = 0
        self._text: list[str] = []
        self._logprobs: list[dict[str, Any]] = []
        self._calls: dict[int, _Call] = {}
        self._usage: dict[str, Any] | None = None
        self._finish: str | None = None
        self._with_logprobs = LOGPROBS in (shape.req.include or ())
        self.final: dict[str, Any] | None = None
        self._gen: AsyncGenerator[dict[str, Any], None] = self._events()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        return await self._gen.__anext__()

    async def aclose(self) -> None:
        await self._gen.aclose()
        aclose = getattr(self._chunks, "aclose", None)
        if aclose is not None:
            await aclose()

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return event

    async def _events(self) -> AsyncGenerator[dict[str, Any], None]:
        start = self.shape.body("in_progress", [], None)
        yield self._event("response.created", response=start)
        yield self._event("response.in_progress", response=start)
        try:
            async for chunk in self._chunks:
                if chunk.usage is not None:
                    self._usage = usage_of(chunk.usage)
                for choice in chunk.choices:
                    for event in self._choice(choice):
                        yield event
        except Exception as failure:
            exc = (
                failure
                if isinstance(failure, OasisError)
                else EngineError("The server had an error while processing your request.")
            )
            for event in self._close_items("incomplete", open_empty=False):
                yield event
            code = exc.code or exc.error_type
            yield self._event("error", code=code, message=exc.message, param=exc.param)
            # the response's error code is one of OpenAI's few (the event above has ours)
            kind = (
                "rate_limit_exceeded"
                if exc.status == 429
                else ("invalid_prompt" if exc.status < 500 else "server_error")
            )
            error = {"code": kind, "message": exc.message}
            self.final = self.shape.body("failed", self._output, self._usage, error=error)
            await self._finished()
            yield self._event("response.failed", response=self.final)
            raise StreamFailed(exc.status) from failure
        reason = _INCOMPLETE.get(self._finish or "")
        status = "incomplete" if reason else "completed"
        for event in self._close_items(status):
            yield event
        self.final = self.shape.body(status, self._output, self._usage, incomplete=reason)
        await self._finished()  # stored before the client hears it is done
        yield self._event(f"response.{status}", response=self.final)

    async def _finished(self) -> None:
        if self._on_final is not None and self.final is not None:
            await self._on_final(self.final)

    def _choice(self, choice: Any) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        delta = choice.delta
        text = delta.content
        if text:
            if self._message is None:
                events += self._open_message()
            self._text.append(text)
            lp = _logprobs(choice.logprobs.content if choice.logprobs else None)
            self._logprobs += lp
            events.append(
                self._event(
                    "response.output_text.delta",
                    item_id=self._message["id"],  # type: ignore[index]
                    output_index=self._message_index,
                    content_index=0,
                    delta=text,
                    logprobs=lp if self._with_logprobs else [],
                )
            )
        for tc in delta.tool_calls or ():
            call = self._calls.get(tc.index)
            if call is None:
                fn = tc.function
                item = {
                    "id": new_id("fc"),
                    "type": "function_call",
                    "status": "in_progress",
                    "call_id": tc.id or new_id("call"),
                    "name": (fn.name if fn is not None else None) or "",
                    "arguments": "",
                }
                call = self._calls[tc.index] = _Call(item, len(self._output))
                self._output.append(item)
                events.append(
                    self._event(
                        "response.output_item.added",
                        output_index=call.output_index,
                        item=dict(item),
                    )
                )
            args = tc.function.arguments if tc.function is not None else None
            if args:
                call.arguments.append(args)
                events.append(
                    self._event(
                        "response.function_call_arguments.delta",
                        item_id=call.item["id"],
                        output_index=call.output_index,
                        delta=args,
                    )
                )
        if choice.finish_reason is not None:
            self._finish = choice.finish_reason
        return events

    def _open_message(self) -> list[dict[str, Any]]:
        self._message = {
            "id": new_id("msg"),
            "type": "message",
            "role": "assistant",
            "status": "in_progress",
            "content": [],
        }
        self._message_index = len(self._output)
        self._output.append(self._message)
        part = _text_part("", [])
        return [
            self._event(
                "response.output_item.added",
                output_index=self._message_index,
                item={**self._message, "content": []},
            ),
            self._event(
                "response.content_part.added",
                item_id=self._message["id"],
                output_index=self._message_index,
                content_index=0,
                part=part,
            ),
        ]

    def _close_items(self, status: str, open_empty: bool = True) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if self._message is None and not self._calls and open_empty:
            events += self._open_message()  # an empty answer is still a message
        if self._message is not None and self._message["status"] == "in_progress":
            text = "".join(self._text)
            lp = self._logprobs if self._with_logprobs else []
            part = _text_part(text, lp)
            self._message["content"] = [
                _text_part(text, self._logprobs if self._with_logprobs else None)
            ]
            self._message["status"] = status
            mid, index = self._message["id"], self._message_index
            events += [
                self._event(
                    "response.output_text.done",
                    item_id=mid,
                    output_index=index,
                    content_index=0,
                    text=text,
                    logprobs=lp,
                ),
                self._event(
                    "response.content_part.done",
                    item_id=mid,
                    output_index=index,
                    content_index=0,
                    part=part,
                ),
                self._event(
                    "response.output_item.done", output_index=index, item=dict(self._message)
                ),
            ]
        for call in self._calls.values():
            if call.item["status"] != "in_progress":
                continue
            call.item["arguments"] = "".join(call.arguments)
            call.item["status"] = "completed" if status == "completed" else "incomplete"
            events += [
                self._event(
                    "response.function_call_arguments.done",
                    item_id=call.item["id"],
                    output_index=call.output_index,
                    name=call.item["name"],
                    arguments=call.item["arguments"],
                ),
                self._event(
                    "response.output_item.done",
                    output_index=call.output_index,
                    item=dict(call.item),
                ),
            ]
        return events


def previous_items(chain: Sequence[Any]) -> list[dict[str, Any]]:
    """The conversation so far: each stored response's input items, then its output."""
    items: list[dict[str, Any]] = []
    for stored in chain:
        items += stored.input_items
        # a call cut short (an incomplete or failed response) is not replayed: nobody answered
        items += [
            i
            for i in stored.response.get("output", ())
            if i.get("type") == "message"
            or (i.get("type") == "function_call" and i.get("status") == "completed")
        ]
    # a chain longer than the store keeps may begin mid-turn: start at a message
    while items and (items[0].get("type") != "message" or items[0].get("role") == "assistant"):
        items.pop(0)
    return items


def not_found(response_id: str, param: str | None = None) -> InvalidRequestError:
    return InvalidRequestError(
        f"Previous response with id '{response_id}' not found.",
        param=param,
        code="previous_response_not_found",
    )
