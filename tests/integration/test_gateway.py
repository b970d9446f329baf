"""The gateway across real processes: two replicas sharing PostgreSQL and Redis enforce one limit
and write one ledger; a server killed with SIGKILL loses no usage record.

The servers run the scripted fake engine (OASIS_ENGINE=fake): what is tested here is keys,
limits and metering, not the model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from tests.integration.conftest import KEY, LiveServer, start_server, stop_server
from tests.pg import pg_schema

REDIS = "redis://127.0.0.1:6379/0"
CHAT = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "hi"}]}


def oasis(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The oasis command as a person types it."""
    exe = Path(sys.executable).with_name("oasis")
    return subprocess.run([str(exe), *args], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=60)


def usage_json(env: dict[str, str], *args: str) -> list[dict[str, object]]:
    r = oasis("usage", "--json", *args, env=env)
    assert r.returncode == 0, r.stderr
    data: list[dict[str, object]] = json.loads(r.stdout)
    return data


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Settings two replicas share: one PostgreSQL schema, one Redis prefix."""
    with pg_schema() as url:
        yield {"OASIS_DATABASE_URL": url, "OASIS_REDIS_URL": REDIS,
               "OASIS_REDIS_PREFIX": f"oasis-test-{uuid.uuid4().hex[:8]}",
               "OASIS_ENGINE": "fake", "OASIS_DATA_DIR": str(tmp_path / "cli")}


def test_two_replicas_enforce_one_limit_and_write_one_ledger(
    tmp_path: Path, shared: dict[str, str]
) -> None:
    created = oasis("keys", "create", "--name", "team", "--rpm", "10", env=shared)
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    servers = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            servers.append(start_server(tmp_path / name, **shared))
        urls = [live.v1 for _, live in servers]

        def call(i: int) -> int:
            r = httpx.post(f"{urls[i % 2]}/chat/completions", json=CHAT, timeout=30,
                           headers={"Authorization": f"Bearer {secret}"})
            return r.status_code

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(call, range(30)))
        # one bucket of 10 requests for both replicas (a request refills every 6 s)
        assert statuses.count(200) in (10, 11), statuses
        assert statuses.count(429) == 30 - statuses.count(200)
        # an aborted stream on replica b is billed too
        with httpx.stream("POST", f"{urls[1]}/chat/completions", timeout=30,
                          json={**CHAT, "stream": True, "max_tokens": 5},
                          headers={"Authorization": f"Bearer {KEY}"}) as r:
            next(r.iter_lines())
    finally:
        for proc, _ in servers:
            stop_server(proc)  # a clean stop stores everything
    rows = usage_json(shared, "--group-by", "key")
    by_key = {str(r["key"]).split(" ")[0]: r for r in rows}
    team = next(v for k, v in by_key.items() if k.startswith("sk-oasis-"))
    assert team["requests"] == 30 and team["errors"] == 30 - statuses.count(200)
    operator = by_key["--api-key"]
    assert operator["requests"] == 1
    assert operator["completion_tokens"] > 0  # type: ignore[operator]


def test_kill_9_loses_no_usage(tmp_path: Path) -> None:
    env = {"OASIS_ENGINE": "fake", "OASIS_USAGE_FLUSH_SECONDS": "3600"}  # journal only
    proc, live = start_server(tmp_path, **env)
    n = 7
    try:
        client = OpenAI(base_url=live.v1, api_key=live.api_key, max_retries=0)
        for _ in range(n):
            client.chat.completions.create(model="gpt-3.5-turbo", messages=CHAT["messages"])
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    cli_env = {"OASIS_DATA_DIR": str(tmp_path / "data")}
    # the CLI replays the dead server's journal
    [day] = usage_json(cli_env)
    assert day["requests"] == n
    # and so does the next server, without counting anything twice
    proc, live = start_server(tmp_path, **env)
    try:
        page = httpx.get(f"{live.v1}/organization/usage/completions",
                         params={"start_time": int(time.time()) - 86400, "limit": 2},
                         headers={"Authorization": f"Bearer {live.api_key}"}).json()
        total = sum(r["num_model_requests"] for b in page["data"] for r in b["results"])
        assert total == n
    finally:
        stop_server(proc)


def test_sdk_retry_against_a_real_server(tmp_path: Path) -> None:
    proc, live = start_server(tmp_path, OASIS_ENGINE="fake")
    try:
        admin = httpx.Client(base_url=live.base_url,
                             headers={"Authorization": f"Bearer {live.api_key}"})
        made = admin.post("/admin/keys", json={"name": "burst", "rpm": 60}).json()
        client = OpenAI(base_url=live.v1, api_key=made["value"], max_retries=0)
        # the bucket refills during the burst: go on until the first 429 (60 and a few)
        with pytest.raises(openai.RateLimitError):
            for _ in range(300):
                client.completions.create(model="text-davinci-002", prompt="x", max_tokens=2)
        ok = client.with_options(max_retries=3).completions.create(
            model="text-davinci-002", prompt="x", max_tokens=2)
        assert ok.choices[0].text
    finally:
        stop_server(proc)


def test_live_metrics_need_a_key(live: LiveServer) -> None:
    assert httpx.get(f"{live.base_url}/metrics").status_code == 401
    assert live.metric("oasis_requests_total") >= 0
