"""Reading an upstream's answers: server-sent events, token counts, and what is billed.

An upstream that reports usage is billed by it. One that reports none is billed by counting
(the record is flagged ``estimated``): the prompt as oasis estimated it at admission, and for
the completion, in a stream, one token per chunk that carried text or a tool call's arguments
(OpenAI-compatible servers send one token per chunk), or, in a whole answer, the estimate of
its text.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

from openai.types import Completion, CompletionChoice
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.chat import chat_completion as whole_chat
from openai.types.chat import chat_completion_chunk as chunk_chat
from pydantic import BaseModel, ConfigDict

from oasis.protocol.embeddings import EmbeddingRequest
from oasis.protocol.requests import ChatCompletionRequest, CompletionRequest

PER_MESSAGE = 4  # tokens a chat template adds around each message, roughly


def estimate_tokens(text: str) -> int:
    """Tokens of ``text`` by a rule that errs high rather than low: a token per 4 ASCII
    characters, and one per other character (a Chinese character is one or two)."""
    if text.isascii():
        return -(-len(text) // 4)
    ascii_chars = sum(1 for c in text if c < "\x80")
    return -(-ascii_chars // 4) + (len(text) - ascii_chars)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.text for p in content if getattr(p, "type", None) == "text")
    return ""


def estimate_chat(req: ChatCompletionRequest) -> int:
    total = 0
    for m in req.messages:
        total += PER_MESSAGE + estimate_tokens(_content_text(m.content))
        if m.tool_calls:
            total += sum(estimate_tokens(c.model_dump_json()) for c in m.tool_calls)
    for tool in req.tools or ():
        total += estimate_tokens(tool.model_dump_json())
    return total


def estimate_completion(req: CompletionRequest) -> int:
    p = req.prompt
    if p is None:
        return 1
    if isinstance(p, str):
        return max(1, estimate_tokens(p))
    if p and isinstance(p[0], list):
        return sum(len(t) for t in p if isinstance(t, list))
    if p and isinstance(p[0], int):
        return len(p)
    return sum(estimate_tokens(s) for s in p if isinstance(s, str))


def chat_affinity(req: ChatCompletionRequest) -> str:
    """What requests sharing a prefix have in common: ``prompt_cache_key``, else ``user``,
    else the system prompt and the first message after it."""
    if req.prompt_cache_key:
        return "k:" + req.prompt_cache_key
    if req.user:
        return "u:" + req.user
    head = hashlib.blake2b(digest_size=12)
    for m in req.messages[:2]:
        head.update(m.role.encode())
        head.update(_content_text(m.content).encode("utf-8", "replace"))
        head.update(b"\0")
        if m.role not in ("system", "developer"):
            break
    return "p:" + head.hexdigest()


def completion_affinity(req: CompletionRequest) -> str:
    if req.user:
        return "u:" + req.user
    p = req.prompt
    head = p[:1024] if isinstance(p, str) else json.dumps(p)[:1024]
    return "p:" + hashlib.blake2b(head.encode("utf-8", "replace"), digest_size=12).hexdigest()


def _count(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53:
        return value
    return None


@dataclass
class UpstreamTokens:
    """The billing handle of an upstream request (the engine handle's three counts). Nothing
    is billed until a replica accepted the request: then its usage, or oasis's estimate."""

    prompt_evaluated: int = 0
    generated: int = 0
    cached_tokens: int = 0
    reported: bool = False  # the upstream reported usage

    def reset(self) -> None:
        """A new try: what an earlier one reported does not count."""
        self.prompt_evaluated = self.generated = self.cached_tokens = 0
        self.reported = False

    def report(self, usage: dict[str, Any]) -> None:
        prompt = _count(usage.get("prompt_tokens"))
        # an embeddings answer's usage has no completion_tokens: it generated none
        completion = _count(usage.get("completion_tokens", 0))
        if prompt is not None and completion is not None:
            self.prompt_evaluated = prompt
            self.generated = completion
            details = usage.get("prompt_tokens_details") or {}
            cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else None
            self.cached_tokens = min(cached or 0, prompt)
            self.reported = True

    def __aiter__(self) -> AsyncIterator[Any]:  # the RequestHandle shape; never iterated
        raise TypeError("an upstream's tokens are not iterated")

    def cancel(self) -> None:
        return None


async def sse_data(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """The ``data`` of each server-sent event (comments and other fields skipped)."""
    parts: list[str] = []
    async for line in lines:
        if not line:
            if parts:
                yield "\n".join(parts)
                parts = []
        elif line.startswith("data:"):
            parts.append(line[6:] if line.startswith("data: ") else line[5:])
    if parts:
        yield "\n".join(parts)


def error_message(body: Any, fallback: str) -> str:
    """The message of an OpenAI error envelope, or ``fallback``."""
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
        if isinstance(err, str):
            return err
        if isinstance(body.get("message"), str):
            return str(body["message"])
    return fallback


def answer_tokens(choice: Any) -> int:
    """Estimated tokens of one choice of a whole answer: its text, refusal and tool calls."""
    if not isinstance(choice, dict):
        return 0
    parts: list[str] = []
    message = choice.get("message")
    if isinstance(message, dict):
        for key in ("content", "refusal"):
            if isinstance(message.get(key), str):
                parts.append(message[key])
        for call in message.get("tool_calls") or ():
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict):
                parts += [str(fn.get("name") or ""), str(fn.get("arguments") or "")]
    elif isinstance(choice.get("text"), str):
        parts.append(choice["text"])
    return sum(estimate_tokens(p) for p in parts)


def chunk_tokens(choices: Iterable[Any]) -> int:
    """Tokens a chunk carried, counted as one per choice that carried text."""
    n = 0
    for c in choices:
        if not isinstance(c, dict):
            continue
        delta = c.get("delta")
        if isinstance(delta, dict):
            if delta.get("content") or delta.get("tool_calls") or delta.get("refusal"):
                n += 1
        elif c.get("text"):
            n += 1
    return n


# An upstream's answers are read with the SDK's types, but a finish_reason outside OpenAI's
# list (vLLM's "abort", a completions stream's null before the end) is not a broken replica.
class _ChunkChoice(chunk_chat.Choice):
    finish_reason: str | None = None  # type: ignore[assignment]


class UpstreamChatChunk(ChatCompletionChunk):
    choices: list[_ChunkChoice]  # type: ignore[assignment]


class _ChatChoice(whole_chat.Choice):
    finish_reason: str  # type: ignore[assignment]


class UpstreamChat(ChatCompletion):
    choices: list[_ChatChoice]  # type: ignore[assignment]


class _CompletionChoice(CompletionChoice):
    finish_reason: str | None = None  # type: ignore[assignment]


class UpstreamCompletion(Completion):
    choices: list[_CompletionChoice]  # type: ignore[assignment]


class UpstreamEmbeddings(BaseModel):
    """An upstream's embeddings answer, kept as sent (``base64`` vectors are strings, which
    the SDK's type does not allow) but for the model name."""

    model_config = ConfigDict(extra="allow")
    object: str
    data: list[Any]
    model: str


def estimate_embeddings(req: EmbeddingRequest) -> int:
    inputs = req.input
    if isinstance(inputs, str):
        return max(1, estimate_tokens(inputs))
    total = 0
    for item in inputs:
        if isinstance(item, str):
            total += max(1, estimate_tokens(item))
        elif isinstance(item, list):
            total += len(item)
        else:
            total += 1  # one token array: its ids are counted one each
    return max(1, total)
