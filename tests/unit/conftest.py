"""Fixtures for the unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from oasis.store.db import database_url, make_engine, migrate
from tests.pg import pg_schema


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """The same tests on SQLite (the default) and PostgreSQL (for replicas)."""
    if request.param == "sqlite":
        engine = make_engine(database_url(None, tmp_path))
        migrate(engine)
        migrate(engine)  # idempotent
        yield engine
        engine.dispose()
        return
    with pg_schema() as url:
        engine = make_engine(url)
        migrate(engine)
        migrate(engine)
        yield engine
        engine.dispose()


