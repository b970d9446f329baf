"""Several real models in one `oasis serve`, loaded on demand, on the real engine: a model
pulled with `oasis pull` from a Hub (the fake one, serving the real SmolLM2 file), the optional
Qwen model named by its name, and the bundled embedding model, with max_loaded=1 so that every
switch unloads one model and loads another while requests for both arrive at once."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from oasis.models.registry import bundled_model_path
from tests.fake_hub import FakeHub
from tests.integration.conftest import LiveServer, start_server, stop_server

OASIS = str(Path(sys.executable).with_name("oasis"))
REPO = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
FILE = "smollm2-135m-instruct-q4_k_m.gguf"
PULLED = "smollm2-135m-instruct"
QWEN = "qwen2.5-coder-0.5b"
CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("models")
    hub = FakeHub()
    hub.add(REPO, {FILE: bundled_model_path().read_bytes(), "README.md": b"# SmolLM2\n"})
    env = {**os.environ, "OASIS_DATA_DIR": str(tmp / "data"), "HF_HOME": str(tmp / "hf"),
           "HF_HUB_DISABLE_TELEMETRY": "1", "COLUMNS": "200"}
    with hub.running():
        done = subprocess.run([OASIS, "pull", REPO], env={**env, "HF_ENDPOINT": hub.url},
                              capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"oasis serve --model {PULLED}" in done.stderr  # messages go to stderr
    # the Qwen model is not in the store yet: naming it assembles it there
    proc, server = start_server(tmp, OASIS_MODEL=QWEN, OASIS_MAX_LOADED="1",
                                OASIS_KEEP_ALIVE="-1", OASIS_PARALLEL="2",
                                OASIS_CTX_SIZE="4096")
    yield server
    stop_server(proc)


def admin(server: LiveServer, method: str, path: str) -> httpx.Response:
    return httpx.request(method, f"{server.base_url}{path}", timeout=120,
                         headers={"Authorization": f"Bearer {server.api_key}"})


def states(server: LiveServer) -> dict[str, dict[str, Any]]:
    return {m["id"]: m for m in admin(server, "GET", "/admin/models").json()["data"]}


def test_pulled_and_named_models_are_listed_and_the_named_one_is_loaded(
    served: LiveServer,
) -> None:
    sdk = OpenAI(base_url=served.v1, api_key=served.api_key, max_retries=0)
    ids = [m.id for m in sdk.models.list().data]
    assert ids[0] == QWEN and PULLED in ids and "all-MiniLM-L6-v2" in ids
    now = states(served)
    assert now[QWEN]["load_state"] == "loaded"  # the first model is loaded at start
    assert now[PULLED]["load_state"] == "unloaded"
    listed = subprocess.run([OASIS, "models", "list", "--json"], capture_output=True, text=True,
                            env={**os.environ, "OASIS_DATA_DIR": str(served.log.parent / "data")},
                            timeout=60)
    names = {m["name"]: m for m in json.loads(listed.stdout)}
    assert set(names) == {PULLED, QWEN}
    assert names[PULLED]["source"].startswith(f"hf:{REPO}/{FILE}@")
    assert names[QWEN]["quantization"] == "Q4_K_M"


def test_concurrent_requests_for_three_models_with_max_loaded_one(served: LiveServer) -> None:
    sdk = OpenAI(base_url=served.v1, api_key=served.api_key, max_retries=0, timeout=300)
    results: dict[int, str] = {}
    errors: list[BaseException] = []
    peak: list[int] = []

    def one(i: int) -> None:
        try:
            kind = i % 3
            if kind == 0:
                r = sdk.chat.completions.create(
                    model=QWEN, messages=[{"role": "user", "content": "用一句话介绍北京。"}],
                    temperature=0, max_tokens=24)
                assert r.model == QWEN
                results[i] = r.choices[0].message.content or ""
            elif kind == 1:
                text = ""
                for chunk in sdk.chat.completions.create(
                        model=PULLED, messages=[{"role": "user", "content": "Say hi."}],
                        max_tokens=16, stream=True, temperature=0):
                    assert chunk.model == PULLED
                    if chunk.choices:
                        text += chunk.choices[0].delta.content or ""
                results[i] = text
            else:
                e = sdk.embeddings.create(model="text-embedding-3-small", input=f"text {i}")
                results[i] = str(len(e.data[0].embedding))
            now = states(served)
            peak.append(sum(s["load_state"] in ("loaded", "unloading") for s in now.values()))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) == 9 and all(results.values()), results
    assert all(CJK.search(results[i]) for i in (0, 3, 6)), results
    assert {results[i] for i in (2, 5, 8)} == {"384"}
    assert max(peak) <= 1
    after = states(served)
    assert all(after[m]["loads"] >= 1 for m in (QWEN, PULLED, "all-MiniLM-L6-v2"))
    evicted = sum(s["unloads"].get("evicted", 0) for s in after.values())
    assert evicted >= 2  # three models took turns in one place
    assert served.metric("oasis_model_loads_total") >= 1


def test_admin_unload_and_load_on_the_real_engine(served: LiveServer) -> None:
    r = admin(served, "POST", f"/admin/models/{PULLED}/load")
    assert r.status_code == 200 and r.json()["load_state"] == "loaded"
    assert r.json()["load_seconds"] > 0
    assert states(served)[QWEN]["load_state"] == "unloaded"  # max_loaded=1 made room
    # `oasis backends`, piped: tab-separated, with each local model's load state
    done = subprocess.run([OASIS, "backends"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "OPENAI_BASE_URL": served.v1,
                               "OPENAI_API_KEY": served.api_key})
    assert done.returncode == 0, done.stderr
    header, *lines = [line.split("\t") for line in done.stdout.splitlines()]
    rows = {row[0]: dict(zip(header, row, strict=True)) for row in lines}
    assert rows[PULLED]["load_state"] == "loaded" and float(rows[PULLED]["load_s"]) > 0
    assert rows[QWEN]["load_state"] == "unloaded" and rows[QWEN]["state"] == "healthy"
    r = admin(served, "POST", f"/admin/models/{PULLED}/unload")
    assert r.status_code == 200 and r.json()["load_state"] == "unloaded"
    assert httpx.get(f"{served.base_url}/health").status_code == 200
    # the next request loads it again and is answered
    sdk = OpenAI(base_url=served.v1, api_key=served.api_key, max_retries=0)
    r2 = sdk.completions.create(model=PULLED, prompt="Hello", max_tokens=4, temperature=0)
    assert r2.choices[0].text is not None and r2.usage and r2.usage.completion_tokens >= 1


def test_an_idle_model_unloads_after_its_keep_alive(tmp_path: Path) -> None:
    proc, server = start_server(tmp_path, OASIS_KEEP_ALIVE="1s", OASIS_EMBEDDINGS="false",
                                OASIS_PARALLEL="1", OASIS_CTX_SIZE="2048")
    try:
        sdk = OpenAI(base_url=server.v1, api_key=server.api_key, max_retries=0)
        sdk.chat.completions.create(model="gpt-3.5-turbo", max_tokens=4,
                                    messages=[{"role": "user", "content": "hi"}])
        deadline = time.monotonic() + 60
        while states(server)["SmolLM2-135M-Instruct"]["load_state"] != "unloaded":
            assert time.monotonic() < deadline, states(server)
            time.sleep(0.2)
        assert states(server)["SmolLM2-135M-Instruct"]["unloads"] == {"idle": 1}
        again = sdk.chat.completions.create(model="gpt-3.5-turbo", max_tokens=4,
                                            messages=[{"role": "user", "content": "hi"}])
        assert again.choices[0].message.content is not None
        assert states(server)["SmolLM2-135M-Instruct"]["loads"] == 2
    finally:
        stop_server(proc)
