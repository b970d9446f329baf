"""The tutorial's ``generate_text``: a prompt in, text out (the completions endpoint)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from openai import AsyncOpenAI, OpenAI
from openai.types import Completion

from oasis.apps.client import DEFAULT_MODEL, sync_twin, using

COMPLETION_MODEL = "text-davinci-002"  # the tutorial's engine; resolves to the bundled model


def _params(
    model: str, max_tokens: int, temperature: float, n: int, stop: list[str] | None
) -> dict[str, Any]:
    params: dict[str, Any] = {
        "model": model,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "n": n,
    }
    if stop:
        params["stop"] = stop
    return params


async def acomplete(
    prompt: str,
    *,
    model: str = COMPLETION_MODEL,
    max_tokens: int = 256,
    temperature: float = 0.7,
    n: int = 1,
    stop: list[str] | None = None,
    client: OpenAI | AsyncOpenAI | None = None,
) -> Completion:
    """The whole API response."""
    async with using(client) as api:
        done: Completion = await api.completions.create(
            prompt=prompt, **_params(model, max_tokens, temperature, n, stop)
        )
    return done


async def astream_text(
    prompt: str,
    *,
    model: str = COMPLETION_MODEL,
    max_tokens: int = 256,
    temperature: float = 0.7,
    n: int = 1,
    stop: list[str] | None = None,
    client: OpenAI | AsyncOpenAI | None = None,
) -> AsyncIterator[tuple[int, str]]:
    """``(choice index, text)`` pieces as the server streams them."""
    async with using(client) as api:
        stream = await api.completions.create(
            prompt=prompt, stream=True, **_params(model, max_tokens, temperature, n, stop)
        )
        async with stream:
            async for chunk in stream:
                for choice in chunk.choices:
                    if choice.text:
                        yield choice.index, choice.text


async def agenerate_text(
    prompt: str,
    *,
    model: str = COMPLETION_MODEL,
    max_tokens: int = 256,
    temperature: float = 0.7,
    stop: list[str] | None = None,
    client: OpenAI | AsyncOpenAI | None = None,
) -> str:
    """The text the model continues ``prompt`` with."""
    done = await acomplete(
        prompt,
        model=model,
        max_tokens=max_tokens,
        temperature=temperature,
        stop=stop,
        client=client,
    )
    return done.choices[0].text


generate_text = sync_twin(agenerate_text)


async def achat_once(
    messages: list[dict[str, str]],
    *,
    model: str = DEFAULT_MODEL,
    max_tokens: int | None = None,
    temperature: float = 0.7,
    client: AsyncOpenAI,
    **extra: Any,
) -> str:
    """One chat completion's text (used by the other applications)."""
    params: dict[str, Any] = {"model": model, "messages": messages, "temperature": temperature}
    if max_tokens is not None:
        params["max_tokens"] = max_tokens
    done = await client.chat.completions.create(**params, **extra)
    return done.choices[0].message.content or ""
