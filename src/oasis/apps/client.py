"""Clients for the applications: the SDK's conventions, with the local oasis server as default."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from openai import AsyncOpenAI, OpenAI

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
DEFAULT_MODEL = "gpt-3.5-turbo"  # resolves to the bundled model on oasis
T = TypeVar("T")
P = ParamSpec("P")


class ClientConfigError(Exception):
    """No API key (or another setting) to build a client from."""


def resolve(base_url: str | None = None, api_key: str | None = None) -> tuple[str, str]:
    """``--base-url`` / ``OPENAI_BASE_URL`` (default: the local oasis server) and ``--api-key`` /
    ``OPENAI_API_KEY`` (``OASIS_API_KEY`` also works for the local server)."""
    url = base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
    key = api_key or os.environ.get("OPENAI_API_KEY") or os.environ.get("OASIS_API_KEY")
    if not key:
        raise ClientConfigError(
            "no API key: pass --api-key or set OPENAI_API_KEY (the key `oasis serve` printed "
            "on its first start, or one from `oasis keys create`)"
        )
    return url, key


def async_client(
    base_url: str | None = None,
    api_key: str | None = None,
    *,
    timeout: float = 600.0,
    max_retries: int = 2,
) -> AsyncOpenAI:
    url, key = resolve(base_url, api_key)
    return AsyncOpenAI(base_url=url, api_key=key, timeout=timeout, max_retries=max_retries)


def sync_client(
    base_url: str | None = None,
    api_key: str | None = None,
    *,
    timeout: float = 600.0,
    max_retries: int = 2,
) -> OpenAI:
    url, key = resolve(base_url, api_key)
    return OpenAI(base_url=url, api_key=key, timeout=timeout, max_retries=max_retries)


def as_async(client: OpenAI | AsyncOpenAI | None) -> AsyncOpenAI:
    """The async twin of a client (same endpoint, key, timeout and retries)."""
    if client is None:
        return async_client()
    if isinstance(client, AsyncOpenAI):
        return client
    return AsyncOpenAI(
        base_url=str(client.base_url),
        api_key=client.api_key,
        timeout=client.timeout,
        max_retries=client.max_retries,
    )


@contextlib.asynccontextmanager
async def using(client: OpenAI | AsyncOpenAI | None) -> AsyncIterator[AsyncOpenAI]:
    """The async client to use; one made here (from a sync client, or from the environment) is
    closed on the way out, while its event loop still runs."""
    api = as_async(client)
    try:
        yield api
    finally:
        if api is not client:
            await api.close()


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run an application's coroutine from synchronous code; inside a running event loop (a
    Jupyter notebook) it runs on a helper thread with a loop of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def sync_twin(afunc: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, T]:
    """The synchronous form of an application's ``a``-prefixed coroutine function: same
    parameters, run with ``run``."""

    @functools.wraps(afunc)
    def call(*args: P.args, **kwargs: P.kwargs) -> T:
        return run(afunc(*args, **kwargs))

    call.__name__ = call.__qualname__ = afunc.__name__.removeprefix("a")
    return call
