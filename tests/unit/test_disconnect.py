"""A client that goes away mid-stream stops its generation (real HTTP server, fake engine)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from oasis.engine.fake import FakeEngine
from tests.conftest import API_KEY, make_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def slow_app(tmp_path: Path) -> Any:
    engine = FakeEngine(reply="word " * 200, delay=0.02, n_ctx=4096)
    return make_app(engine, tmp=tmp_path)


@pytest.fixture
def slow_server(slow_app: Any) -> Iterator[tuple[str, FakeEngine]]:
    engine = slow_app.state.oasis.serving.engines["fake-model"]
    port = free_port()
    config = uvicorn.Config(slow_app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", engine
    server.should_exit = True
    thread.join(timeout=10)


def test_closing_the_stream_cancels_generation(slow_server: tuple[str, FakeEngine]) -> None:
    base, engine = slow_server
    body = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "hi"}],
            "stream": True, "max_tokens": 1000}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=base, headers=headers) as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as r:
            lines = 0
            for line in r.iter_lines():
                if line.startswith("data: "):
                    lines += 1
                if lines >= 5:
                    break
        deadline = time.monotonic() + 5
        while engine.stats().running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine.stats().running == 0
        assert engine.stats().cancelled_total == 1
        # it stopped early: far fewer than the 1000 tokens it was allowed
        assert engine.stats().generated_tokens_total < 200


def test_an_abandoned_stream_is_billed_for_what_was_generated(
    slow_server: tuple[str, FakeEngine], slow_app: Any
) -> None:
    base, engine = slow_server
    body = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "hi"}],
            "stream": True, "max_tokens": 1000}  # no include_usage: the client never sees it
    headers = {"Authorization": f"Bearer {API_KEY}"}
    received = 0
    with (
        httpx.Client(base_url=base, headers=headers) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as r,
    ):
        for line in r.iter_lines():
            if line.startswith("data: {"):
                delta = json.loads(line[6:])["choices"][0]["delta"]
                received += bool(delta.get("content"))
            if received >= 10:
                break
    gateway = slow_app.state.oasis.gateway
    deadline = time.monotonic() + 10
    while gateway.ledger.written == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    [usage] = gateway.usage.records()
    assert usage.disconnected and usage.status == 499  # nginx's "client closed request"
    # billed for every token the engine produced, at least those the client saw
    assert received <= usage.completion_tokens < 200
    assert usage.completion_tokens == engine.stats().generated_tokens_total
    assert usage.prompt_tokens > 0


def test_a_client_that_leaves_before_a_plain_answer_stops_it(
    slow_server: tuple[str, FakeEngine], slow_app: Any
) -> None:
    base, engine = slow_server
    body = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 1000}  # not streamed: ~20 s of generation
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with (
        httpx.Client(base_url=base, headers=headers, timeout=0.5) as http,
        pytest.raises(httpx.ReadTimeout),
    ):
        http.post("/v1/chat/completions", json=body)
    deadline = time.monotonic() + 5
    while engine.stats().running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.stats().running == 0 and engine.stats().cancelled_total == 1
    assert engine.stats().generated_tokens_total < 200  # stopped, not generated to the end
    gateway = slow_app.state.oasis.gateway
    while gateway.ledger.written == 0 and time.monotonic() < deadline + 5:
        time.sleep(0.05)
    [usage] = gateway.usage.records()
    assert usage.disconnected and usage.status == 499
    assert 0 < usage.completion_tokens == engine.stats().generated_tokens_total
