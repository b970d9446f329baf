"""A multi-turn conversation that keeps its history and trims the oldest turns when the model's
context would overflow (the server says so with a 400 ``context_length_exceeded``)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import openai
from openai import AsyncOpenAI, OpenAI

from oasis.apps.client import DEFAULT_MODEL, as_async, run
from oasis.apps.errors import error_fields


def _too_long(exc: openai.BadRequestError) -> bool:
    return error_fields(exc).get("code") == "context_length_exceeded"


class Conversation:
    """``send`` a message, get the answer; the history goes with every request."""

    def __init__(
        self,
        system: str | None = None,
        *,
        model: str = DEFAULT_MODEL,
        temperature: float = 0.7,
        max_tokens: int | None = None,
        client: OpenAI | AsyncOpenAI | None = None,
        on_trim: Callable[[int], None] | None = None,
    ) -> None:
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.system = system
        self.turns: list[dict[str, str]] = []  # user and assistant messages, oldest first
        self.on_trim = on_trim
        self._client = client
        self._api: AsyncOpenAI | None = None

    @property
    def api(self) -> AsyncOpenAI:
        if self._api is None:
            self._api = as_async(self._client)
        return self._api

    @property
    def messages(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.turns

    def reset(self) -> None:
        self.turns = []

    def set_system(self, text: str | None) -> None:
        self.system = text or None

    def save(self, path: str | Path) -> None:
        data = {"model": self.model, "system": self.system, "turns": self.turns}
        Path(path).write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n")

    def load(self, path: str | Path) -> None:
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or not isinstance(data.get("turns"), list):
            raise ValueError(f"{path} is not a saved conversation")
        self.system = data.get("system")
        self.turns = [{"role": str(t["role"]), "content": str(t["content"])} for t in data["turns"]]

    def _trim_oldest(self) -> bool:
        """Drop the oldest exchange (never the message being sent)."""
        if len(self.turns) <= 1:
            return False
        drop = 2 if len(self.turns) > 2 and self.turns[1]["role"] == "assistant" else 1
        del self.turns[:drop]
        if self.on_trim is not None:
            self.on_trim(drop)
        return True

    def _params(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": self.model,
            "messages": self.messages,
            "temperature": self.temperature,
        }
        if self.max_tokens is not None:
            params["max_tokens"] = self.max_tokens
        return params

    async def astream(self, text: str) -> AsyncIterator[str]:
        """Send ``text``; yield the answer as it arrives. The answer (as far as it got, if the
        caller stops early) joins the history."""
        self.turns.append({"role": "user", "content": text})
        while True:
            try:
                stream = await self.api.chat.completions.create(**self._params(), stream=True)
                break
            except openai.BadRequestError as exc:
                if not (_too_long(exc) and self._trim_oldest()):
                    self.turns.pop()
                    raise
            except BaseException:
                self.turns.pop()
                raise
        parts: list[str] = []
        try:
            async with stream:
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        piece = chunk.choices[0].delta.content
                        parts.append(piece)
                        yield piece
        finally:
            self.turns.append({"role": "assistant", "content": "".join(parts)})

    async def asend(self, text: str) -> str:
        return "".join([piece async for piece in self.astream(text)])

    def send(self, text: str) -> str:
        if isinstance(self._client, AsyncOpenAI):
            return run(self.asend(text))

        async def once() -> str:
            try:
                return await self.asend(text)
            finally:
                # a client made here belongs to this event loop: close it before the loop ends
                if self._api is not None:
                    await self._api.close()
                self._api = None

        return run(once())


# A new conversation: ``chat().send("hi")``; ``asend`` / ``astream`` from async code.
chat = Conversation
