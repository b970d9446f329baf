"""API keys: create, list, revoke, rotate, verify. Secrets are stored only as hashes.

A secret looks like ``sk-oasis-<8-char id>-<64 hex digits>``. The first part (the prefix) is
public: it names the key in listings and finds its row; the whole secret's SHA-256 is compared
in constant time. The secrets are 256-bit random tokens, so a fast hash is enough: a database
dump reveals no usable key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from oasis.errors import InvalidRequestError, NotFoundError
from oasis.store.models import ApiKey

SECRET_PREFIX = "sk-oasis-"
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> int:
    """``90d``, ``12h``, ``30m``, ``2w`` or ``45s`` as seconds."""
    m = _DURATION.match(text)
    if not m or int(m.group(1)) <= 0:
        raise InvalidRequestError(
            f"Invalid duration {text!r}: use a number and a unit, like 30d, 12h or 45m."
        )
    return int(m.group(1)) * _UNITS[m.group(2)]


def _utc(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; everything here is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _new_secret() -> tuple[str, str]:
    public = secrets.token_urlsafe(6).replace("-", "x").replace("_", "y")[:8]
    prefix = f"{SECRET_PREFIX}{public}"
    return prefix, f"{prefix}-{secrets.token_hex(32)}"


@dataclass(frozen=True)
class KeyInfo:
    """A key as shown to people: never the secret."""

    id: int
    name: str
    prefix: str
    is_admin: bool
    rpm: int | None
    tpm: int | None
    budget_usd: float | None
    budget_period_s: int | None
    models: list[str] | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    @property
    def public_id(self) -> str:
        """The key's id in the admin and usage APIs; unlike the prefix it survives rotation."""
        return f"key_{self.id}"

    def status(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    @classmethod
    def of(cls, row: ApiKey) -> KeyInfo:
        created = _utc(row.created_at)
        assert created is not None
        return cls(
            id=row.id,
            name=row.name,
            prefix=row.prefix,
            is_admin=row.is_admin,
            rpm=row.rpm,
            tpm=row.tpm,
            budget_usd=row.budget_usd,
            budget_period_s=row.budget_period_s,
            models=list(row.models) if row.models else None,
            created_at=created,
            expires_at=_utc(row.expires_at),
            revoked_at=_utc(row.revoked_at),
            last_used_at=_utc(row.last_used_at),
        )


class KeyNotFoundError(NotFoundError):
    """No key has this prefix."""

    default_code = "key_not_found"


class KeyStore:
    """The api_keys table."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime] | None = None) -> None:
        self.engine = engine
        self.clock = clock or (lambda: datetime.now(UTC))

    def create(
        self,
        name: str,
        *,
        is_admin: bool = False,
        rpm: int | None = None,
        tpm: int | None = None,
        budget_usd: float | None = None,
        budget_period_s: int | None = None,
        models: list[str] | None = None,
        expires_in_s: int | None = None,
    ) -> tuple[KeyInfo, str]:
        """A new key and its secret (shown once, never stored)."""
        now = self.clock()
        prefix, secret = _new_secret()
        row = ApiKey(
            name=name,
            prefix=prefix,
            secret_hash=_hash(secret),
            is_admin=is_admin,
            rpm=rpm,
            tpm=tpm,
            budget_usd=budget_usd,
            budget_period_s=budget_period_s or (30 * 86400 if budget_usd is not None else None),
            models=models or None,
            created_at=now,
            expires_at=now + timedelta(seconds=expires_in_s) if expires_in_s else None,
        )
        with Session(self.engine) as s, s.begin():
            s.add(row)
            s.flush()
            info = KeyInfo.of(row)
        return info, secret

    def list(self) -> list[KeyInfo]:
        with Session(self.engine) as s:
            return [KeyInfo.of(r) for r in s.scalars(select(ApiKey).order_by(ApiKey.id))]

    def count(self) -> int:
        with Session(self.engine) as s:
            return int(s.scalar(select(func.count()).select_from(ApiKey)) or 0)

    def _row(self, s: Session, ref: str) -> ApiKey:
        """A key by its prefix (``sk-oasis-...``) or its id (``key_12``, stable across
        rotations)."""
        row = None
        if ref.startswith("key_") and ref[4:].isdigit():
            row = s.get(ApiKey, int(ref[4:]))
        elif ref.startswith(SECRET_PREFIX):
            row = s.scalar(select(ApiKey).where(ApiKey.prefix == ref[: len(SECRET_PREFIX) + 8]))
        if row is None:
            raise KeyNotFoundError(
                f"No API key {ref!r}: name a key by its prefix (sk-oasis-XXXXXXXX) or its id "
                "(key_12); `oasis keys list` shows both.",
                param="key",
            )
        return row

    def get(self, prefix: str) -> KeyInfo:
        with Session(self.engine) as s:
            return KeyInfo.of(self._row(s, prefix))

    def revoke(self, prefix: str) -> KeyInfo:
        with Session(self.engine) as s, s.begin():
            row = self._row(s, prefix)
            if row.revoked_at is None:
                row.revoked_at = self.clock()
            return KeyInfo.of(row)

    UPDATABLE = frozenset({"name", "rpm", "tpm", "budget_usd", "budget_period_s", "models"})

    def update(self, ref: str, **changes: Any) -> KeyInfo:
        """Change a key's name or limits; a limit given as None is removed."""
        unknown = set(changes) - self.UPDATABLE
        if unknown:
            raise InvalidRequestError(f"Cannot change {sorted(unknown)} of a key.")
        with Session(self.engine) as s, s.begin():
            row = self._row(s, ref)
            for field, value in changes.items():
                if field == "name" and not value:
                    continue
                setattr(row, field, (value or None) if field == "models" else value)
            if row.budget_usd is not None and row.budget_period_s is None:
                row.budget_period_s = 30 * 86400
            return KeyInfo.of(row)

    def rotate(self, prefix: str) -> tuple[KeyInfo, str]:
        """A new secret (and prefix) for the same key; the old secret stops working at once."""
        new_prefix, secret = _new_secret()
        with Session(self.engine) as s, s.begin():
            row = self._row(s, prefix)
            row.prefix = new_prefix
            row.secret_hash = _hash(secret)
            return KeyInfo.of(row), secret

    def verify(self, secret: str) -> KeyInfo | None:
        """The active key this secret belongs to, or None (wrong, revoked or expired)."""
        if not secret.startswith(SECRET_PREFIX):
            return None
        prefix = secret[: len(SECRET_PREFIX) + 8]
        with Session(self.engine) as s, s.begin():
            row = s.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
            if row is None or not hmac.compare_digest(row.secret_hash, _hash(secret)):
                return None
            info = KeyInfo.of(row)
            now = self.clock()
            if info.status(now) != "active":
                return None
            last = _utc(row.last_used_at)
            if last is None or now - last > timedelta(seconds=60):
                row.last_used_at = now  # written at most once a minute per key
            return info
