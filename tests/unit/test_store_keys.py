"""API keys in a real database: SQLite (the default) and PostgreSQL (several replicas)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, text

from oasis.errors import InvalidRequestError
from oasis.store.keys import KeyNotFoundError, KeyStore, parse_duration


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_create_verify_and_list(db: Engine) -> None:
    store = KeyStore(db)
    info, secret = store.create("alice", rpm=60, tpm=1000, models=["gpt-4o"], is_admin=False)
    assert secret.startswith(info.prefix + "-") and info.prefix.startswith("sk-oasis-")
    found = store.verify(secret)
    assert found is not None and found.name == "alice" and found.rpm == 60
    assert found.models == ["gpt-4o"]
    assert store.verify(secret + "x") is None
    assert store.verify("sk-nothing") is None
    assert [k.name for k in store.list()] == ["alice"]
    assert store.get(info.prefix).last_used_at is not None


def test_the_database_holds_no_usable_secret(db: Engine) -> None:
    store = KeyStore(db)
    _, secret = store.create("bob")
    with db.connect() as conn:
        dump = " ".join(str(v) for row in conn.execute(text("SELECT * FROM api_keys"))
                        for v in row)
    assert secret not in dump
    assert secret.split("-")[-1] not in dump


def test_revoke_and_rotate(db: Engine) -> None:
    store = KeyStore(db)
    info, secret = store.create("carol")
    rotated, new_secret = store.rotate(info.prefix)
    assert rotated.id == info.id and rotated.prefix != info.prefix
    assert store.verify(secret) is None
    assert store.verify(new_secret) is not None
    store.revoke(rotated.prefix)
    assert store.verify(new_secret) is None
    assert store.get(rotated.prefix).status(datetime.now(UTC)) == "revoked"
    with pytest.raises(KeyNotFoundError):
        store.revoke("sk-oasis-nope")


def test_expiry(db: Engine) -> None:
    clock = Clock()
    store = KeyStore(db, clock=clock)
    _, secret = store.create("temp", expires_in_s=parse_duration("1d"))
    assert store.verify(secret) is not None
    clock.now += timedelta(days=1, seconds=1)
    assert store.verify(secret) is None


def test_durations() -> None:
    assert parse_duration("30d") == 30 * 86400
    assert parse_duration("12h") == 12 * 3600
    for bad in ("", "10", "0d", "3y"):
        with pytest.raises(InvalidRequestError):
            parse_duration(bad)
