"""`oasis keys` as a person types it (SQLite in a temporary data directory)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from oasis.store.db import database_url, make_engine
from oasis.store.keys import KeyStore

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
    assert r.returncode == 1 and "Invalid duration" in r.stderr
