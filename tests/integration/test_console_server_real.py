"""The console's Server page on the real server: the bundled model's tokens are counted."""

from __future__ import annotations

import time

import httpx
from openai import OpenAI

from tests.integration.conftest import LiveServer

SYSTEM = "You are a terse assistant. " * 12  # a prefix long enough to be worth reusing


def _page(live: LiveServer) -> httpx.Response:
    return httpx.get(
        f"{live.base_url}/console/api/server",
        headers={"Authorization": f"Bearer {live.api_key}"},
        timeout=10,
    )


def test_the_server_page_counts_the_bundled_models_tokens(live: LiveServer, sdk: OpenAI) -> None:
    # rates need a second of samples: a server that has only just started gets it
    time.sleep(max(0.0, 1.5 - _page(live).json()["uptime_s"]))
    for _ in range(2):  # the same prompt again: its prefix is read from the cache
        sdk.chat.completions.create(
            model="gpt-3.5-turbo",
            max_tokens=4,
            temperature=0,
            messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi"}],
        )
    r = _page(live)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["window_s"] == 300 and body["uptime_s"] > 0
    (model,) = [m for m in body["models"] if m["kind"] == "local"]
    assert model["state"] == "loaded" and model["slots"] == 8
    assert 0 <= model["slots_busy"] <= 8 and model["queue"] >= 0
    assert model["tokens_per_s"] > 0 and model["prompt_tokens_per_s"] > 0
    assert model["requests_per_min"] > 0
    assert 0 < model["prefix_cache_hit_rate"] <= 1
    assert 0 <= model["kv_used"] <= 1
    embedding = [m for m in body["models"] if m["kind"] == "embedding"]
    assert all(m["tokens_per_s"] is None and m["slots"] is None for m in embedding)
    r = httpx.get(f"{live.base_url}/console/api/server", timeout=10)
    assert r.status_code == 401
