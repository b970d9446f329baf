"""A record the database cannot store is set aside, never in the way of the others: not in its
batch, not in the flush loop, not at start-up. Client text is made storable before it is
journaled."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from oasis.engine.fake import FakeEngine
from oasis.gateway.usage import Ledger
from oasis.store.db import make_engine
from oasis.store.usage import Usage, UsageStore
from tests.conftest import API_KEY, make_app
from tests.unit.test_budget import call


def rec(rid: str, **kw: Any) -> Usage:
    fields: dict[str, Any] = dict(
        request_id=rid, created_at=1_780_000_000, key_id=1, model="m",
        endpoint="/v1/chat/completions", prompt_tokens=3, cached_tokens=0, completion_tokens=4,
        cost_usd=0.0, latency_ms=1.0, ttft_ms=None, status=200, disconnected=False)
    fields.update(kw)
    return Usage(**fields)


def line(rid: str, **kw: Any) -> bytes:
    """A journal line as ``Ledger.record`` writes it, with fields overridden as given."""
    data = {**rec(rid).to_json(), **kw}
    return (json.dumps(data, separators=(",", ":")) + "\n").encode()


def quarantined(data_dir: Path) -> list[dict[str, Any]]:
    path = data_dir / "quarantine" / "usage.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def poisoned_journal(journal: Path) -> None:
    """A dead process's journal with every kind of line that is no storable record."""
    journal.mkdir(parents=True, exist_ok=True)
    (journal / "usage-1-dead.jsonl").write_bytes(b"".join([
        line("good-1"),
        b'{"request_id":"bad-utf8","model":"\xff\xfe\xc3"}\n',  # invalid UTF-8 bytes
        b"not json at all\n",
        line("wrong-type", prompt_tokens="many"),
        line("huge", prompt_tokens=10**30),  # no database column holds it
        line("surrogate", model="\ud800 and \udfff"),  # json.dumps escapes them: \ud800
        line("nul", model="a\x00b"),  # PostgreSQL refuses NUL in text
        line("long", model="x" * 5000),
        line("good-2"),
        b'{"request_id":"torn","mod',  # the crash cut this write short
    ]))


def test_a_poisoned_journal_replays_the_rest_and_quarantines_the_bad(
    db: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = UsageStore(db)
    journal = tmp_path / "journal"
    poisoned_journal(journal)
    assert Ledger(store, journal).replay() == 5
    stored = {r.request_id: r for r in store.records()}
    assert set(stored) == {"good-1", "good-2", "surrogate", "nul", "long"}
    assert stored["surrogate"].model == "\ufffd and \ufffd"
    assert stored["nul"].model == "a\ufffdb"
    assert stored["long"].model == "x" * 200
    bad = quarantined(tmp_path)
    assert len(bad) == 5
    assert [b.get("record", {}).get("request_id") for b in bad if "record" in b] == ["huge"]
    lines = [b["line"] for b in bad if "line" in b]
    assert any("bad-utf8" in x and "\\xff" in x for x in lines)
    assert any(x.startswith("not json") for x in lines)
    assert any('"wrong-type"' in x for x in lines)
    assert any("torn" in b["reason"] for b in bad)
    assert all(b["journal"] == "usage-1-dead.jsonl" and b["reason"] for b in bad)
    assert "moved to" in caplog.text
    assert not list(journal.glob("usage-*.jsonl"))
    assert Ledger(store, journal).replay() == 0


def test_the_flush_loop_stores_around_a_record_the_database_refuses(
    db: Engine, tmp_path: Path
) -> None:
    store = UsageStore(db)
    journal = tmp_path / "journal"

    async def run() -> None:
        ledger = Ledger(store, journal, flush_interval=0.01)
        await ledger.start()
        ledger.record(rec("a"))
        ledger.record(rec("poison", completion_tokens=10**30))
        ledger.record(rec("b", model="\ud800"))
        for _ in range(200):
            if store.count() == 2:
                break
            await asyncio.sleep(0.01)
        ledger.record(rec("c"))  # the loop goes on
        await ledger.flush()
        assert ledger.quarantined == 1 and not ledger._pending
        assert ledger._path is not None and ledger._path.stat().st_size == 0
        await ledger.close()

    asyncio.run(run())
    assert [r.request_id for r in store.records()] == ["a", "b", "c"]
    assert store.records()[1].model == "\ufffd"
    [bad] = quarantined(tmp_path)
    assert bad["record"]["request_id"] == "poison"


def test_an_unreachable_database_quarantines_nothing(db: Engine, tmp_path: Path) -> None:
    down = UsageStore(make_engine("postgresql+psycopg://postgres@127.0.0.1:1/none"))
    journal = tmp_path / "journal"

    async def run() -> None:
        ledger = Ledger(down, journal, flush_interval=3600)
        await ledger.start()
        ledger.record(rec("a"))
        with pytest.raises(OperationalError):
            await ledger.flush()
        assert [u.request_id for u in ledger._pending] == ["a"]  # kept for the next try
        assert ledger._fd is not None
        fd, ledger._fd = ledger._fd, None
        assert ledger._task is not None
        ledger._task.cancel()
        os.close(fd)  # the process dies with the record only in its journal

    asyncio.run(run())
    with pytest.raises(OperationalError):
        Ledger(down, journal).replay()  # start-up fails as before, the journal is kept
    assert quarantined(tmp_path) == []
    assert Ledger(UsageStore(db), journal).replay() == 1


def test_start_up_with_a_poisoned_journal_works(tmp_path: Path) -> None:
    poisoned_journal(tmp_path / "journal")
    app = make_app(FakeEngine(), tmp=tmp_path)
    with TestClient(app, headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        assert client.get("/v1/models").status_code == 200
        r = client.post("/v1/chat/completions",
                        json={"model": "gpt-3.5-turbo",
                              "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200
        gw = client.app.state.oasis.gateway  # type: ignore[attr-defined]
        call(client, gw.ledger.flush)
        ids = {u.request_id for u in gw.usage.records()}
    assert {"good-1", "good-2", "surrogate", "nul", "long"} < ids and len(ids) == 6
    assert len(quarantined(tmp_path)) == 5


def test_client_text_is_bounded_before_the_journal(tmp_path: Path) -> None:
    """A client's megabyte of model name costs the data directory a few hundred bytes."""
    app = make_app(FakeEngine(), tmp=tmp_path)
    with TestClient(app, headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        gw = client.app.state.oasis.gateway  # type: ignore[attr-defined]
        journal = gw.ledger._path
        for _ in range(20):
            r = client.post("/v1/chat/completions",
                            json={"model": "m" * 1_000_000, "messages": []})
            assert r.status_code in (400, 404)
        assert journal.stat().st_size < 20 * 1000
        call(client, gw.ledger.flush)
        rows = gw.usage.records()
    assert len(rows) == 20 and {len(u.model) for u in rows} == {200}
