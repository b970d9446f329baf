"""API keys: create, list, revoke, rotate, verify. Secrets are stored only as hashes.

A secret looks like ``sk-oasis-<8-char id>-<64 hex digits>``. The first part (the prefix) is
public: it names the key in listings and finds its row; the whole secret's SHA-256 is compared
in constant time. The secrets are 256-bit random tokens, so a fast hash is enough: a database
dump reveals no usable key.
"""

from __future__ import annotations

import hashlib
import hmac
import math
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
_PREFIX = re.compile(r"sk-oasis-[A-Za-z0-9]{8}", re.ASCII)
_KEY_ID = re.compile(r"key_([0-9]{1,30})", re.ASCII)
_DURATION = re.compile(r"\s*([0-9]+)\s*([smhdw])\s*", re.ASCII)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

# What a key may hold: sane for people and within the columns of every database (PostgreSQL's
# INTEGER is 32-bit).
MAX_NAME_LENGTH = 200
MAX_RATE = 1_000_000_000  # rpm and tpm
MAX_BUDGET_USD = 1_000_000_000
MAX_BUDGET_PERIOD_S = 3650 * 86400  # 10 years
MAX_EXPIRES_S = 36500 * 86400  # 100 years
MAX_KEY_ID = 2**31 - 1


def parse_duration(text: str, *, param: str | None = None, maximum: int = MAX_EXPIRES_S) -> int:
    """``90d``, ``12h``, ``30m``, ``2w`` or ``45s`` as seconds, at most ``maximum``.

    ``param`` names the field in the error (a 400 from the admin API, one line from the CLI).
    """
    m = _DURATION.fullmatch(text)
    if not m or not m.group(1).strip("0"):
        problem = "is not a duration: use a whole number and a unit, like 30d, 12h or 45m"
    elif len(m.group(1)) > 12 or int(m.group(1)) * _UNITS[m.group(2)] > maximum:
        problem = f"is too long: the longest allowed is {maximum // 86400}d"
    else:
        return int(m.group(1)) * _UNITS[m.group(2)]
    what = f"'{param}'" if param else "duration"
    raise InvalidRequestError(
        f"Invalid {what}: {text!r} {problem}.", param=param, code="invalid_value"
    )


def key_id(ref: str) -> int | None:
    """The number in a key id (``key_12``), or None when ``ref`` is not written that way."""
    m = _KEY_ID.fullmatch(ref)
    return int(m.group(1)) if m else None


DEFAULT_BUDGET_PERIOD_S = 30 * 86400  # a budget with no period given renews every 30 days


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be a key's name or a model name, or None if it can."""
    if not value.strip() or len(value) > MAX_NAME_LENGTH:
        return f"expected a non-empty string of at most {MAX_NAME_LENGTH} characters"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "expected a string without control characters (tabs, newlines, NUL)"
    if any(0xD800 <= ord(c) <= 0xDFFF for c in value):  # undecodable bytes from a terminal
        return "expected valid Unicode text (no lone surrogates)"
    return None


def _in_range(value: Any, low: int, high: int, *, whole: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if whole and not isinstance(value, int):
        return False
    return math.isfinite(value) and low <= value <= high


# field: (param, low, high, whole number?, what is expected)
_BOUNDS: dict[str, tuple[str, int, int, bool, str]] = {
    "rpm": ("rpm", 1, MAX_RATE, True, f"a whole number from 1 to {MAX_RATE}"),
    "tpm": ("tpm", 1, MAX_RATE, True, f"a whole number from 1 to {MAX_RATE}"),
    "budget_usd": ("budget_usd", 0, MAX_BUDGET_USD, False, f"USD from 0 to {MAX_BUDGET_USD}"),
    "budget_period_s": (
        "budget_period",
        1,
        MAX_BUDGET_PERIOD_S,
        True,
        f"at most {MAX_BUDGET_PERIOD_S // 86400} days ({MAX_BUDGET_PERIOD_S} seconds)",
    ),
    "expires_in_s": (
        "expires",
        1,
        MAX_EXPIRES_S,
        True,
        f"at most {MAX_EXPIRES_S // 86400} days ({MAX_EXPIRES_S} seconds)",
    ),
}


def check_fields(**fields: Any) -> None:
    """Refuse values a key cannot have. The admin API refuses them first, with the same bounds;
    this keeps the CLI and any other caller from storing them. Fields are named as
    ``KeyStore.create`` / ``update`` name them; None (no limit) is always allowed."""
    for field, value in fields.items():
        if value is None:
            continue
        if field in ("name", "models"):
            for text in value if field == "models" and isinstance(value, list) else [value]:
                problem = text_problem(text) if isinstance(text, str) else "expected a string"
                if problem:
                    raise InvalidRequestError(
                        f"Invalid '{field}': {problem}.", param=field, code="invalid_value"
                    )
        elif field in _BOUNDS:
            param, low, high, whole, expected = _BOUNDS[field]
            if not _in_range(value, low, high, whole=whole):
                raise InvalidRequestError(
                    f"Invalid '{param}': expected {expected}, but got {value!r}.",
                    param=param,
                    code="invalid_value",
                )


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
        """The key in a row. Values no caller can store any more (a non-finite budget, a budget
        period past the maximum), which older versions let in, are read as what they amount
        to: no budget, the longest period."""
        created = _utc(row.created_at)
        assert created is not None
        budget = row.budget_usd
        if budget is not None and not (math.isfinite(budget) and budget >= 0):
            budget = None
        period = row.budget_period_s
        if period is not None:
            period = min(max(period, 1), MAX_BUDGET_PERIOD_S)
        return cls(
            id=row.id,
            name=row.name,
            prefix=row.prefix,
            is_admin=row.is_admin,
            rpm=row.rpm,
            tpm=row.tpm,
            budget_usd=budget,
            budget_period_s=period,
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
        check_fields(
            name=name,
            rpm=rpm,
            tpm=tpm,
            budget_usd=budget_usd,
            budget_period_s=budget_period_s,
            models=models,
            expires_in_s=expires_in_s,
        )
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
            budget_period_s=budget_period_s
            or (DEFAULT_BUDGET_PERIOD_S if budget_usd is not None else None),
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
        number = key_id(ref)
        if number is not None:
            # an id past the column's range names no key (and must not reach the database)
            row = s.get(ApiKey, number) if number <= MAX_KEY_ID else None
        elif prefix := _PREFIX.match(ref):
            row = s.scalar(select(ApiKey).where(ApiKey.prefix == prefix.group()))
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
        check_fields(**changes)
        with Session(self.engine) as s, s.begin():
            row = self._row(s, ref)
            for field, value in changes.items():
                if field == "name" and not value:
                    continue
                setattr(row, field, (value or None) if field == "models" else value)
            if row.budget_usd is not None and row.budget_period_s is None:
                row.budget_period_s = DEFAULT_BUDGET_PERIOD_S
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
