"""`oasis keys list` and `oasis usage` as scripts use them (stdout a pipe: tab-separated, nothing
cut; ``--json``) and as people see them (a table on a terminal), and the CLI refusing what a key
cannot hold with one clear line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pexpect
from sqlalchemy import Engine

from oasis.store.db import database_url, make_engine, migrate
from oasis.store.keys import KeyInfo, KeyStore
from oasis.store.usage import Usage, UsageStore

OASIS = str(Path(sys.executable).with_name("oasis"))
LONG_NAME = "oracle-nightly-reconciliation-job-for-the-eu-west-warehouse-"  # 60 characters
DAY = 86400


def env(tmp: Path) -> dict[str, str]:
    out = {**os.environ, "OASIS_DATA_DIR": str(tmp), "COLUMNS": "80"}
    for name in ("OASIS_DATABASE_URL", "FORCE_COLOR", "TTY_COMPATIBLE", "NO_COLOR"):
        out.pop(name, None)
    return out


def oasis(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The command with stdout a pipe, as a script runs it."""
    return subprocess.run([OASIS, *args], env=env(tmp), capture_output=True, text=True, cwd=tmp)


def engine(tmp: Path) -> Engine:
    e = make_engine(database_url(None, tmp))
    migrate(e)
    return e


def usage(rid: str, key_id: int | None, t: int, cost: float = 0.25) -> Usage:
    return Usage(request_id=rid, created_at=t, key_id=key_id, model="gpt-4o",
                 endpoint="/v1/chat/completions", prompt_tokens=100, cached_tokens=20,
                 completion_tokens=50, cost_usd=cost, latency_ms=5.0, ttft_ms=1.0, status=200,
                 disconnected=False)


def setup_keys(tmp: Path) -> tuple[KeyInfo, KeyInfo]:
    """A key with a 60-character name, a budget, spend and a last use; and a plain one."""
    e = engine(tmp)
    store = KeyStore(e)
    long, secret = store.create(LONG_NAME, budget_usd=5, rpm=60)
    plain, _ = store.create("bob", models=["gpt-4o", "gpt-4o-mini"])
    used = store.verify(secret)  # sets last_used_at
    assert used is not None
    now = int(time.time())
    UsageStore(e).add([usage("a", long.id, now), usage("b", long.id, now - 2 * DAY),
                       usage("c", plain.id, now)])
    return store.get(long.public_id), plain


def test_piped_keys_list_is_tab_separated_and_cuts_nothing(tmp_path: Path) -> None:
    long, _ = setup_keys(tmp_path)
    r = oasis(tmp_path, "keys", "list")
    assert r.returncode == 0, r.stderr
    header, *lines = r.stdout.splitlines()
    columns = header.split("\t")
    assert columns == ["id", "prefix", "name", "admin", "limits", "spend", "status",
                       "last_used"]
    found = [line for line in lines if LONG_NAME in line]  # what `grep NAME` finds
    assert len(found) == 1
    row = dict(zip(columns, found[0].split("\t"), strict=True))
    assert row["id"] == long.public_id and row["prefix"] == long.prefix
    assert row["name"] == LONG_NAME and row["spend"] == "$0.2500"
    assert row["limits"] == "60 rpm; $5/30d" and row["status"] == "active"
    assert long.last_used_at is not None
    assert row["last_used"] == long.last_used_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    bob = dict(zip(columns, lines[1].split("\t"), strict=True))
    assert bob["name"] == "bob" and bob["limits"] == "models: gpt-4o,gpt-4o-mini"
    assert bob["last_used"] == "never" and bob["spend"] == "-"
    assert "…" not in r.stdout


def test_keys_list_json(tmp_path: Path) -> None:
    long, plain = setup_keys(tmp_path)
    r = oasis(tmp_path, "keys", "list", "--json")
    assert r.returncode == 0, r.stderr
    keys = json.loads(r.stdout)
    assert [k["id"] for k in keys] == [long.public_id, plain.public_id]
    first = keys[0]
    assert first["name"] == LONG_NAME and first["prefix"] == long.prefix
    assert first["spend_usd"] == 0.25 and first["budget_usd"] == 5 and first["rpm"] == 60
    assert first["budget_period_seconds"] == 30 * DAY and first["status"] == "active"
    assert long.last_used_at is not None
    assert first["last_used_at"] == int(long.last_used_at.timestamp())
    assert keys[1]["spend_usd"] is None and keys[1]["models"] == ["gpt-4o", "gpt-4o-mini"]
    assert set(first) == set(keys[1]) == {
        "object", "id", "name", "prefix", "redacted_value", "is_admin", "status", "rpm", "tpm",
        "budget_usd", "budget_period_seconds", "models", "spend_usd", "created_at",
        "expires_at", "revoked_at", "last_used_at"}


def test_piped_usage_is_tab_separated_and_cuts_nothing(tmp_path: Path) -> None:
    long, plain = setup_keys(tmp_path)
    by_key = oasis(tmp_path, "usage", "--group-by", "key", "--since", "7d")
    assert by_key.returncode == 0, by_key.stderr
    header, *lines = by_key.stdout.splitlines()
    assert header.split("\t") == ["key", "requests", "errors", "prompt_tokens",
                                  "cached_tokens", "completion_tokens", "cost_usd"]
    rows = {line.split("\t")[0]: line.split("\t")[1:] for line in lines}
    assert rows[f"{long.prefix} ({LONG_NAME})"] == ["2", "0", "200", "40", "100", "0.5000"]
    assert rows[f"{plain.prefix} (bob)"][0] == "1"
    by_day = oasis(tmp_path, "usage", "--since", "7d")
    days = [line.split("\t")[0] for line in by_day.stdout.splitlines()[1:]]
    today = time.strftime("%Y-%m-%d", time.gmtime())
    two_days_ago = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 2 * DAY))
    assert days == [two_days_ago, today]


def test_usage_json(tmp_path: Path) -> None:
    long, _ = setup_keys(tmp_path)
    r = oasis(tmp_path, "usage", "--group-by", "key", "--json")
    assert r.returncode == 0, r.stderr
    rows = {x["key_id"]: x for x in json.loads(r.stdout)}
    mine = rows[long.public_id]
    assert mine == {"key": f"{long.prefix} ({LONG_NAME})", "key_id": long.public_id,
                    "key_name": LONG_NAME, "requests": 2, "errors": 0, "disconnected": 0,
                    "prompt_tokens": 200, "cached_tokens": 40, "completion_tokens": 100,
                    "cost_usd": 0.5}


def test_on_a_terminal_they_are_tables_that_cut_nothing(tmp_path: Path) -> None:
    long, _ = setup_keys(tmp_path)
    for args in (["keys", "list"], ["usage", "--group-by", "key"]):
        for columns in (80, 200):  # narrow: cells fold; wide: each on one line
            screen_env = {**env(tmp_path), "NO_COLOR": "1"}
            screen_env.pop("COLUMNS")  # the terminal's own width
            term = pexpect.spawn(OASIS, args, env=screen_env, dimensions=(50, columns),
                                 encoding="utf-8", cwd=str(tmp_path))
            term.expect(pexpect.EOF)
            term.close()
            assert term.exitstatus == 0, term.before
            screen = term.before
            assert "─" in screen and "\t" not in screen and "…" not in screen
            if columns == 200:
                assert LONG_NAME in screen and long.prefix in screen, screen


def test_the_cli_refuses_what_a_key_cannot_hold_in_one_line(tmp_path: Path) -> None:
    for args, expected in [
        (["--rpm", str(2**63)], "Invalid 'rpm'"),
        (["--budget", "inf"], "Invalid 'budget_usd'"),
        (["--budget", "1", "--budget-period", "1e20d"], "Invalid '--budget-period'"),
        (["--expires", "100000000000000000000s"], "Invalid '--expires'"),
        (["--expires", "36501d"], "the longest allowed is 36500d"),
    ]:
        r = oasis(tmp_path, "keys", "create", "--name", "x", *args)
        assert r.returncode == 1 and expected in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    r = oasis(tmp_path, "keys", "revoke", f"key_{2**70}")
    assert r.returncode == 1 and f"No API key 'key_{2**70}'" in r.stderr
    r = oasis(tmp_path, "usage", "--since", "9" * 20)
    assert r.returncode == 1 and "Invalid '--since'" in r.stderr
    assert json.loads(oasis(tmp_path, "keys", "list", "--json").stdout) == []
