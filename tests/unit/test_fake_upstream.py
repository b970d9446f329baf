"""The fake OpenAI upstream (tests/fake_upstream.py) answers what the official SDK parses, and
each scripted fault does what the gateway's tests count on."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from tests.fake_upstream import FakeUpstream, running

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello there"}]}
SCHEMA = {"type": "json_schema", "json_schema": {"name": "a", "schema": {
    "type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}}}


@pytest.fixture(scope="module")
def server() -> Iterator[FakeUpstream]:
    with running("fake") as up:
        yield up


@pytest.fixture
def up(server: FakeUpstream) -> FakeUpstream:
    server.script(mode="ok")
    server.reset_stats()
    return server


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, timeout=5) as client:
        yield client


def sdk(up: FakeUpstream) -> OpenAI:
    return OpenAI(base_url=up.url, api_key="x", max_retries=0, timeout=5)


def test_chat_and_completion_parse_as_openai_types(up: FakeUpstream) -> None:
    client = sdk(up)
    chat = client.chat.completions.create(model="renamed", messages=[
        {"role": "user", "content": "one two three"}], n=2, max_tokens=3)
    assert chat.model == "renamed"
    assert [c.message.content for c in chat.choices] == ["[fake] w1 w2 "] * 2
    assert [c.index for c in chat.choices] == [0, 1]
    assert chat.choices[0].finish_reason == "length"
    assert chat.usage is not None
    assert (chat.usage.prompt_tokens, chat.usage.completion_tokens) == (3, 6)
    text = client.completions.create(model="m", prompt="a b")
    assert text.choices[0].text == "[fake] " + "".join(f"w{i} " for i in range(1, 8))
    assert text.choices[0].finish_reason == "stop"
    assert text.usage is not None and text.usage.total_tokens == 2 + 8
    models = client.models.list()
    assert [m.id for m in models.data] == ["fake"]


def test_stream_with_usage_ends_with_a_usage_chunk_and_done(up: FakeUpstream,
                                                            http: httpx.Client) -> None:
    stream = sdk(up).chat.completions.create(**CHAT, stream=True,  # type: ignore[call-overload]
                                             stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) \
        == "[fake] w1 w2 w3 w4 w5 w6 w7 "
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 8
    assert all(c.usage is None for c in chunks[:-1])
    r = http.post(f"{up.url}/completions", json={"model": "m", "prompt": "x", "stream": True,
                                                  "stream_options": {"include_usage": True}})
    lines = [line for line in r.text.split("\n\n") if line]
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2][6:])["usage"]["completion_tokens"] == 8
    assert json.loads(lines[0][6:])["object"] == "text_completion"


def test_json_schema_output_and_bad_json_output(up: FakeUpstream) -> None:
    client = sdk(up)
    chat = client.chat.completions.create(**CHAT, response_format=SCHEMA)  # type: ignore[call-overload]
    assert chat.choices[0].message.content == '{"answer": "w0"}'
    up.script(mode="bad_json_output")
    chunks = list(client.chat.completions.create(**CHAT, response_format=SCHEMA,  # type: ignore[call-overload]
                                                 stream=True))
    assert [c.choices[0].delta.content for c in chunks] == ["", '{"answer": 42}', None]


def test_error_with_retry_after(up: FakeUpstream, http: httpx.Client) -> None:
    up.script(mode="error", status=429, message="slow down", retry_after=2)
    r = http.post(f"{up.url}/chat/completions", json=CHAT)
    assert r.status_code == 429 and r.headers["retry-after"] == "2"
    assert r.json() == {"error": {"message": "slow down", "type": "invalid_request_error",
                                  "param": None, "code": None}}
    with pytest.raises(openai.RateLimitError):
        sdk(up).chat.completions.create(**CHAT)  # type: ignore[call-overload]
    up.script(mode="error", status=503)
    r = http.post(f"{up.url}/completions", json={"model": "m", "prompt": "x"})
    assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"


def test_times_reverts_to_ok(up: FakeUpstream, http: httpx.Client) -> None:
    up.script(mode="error", status=500, times=1)
    assert http.post(f"{up.url}/chat/completions", json=CHAT).status_code == 500
    assert http.post(f"{up.url}/chat/completions", json=CHAT).status_code == 200
    assert up.stats()["mode"] == "ok"


def test_cut_makes_the_sdk_raise(up: FakeUpstream) -> None:
    client = sdk(up)
    up.script(mode="cut", after=2)
    seen: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in client.chat.completions.create(**CHAT, stream=True):  # type: ignore[call-overload]
            seen.append(chunk.choices[0].delta.content)
    assert seen == ["", "[fake] ", "w1 "]
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(**CHAT)  # type: ignore[call-overload]


def test_error_event_garbage_no_usage_and_down(up: FakeUpstream, http: httpx.Client) -> None:
    up.script(mode="error_event", after=1)
    r = http.post(f"{up.url}/chat/completions", json={**CHAT, "stream": True})
    events = [e for e in r.text.split("\n\n") if e]
    assert len(events) == 4 and events[-1] == "data: [DONE]"
    assert json.loads(events[-2][6:])["error"]["message"] == "upstream exploded"
    up.script(mode="garbage")
    r = http.post(f"{up.url}/chat/completions", json=CHAT)
    assert r.status_code == 200 and r.text == "this is not json"
    up.script(mode="no_usage")
    assert "usage" not in http.post(f"{up.url}/chat/completions", json=CHAT).json()
    r = http.post(f"{up.url}/chat/completions", json={**CHAT, "stream": True,
                                                       "stream_options": {"include_usage": True}})
    assert "usage" not in r.text
    up.script(mode="down")
    assert http.get(f"{up.base}/health").status_code == 503
    assert http.get(f"{up.url}/models").status_code == 503
    assert http.post(f"{up.url}/chat/completions", json=CHAT).status_code == 503
    up.script(mode="ok")
    assert http.get(f"{up.base}/health").json() == {"status": "ok"}


def test_hang_and_slow(up: FakeUpstream, http: httpx.Client) -> None:
    up.script(mode="hang")
    with pytest.raises(httpx.ReadTimeout):
        http.post(f"{up.url}/chat/completions", json=CHAT, timeout=0.2)
    assert http.get(f"{up.base}/health").status_code == 200  # others are still answered
    up.script(mode="slow", delay=0.3, times=1)
    started = time.monotonic()
    assert http.post(f"{up.url}/chat/completions", json=CHAT).status_code == 200
    assert time.monotonic() - started >= 0.3
    assert up.stats()["in_flight"] == 0


def test_stats_count_requests_and_record_bodies(up: FakeUpstream, http: httpx.Client) -> None:
    http.post(f"{up.url}/chat/completions", json=CHAT, headers={"Authorization": "Bearer k1"})
    http.post(f"{up.url}/completions", json={"model": "m", "prompt": "p"})
    http.get(f"{up.base}/health")
    stats = up.stats()
    assert stats["requests"] == 2
    assert stats["by_path"] == {"/v1/chat/completions": 1, "/v1/completions": 1, "/health": 1}
    assert stats["bodies"] == [CHAT, {"model": "m", "prompt": "p"}]
    assert stats["auth"] == "Bearer k1"
    assert stats["max_in_flight"] == 1 and stats["in_flight"] == 0
    assert up.reset_stats()["requests"] == 0
    r = http.post(f"{up.base}/control", json={"mode": "nonsense"})
    assert r.status_code == 400


def test_stop_and_start_on_the_same_port(http: httpx.Client) -> None:
    with running("r1") as up:
        port = up.port
        assert http.get(f"{up.base}/health").status_code == 200
        up.stop()
        with pytest.raises(httpx.ConnectError):
            http.get(f"{up.base}/health")
        up.start()
        assert up.port == port
        r = http.post(f"{up.url}/chat/completions", json=CHAT)
        assert r.json()["choices"][0]["message"]["content"].startswith("[r1] ")


def test_a_client_leaving_a_stream_is_counted(http: httpx.Client) -> None:
    with running("slow", tokens=500, chunk_delay=0.01) as up:
        with http.stream("POST", f"{up.url}/chat/completions",
                         json={**CHAT, "stream": True}) as r:
            assert next(r.iter_lines()).startswith("data: ")
        deadline = time.monotonic() + 5
        while up.stats()["disconnects"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        stats = up.stats()
        assert stats["disconnects"] == 1 and stats["in_flight"] == 0


def test_runs_as_a_module(http: httpx.Client) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-m", "tests.fake_upstream", "--port", str(port),
                             "--name", "proc", "--tokens", "2"], cwd=root)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                r = http.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=CHAT)
                break
            except httpx.ConnectError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        assert r.json()["choices"][0]["message"]["content"] == "[proc] w1 "
    finally:
        proc.terminate()
        proc.wait(10)
