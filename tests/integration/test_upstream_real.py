"""oasis as a gateway in front of two real `oasis serve` replicas (the bundled model on
llama.cpp), all three started as a user starts them; one replica is killed and restarted in
the middle of a 200-request run."""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from tests.integration.conftest import KEY, LiveServer, start_server, stop_server

pytestmark = pytest.mark.integration
BUNDLED = "SmolLM2-135M-Instruct"
MESSAGES = [{"role": "user", "content": "Name a colour."}]


@dataclass
class Fleet:
    tmp: Path
    gateway: LiveServer
    replicas: list[LiveServer]
    procs: dict[str, Any]

    @property
    def sdk(self) -> OpenAI:
        return OpenAI(base_url=self.gateway.v1, api_key=KEY, max_retries=0, timeout=120)

    def backends(self) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.gateway.base_url}/admin/backends", timeout=10,
                      headers={"Authorization": f"Bearer {KEY}"})
        assert r.status_code == 200, r.text
        return list(r.json()["data"][0]["replicas"])

    def ledger(self) -> list[tuple[int, int, int, bool]]:
        time.sleep(1.0)  # the ledger is flushed every 0.2 s
        with sqlite3.connect(self.tmp / "gateway" / "data" / "oasis.db") as db:
            return list(db.execute(
                "SELECT status, prompt_tokens, completion_tokens, estimated "
                "FROM usage_records ORDER BY id"))


def _replica(tmp: Path, name: str, port: str | None = None) -> tuple[Any, LiveServer]:
    (tmp / name).mkdir(exist_ok=True)
    env = {"OASIS_THREADS": "1", "OASIS_PARALLEL": "4", "OASIS_CTX_SIZE": "4096"}
    if port:
        env["OASIS_PORT"] = port
    return start_server(tmp / name, **env)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("fleet")
    p1, r1 = _replica(tmp, "r1")
    p2, r2 = _replica(tmp, "r2")
    (tmp / "gateway").mkdir()
    (tmp / "gateway" / "oasis.toml").write_text(f"""
[[models]]
id = "fleet"
backend = "upstream"
upstream_model = "{BUNDLED}"
replicas = ["{r1.v1}", "{r2.v1}"]
api_key_env = "FLEET_KEY"
probe_interval = 0.5
eject_seconds = 0.5
first_byte_timeout = 60
""")
    pg, gateway = start_server(tmp / "gateway", FLEET_KEY=KEY, OASIS_USAGE_FLUSH_SECONDS="0.2")
    procs = {"r1": p1, "r2": p2, "gateway": pg}
    yield Fleet(tmp, gateway, [r1, r2], procs)
    for proc in procs.values():
        stop_server(proc)


def test_the_sdk_through_the_gateway_on_real_replicas(fleet: Fleet) -> None:
    sdk = fleet.sdk
    r = sdk.chat.completions.create(model="fleet", messages=MESSAGES, max_tokens=8, seed=1)
    assert r.model == "fleet" and r.choices[0].message.content
    assert r.usage is not None and r.usage.completion_tokens <= 8
    c = sdk.completions.create(model="gpt-3.5-turbo", prompt="The sky is", max_tokens=5, n=2)
    assert c.model == "gpt-3.5-turbo" and len(c.choices) == 2
    chunks = list(sdk.chat.completions.create(model="fleet", messages=MESSAGES, max_tokens=6,
                                              stream=True))
    assert chunks and all(ch.usage is None for ch in chunks)
    assert all(ch.model == "fleet" for ch in chunks)
    chunks = list(sdk.chat.completions.create(model="fleet", messages=MESSAGES, max_tokens=6,
                                              stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    tools = [{"type": "function", "function": {
        "name": "get_weather", "parameters": {"type": "object", "properties": {
            "city": {"type": "string"}}, "required": ["city"]}}}]
    t = sdk.chat.completions.create(model="fleet", max_tokens=40, tools=tools,  # type: ignore[arg-type]
                                    tool_choice="required",
                                    messages=[{"role": "user", "content": "Weather in Paris?"}])
    call = (t.choices[0].message.tool_calls or [])[0]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert isinstance(json.loads(call.function.arguments)["city"], str)  # type: ignore[union-attr]
    schema = {"type": "object", "properties": {"colour": {"type": "string", "maxLength": 12}},
              "required": ["colour"], "additionalProperties": False}
    j = sdk.chat.completions.create(
        model="fleet", messages=MESSAGES, max_tokens=60,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "c", "schema": schema, "strict": True}})
    assert isinstance(json.loads(j.choices[0].message.content or "")["colour"], str)
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(model="fleet", messages=MESSAGES, extra_body={"bogus": 1})
    assert "bogus" in str(caught.value)


def _one(fleet: Fleet, i: int) -> dict[str, Any]:
    """One request of the run: what the client got."""
    sdk = fleet.sdk
    if i % 2:
        r = sdk.chat.completions.create(model="fleet", messages=MESSAGES, max_tokens=12)
        assert r.usage is not None
        return {"ok": True, "tokens": r.usage.completion_tokens}
    tokens, usage, error = 0, None, None
    try:
        for ch in sdk.chat.completions.create(model="fleet", messages=MESSAGES, max_tokens=12,
                                              stream=True,
                                              stream_options={"include_usage": True}):
            if ch.usage is not None:
                usage = ch.usage.completion_tokens
            if ch.choices and ch.choices[0].delta.content:
                tokens += 1
    except openai.APIError as exc:  # the SDK raises the error event a stream ended with
        error = str(exc)
    if error is not None:
        return {"ok": False, "tokens": tokens, "error": error}
    assert usage is not None
    return {"ok": True, "tokens": usage}


def test_killing_a_replica_mid_run_loses_only_its_streams_and_it_comes_back(
    fleet: Fleet,
) -> None:
    done = threading.Event()
    finished: list[int] = []

    def killer() -> None:
        while len(finished) < 60 and not done.is_set():
            time.sleep(0.05)
        fleet.procs["r2"].send_signal(signal.SIGKILL)  # no goodbye: connections reset
        fleet.procs["r2"].wait()

    before = len(fleet.ledger())
    k = threading.Thread(target=killer)
    k.start()
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(_one, fleet, i) for i in range(200)]
        results = []
        for f in futures:
            results.append(f.result(timeout=300))  # none hangs
            finished.append(1)
    done.set()
    k.join()
    failed = [r for r in results if not r["ok"]]
    assert len(results) == 200
    # only streams already relaying from the killed replica end with an error event
    assert len(failed) <= 8, failed
    assert all("upstream" in r["error"] for r in failed)
    state = fleet.backends()
    assert state[1]["state"] == "ejected" and state[1]["ejections"] >= 1
    assert state[0]["state"] == "healthy" and all(s["in_flight"] == 0 for s in state)

    rows = fleet.ledger()[before:]
    assert len(rows) == 200
    assert sorted(s for s, *_ in rows) == sorted([200] * (200 - len(failed)) + [502] * len(failed))
    assert sum(c for _, _, c, _ in rows) == sum(r["tokens"] for r in results)

    # restarted on its port, it is probed back into the pool and takes traffic again
    port = fleet.replicas[1].base_url.rsplit(":", 1)[1]
    proc, _ = _replica(fleet.tmp, "r2", port)
    fleet.procs["r2"] = proc
    deadline = time.monotonic() + 30
    while fleet.backends()[1]["state"] != "healthy":
        assert time.monotonic() < deadline, fleet.backends()
        time.sleep(0.2)
    served = fleet.backends()[1]["requests"]
    for _ in range(8):
        _one(fleet, 1)
    assert fleet.backends()[1]["requests"] > served
