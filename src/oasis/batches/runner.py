"""The batch runner: runs batches in this process, in the capacity live traffic leaves idle.

Life of a batch (statuses as OpenAI's): ``validating`` (the input file is read and checked;
any bad line -> ``failed`` with ``errors``), ``in_progress`` (lines run, at most
``concurrency`` at once across all batches, as background work the engine serves after
interactive requests), ``finalizing`` (the output and error files are written from the
answered lines, in input order) and ``completed``. ``cancelling`` stops new lines, cancels
those running and ends ``cancelled``; a batch past its completion window ends ``expired``.
Either way every line not answered is written to the error file with the code
``batch_cancelled`` or ``batch_expired``: each custom_id is in exactly one of the two files.

Every answered line is stored before it counts (store/batches.py), so a server killed mid-batch
resumes it after a restart, running only the lines not yet answered. A lease keeps two
processes on one database from running the same batch; a killed process's lease runs out after
``lease_seconds``, and the watcher (every ``lease_seconds / 2``) takes the batch over. A
process that cannot renew its lease stops its lines before the lease can have run out.

What a process holds is bounded: at most ``max_active`` batches at once (each holds its input
file's lines as bytes), the others wait unclaimed for the next watcher pass. A line that fails
for a passing reason (the engine's queue full, an upstream down, a budget held by requests in
flight) is tried again with backoff while the window lasts; a failure of the runner itself is
retried on the next pass, and after ``MAX_FAILURES`` the batch ends ``failed`` with the lines
answered so far in its files. A batch whose key is revoked or expired is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from anyio import to_thread

from oasis.batches.execute import run_line, tokens_of
from oasis.batches.input import BatchRequest, InvalidInputError, read_input
from oasis.server.state import AppState
from oasis.store.batches import ACTIVE, BatchStore, StoredBatch
from oasis.store.files import FileStore
from oasis.store.keys import KeyInfo

log = logging.getLogger(__name__)

# completion_window values and their length in seconds (OpenAI accepts only "24h")
WINDOWS = {"24h": 24 * 3600}
MAX_FAILURES = 3  # runner failures on one batch before it ends failed
RETRIES = 5  # tries of a line that fails for a passing reason
_STOPPED = {
    "cancelled": ("batch_cancelled", "The batch was cancelled before this request finished."),
    "expired": (
        "batch_expired",
        "This request could not be executed before the completion window expired.",
    ),
    "failed": ("batch_failed", "The batch failed before this request ran."),
}


@dataclass
class _Window:
    """When a running batch's completion window ends (unix seconds)."""

    expires_at: float

    def over(self) -> bool:
        return time.time() >= self.expires_at


@dataclass
class _Stop:
    """Why a batch's lines stopped before the end (None: they did not)."""

    reason: str | None = None  # "cancelled" | "expired"


class BatchRunner:
    def __init__(
        self,
        state: AppState,
        batches: BatchStore,
        files: FileStore,
        *,
        concurrency: int,
        discount: float,
        lease_seconds: float = 20.0,
        poll_seconds: float = 1.0,
        max_active: int = 2,
    ) -> None:
        self.state = state
        self.batches = batches
        self.files = files
        self.concurrency = concurrency
        self.discount = discount
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.max_active = max_active
        self.owner = f"{socket.gethostname()[:32]}-{os.getpid()}-{secrets.token_hex(4)}"
        # lines running now, across all batches (at most ``concurrency``); everything runs on
        # one event loop, so a check and the increment after it cannot interleave
        self._busy = 0
        self._freed = asyncio.Event()
        self._running: dict[str, asyncio.Task[bool]] = {}
        self._cancels: dict[str, asyncio.Event] = {}
        self._failures: dict[str, int] = {}
        self._look = asyncio.Event()  # look for work now (a batch ended or was submitted)
        self._watcher: asyncio.Task[None] | None = None

    # -- called by the app and the routes -----------------------------------------------------
    async def start(self) -> None:
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def close(self) -> None:
        tasks = [t for t in (self._watcher, *self._running.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def submit(self, batch_id: str) -> None:
        """Start on a new batch now if this process has room (else the watcher will)."""
        self._launch(batch_id)

    def cancel(self, batch_id: str) -> None:
        """A batch this process runs was asked to cancel (its status is ``cancelling``)."""
        event = self._cancels.get(batch_id)
        if event is not None:
            event.set()

    # -- the work ---------------------------------------------------------------------------
    async def _watch(self) -> None:
        while True:
            self._look.clear()
            try:
                for batch_id in await to_thread.run_sync(self.batches.unfinished):
                    self._launch(batch_id)
            except Exception:
                log.exception("looking for unfinished batches failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._look.wait(), self.lease_seconds / 2)

    def _launch(self, batch_id: str) -> None:
        if batch_id in self._running or len(self._running) >= self.max_active:
            return
        task = asyncio.get_running_loop().create_task(self._run(batch_id))
        self._running[batch_id] = task

        def done(task: asyncio.Task[bool]) -> None:
            self._running.pop(batch_id, None)
            if task.cancelled():
                return
            if task.exception() is not None:
                log.error("batch %s: the runner failed", batch_id, exc_info=task.exception())
            elif task.result():
                self._look.set()  # it worked on a batch: room for the next one now

        task.add_done_callback(done)

    async def _claim(self, batch_id: str) -> bool:
        return await to_thread.run_sync(
            self.batches.claim, batch_id, self.owner, time.time(), self.lease_seconds
        )

    async def _keep_lease(self, batch_id: str, work: asyncio.Task[bool]) -> None:
        """Renew the lease every third of its length; stop the work when it is lost, or when
        it could not be renewed for so long that it may have run out (another process may
        have the batch by then)."""
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                held = await self._claim(batch_id)
            except Exception:
                log.exception("batch %s: renewing the lease failed", batch_id)
                if time.monotonic() - renewed > self.lease_seconds * 0.8:
                    log.warning("batch %s: the lease may have run out; stopping", batch_id)
                    work.cancel()
                    return
                continue
            if not held:
                log.warning("batch %s: lost its lease; another process runs it now", batch_id)
                work.cancel()
                return
            renewed = time.monotonic()

    async def _run(self, batch_id: str) -> bool:
        """Work on a batch if its lease can be had; whether it could."""
        if not await self._claim(batch_id):
            return False
        me = asyncio.current_task()
        assert me is not None
        lease = asyncio.get_running_loop().create_task(self._keep_lease(batch_id, me))
        self._cancels[batch_id] = asyncio.Event()
        try:
            await self._work(batch_id)
            self._failures.pop(batch_id, None)
        except asyncio.CancelledError:
            raise
        except Exception:
            failures = self._failures.get(batch_id, 0) + 1
            self._failures[batch_id] = failures
            log.exception(
                "batch %s: the runner failed (%d of %d)", batch_id, failures, MAX_FAILURES
            )
            if failures >= MAX_FAILURES:
                self._failures.pop(batch_id, None)
                await to_thread.run_sync(self._fail_now, batch_id)
            # else: the lease is released below, and the next watcher pass tries again
        finally:
            lease.cancel()
            self._cancels.pop(batch_id, None)
            try:
                await asyncio.shield(to_thread.run_sync(self.batches.release, batch_id, self.owner))
            except Exception:  # the lease runs out by itself
                log.exception("batch %s: releasing the lease failed", batch_id)
        return True

    def _fail_now(self, batch_id: str) -> None:
        """End a batch the runner keeps failing on: ``failed``, with what was answered in its
        files (best effort: the files are what was paid for)."""
        error = {
            "code": "server_error",
            "message": "The server failed while running this batch; see its log.",
            "param": None,
            "line": None,
        }
        batch = self.batches.load(batch_id)
        if batch is None:
            return
        try:
            self._end(batch, "failed", errors=[error])
        except Exception:
            log.exception("batch %s: writing its files failed", batch_id)
            self.batches.advance(
                batch_id, set(ACTIVE), status="failed", failed_at=int(time.time()), errors=[error]
            )

    async def _work(self, batch_id: str) -> None:
        batch = await to_thread.run_sync(self.batches.load, batch_id)
        if batch is None or batch.status not in ACTIVE:
            return
        requests = await self._input(batch)
        if requests is None:
            return
        batch = await to_thread.run_sync(self.batches.load, batch_id)
        assert batch is not None
        stop = _Stop()
        if batch.status == "in_progress":
            stop = await self._lines(batch, requests)
        batch = await to_thread.run_sync(self.batches.load, batch_id)
        assert batch is not None
        if stop.reason is None and batch.status == "cancelling":
            stop.reason = "cancelled"
        await to_thread.run_sync(self._finalize, batch, requests, stop.reason)

    async def _input(self, batch: StoredBatch) -> list[BatchRequest] | None:
        """The batch's requests (checking the file when the batch is ``validating``), or None
        when the batch ended here: its input failed the checks, or the file is gone."""
        now = int(time.time())
        found = await to_thread.run_sync(self.files.get, batch.key_id, batch.input_file_id)
        if found is None:
            error = {
                "code": "invalid_file",
                "message": f"The input file {batch.input_file_id!r} no longer exists (deleted or "
                "expired while the batch ran); the lines answered before are in the files.",
                "param": "input_file_id",
                "line": None,
            }
            await to_thread.run_sync(lambda: self._end(batch, "failed", errors=[error]))
            return None
        depth = self.state.settings.max_json_depth
        try:
            requests = await to_thread.run_sync(
                lambda: read_input(self.files.path(found), batch.endpoint, max_depth=depth)
            )
        except InvalidInputError as exc:
            errors = exc.errors
            await to_thread.run_sync(
                lambda: self.batches.advance(
                    batch.id, set(ACTIVE), status="failed", failed_at=now, errors=errors
                )
            )
            return None
        await to_thread.run_sync(lambda: self.batches.update(batch.id, total=len(requests)))
        if batch.status == "validating":
            await to_thread.run_sync(
                lambda: self.batches.advance(
                    batch.id, {"validating"}, status="in_progress", in_progress_at=now
                )
            )
        return requests

    async def _key(self, batch: StoredBatch) -> KeyInfo | None:
        """The key the batch's lines run as (None: the static key, or no auth)."""
        keys = self.state.keys
        if batch.key_id is None or keys is None:
            return None
        return await to_thread.run_sync(keys.get, f"key_{batch.key_id}")

    async def _lines(self, batch: StoredBatch, requests: list[BatchRequest]) -> _Stop:
        done = await to_thread.run_sync(self.batches.answered, batch.id)
        todo = [r for r in requests if r.index not in done]
        stop = _Stop()
        if not todo:
            return stop
        key = await self._key(batch)
        cancel = self._cancels[batch.id]
        window = _Window(batch.expires_at)
        tasks: set[asyncio.Task[None]] = set()
        poller = asyncio.get_running_loop().create_task(self._poll(batch, cancel, window))
        cancelled = asyncio.ensure_future(cancel.wait())

        def release(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            self._busy -= 1
            self._freed.set()
            if not task.cancelled() and task.exception() is not None:
                # its answer was not stored: finalizing answers it as a server error
                log.error("batch %s: a line failed", batch.id, exc_info=task.exception())

        try:
            for req in todo:
                if key is not None and key.status(datetime.now(UTC)) != "active":
                    break
                if not await self._slot(cancel, window):
                    break
                self._busy += 1
                task = asyncio.get_running_loop().create_task(
                    self._line(batch, key, req, cancel, window)
                )
                tasks.add(task)
                task.add_done_callback(release)
            while tasks and not cancel.is_set() and not window.over():
                await asyncio.wait(
                    [*tasks, cancelled],
                    timeout=self.poll_seconds,
                    return_when=asyncio.FIRST_COMPLETED,
                )
        finally:
            cancelled.cancel()
            poller.cancel()
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if cancel.is_set():
            stop.reason = "cancelled"
        elif window.over():
            stop.reason = "expired"
        return stop

    async def _slot(self, cancel: asyncio.Event, window: _Window) -> bool:
        """Wait until a line may start (True), or until the batch must stop (False): a
        cancel ends the wait at once, the window within ``poll_seconds``."""
        while self._busy >= self.concurrency:
            if cancel.is_set() or window.over():
                return False
            self._freed.clear()
            waits = [asyncio.ensure_future(e.wait()) for e in (self._freed, cancel)]
            try:
                await asyncio.wait(waits, timeout=self.poll_seconds, return_when="FIRST_COMPLETED")
            finally:
                for w in waits:
                    w.cancel()
        return not (cancel.is_set() or window.over())

    async def _poll(self, batch: StoredBatch, cancel: asyncio.Event, window: _Window) -> None:
        """Notice a cancel made through another process, a changed window, or the batch's key
        revoked or expired (which cancels the batch)."""
        keys = self.state.keys
        while not cancel.is_set():
            await asyncio.sleep(self.poll_seconds)
            try:
                now = await to_thread.run_sync(self.batches.load, batch.id)
                key = None
                if batch.key_id is not None and keys is not None:
                    key = await to_thread.run_sync(keys.get, f"key_{batch.key_id}")
            except Exception:
                log.exception("batch %s: reading its status failed", batch.id)
                continue
            if key is not None and key.status(datetime.now(UTC)) != "active":
                log.warning(
                    "batch %s: its key %s is %s; cancelling",
                    batch.id,
                    key.public_id,
                    key.status(datetime.now(UTC)),
                )
                await to_thread.run_sync(
                    self.batches.cancel, batch.key_id, batch.id, int(time.time())
                )
                cancel.set()
            elif now is None or now.status == "cancelling":
                cancel.set()
            else:
                window.expires_at = now.expires_at

    async def _line(
        self,
        batch: StoredBatch,
        key: KeyInfo | None,
        req: BatchRequest,
        cancel: asyncio.Event,
        window: _Window,
    ) -> None:
        delay = 1.0
        for attempt in range(RETRIES):
            answer = await run_line(
                self.state,
                key,
                batch.endpoint,
                req.body,
                batch_id=batch.id,
                discount=self.discount,
            )
            if not answer.retryable or attempt == RETRIES - 1:
                break
            log.info(
                "batch %s line %d: %d, trying again in %.0f s",
                batch.id,
                req.index,
                answer.status,
                delay,
            )
            await asyncio.sleep(delay)
            delay *= 2
            if cancel.is_set() or window.over():
                raise asyncio.CancelledError  # answered by finalizing, as cancelled/expired
        result = {
            "id": "batch_req_" + secrets.token_hex(16),
            "custom_id": req.custom_id,
            "response": {
                "status_code": answer.status,
                "request_id": answer.request_id,
                "body": answer.body,
            },
            "error": None,
        }
        inp, out = tokens_of(answer.body)
        await asyncio.shield(
            to_thread.run_sync(
                lambda: self.batches.answer(
                    batch.id,
                    req.index,
                    ok=answer.status == 200,
                    result=result,
                    input_tokens=inp,
                    output_tokens=out,
                )
            )
        )

    # -- the end ----------------------------------------------------------------------------
    def _finalize(
        self, batch: StoredBatch, requests: list[BatchRequest], stopped: str | None
    ) -> None:
        """End the batch (in a worker thread): completed, or cancelled/expired when its lines
        stopped early. A cancel that comes while it finalizes still wins."""
        if stopped is None:
            moved = self.batches.advance(
                batch.id,
                {"in_progress", "finalizing"},
                status="finalizing",
                finalizing_at=int(time.time()),
            )
            if not moved:
                now = self.batches.load(batch.id)
                if now is None or now.status not in ACTIVE:
                    return  # ended meanwhile (by another process)
                stopped = "cancelled"
        self._end(batch, stopped or "completed", requests=requests)

    def _end(
        self,
        batch: StoredBatch,
        final: str,
        *,
        requests: list[BatchRequest] | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        """Answer every line not answered (so each custom_id is in exactly one file), write
        the output and error files, and set the final status, if the batch is still active."""
        if requests is not None:
            code, message = _STOPPED.get(
                final, ("server_error", "The server lost this request's answer; run it again.")
            )
            done = self.batches.answered(batch.id)
            for req in requests:
                if req.index not in done:
                    self.batches.answer(
                        batch.id,
                        req.index,
                        ok=False,
                        result={
                            "id": "batch_req_" + secrets.token_hex(16),
                            "custom_id": req.custom_id,
                            "response": None,
                            "error": {"code": code, "message": message},
                        },
                    )
        output = self._write(batch, "output", True, batch.output_expires_seconds)
        error_file = self._write(batch, "error", False, batch.output_expires_seconds)
        values: dict[str, Any] = {
            "status": final,
            "output_file_id": output,
            "error_file_id": error_file,
            f"{final}_at": int(time.time()),
        }
        if errors is not None:
            values["errors"] = errors
        if self.batches.advance(batch.id, set(ACTIVE), **values):
            self.batches.drop_lines(batch.id)  # the files hold them now
        else:  # ended meanwhile: these files are nobody's
            for file_id in (output, error_file):
                if file_id is not None:
                    self.files.delete(batch.key_id, file_id)

    def _write(
        self, batch: StoredBatch, kind: str, ok: bool, expires_after: int | None
    ) -> str | None:
        """One result file from the answered lines (None when there are none), moved into
        the file store."""
        path = self.files.scratch_path()
        try:
            count = 0
            with path.open("w", encoding="utf-8") as f:
                for line in self.batches.lines(batch.id, ok=ok):
                    f.write(line)
                    f.write("\n")
                    count += 1
            if not count:
                return None
            stored = self.files.add_path(
                batch.key_id,
                "batch_output",
                f"{batch.id}_{kind}.jsonl",
                path,
                expires_after=expires_after,
            )
            return str(stored.id)
        finally:
            path.unlink(missing_ok=True)
