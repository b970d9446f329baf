"""A budget holds across replicas: two `oasis serve` processes sharing PostgreSQL and Redis take
a concurrent burst on one key, and together spend at most one request more than its budget.

The servers run the scripted fake engine (OASIS_ENGINE=fake): what is tested is admission and
metering, not the model.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
from openai import OpenAI

from oasis.gateway.usage import Price
from oasis.store.db import make_engine
from oasis.store.usage import UsageStore
from tests.integration.conftest import start_server, stop_server
from tests.integration.test_gateway import CHAT, oasis, shared  # noqa: F401 - a fixture

PRICE = Price(input=100.0, output=200.0)  # USD per million tokens: about $0.007 a request
MAX_TOKENS = 8  # the fake reply is longer: every answer costs its worst case
BUDGET = 0.05


def test_a_burst_on_two_replicas_overshoots_by_one_request_at_most(
    tmp_path: Path, shared: dict[str, str]  # noqa: F811 - the fixture imported above
) -> None:
    env = {**shared, "OASIS_PRICES": json.dumps(
        {"gpt-3.5-turbo": {"input": PRICE.input, "output": PRICE.output}})}
    created = oasis("keys", "create", "--name", "burst", "--budget", str(BUDGET), env=env)
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    servers = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            servers.append(start_server(tmp_path / name, **env))
        clients = [OpenAI(base_url=live.v1, api_key=secret, max_retries=0, timeout=60)
                   for _, live in servers]

        def call(i: int) -> str:
            try:
                clients[i % 2].chat.completions.create(
                    model="gpt-3.5-turbo", messages=CHAT["messages"],  # type: ignore[arg-type]
                    max_tokens=MAX_TOKENS)
                return "ok"
            except openai.RateLimitError as exc:
                return str(exc.code)

        with ThreadPoolExecutor(16) as pool:
            outcomes = list(pool.map(call, range(16)))
    finally:
        for proc, _ in servers:
            stop_server(proc)  # a clean stop stores everything
    db = make_engine(env["OASIS_DATABASE_URL"])
    try:
        rows = [u for u in UsageStore(db).records() if u.key_id is not None]
    finally:
        db.dispose()
    answered = [u for u in rows if u.status == 200]
    assert len(answered) == outcomes.count("ok") >= 1
    one = max(PRICE.cost(u.prompt_tokens, 0, MAX_TOKENS) for u in answered)
    spent = sum(u.cost_usd for u in rows)
    assert spent <= BUDGET + one, (spent, outcomes)
    refused = [o for o in outcomes if o != "ok"]
    assert refused and set(refused) == {"insufficient_quota"}, outcomes
    assert len(rows) == 16  # the refusals are in the ledger too, at no cost
