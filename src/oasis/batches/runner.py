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
``lease_seconds``, and the watcher (every ``lease_seconds / 2``) takes the batch over.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass

from anyio import to_thread

from oasis.batches.execute import run_line, tokens_of
from oasis.batches.input import BatchRequest, InvalidInputError, read_input
from oasis.server.state import AppState
from oasis.store.batches import BatchStore, StoredBatch
from oasis.store.files import FileStore
from oasis.store.keys import KeyInfo

log = logging.getLogger(__name__)

# completion_window values and their length in seconds (OpenAI accepts only "24h")
WINDOWS = {"24h": 24 * 3600}


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
    ) -> None:
        self.state = state
        self.batches = batches
        self.files = files
        self.concurrency = concurrency
        self.discount = discount
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.owner = f"{socket.gethostname()[:32]}-{os.getpid()}-{secrets.token_hex(4)}"
        # lines running now, across all batches (at most ``concurrency``); everything runs on
        # one event loop, so a check and the increment after it cannot interleave
        self._busy = 0
        self._freed = asyncio.Event()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._cancels: dict[str, asyncio.Event] = {}
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
        """Start on a new batch now (the watcher would find it within its interval)."""
        self._launch(batch_id)

    def cancel(self, batch_id: str) -> None:
        """A batch this process runs was asked to cancel (its status is ``cancelling``)."""
        event = self._cancels.get(batch_id)
        if event is not None:
            event.set()

    def busy(self) -> int:
        """Batches this process is running now."""
        return len(self._running)

    # -- the work ---------------------------------------------------------------------------
    async def _watch(self) -> None:
        while True:
            try:
                for batch_id in await to_thread.run_sync(self.batches.unfinished):
                    self._launch(batch_id)
            except Exception:
                log.exception("looking for unfinished batches failed")
            await asyncio.sleep(self.lease_seconds / 2)

    def _launch(self, batch_id: str) -> None:
        if batch_id in self._running:
            return
        task = asyncio.get_running_loop().create_task(self._run(batch_id))
        self._running[batch_id] = task
        task.add_done_callback(lambda _: self._running.pop(batch_id, None))

    async def _claim(self, batch_id: str) -> bool:
        return await to_thread.run_sync(
            self.batches.claim, batch_id, self.owner, time.time(), self.lease_seconds
        )

    async def _keep_lease(self, batch_id: str, work: asyncio.Task[None]) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                held = await self._claim(batch_id)
            except Exception:
                log.exception("batch %s: renewing the lease failed", batch_id)
                continue
            if not held and not work.done():
                log.warning("batch %s: lost its lease; another process runs it now", batch_id)
                work.cancel()
                return

    async def _run(self, batch_id: str) -> None:
        if not await self._claim(batch_id):
            return
        me = asyncio.current_task()
        assert me is not None
        lease = asyncio.get_running_loop().create_task(self._keep_lease(batch_id, me))
        self._cancels[batch_id] = asyncio.Event()
        try:
            await self._work(batch_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("batch %s failed", batch_id)
            await to_thread.run_sync(self._fail_now, batch_id)
        finally:
            lease.cancel()
            self._cancels.pop(batch_id, None)
            try:
                await asyncio.shield(to_thread.run_sync(self.batches.release, batch_id, self.owner))
            except Exception:  # the lease runs out by itself
                log.exception("batch %s: releasing the lease failed", batch_id)

    def _fail_now(self, batch_id: str) -> None:
        error = {
            "code": "server_error",
            "message": "The server failed while running this batch; see its log.",
            "param": None,
            "line": None,
        }
        self.batches.update(batch_id, status="failed", failed_at=int(time.time()), errors=[error])

    async def _work(self, batch_id: str) -> None:
        batch = await to_thread.run_sync(self.batches.load, batch_id)
        if batch is None:
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
        when the batch failed validation."""
        now = int(time.time())
        found = await to_thread.run_sync(self.files.get, batch.key_id, batch.input_file_id)
        if found is None:
            await to_thread.run_sync(
                lambda: self.batches.update(
                    batch.id,
                    status="failed",
                    failed_at=now,
                    errors=[
                        {
                            "code": "invalid_file",
                            "message": f"The input file {batch.input_file_id!r} no longer exists.",
                            "param": "input_file_id",
                            "line": None,
                        }
                    ],
                )
            )
            return None
        depth = self.state.settings.max_json_depth
        try:
            requests = await to_thread.run_sync(
                lambda: read_input(self.files.path(found), batch.endpoint, max_depth=depth)
            )
        except InvalidInputError as exc:
            errors = exc.errors
            await to_thread.run_sync(
                lambda: self.batches.update(batch.id, status="failed", failed_at=now, errors=errors)
            )
            return None
        await to_thread.run_sync(lambda: self.batches.update(batch.id, total=len(requests)))
        if batch.status == "validating":
            await to_thread.run_sync(
                lambda: self.batches.advance(
                    batch.id,
                    {"validating"},
                    status="in_progress",
                    in_progress_at=now,
                    total=len(requests),
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

        def release(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            self._busy -= 1
            self._freed.set()

        try:
            for req in todo:
                if not await self._slot(cancel, window):
                    break
                self._busy += 1
                task = asyncio.get_running_loop().create_task(self._line(batch, key, req))
                tasks.add(task)
                task.add_done_callback(release)
            cancelled = asyncio.ensure_future(cancel.wait())
            while tasks and not cancel.is_set() and not window.over():
                await asyncio.wait(
                    [*tasks, cancelled],
                    timeout=self.poll_seconds,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            cancelled.cancel()
        finally:
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
        """Notice a cancel made through another process, or a changed window (the database
        is the truth; this process's own cancels arrive at once through ``cancel``)."""
        while not cancel.is_set():
            await asyncio.sleep(self.poll_seconds)
            try:
                now = await to_thread.run_sync(self.batches.load, batch.id)
            except Exception:
                log.exception("batch %s: reading its status failed", batch.id)
                continue
            if now is None or now.status == "cancelling":
                cancel.set()
            else:
                window.expires_at = now.expires_at

    async def _line(self, batch: StoredBatch, key: KeyInfo | None, req: BatchRequest) -> None:
        answer = await run_line(
            self.state, key, batch.endpoint, req.body, batch_id=batch.id, discount=self.discount
        )
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
        """Answer what is left (when stopped), write the output and error files and end the
        batch. Runs in a worker thread."""
        now = int(time.time())
        if stopped is not None:
            code, message = {
                "cancelled": (
                    "batch_cancelled",
                    "The batch was cancelled before this request ran.",
                ),
                "expired": (
                    "batch_expired",
                    "This request could not be executed before the completion window expired.",
                ),
            }[stopped]
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
        else:
            self.batches.update(batch.id, status="finalizing", finalizing_at=now)
        output = self._write(batch, "output", True, batch.output_expires_seconds)
        errors = self._write(batch, "error", False, batch.output_expires_seconds)
        final = stopped or "completed"
        self.batches.update(
            batch.id,
            status=final,
            output_file_id=output,
            error_file_id=errors,
            **{f"{final}_at": int(time.time())},
        )

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
