"""/v1/embeddings through the official SDK on the fake embedder: every input form, both
encodings, OpenAI's limits and errors, the model kinds, metering, and hostile input. The real
model's vectors are checked in tests/integration/test_embeddings_real.py."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from oasis.config import Settings
from oasis.engine.fake import FakeEmbedder, FakeEngine
from oasis.models.registry import ModelRegistry, ModelSpec
from oasis.server import create_app
from tests.conftest import API_KEY
from tests.unit.test_gateway import as_key, new_key, records

EMBED = "text-embedding-3-small"


def embedding_app(tmp: Path, **options: Any) -> Any:
    specs = [
        ModelSpec("fake-model", Path(__file__), aliases=("gpt-3.5-turbo",)),
        ModelSpec("fake-embed", Path(__file__), aliases=(EMBED, "text-embedding-ada-002"),
                  kind="embedding"),
        ModelSpec("fake-matryoshka", Path(__file__), kind="embedding", matryoshka=True),
    ]
    settings = Settings(api_key=API_KEY, data_dir=tmp, **options)
    embedders = {"fake-embed": FakeEmbedder(name="fake-embed"),
                 "fake-matryoshka": FakeEmbedder(name="fake-matryoshka")}
    return create_app(settings, registry=ModelRegistry(specs), engines={"fake-model": FakeEngine()},
                      embedders=embedders)


@pytest.fixture
def http(tmp_path: Path) -> Iterator[TestClient]:
    app = embedding_app(tmp_path, prices={EMBED: {"input": 100.0}})
    with TestClient(app, headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        yield client


@pytest.fixture
def client(http: TestClient) -> OpenAI:
    return OpenAI(base_url="http://testserver/v1", api_key=API_KEY, http_client=http,
                  max_retries=0)


def vectors(body: dict[str, Any]) -> list[np.ndarray]:
    out = []
    for item in body["data"]:
        e = item["embedding"]
        out.append(np.frombuffer(base64.b64decode(e), dtype="<f4") if isinstance(e, str)
                   else np.array(e, dtype=np.float32))
    return out


def test_float_and_base64_are_the_same_vectors(client: OpenAI, http: TestClient,
                                               schemas: Any) -> None:
    texts = ["The cat sat on the mat.", "猫坐在垫子上。", "x"]
    as_float = client.embeddings.create(model=EMBED, input=texts, encoding_format="float")
    as_b64 = client.embeddings.create(model=EMBED, input=texts)  # the SDK's default: base64
    assert [d.index for d in as_float.data] == [0, 1, 2]
    for f, b in zip(as_float.data, as_b64.data, strict=True):
        assert len(f.embedding) == 384
        assert f.embedding == b.embedding  # the same float32 values, bit for bit
        assert abs(float(np.linalg.norm(f.embedding)) - 1.0) < 1e-5
    assert as_float.model == EMBED and as_float.object == "list"
    assert as_float.usage.prompt_tokens == as_float.usage.total_tokens > 0
    raw = http.post("/v1/embeddings", json={"model": EMBED, "input": texts}).json()
    schemas.validate("CreateEmbeddingResponse", raw)
    raw64 = http.post("/v1/embeddings", json={"model": EMBED, "input": texts,
                                              "encoding_format": "base64"}).json()
    assert all(isinstance(d["embedding"], str) for d in raw64["data"])
    for a, b in zip(vectors(raw), vectors(raw64), strict=True):
        assert np.array_equal(a, b)


def test_every_input_form(client: OpenAI, http: TestClient) -> None:
    one = client.embeddings.create(model=EMBED, input="hello world", encoding_format="float")
    assert len(one.data) == 1
    fake = FakeEmbedder()
    ids = fake.tokenize("hello world")[1:-1]  # the text's own tokens, without the specials
    by_tokens = client.embeddings.create(model=EMBED, input=ids, encoding_format="float")
    assert by_tokens.data[0].embedding == one.data[0].embedding
    assert by_tokens.usage.prompt_tokens == one.usage.prompt_tokens
    many = client.embeddings.create(model=EMBED, input=[ids, ids[:1]], encoding_format="float")
    assert len(many.data) == 2 and many.data[0].embedding == one.data[0].embedding
    ada = client.embeddings.create(model="text-embedding-ada-002", input="hello world",
                                   encoding_format="float")
    assert ada.data[0].embedding == one.data[0].embedding
    # the legacy engines path the 0.28 SDK uses with engine=
    r = http.post("/v1/engines/text-embedding-ada-002/embeddings", json={"input": "hello world"})
    assert r.status_code == 200 and len(r.json()["data"]) == 1


def test_dimensions(client: OpenAI) -> None:
    full = client.embeddings.create(model=EMBED, input="a b c", dimensions=384,
                                    encoding_format="float")
    assert len(full.data[0].embedding) == 384
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=EMBED, input="a b c", dimensions=128)
    assert err.value.body["param"] == "dimensions"  # type: ignore[index]
    assert "does not support specifying dimensions" in err.value.body["message"]  # type: ignore[index]
    short = client.embeddings.create(model="fake-matryoshka", input="a b c", dimensions=64,
                                     encoding_format="float")
    vec = np.array(short.data[0].embedding)
    assert vec.shape == (64,) and abs(float(np.linalg.norm(vec)) - 1) < 1e-5
    whole = np.array(client.embeddings.create(model="fake-matryoshka", input="a b c",
                                              encoding_format="float").data[0].embedding)
    assert np.allclose(vec, whole[:64] / np.linalg.norm(whole[:64]), atol=1e-6)
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="fake-matryoshka", input="a", dimensions=385)
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="fake-matryoshka", input="a", dimensions=0)


@pytest.mark.parametrize(("body", "param", "words"), [
    ({"input": ""}, "input", "empty string"),
    ({"input": []}, "input", "empty array"),
    ({"input": ["ok", ""]}, "input", "input[1]"),
    ({"input": [[]]}, "input", "cannot be empty"),
    ({"input": ["x"] * 2049}, "input", "maximum length 2048"),
    ({"input": " ".join(["w"] * 600)}, "input", "maximum context length is 512"),
    ({"input": [40000]}, "input", "not in this model's vocabulary"),
    ({"input": [-1]}, "input", ""),
    ({"input": [1.5]}, "input", ""),
    ({"input": [["a"]]}, "input", ""),
    ({"input": "a", "encoding_format": "hex"}, "encoding_format", ""),
    ({"input": "a", "dimensions": "8"}, "dimensions", ""),
    ({"input": "a", "user": 5}, "user", ""),
    ({"input": "a", "temperature": 1}, "temperature", "Unrecognized"),
    ({"input": "\ud800"}, "input", "lone surrogate"),
    ({}, "input", ""),
])
def test_bad_requests_get_openai_400s(http: TestClient, body: dict[str, Any], param: str,
                                      words: str) -> None:
    raw = json.dumps({"model": EMBED, **body}).encode()
    r = http.post("/v1/embeddings", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert (err["param"] or "").startswith(param), err
    assert words in err["message"]


def test_total_tokens_per_request_limit(http: TestClient) -> None:
    words = " ".join(["w"] * 200)
    r = http.post("/v1/embeddings", json={"model": EMBED, "input": [words] * 1600})
    assert r.status_code == 400
    assert "max 300000 tokens per request" in r.json()["error"]["message"]


def test_model_kinds_are_checked(http: TestClient) -> None:
    r = http.post("/v1/embeddings", json={"model": "gpt-3.5-turbo", "input": "hi"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    assert "not an embedding model" in r.json()["error"]["message"]
    for path, body in (("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
                       ("/v1/completions", {"prompt": "hi"}),
                       ("/v1/responses", {"input": "hi"})):
        r = http.post(path, json={"model": EMBED, **body})
        assert r.status_code == 400, (path, r.text)
        assert "is an embedding model" in r.json()["error"]["message"]
    r = http.post("/v1/embeddings", json={"model": "no-such-model", "input": "hi"})
    assert r.status_code == 404
    models = {m["id"] for m in http.get("/v1/models").json()["data"]}
    assert {EMBED, "fake-embed", "text-embedding-ada-002"} <= models


def test_metered_limited_and_billed(http: TestClient) -> None:
    secret, key = new_key(http, tpm=60)
    headers = as_key(secret)
    r = http.post("/v1/embeddings", json={"model": EMBED, "input": ["one two", "three"]},
                  headers=headers)
    assert r.status_code == 200
    tokens = r.json()["usage"]["prompt_tokens"]
    assert tokens == 4 + 3
    rows = [u for u in records(http) if u.endpoint == "/v1/embeddings"]
    assert len(rows) == 1
    assert rows[0].prompt_tokens == tokens and rows[0].completion_tokens == 0
    assert rows[0].cost_usd == pytest.approx(tokens * 100 / 1e6)
    assert rows[0].key_id == int(key["id"][4:])
    # the key's tokens per minute hold for embeddings too
    big = " ".join(["w"] * 60)
    r = http.post("/v1/embeddings", json={"model": EMBED, "input": big}, headers=headers)
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"


def test_concurrent_requests_each_get_their_own_vectors(http: TestClient) -> None:
    texts = [f"text number {i} " * (1 + i % 5) for i in range(32)]
    expected = [FakeEmbedder().submit([FakeEmbedder().tokenize(t)])._vectors[0] for t in texts]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            r = http.post("/v1/embeddings", json={"model": EMBED, "input": texts[i],
                                                  "encoding_format": "float"})
            assert r.status_code == 200, r.text
            results[i] = vectors(r.json())[0]
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(32):
        assert np.allclose(results[i], expected[i], atol=1e-6)
    rows = [u for u in records(http) if u.endpoint == "/v1/embeddings"]
    assert len(rows) == 32 and all(u.status == 200 for u in rows)


def test_huge_and_deep_bodies_are_refused_cleanly(http: TestClient) -> None:
    deep = '{"model": "' + EMBED + '", "input": ' + "[" * 500 + '"a"' + "]" * 500 + "}"
    r = http.post("/v1/embeddings", content=deep, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "nested" in r.json()["error"]["message"]
    r = http.post("/v1/embeddings", content=b'{"model": "x", "input": ["a",',
                  headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    r = http.post("/v1/embeddings", json={"model": EMBED, "input": ["a"] * 100_000})
    assert r.status_code == 400 and "maximum length 2048" in r.json()["error"]["message"]
    assert http.get("/health").status_code == 200
