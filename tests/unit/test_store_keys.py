"""API keys in a real database: SQLite (the default) and PostgreSQL (several replicas)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, text, update

from oasis.errors import InvalidRequestError
from oasis.store.keys import (
    MAX_BUDGET_PERIOD_S,
    MAX_EXPIRES_S,
    MAX_RATE,
    KeyNotFoundError,
    KeyStore,
    parse_duration,
)
from oasis.store.models import ApiKey


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


def test_durations_are_bounded_and_name_their_field() -> None:
    assert parse_duration("36500d") == MAX_EXPIRES_S
    assert parse_duration("3650d", maximum=MAX_BUDGET_PERIOD_S) == MAX_BUDGET_PERIOD_S
    for bad in ("36501d", "1e20d", "100000000000000000000s", "-5d", "NaN", "٣d", "5 days"):
        with pytest.raises(InvalidRequestError) as exc:
            parse_duration(bad, param="expires")
        assert exc.value.param == "expires" and exc.value.message.startswith("Invalid 'expires'")
    with pytest.raises(InvalidRequestError, match="longest allowed is 3650d"):
        parse_duration("3651d", maximum=MAX_BUDGET_PERIOD_S)


def test_the_store_refuses_what_a_key_cannot_hold(db: Engine) -> None:
    """Whoever calls it (the CLI, the admin API): a clear 400-type error naming the field, not
    a database error, on SQLite and on PostgreSQL (whose INTEGER is 32-bit)."""
    store = KeyStore(db)
    info, _ = store.create("m" * 200, rpm=MAX_RATE, tpm=MAX_RATE, budget_usd=1e9,
                           budget_period_s=MAX_BUDGET_PERIOD_S, expires_in_s=MAX_EXPIRES_S,
                           models=["x" * 200])
    assert store.get(info.public_id).budget_period_s == MAX_BUDGET_PERIOD_S
    for field, value, param in [
        ("rpm", 2**63, "rpm"), ("rpm", 0, "rpm"), ("rpm", 1.5, "rpm"), ("rpm", True, "rpm"),
        ("tpm", MAX_RATE + 1, "tpm"), ("budget_usd", math.inf, "budget_usd"),
        ("budget_usd", math.nan, "budget_usd"), ("budget_usd", -1.0, "budget_usd"),
        ("budget_usd", 1e308, "budget_usd"),
        ("budget_period_s", MAX_BUDGET_PERIOD_S + 1, "budget_period"),
        ("expires_in_s", 10**20, "expires"), ("models", ["a\x00"], "models"),
    ]:
        with pytest.raises(InvalidRequestError) as exc:
            store.create("x", **{field: value})
        assert exc.value.param == param, (field, value)
        if field != "expires_in_s":
            with pytest.raises(InvalidRequestError) as exc:
                store.update(info.public_id, **{field: value})
            assert exc.value.param == param, (field, value)
    for name in ("", "  ", "n" * 201, "a\x00b", "a\nb"):
        with pytest.raises(InvalidRequestError, match="Invalid 'name'"):
            store.create(name)
        with pytest.raises(InvalidRequestError, match="Invalid 'name'"):
            store.update(info.public_id, name=name)
    assert [k.id for k in store.list()] == [info.id]


def test_refs_no_key_can_have_are_not_found(db: Engine) -> None:
    store = KeyStore(db)
    store.create("alice")
    for ref in (f"key_{2**70}", f"key_{2**31}", "key_" + "9" * 5000, "key_²", "key_٣",
                "sk-oasis-\x00\x00\x00\x00\x00\x00\x00\x00", "sk-oasis-", "\x00"):
        with pytest.raises(KeyNotFoundError):
            store.get(ref)
        with pytest.raises(KeyNotFoundError):
            store.revoke(ref)


def test_rows_older_versions_let_in_read_as_what_they_amount_to(db: Engine) -> None:
    store = KeyStore(db)
    info, _ = store.create("old", budget_usd=5)
    for stored, shown in [(math.inf, None), (math.nan, None), (-3.0, None), (7.5, 7.5)]:
        with db.begin() as conn:
            conn.execute(update(ApiKey).where(ApiKey.id == info.id)
                         .values(budget_usd=stored, budget_period_s=MAX_BUDGET_PERIOD_S + 1))
        key = store.get(info.public_id)
        assert key.budget_usd == shown and key.budget_period_s == MAX_BUDGET_PERIOD_S
