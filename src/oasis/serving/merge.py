"""Running several engine sequences (n choices, several prompts) as one stream of events."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence

from oasis.engine.base import Event, FinishEvent, RequestHandle


async def merge(
    handles: Sequence[RequestHandle], on_first: Callable[[], None] | None = None
) -> AsyncIterator[tuple[int, Event]]:
    """Yield ``(choice index, event)`` in arrival order until every sequence finished;
    ``on_first`` is called when the first event arrives (time to first token).

    Closing the iterator early (a client that went away) cancels every sequence.
    """
    if len(handles) == 1:
        # the common case: no pump task, no second queue
        try:
            first = True
            async for ev in handles[0]:
                if first and on_first is not None:
                    on_first()
                first = False
                yield 0, ev
        finally:
            handles[0].cancel()
        return
    q: asyncio.Queue[tuple[int, Event | BaseException]] = asyncio.Queue()

    async def pump(i: int, handle: RequestHandle) -> None:
        try:
            async for ev in handle:
                await q.put((i, ev))
        except Exception as exc:
            await q.put((i, exc))

    tasks = [asyncio.create_task(pump(i, h)) for i, h in enumerate(handles)]
    remaining = len(handles)
    try:
        while remaining:
            i, item = await q.get()
            if isinstance(item, BaseException):
                raise item
            if on_first is not None:
                on_first()
                on_first = None
            if isinstance(item, FinishEvent):
                remaining -= 1
            yield i, item
    finally:
        for h in handles:
            h.cancel()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
