"""`oasis usage rebuild-daily`: usage_daily recomputed from usage_records after it drifted."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import Engine, delete, select, update

from oasis.store.db import database_url, make_engine, migrate
from oasis.store.models import UsageDaily
from oasis.store.usage import DAY, Usage, UsageStore, day_of, rebuild_daily
from tests.pg import pg_schema

OASIS = str(Path(sys.executable).with_name("oasis"))
TODAY = day_of(int(time.time()))


def record(i: int, at: int) -> Usage:
    return Usage(request_id=f"r{i}", created_at=at, key_id=None if i % 3 == 0 else i % 3,
                 model=f"m{i % 2}", endpoint="/v1/chat/completions", prompt_tokens=10 + i,
                 cached_tokens=i % 4, completion_tokens=5 + i, cost_usd=0.25 * (i % 5),
                 latency_ms=1.0, ttft_ms=None, status=500 if i % 7 == 0 else 200,
                 disconnected=i % 11 == 0)


def daily(engine: Engine) -> list[tuple[object, ...]]:
    with engine.connect() as conn:
        return sorted(tuple(row) for row in conn.execute(select(UsageDaily)))


def seed_and_corrupt(engine: Engine) -> list[tuple[object, ...]]:
    """Records over 10 days; returns the true sums after corrupting usage_daily by hand (an
    old day and today changed, a row of yesterday lost, a row no record backs added)."""
    UsageStore(engine).add([record(i, TODAY - (i % 10) * DAY + i) for i in range(80)])
    truth = daily(engine)
    with engine.begin() as conn:
        conn.execute(update(UsageDaily).values(requests=UsageDaily.requests + 5, cost_usd=9.0))
        conn.execute(
            delete(UsageDaily).where(UsageDaily.day == TODAY - DAY, UsageDaily.model == "m1")
        )
        conn.execute(UsageDaily.__table__.insert().values(
            day=TODAY, key_id=99, model="ghost", requests=1, errors=0, disconnected=0,
            prompt_tokens=1, cached_tokens=0, completion_tokens=1, cost_usd=1.0))
    assert daily(engine) != truth
    return truth


def check(engine: Engine) -> None:
    truth = seed_and_corrupt(engine)
    with engine.begin() as conn:
        deleted, inserted = rebuild_daily(conn, TODAY - DAY)
    assert deleted > 0  # the last 2 days only
    assert inserted == len([r for r in truth if r[0] >= TODAY - DAY])
    after = daily(engine)
    assert [r for r in after if r[0] >= TODAY - DAY] == [r for r in truth if r[0] >= TODAY - DAY]
    assert [r for r in after if r[0] < TODAY - DAY] != [r for r in truth if r[0] < TODAY - DAY]
    with engine.begin() as conn:
        rebuild_daily(conn)
    assert daily(engine) == truth


def test_rebuild_restores_the_exact_sums_on_sqlite(tmp_path: Path) -> None:
    engine = make_engine(database_url(None, tmp_path))
    migrate(engine)
    check(engine)


def test_rebuild_restores_the_exact_sums_on_postgresql() -> None:
    with pg_schema() as url:
        engine = make_engine(url)
        migrate(engine)
        check(engine)
        engine.dispose()


def test_the_command(tmp_path: Path) -> None:
    engine = make_engine(database_url(None, tmp_path))
    migrate(engine)
    truth = seed_and_corrupt(engine)
    env = {**os.environ, "OASIS_DATA_DIR": str(tmp_path)}
    env.pop("OASIS_DATABASE_URL", None)
    r = subprocess.run([OASIS, "usage", "rebuild-daily", "--days", "2"], env=env,
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "usage_daily rebuilt for the days from" in r.stdout
    assert [row for row in daily(engine) if row[0] >= TODAY - DAY] == [
        row for row in truth if row[0] >= TODAY - DAY]
    r = subprocess.run([OASIS, "usage", "rebuild-daily"], env=env, capture_output=True,
                       text=True, cwd=tmp_path)
    assert r.returncode == 0 and "every day" in r.stdout, r.stderr
    assert daily(engine) == truth
    r = subprocess.run([OASIS, "usage", "--json", "--since", "30d"], env=env, capture_output=True,
                       text=True, cwd=tmp_path)  # the report still answers as before
    assert r.returncode == 0 and '"requests"' in r.stdout, r.stderr
    r = subprocess.run([OASIS, "usage", "rebuild-daily", "--days", "0"], env=env,
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2
