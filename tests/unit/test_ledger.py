"""The usage ledger's journal: nothing acknowledged is lost, nothing is stored twice."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

from sqlalchemy import Engine

from oasis.gateway.usage import Ledger, Price
from oasis.store.usage import Usage, UsageStore


def rec(rid: str) -> Usage:
    return Usage(request_id=rid, created_at=1_780_000_000, key_id=1, model="m",
                 endpoint="/v1/completions", prompt_tokens=3, cached_tokens=0,
                 completion_tokens=4, cost_usd=0.0, latency_ms=1.0, ttft_ms=None, status=200,
                 disconnected=False)


def test_price_counts_cached_prompt_tokens_at_their_own_rate() -> None:
    p = Price(input=2.0, output=8.0, cached_input=0.5)
    assert p.cost(1000, 400, 100) == (600 * 2.0 + 400 * 0.5 + 100 * 8.0) / 1e6
    assert Price(input=2.0).cost(1000, 400, 0) == 1000 * 2.0 / 1e6


def test_records_of_a_dead_process_are_replayed_once(db: Engine, tmp_path: Path) -> None:
    store = UsageStore(db)
    journal = tmp_path / "journal"

    async def crashed_process() -> None:
        ledger = Ledger(store, journal, flush_interval=3600)
        await ledger.start()
        for i in range(5):
            ledger.record(rec(f"r{i}"))
        await ledger.flush()  # r0..r4 stored, journal emptied
        for i in range(5, 8):
            ledger.record(rec(f"r{i}"))  # journaled only: the process "dies" here
        assert ledger._fd is not None
        os.close(ledger._fd)  # what the kernel does for a killed process: the lock goes
        ledger._fd = None
        assert ledger._task is not None
        ledger._task.cancel()

    asyncio.run(crashed_process())
    assert store.count() == 5
    files = list(journal.glob("usage-*.jsonl"))
    assert len(files) == 1
    with files[0].open("ab") as f:
        f.write(b'{"request_id": "torn"')  # a write the crash cut short: never acknowledged
    # the next process replays what was journaled but not stored
    assert Ledger(store, journal).replay() == 3
    assert sorted(r.request_id for r in store.records()) == [f"r{i}" for i in range(8)]
    assert not list(journal.glob("usage-*.jsonl"))
    assert Ledger(store, journal).replay() == 0


def test_a_live_processs_journal_is_left_alone(db: Engine, tmp_path: Path) -> None:
    store = UsageStore(db)
    journal = tmp_path / "journal"

    async def live() -> None:
        ledger = Ledger(store, journal, flush_interval=3600)
        await ledger.start()
        ledger.record(rec("mine"))
        # another process starting now must not take this journal (its lock is held)
        assert Ledger(store, journal).replay() == 0
        assert len(list(journal.glob("usage-*.jsonl"))) == 1
        await ledger.close()  # stores the rest and removes its journal

    asyncio.run(live())
    assert [r.request_id for r in store.records()] == ["mine"]
    assert not list(journal.glob("usage-*.jsonl"))


def test_a_flush_waits_for_one_already_under_way(db: Engine, tmp_path: Path) -> None:
    """What the admin usage query and the tests rely on: once flush() returns, every record
    queued before it is in the database, even those the background flush had taken and was
    still storing (CI once read 0 of 32 records here)."""
    store = UsageStore(db)
    entered, release = threading.Event(), threading.Event()
    real = store.add_or_refuse

    def slow(records: list[Usage], dedupe: bool = False) -> object:
        entered.set()
        release.wait(30)
        return real(records, dedupe=dedupe)

    store.add_or_refuse = slow  # type: ignore[method-assign]

    async def scenario() -> None:
        ledger = Ledger(store, tmp_path / "journal", flush_interval=3600)
        await ledger.start()
        for i in range(4):
            ledger.record(rec(f"r{i}"))
        first = asyncio.create_task(ledger.flush())  # the background flush: takes all four
        await asyncio.to_thread(entered.wait, 30)
        second = asyncio.create_task(ledger.flush())  # the reader's flush
        await asyncio.sleep(0.05)
        assert not second.done()  # it waits for the first instead of finding nothing queued
        release.set()
        await first
        await second
        assert store.count() == 4
        await ledger.close()

    asyncio.run(scenario())
