"""A client that goes away mid-stream stops its generation (real HTTP server, fake engine)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

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
def slow_server(tmp_path: Path) -> Iterator[tuple[str, FakeEngine]]:
    engine = FakeEngine(reply="word " * 200, delay=0.02, n_ctx=4096)
    port = free_port()
    config = uvicorn.Config(make_app(engine, tmp=tmp_path), host="127.0.0.1", port=port,
                            log_level="warning")
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
