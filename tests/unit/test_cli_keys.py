"""`oasis keys` as a person types it (SQLite in a temporary data directory)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from oasis.store.db import database_url, make_engine
from oasis.store.keys import KeyStore
from oasis.store.usage import Usage, UsageStore

OASIS = str(Path(sys.executable).with_name("oasis"))


def run(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OASIS_DATA_DIR": str(tmp)}
    env.pop("OASIS_DATABASE_URL", None)
    return subprocess.run([OASIS, "keys", *args], env=env, capture_output=True, text=True,
                          cwd=tmp)


def test_key_lifecycle(tmp_path: Path) -> None:
    created = run(tmp_path, "create", "--name", "alice", "--rpm", "60", "--tpm", "1000",
                  "--budget", "5", "--budget-period", "30d", "--models", "gpt-4o",
                  "--expires", "90d")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("sk-oasis-")
    prefix = secret.rsplit("-", 1)[0]
    store = KeyStore(make_engine(database_url(None, tmp_path)))
    assert store.verify(secret) is not None

    listed = run(tmp_path, "list").stdout
    assert prefix in listed and "alice" in listed and "active" in listed
    assert secret not in listed

    rotated = run(tmp_path, "rotate", prefix)
    assert rotated.returncode == 0
    new_secret = rotated.stdout.strip()
    assert store.verify(secret) is None and store.verify(new_secret) is not None

    new_prefix = new_secret.rsplit("-", 1)[0]
    assert run(tmp_path, "revoke", new_prefix).returncode == 0
    assert store.verify(new_secret) is None
    assert "revoked" in run(tmp_path, "list").stdout


def test_bad_input_is_one_clear_line(tmp_path: Path) -> None:
    r = run(tmp_path, "revoke", "sk-oasis-nope")
    assert r.returncode == 1 and "No API key 'sk-oasis-nope'" in r.stderr
    assert "Traceback" not in r.stderr
    r = run(tmp_path, "create", "--name", "x", "--expires", "soon")
    assert r.returncode == 1 and "Invalid '--expires': 'soon' is not a duration" in r.stderr


def oasis(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OASIS_DATA_DIR": str(tmp), "COLUMNS": "200"}
    env.pop("OASIS_DATABASE_URL", None)
    return subprocess.run([OASIS, *args], env=env, capture_output=True, text=True, cwd=tmp)


def test_update_limits_and_see_spend(tmp_path: Path) -> None:
    secret = run(tmp_path, "create", "--name", "bob", "--budget", "2").stdout.strip()
    engine = make_engine(database_url(None, tmp_path))
    key = KeyStore(engine).verify(secret)
    assert key is not None
    UsageStore(engine).add([usage("a", key.id, cost=0.5), usage("b", key.id, cost=0.25)])
    listed = oasis(tmp_path, "keys", "list").stdout
    assert "$0.7500" in listed and "$2/30d" in listed
    r = run(tmp_path, "update", key.public_id, "--rpm", "30", "--budget", "-1", "--name", "robert")
    assert r.returncode == 0, r.stderr
    assert "30 rpm" in r.stderr
    after = KeyStore(engine).get(key.public_id)
    assert after.rpm == 30 and after.budget_usd is None and after.name == "robert"
    bad = run(tmp_path, "update", "key_999", "--rpm", "1")
    assert bad.returncode == 1 and "No API key 'key_999'" in bad.stderr


def usage(rid: str, key_id: int | None, *, cost: float = 0.0, model: str = "gpt-4o",
          t: int | None = None, status: int = 200) -> Usage:
    return Usage(request_id=rid, created_at=t or int(time.time()), key_id=key_id,
                 model=model, endpoint="/v1/chat/completions", prompt_tokens=100,
                 cached_tokens=20, completion_tokens=50, cost_usd=cost, latency_ms=5.0,
                 ttft_ms=1.0, status=status, disconnected=False)


def test_usage_report(tmp_path: Path) -> None:
    secret = run(tmp_path, "create", "--name", "carol").stdout.strip()
    engine = make_engine(database_url(None, tmp_path))
    key = KeyStore(engine).verify(secret)
    assert key is not None
    old = int(time.time()) - 3 * 86400
    UsageStore(engine).add([
        usage("a", key.id, cost=1.0), usage("b", key.id, cost=1.0, model="gpt-4o-mini"),
        usage("c", None, status=429), usage("d", key.id, t=old),
    ])
    by_model = oasis(tmp_path, "usage", "--group-by", "model")
    assert by_model.returncode == 0, by_model.stderr
    header, *lines = by_model.stdout.splitlines()  # piped: tab-separated, a header first
    assert header.split("\t")[:3] == ["model", "requests", "errors"]
    assert sorted(line.split("\t")[0] for line in lines) == ["gpt-4o", "gpt-4o-mini"]
    rows = json.loads(oasis(tmp_path, "usage", "--group-by", "key", "--json").stdout)
    by_key = {r["key"]: r for r in rows}
    carol = by_key[f"{key.prefix} (carol)"]
    assert carol["requests"] == 3 and carol["cost_usd"] == 2.0
    assert carol["prompt_tokens"] == 300 and carol["completion_tokens"] == 150
    assert by_key["--api-key"]["errors"] == 1
    recent = json.loads(oasis(tmp_path, "usage", "--since", "1d", "--key", key.public_id,
                              "--json").stdout)
    assert sum(r["requests"] for r in recent) == 2
    days = json.loads(oasis(tmp_path, "usage", "--since", "7d", "--json").stdout)
    assert len(days) == 2 and sum(r["requests"] for r in days) == 4
    bad = oasis(tmp_path, "usage", "--group-by", "week")
    assert bad.returncode == 2 and "day, key or model" in bad.stderr
