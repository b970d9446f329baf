"""oasis as a gateway in front of two real `oasis serve` replicas (the bundled model on
llama.cpp), all three started as a user starts them; one replica is killed and restarted in
the middle of a 200-request run."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pexpect
import pytest
from openai import OpenAI

from oasis.models.registry import bundled_model_path
from tests.integration.conftest import KEY, LiveServer, start_server, stop_server
from tests.integration.test_readme import examples

pytestmark = pytest.mark.integration
BUNDLED = "SmolLM2-135M-Instruct"
MODEL = "llama-3.1-8b"  # the README example's id
OASIS = str(Path(sys.executable).with_name("oasis"))
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
    # the README's example configuration, with this machine's replicas and model file
    config = (examples()["upstream-config"]
              .replace("http://gpu-1:8000/v1", r1.v1).replace("http://gpu-2:8000/v1", r2.v1)
              .replace("meta-llama/Llama-3.1-8B-Instruct", BUNDLED)
              .replace("BAAI/bge-small-en-v1.5", "all-MiniLM-L6-v2")
              .replace("/opt/models/SmolLM2-135M-Instruct.Q4_1.gguf", str(bundled_model_path()))
              .replace('backend = "upstream"',
                       'backend = "upstream"\nprobe_interval = 0.5\neject_seconds = 0.5'))
    (tmp / "gateway" / "oasis.toml").write_text(config)
    pg, gateway = start_server(tmp / "gateway", VLLM_KEY=KEY, OASIS_USAGE_FLUSH_SECONDS="0.2",
                               OASIS_THREADS="1", OASIS_PARALLEL="2", OASIS_CTX_SIZE="2048")
    procs = {"r1": p1, "r2": p2, "gateway": pg}
    yield Fleet(tmp, gateway, [r1, r2], procs)
    for proc in procs.values():
        stop_server(proc)


def test_the_sdk_through_the_gateway_on_real_replicas(fleet: Fleet) -> None:
    sdk = fleet.sdk
    r = sdk.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8, seed=1)
    assert r.model == MODEL and r.choices[0].message.content
    assert r.usage is not None and r.usage.completion_tokens <= 8
    c = sdk.completions.create(model="gpt-3.5-turbo", prompt="The sky is", max_tokens=5, n=2)
    assert c.model == "gpt-3.5-turbo" and len(c.choices) == 2
    chunks = list(sdk.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6,
                                              stream=True))
    assert chunks and all(ch.usage is None for ch in chunks)
    assert all(ch.model == MODEL for ch in chunks)
    chunks = list(sdk.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6,
                                              stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    tools = [{"type": "function", "function": {
        "name": "get_weather", "parameters": {"type": "object", "properties": {
            "city": {"type": "string"}}, "required": ["city"]}}}]
    t = sdk.chat.completions.create(model=MODEL, max_tokens=40, tools=tools,  # type: ignore[arg-type]
                                    tool_choice="required",
                                    messages=[{"role": "user", "content": "Weather in Paris?"}])
    call = (t.choices[0].message.tool_calls or [])[0]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert isinstance(json.loads(call.function.arguments)["city"], str)  # type: ignore[union-attr]
    schema = {"type": "object", "properties": {"colour": {"type": "string", "maxLength": 12}},
              "required": ["colour"], "additionalProperties": False}
    j = sdk.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=60,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "c", "schema": schema, "strict": True}})
    assert isinstance(json.loads(j.choices[0].message.content or "")["colour"], str)
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(model=MODEL, messages=MESSAGES, extra_body={"bogus": 1})
    assert "bogus" in str(caught.value)


def test_oasis_backends_as_typed_and_as_piped(fleet: Fleet) -> None:
    env = {**os.environ, "OPENAI_BASE_URL": fleet.gateway.v1, "OPENAI_API_KEY": KEY}
    piped = subprocess.run([OASIS, "backends"], env=env, capture_output=True, text=True,
                           timeout=60)
    assert piped.returncode == 0, piped.stderr
    header, *rows = [line.split("\t") for line in piped.stdout.splitlines()]
    assert header[:4] == ["model", "backend", "replica", "state"]
    ups = [r for r in rows if r[1] == "upstream" and r[0] == MODEL]
    assert [r[2] for r in ups] == [s.v1 for s in fleet.replicas]
    assert all(r[3] == "healthy" for r in ups)
    assert [r[2] for r in rows if r[0] == "text-embedding-3-small"] == [
        s.v1 for s in fleet.replicas]
    assert any(r[0] == "smollm2" and r[1] == "local" for r in rows)
    as_json = subprocess.run([OASIS, "backends", "--json"], env=env, capture_output=True,
                             text=True, timeout=60)
    assert json.loads(as_json.stdout)[0]["replicas"][0]["url"] == fleet.replicas[0].v1
    child = pexpect.spawn(OASIS, ["backends"], env=env, encoding="utf-8", timeout=60,
                          dimensions=(40, 200))
    child.expect(pexpect.EOF)
    screen = child.before or ""
    assert "replica" in screen and fleet.replicas[1].v1 in screen and "\t" not in screen
    wrong = subprocess.run([OASIS, "backends"], env={**env, "OPENAI_API_KEY": "sk-wrong"},
                           capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 1 and "401" in wrong.stderr


def test_embeddings_are_forwarded_to_the_replicas(fleet: Fleet) -> None:
    """The README's embedding model: the gateway forwards to a replica's bundled embedding
    model, answers with the client's model name, and bills the replica's token count."""
    texts = ["The cat sat on the mat.", "猫坐在垫子上。"]
    via = fleet.sdk.embeddings.create(model="text-embedding-3-small", input=texts)
    direct = OpenAI(base_url=fleet.replicas[0].v1, api_key=KEY, max_retries=0).embeddings.create(
        model="all-MiniLM-L6-v2", input=texts)
    assert via.model == "text-embedding-3-small" and len(via.data) == 2
    for a, b in zip(via.data, direct.data, strict=True):
        dot = sum(x * y for x, y in zip(a.embedding, b.embedding, strict=True))
        assert dot > 0.9999  # unit vectors: their cosine
    assert via.usage.prompt_tokens == direct.usage.prompt_tokens
    status, prompt, completion, estimated = fleet.ledger()[-1]
    assert (status, prompt, completion, estimated) == (200, direct.usage.prompt_tokens, 0, False)


def _one(fleet: Fleet, i: int) -> dict[str, Any]:
    """One request of the run: what the client got."""
    sdk = fleet.sdk
    if i % 2:
        r = sdk.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12)
        assert r.usage is not None
        return {"ok": True, "tokens": r.usage.completion_tokens}
    tokens, usage, error = 0, None, None
    try:
        for ch in sdk.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12,
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
    # the README's config routes by affinity: sixteen users' keys, spread by the hash
    for i in range(16):
        r = fleet.sdk.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4,
                                              user=f"user-{i}")
        assert r.choices[0].message.content is not None
    assert fleet.backends()[1]["requests"] > served


def test_every_replica_gone_the_fallback_model_answers(fleet: Fleet) -> None:
    for name in ("r1", "r2"):
        fleet.procs[name].send_signal(signal.SIGKILL)
        fleet.procs[name].wait()
    sdk = fleet.sdk
    r = sdk.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
    assert r.model == "smollm2" and r.choices[0].message.content  # the local fallback answered
    chunks = list(sdk.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8,
                                              stream=True))
    assert chunks[0].model == "smollm2"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert all(s["state"] == "ejected" for s in fleet.backends())
    rows = fleet.ledger()[-2:]
    assert [s for s, *_ in rows] == [200, 200] and all(c > 0 for _, _, c, _ in rows)

