"""Many requests at once, in OpenAI's batch file format, resumable.

Input lines: ``{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}``.
Output lines: ``{"id", "custom_id", "response": {"status_code", "request_id", "body"},
"error"}``, one per request, each written with a single ``write`` (an interrupted run never
leaves half a line; a line torn by a hard kill is dropped on the next run). A run skips the
custom_ids already in the output, so running again after an interruption finishes the job.

Requests are retried by the SDK with exponential backoff, honouring ``Retry-After``, on 429,
5xx and connection errors. A request that still fails that way is not written, so the next run
tries it again; a request the server refuses (4xx other than 429) is written with its error.

The same file can instead run on the server, through OpenAI's Batch API (``asubmit_batch``,
``await_batch``, ``adownload_results``): it is uploaded (purpose ``batch``), the server runs its
lines in the background and keeps the results, so the client may go away and collect them later.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import openai
from openai import AsyncOpenAI, OpenAI
from openai.types import Batch

from oasis.apps.client import sync_twin, using

URLS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
# The server-side Batch API also runs the Responses API's lines.
SERVER_URLS = (*URLS, "/v1/responses")
FINAL_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})


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


def read_input(path: Path, *, urls: tuple[str, ...] = URLS) -> list[dict[str, Any]]:
    """The requests of a batch file, checked line by line (BatchInputError names the first
    bad line); ``urls`` are the endpoints a line may name."""
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
        if item.get("url") not in urls:
            raise BatchInputError(
                f"{path}:{n}: 'url' must be one of {', '.join(urls)} (got {item.get('url')!r})"
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


# -- on the server: OpenAI's Batch API ---------------------------------------------------------


class Downloaded(NamedTuple):
    """Lines written by ``download_results``: the output file's and the error file's."""

    output_lines: int
    error_lines: int


async def asubmit_batch(
    input_file: str | Path,
    *,
    endpoint: str | None = None,
    metadata: dict[str, str] | None = None,
    client: OpenAI | AsyncOpenAI | None = None,
) -> str:
    """Upload ``input_file`` (purpose ``batch``) and create a batch of it; the batch's id.

    The file is checked first (``read_input``): a malformed one raises BatchInputError before
    anything is sent. ``endpoint`` defaults to the first line's ``url``; the server checks
    that every line names it. When creating the batch fails (or is cancelled) the uploaded
    file is deleted again.
    """
    path = Path(input_file)
    requests = read_input(path, urls=SERVER_URLS)
    if not requests:
        raise BatchInputError(f"{path}: no requests")
    target: Any = endpoint or requests[0]["url"]  # the SDK types it as a Literal of endpoints
    async with using(client) as api:
        uploaded = await api.files.create(file=path, purpose="batch")
        try:
            created = await api.batches.create(
                input_file_id=uploaded.id,
                endpoint=target,
                completion_window="24h",
                metadata=metadata,
            )
        except (Exception, asyncio.CancelledError):
            with contextlib.suppress(openai.APIError):
                await api.files.delete(uploaded.id)
            raise
        return created.id


async def await_batch(
    batch_id: str,
    *,
    client: OpenAI | AsyncOpenAI | None = None,
    poll: float = 1.0,
    timeout: float | None = None,
    on_progress: Callable[[Batch], None] | None = None,
) -> Batch:
    """Poll the batch every ``poll`` seconds until it ends (completed, failed, expired or
    cancelled) and return it; ``on_progress`` sees every state read, the last one included.
    TimeoutError after ``timeout`` seconds (the batch runs on)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    async with using(client) as api:
        while True:
            batch = await api.batches.retrieve(batch_id)
            if on_progress is not None:
                on_progress(batch)
            if batch.status in FINAL_STATUSES:
                return batch
            if deadline is not None and time.monotonic() + poll > deadline:
                raise TimeoutError(f"batch {batch_id} is still {batch.status} after {timeout} s")
            await asyncio.sleep(poll)


async def acancel_batch(batch_id: str, *, client: OpenAI | AsyncOpenAI | None = None) -> Batch:
    """Ask the server to cancel a batch (it goes ``cancelling``, then ``cancelled``; lines
    that finished are kept). A batch that already ended is returned unchanged."""
    async with using(client) as api:
        return await api.batches.cancel(batch_id)


async def adownload_results(
    batch: Batch | str,
    output: str | Path,
    errors_output: str | Path | None = None,
    *,
    client: OpenAI | AsyncOpenAI | None = None,
) -> Downloaded:
    """Write an ended batch's output file to ``output`` and its error file to
    ``errors_output`` (when given), line for line as the server wrote them (input order).

    A batch with no output file gives an empty ``output``; one with no error file removes a
    file left at ``errors_output`` (it belonged to another batch). Each file is written
    whole or not at all (a temporary file, renamed). ValueError if the batch has not ended.
    """
    async with using(client) as api:
        found = await api.batches.retrieve(batch) if isinstance(batch, str) else batch
        if found.status not in FINAL_STATUSES:
            raise ValueError(f"batch {found.id} has not ended yet: it is {found.status}")
        written = await _download(api, found.output_file_id, Path(output))
        errors = 0
        if errors_output is not None:
            if found.error_file_id is None:
                Path(errors_output).unlink(missing_ok=True)
            else:
                errors = await _download(api, found.error_file_id, Path(errors_output))
        return Downloaded(written, errors)


async def _download(api: AsyncOpenAI, file_id: str | None, target: Path) -> int:
    """A file's content streamed into ``target`` (empty when there is no file); its lines."""
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    scratch = Path(name)
    lines, last = 0, b"\n"
    try:
        with os.fdopen(fd, "wb") as f:
            if file_id is not None:
                async with api.files.with_streaming_response.content(file_id) as response:
                    async for chunk in response.iter_bytes():
                        f.write(chunk)
                        lines += chunk.count(b"\n")
                        last = chunk[-1:] or last
            if last != b"\n":  # a last line without its newline still counts
                lines += 1
        scratch.chmod(0o644)
        scratch.replace(target)
    except BaseException:
        scratch.unlink(missing_ok=True)
        raise
    return lines


submit_batch = sync_twin(asubmit_batch)
wait_batch = sync_twin(await_batch)
cancel_batch = sync_twin(acancel_batch)
download_results = sync_twin(adownload_results)
