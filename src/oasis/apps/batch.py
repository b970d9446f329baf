"""Many requests at once, in OpenAI's batch file format, resumable.

Input lines: ``{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}``.
Output lines: ``{"id", "custom_id", "response": {"status_code", "request_id", "body"},
"error"}``, one per request, each written with a single ``write`` (an interrupted run never
leaves half a line; a line torn by a hard kill is dropped on the next run). A run skips the
custom_ids already in the output, so running again after an interruption finishes the job.

Requests are retried by the SDK with exponential backoff, honouring ``Retry-After``, on 429,
5xx and connection errors. A request that still fails that way is not written, so the next run
tries it again; a request the server refuses (4xx other than 429) is written with its error.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
from openai import AsyncOpenAI, OpenAI

from oasis.apps.client import sync_twin, using

URLS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")


class BatchInputError(Exception):
    """The input file is not a valid batch file."""


@dataclass
class BatchSummary:
    total: int = 0
    skipped: int = 0  # already in the output from an earlier run
    succeeded: int = 0
    refused: int = 0  # written with the server's error (4xx)
    failed: int = 0  # not written: retried on the next run
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def done(self) -> int:
        return self.succeeded + self.refused

    def cost(self, input_price: float | None, output_price: float | None) -> float | None:
        """USD at the given prices per million tokens."""
        if input_price is None and output_price is None:
            return None
        return (
            self.prompt_tokens * (input_price or 0.0)
            + self.completion_tokens * (output_price or 0.0)
        ) / 1e6


def _json_or_text(response: Any) -> Any:
    try:
        return response.json()
    except ValueError:
        return {"error": {"message": response.text, "type": "server_error"}}


def read_input(path: Path) -> list[dict[str, Any]]:
    requests: list[dict[str, Any]] = []
    seen: set[str] = set()
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        if not raw.strip():
            continue
        try:
            item = json.loads(raw)
        except ValueError as exc:
            raise BatchInputError(f"{path}:{n}: not JSON ({exc})") from None
        if not isinstance(item, dict):
            raise BatchInputError(f"{path}:{n}: each line must be a JSON object")
        cid = item.get("custom_id")
        if not isinstance(cid, str) or not cid:
            raise BatchInputError(f"{path}:{n}: missing 'custom_id'")
        if cid in seen:
            raise BatchInputError(f"{path}:{n}: duplicate custom_id {cid!r}")
        seen.add(cid)
        if item.get("method", "POST") != "POST":
            raise BatchInputError(f"{path}:{n}: only POST requests are supported")
        if item.get("url") not in URLS:
            raise BatchInputError(
                f"{path}:{n}: 'url' must be one of {', '.join(URLS)} (got {item.get('url')!r})"
            )
        if not isinstance(item.get("body"), dict):
            raise BatchInputError(f"{path}:{n}: 'body' must be an object")
        if item["body"].get("stream"):
            raise BatchInputError(f"{path}:{n}: streaming requests cannot be batched")
        requests.append(item)
    return requests


def done_ids(path: Path) -> set[str]:
    """custom_ids already written; a torn last line (a hard kill mid-write) is cut off."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        with path.open("r+b") as f:
            f.truncate(keep)
        data = data[:keep]
    ids: set[str] = set()
    for raw in data.splitlines():
        try:
            ids.add(json.loads(raw)["custom_id"])
        except (ValueError, KeyError, TypeError):
            continue
    return ids


async def arun_batch(
    input_path: str | Path,
    output_path: str | Path,
    *,
    concurrency: int = 4,
    retries: int = 5,
    client: OpenAI | AsyncOpenAI | None = None,
    on_progress: Callable[[BatchSummary], None] | None = None,
    on_start: Callable[[BatchSummary], None] | None = None,
) -> BatchSummary:
    source, target = Path(input_path), Path(output_path)
    requests = read_input(source)
    finished = done_ids(target)
    summary = BatchSummary(total=len(requests))
    todo = [r for r in requests if r["custom_id"] not in finished]
    summary.skipped = len(requests) - len(todo)
    if on_start is not None:
        on_start(summary)
    async with using(client) as base:
        return await _run(
            base.with_options(max_retries=retries), todo, target, summary, concurrency, on_progress
        )


async def _run(
    api: AsyncOpenAI,
    todo: list[dict[str, Any]],
    target: Path,
    summary: BatchSummary,
    concurrency: int,
    on_progress: Callable[[BatchSummary], None] | None,
) -> BatchSummary:
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for item in todo:
        queue.put_nowait(item)
    t0 = time.perf_counter()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(line: dict[str, Any]) -> None:
        # No await in here: a cancelled worker stops at an await, never inside a line.
        data = (json.dumps(line, ensure_ascii=False) + "\n").encode()
        while data:
            data = data[os.write(fd, data) :]

    async def one(item: dict[str, Any]) -> None:
        cid = item["custom_id"]
        path = item["url"].removeprefix("/v1")
        line: dict[str, Any] = {"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": cid}
        try:
            raw = await api.post(path, body=item["body"], cast_to=httpx.Response)
            body = raw.json()
            line["response"] = {
                "status_code": raw.status_code,
                "request_id": raw.headers.get("x-request-id", ""),
                "body": body,
            }
            line["error"] = None
            usage = body.get("usage") or {}
            summary.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            summary.completion_tokens += int(usage.get("completion_tokens") or 0)
            summary.succeeded += 1
            write(line)
        except openai.APIStatusError as exc:
            if exc.status_code == 429 or exc.status_code >= 500:
                summary.failed += 1
                summary.errors.append(f"{cid}: {exc.status_code} (will be retried next run)")
                return
            line["response"] = {
                "status_code": exc.status_code,
                "request_id": exc.response.headers.get("x-request-id", ""),
                "body": _json_or_text(exc.response),
            }
            line["error"] = None
            summary.refused += 1
            write(line)
        except openai.APIConnectionError as exc:
            summary.failed += 1
            summary.errors.append(f"{cid}: {type(exc).__name__} (will be retried next run)")

    async def worker() -> None:
        while True:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await one(item)
            summary.seconds = time.perf_counter() - t0
            if on_progress is not None:
                on_progress(summary)

    # The task group returns only when every worker has ended: when one fails, or the run is
    # cancelled (Ctrl-C), the others are cancelled and awaited first, so nothing writes to the
    # output after it is closed.
    try:
        async with asyncio.TaskGroup() as workers:
            for _ in range(max(1, concurrency)):
                workers.create_task(worker())
    except BaseExceptionGroup as group:
        raise _first(group) from None
    finally:
        os.close(fd)
        summary.seconds = time.perf_counter() - t0
    return summary


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error that stopped the run, as the worker raised it (callers catch the SDK's and
    the OS's errors, not a group)."""
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first


run_batch = sync_twin(arun_batch)
