"""The usage ledger: every metered request becomes one record, and none is lost.

``record`` appends the record to this process's journal (one ``write`` of one JSON line, so once
it returns the line survives the process being killed) before the response completes; a
background task moves journaled records into the database in batches, and empties the journal
when everything in it is stored. At start-up, journals left by processes that died (found by
their released file lock) are replayed into the database; records carry a unique request id, so
replaying one that was already stored is harmless.

A record the database refuses (or a journal line that is no record) is quarantined: appended to
``<data dir>/quarantine/usage.jsonl`` with the reason, and logged. It never holds back the
other records of its batch, the flush loop or the replay at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anyio import to_thread

from oasis.store.usage import Usage, UsageStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    input: float = 0.0
    output: float = 0.0
    cached_input: float | None = None  # default: the input price

    def cost(self, prompt: int, cached: int, completion: int) -> float:
        cached_price = self.input if self.cached_input is None else self.cached_input
        return (
            (prompt - cached) * self.input + cached * cached_price + completion * self.output
        ) / 1e6


class Ledger:
    """Journal + database writer for usage records."""

    def __init__(
        self,
        store: UsageStore,
        journal_dir: Path,
        *,
        flush_interval: float = 0.2,
        quarantine_dir: Path | None = None,
    ) -> None:
        self.store = store
        self.journal_dir = journal_dir
        self.flush_interval = flush_interval
        self.quarantine_dir = quarantine_dir or journal_dir.parent / "quarantine"
        self._pending: list[Usage] = []
        self._fd: int | None = None
        self._path: Path | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._flushing = asyncio.Lock()  # one flush at a time: a second waits for the first
        self.written = 0  # records stored in the database by this process
        self.quarantined = 0  # records (or journal lines) this process set aside

    # -- start-up ----------------------------------------------------------------------------
    def replay(self) -> int:
        """Store the records of journals whose process is gone; returns how many were new.
        Lines that are no record, and records the database refuses, are quarantined."""
        self.journal_dir.mkdir(parents=True, exist_ok=True)
        added = 0
        for path in sorted(self.journal_dir.glob("usage-*.jsonl")):
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live process owns it
                records, bad = _read_journal(path)
                added += self._store(records, dedupe=True, source=path.name)
                self._quarantine(({"line": line, "reason": why} for line, why in bad), path.name)
                path.unlink()
                if records:
                    log.info("replayed %d usage records from %s", len(records), path.name)
            finally:
                os.close(fd)
        return added

    def open(self) -> None:
        """Replay orphans, then open (and lock) this process's own journal."""
        self.replay()
        self._path = self.journal_dir / f"usage-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    async def start(self) -> None:
        self._wake = asyncio.Event()  # of this event loop (an app may be started again)
        self._flushing = asyncio.Lock()
        if self._fd is None:
            await to_thread.run_sync(self.open)
        self._task = asyncio.create_task(self._run(), name="oasis-usage-ledger")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await self.flush()
        if self._fd is not None:
            if not self._pending and self._path is not None:
                self._path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None

    # -- the hot path ------------------------------------------------------------------------
    def record(self, usage: Usage) -> None:
        """Journal a record (durable once this returns) and queue it for the database."""
        self._pending.append(usage)  # the database gets it even if the journal cannot
        if self._fd is not None:
            line = json.dumps(usage.to_json(), separators=(",", ":")) + "\n"
            try:
                _write_all(self._fd, line.encode())
            except OSError:
                log.exception("could not journal usage record %s", usage.request_id)
        if len(self._pending) >= 256:
            self._wake.set()

    # -- background --------------------------------------------------------------------------
    async def flush(self) -> int:
        """Store the queued records (quarantining any the database refuses); empty the journal
        when all of it is stored. If the database cannot be reached the records stay queued
        (and journaled) and the error is raised. Once this returns, every record queued before
        the call is in the database, even those a flush already under way had taken."""
        async with self._flushing:
            return await self._flush()

    async def _flush(self) -> int:
        if not self._pending:
            return 0
        batch, self._pending = self._pending, []
        set_aside = self.quarantined
        try:
            added = await to_thread.run_sync(self._store, batch)
        except BaseException:
            self._pending[:0] = batch  # still in the journal; try again next time
            raise
        self.written += len(batch) - (self.quarantined - set_aside)
        if not self._pending and self._fd is not None:
            os.ftruncate(self._fd, 0)  # everything journaled so far is stored or set aside
        return added

    def _store(self, records: list[Usage], dedupe: bool = False, source: str = "") -> int:
        added, refused = self.store.add_or_refuse(records, dedupe=dedupe)
        self._quarantine(
            (
                {"record": usage.to_json(), "reason": f"{type(exc).__name__}: {exc}"}
                for usage, exc in refused
            ),
            source or (self._path.name if self._path is not None else ""),
        )
        return added

    def _quarantine(self, entries: Iterable[dict[str, Any]], source: str) -> None:
        """Append entries to the quarantine file, one JSON line each, and log them."""
        lines = []
        target = self.quarantine_dir / QUARANTINE_FILE
        for entry in entries:
            entry = {"quarantined_at": int(time.time()), "journal": source, **entry}
            reason = entry["reason"][:300]
            if "record" in entry:
                rid = entry["record"].get("request_id")
                log.warning(
                    "usage record %s cannot be stored (%s); moved to %s", rid, reason, target
                )
            else:
                log.warning(
                    "a line of %s is no usage record (%s); moved to %s", source, reason, target
                )
            lines.append(json.dumps(entry, separators=(",", ":")) + "\n")
        if not lines:
            return
        try:
            self.quarantine_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                _write_all(fd, "".join(lines).encode())
            finally:
                os.close(fd)
        except OSError:
            # an unwritable quarantine must not hold back the flush or start-up: the entries
            # go to the log whole instead
            for line in lines:
                log.error("could not write the quarantine file; entry: %s", line.rstrip())
        self.quarantined += len(lines)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_interval)
            self._wake.clear()
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("could not store usage records; they stay in the journal")
                await asyncio.sleep(1.0)


QUARANTINE_FILE = "usage.jsonl"


def _read_journal(path: Path) -> tuple[list[Usage], list[tuple[str, str]]]:
    """The records of a journal, and the lines that are none (as text, with why)."""
    out: list[Usage] = []
    bad: list[tuple[str, str]] = []
    with path.open("rb") as f:
        for raw in f:
            text = raw.decode("utf-8", "backslashreplace")
            if not raw.endswith(b"\n"):
                # a line torn by a crash mid-write was never acknowledged; kept for a person
                bad.append((text, "torn line (the process died while writing it)"))
                continue
            try:
                out.append(Usage.from_json(json.loads(raw)))
            except (ValueError, TypeError, RecursionError) as exc:
                bad.append((text, f"unreadable: {exc!r}"[:500]))
    return out, bad


def _write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (a short write would tear a journal line)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
