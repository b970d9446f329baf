"""Stored responses on SQLite and PostgreSQL: round trips, per-key access, expiry, batched
purge, chains of previous responses, replacement, and concurrent use of one engine."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, insert, inspect

from oasis.store.db import MIGRATIONS
from oasis.store.models import ResponseRecord
from oasis.store.responses import ResponseStore, StoredResponse

NOW = 1_780_000_000
DAY = 86400


def resp(
    rid: str,
    key: int | None = 1,
    *,
    prev: str | None = None,
    expires: int = NOW + 30 * DAY,
    status: str = "completed",
    text: str = "hello",
    model: str = "gpt-4o",
) -> StoredResponse:
    return StoredResponse(
        id=rid,
        key_id=key,
        created_at=NOW - 10,
        expires_at=expires,
        model=model,
        previous_response_id=prev,
        status=status,
        input_items=[{"id": f"msg_{rid}", "type": "message", "role": "user",
                      "content": [{"type": "input_text", "text": text}]}],
        response={"id": rid, "object": "response", "status": status, "model": model,
                  "output": [{"type": "message", "content": [{"type": "output_text",
                                                              "text": text}]}]},
    )


def test_round_trip_keeps_any_json_text(db: Engine) -> None:
    store = ResponseStore(db)
    text = "你好，世界 🦙🎉 nul:\u0000 tab:\t quote:\" lone:\ud800 end"
    r = resp("resp_a", text=text, prev=None)
    store.add(r)
    got = store.get("resp_a", 1, NOW)
    assert got == r
    assert got is not None
    assert got.input_items[0]["content"][0]["text"] == text
    assert got.response["output"][0]["content"][0]["text"] == text
    assert store.count() == 1


def test_a_key_sees_only_its_own_responses(db: Engine) -> None:
    store = ResponseStore(db)
    store.add(resp("resp_one", 1))
    store.add(resp("resp_static", None))
    assert store.get("resp_one", 2, NOW) is None
    assert store.get("resp_one", None, NOW) is None  # the static key is not every key
    assert store.get("resp_static", 1, NOW) is None  # nor is a numbered key the static one
    assert store.get("resp_static", None, NOW) == resp("resp_static", None)
    assert store.chain("resp_one", 2, NOW) == []
    assert not store.delete("resp_one", 2)
    assert not store.delete("resp_one", None)
    assert not store.delete("resp_static", 1)
    assert store.count() == 2
    assert store.delete("resp_static", None)
    assert store.get("resp_one", 1, NOW) is not None


def test_ids_no_database_takes_are_simply_absent(db: Engine) -> None:
    """A client's id with NUL, a lone surrogate or too many characters is not found (PostgreSQL
    would refuse it as a query parameter)."""
    store = ResponseStore(db)
    store.add(resp("resp_a"))
    for bad in ("resp_\x00", "resp_\ud800", "r" * 65, ""):
        assert store.get(bad, 1, NOW) is None
        assert store.chain(bad, 1, NOW) == []
        assert not store.delete(bad, 1)
    with pytest.raises(ValueError):
        resp("resp_\x00")
    with pytest.raises(ValueError):
        resp("resp_b", prev="r" * 65)
    with pytest.raises(ValueError):
        resp("resp_b", status="x" * 21)
    # a model name is made storable, as a usage record's is
    store.add(resp("resp_m", model="m\x00" + "y" * 300))
    got = store.get("resp_m", 1, NOW)
    assert got is not None and got.model == "m\ufffd" + "y" * 198


def test_expired_responses_are_invisible_and_purged(db: Engine) -> None:
    store = ResponseStore(db)
    store.add(resp("resp_old", expires=NOW))
    store.add(resp("resp_live", expires=NOW + 1))
    assert store.get("resp_old", 1, NOW) is None  # expires_at <= now
    assert store.get("resp_old", 1, NOW - 1) is not None
    assert store.get("resp_live", 1, NOW) is not None
    assert store.purge(NOW) == 1
    assert store.count() == 1
    assert store.get("resp_old", 1, NOW - 1) is None
    assert store.purge(NOW) == 0


def test_purge_works_in_bounded_batches_and_keeps_live_rows(db: Engine) -> None:
    store = ResponseStore(db)
    rows: list[dict[str, Any]] = [
        dict(id=f"resp_{i:05d}", key_id=i % 3 or None, created_at=NOW - DAY,
             expires_at=NOW - i, model="m", previous_response_id=None, status="completed",
             input_items="[]", response="{}")
        for i in range(1200)
    ]
    with db.begin() as conn:
        conn.execute(insert(ResponseRecord), rows)
    store.add(resp("resp_live"))
    assert store.purge(NOW, batch=500, max_batches=1) == 500
    assert store.count() == 701
    assert store.purge(NOW, batch=500) == 700
    assert store.count() == 1
    with db.begin() as conn:
        conn.execute(insert(ResponseRecord), rows)
    assert store.purge(NOW, batch=500) == 1200
    assert store.count() == 1
    assert store.get("resp_live", 1, NOW) is not None
    with pytest.raises(ValueError):
        store.purge(NOW, batch=0)


def test_chain_follows_previous_responses_oldest_first(db: Engine) -> None:
    store = ResponseStore(db)
    store.add(resp("resp_a"))
    store.add(resp("resp_b", prev="resp_a"))
    store.add(resp("resp_c", prev="resp_b"))
    store.add(resp("resp_d", prev="resp_c"))
    assert [r.id for r in store.chain("resp_d", 1, NOW)] == ["resp_a", "resp_b", "resp_c",
                                                              "resp_d"]
    assert [r.id for r in store.chain("resp_d", 1, NOW, limit=2)] == ["resp_c", "resp_d"]
    assert [r.id for r in store.chain("resp_a", 1, NOW)] == ["resp_a"]
    assert store.chain("resp_d", 1, NOW, limit=0) == []
    assert store.chain("resp_missing", 1, NOW) == []
    # a foreign ancestor ends the chain; what came after it is returned
    store.add(resp("resp_b", 2, prev="resp_a"))
    assert [r.id for r in store.chain("resp_d", 1, NOW)] == ["resp_c", "resp_d"]
    # so does an expired one
    store.add(resp("resp_b", prev="resp_a"))
    store.add(resp("resp_c", prev="resp_b", expires=NOW))
    assert [r.id for r in store.chain("resp_d", 1, NOW)] == ["resp_d"]
    assert store.chain("resp_c", 1, NOW) == []
    # and a missing one
    store.add(resp("resp_c", prev="resp_gone"))
    assert [r.id for r in store.chain("resp_d", 1, NOW)] == ["resp_c", "resp_d"]
    # a cycle (only possible through replacement) ends the walk too
    store.add(resp("resp_x", prev="resp_y"))
    store.add(resp("resp_y", prev="resp_x"))
    assert [r.id for r in store.chain("resp_y", 1, NOW)] == ["resp_x", "resp_y"]


def test_add_with_an_existing_id_replaces_it(db: Engine) -> None:
    store = ResponseStore(db)
    store.add(resp("resp_s", status="in_progress", text="partial"))
    store.add(resp("resp_s", status="completed", text="the whole answer", prev="resp_p"))
    assert store.count() == 1
    got = store.get("resp_s", 1, NOW)
    assert got == resp("resp_s", status="completed", text="the whole answer", prev="resp_p")


def test_delete_is_true_once(db: Engine) -> None:
    store = ResponseStore(db)
    store.add(resp("resp_a"))
    assert store.delete("resp_a", 1)
    assert not store.delete("resp_a", 1)
    assert store.get("resp_a", 1, NOW) is None
    # with a time, an expired response is removed but reported absent, as get sees it
    store.add(resp("resp_e", expires=NOW))
    assert not store.delete("resp_e", 1, now=NOW)
    assert store.count() == 0
    store.add(resp("resp_f"))
    assert store.delete("resp_f", 1, now=NOW)


def test_concurrent_adds_and_gets_on_one_engine(db: Engine) -> None:
    store = ResponseStore(db)

    def work(t: int) -> int:
        found = 0
        for i in range(15):
            rid = f"resp_t{t}_{i}"
            store.add(resp(rid, t % 3 or None, text=f"thread {t} item {i}"))
            got = store.get(rid, t % 3 or None, NOW)
            assert got is not None and got.response["id"] == rid
            found += 1
        return found

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert sum(pool.map(work, range(8))) == 120
    assert store.count() == 120
    for t in range(8):
        assert store.get(f"resp_t{t}_14", t % 3 or None, NOW) is not None


def test_migration_makes_the_table_and_its_expiry_index_and_can_be_undone(db: Engine) -> None:
    indexes = {ix["name"]: ix["column_names"] for ix in inspect(db).get_indexes("responses")}
    assert indexes["ix_responses_expires_at"] == ["expires_at"]
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with db.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0003")
    assert "responses" not in inspect(db).get_table_names()
    with db.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    assert "responses" in inspect(db).get_table_names()
