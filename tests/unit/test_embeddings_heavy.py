"""Large embedding answers and batch lines on the fake embedder, through the app: 2048 vectors
built and serialized off the event loop, byte for byte the JSON Starlette would send; a batch
line's inputs submitted as background work, a live request's not."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

import oasis.server.routes.openai as routes
import oasis.serving.embeddings as service
from oasis.config import Settings
from oasis.engine.fake import FakeEmbedder, FakeEngine
from oasis.models.registry import ModelRegistry, ModelSpec
from oasis.server import create_app
from tests.conftest import API_KEY
from tests.unit.test_batches import sdk, submit, wait

EMBED = "text-embedding-3-small"


def app_with(embedder: FakeEmbedder, tmp: Path, **options: Any) -> Any:
    specs = [
        ModelSpec("fake-model", Path(__file__), aliases=("gpt-3.5-turbo",)),
        ModelSpec("fake-embed", Path(__file__), aliases=(EMBED,), kind="embedding"),
    ]
    settings = Settings(api_key=API_KEY, data_dir=tmp, **options)
    return create_app(settings, registry=ModelRegistry(specs),
                      engines={"fake-model": FakeEngine(n_ctx=4096)},
                      embedders={"fake-embed": embedder})


@pytest.fixture
def embedder() -> FakeEmbedder:
    return FakeEmbedder(name="fake-embed")


@pytest.fixture
def http(embedder: FakeEmbedder, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(app_with(embedder, tmp_path),
                    headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        yield client


def on_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


@pytest.fixture
def where(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[bool]]:
    """Whether the answer was built (``build``) and rendered (``render``) on the event loop,
    once per call."""
    seen: dict[str, list[bool]] = {"build": [], "render": []}

    def spy(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any) -> Any:
            seen[name].append(on_loop())
            return fn(*args)
        return wrapper

    monkeypatch.setattr(service, "_response", spy("build", service._response))
    monkeypatch.setattr(routes, "_render", spy("render", routes._render))
    return seen


def starlette_json(body: Any) -> bytes:
    """What starlette's JSONResponse.render makes of ``body``."""
    return json.dumps(body, ensure_ascii=False, allow_nan=False, indent=None,
                      separators=(",", ":")).encode("utf-8")


def expected(embedder: FakeEmbedder, texts: list[str]) -> list[np.ndarray]:
    tokens = [embedder.tokenize(t) for t in texts]
    return [np.asarray(v) for v in asyncio.run(embedder.submit(tokens).result())]


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_2048_inputs_come_back_right_and_off_the_loop(http: TestClient, embedder: FakeEmbedder,
                                                      where: dict[str, list[bool]],
                                                      schemas: Any, encoding: str) -> None:
    texts = [f"text number {i} — «ünïcode» {i % 7}" for i in range(2048)]
    resp = http.post("/v1/embeddings",
                     json={"model": EMBED, "input": texts, "encoding_format": encoding})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/json"
    body = json.loads(resp.content)  # valid JSON
    assert resp.content == starlette_json(body)  # the bytes JSONResponse would have sent
    if encoding == "float":  # OpenAI's schema types a vector as a list (base64 is a string)
        schemas.validate("CreateEmbeddingResponse", body)
    assert [d["index"] for d in body["data"]] == list(range(2048))
    want = expected(embedder, texts)
    for item, vec in zip(body["data"], want, strict=True):
        e = item["embedding"]
        got = (np.frombuffer(base64.b64decode(e), dtype="<f4") if encoding == "base64"
               else np.array(e, dtype=np.float32))
        assert np.array_equal(got, vec)
    assert where == {"build": [False], "render": [False]}  # both in worker threads


def test_a_small_answer_stays_on_the_loop_with_the_same_headers(
        http: TestClient, where: dict[str, list[bool]]) -> None:
    small = http.post("/v1/embeddings", json={"model": EMBED, "input": ["a", "b"]})
    big = http.post("/v1/embeddings", json={"model": EMBED, "input": ["a"] * 65})
    assert small.status_code == big.status_code == 200
    assert where == {"build": [True, False], "render": [False]}  # the small one: JSONResponse
    assert small.content == starlette_json(small.json())
    skip = {"content-length", "x-request-id", "date"}
    assert ({k for k in small.headers if k not in skip}
            == {k for k in big.headers if k not in skip})


def test_without_auth_a_large_answer_is_rendered_off_the_loop(
        embedder: FakeEmbedder, tmp_path: Path, where: dict[str, list[bool]]) -> None:
    with TestClient(app_with(embedder, tmp_path, no_auth=True),
                    base_url="http://127.0.0.1") as client:
        resp = client.post("/v1/embeddings", json={"model": EMBED, "input": ["x y"] * 100})
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["data"]) == 100
    assert resp.content == starlette_json(resp.json())
    assert where["render"] == [False]


def test_a_batch_line_is_background_work_a_live_request_not(http: TestClient,
                                                            embedder: FakeEmbedder) -> None:
    client = sdk(http)
    client.embeddings.create(model=EMBED, input=["live"])
    assert embedder.backgrounds == [False] and embedder.last_background is False
    lines = [{"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
              "body": {"model": EMBED, "input": [f"line {i}"]}} for i in range(3)]
    done = wait(client, submit(client, lines, "/v1/embeddings").id)
    assert done.status == "completed"
    assert embedder.backgrounds == [False, True, True, True]
    client.embeddings.create(model=EMBED, input=["live again"])
    assert embedder.last_background is False  # the batch's context did not leak
