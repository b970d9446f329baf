"""Shared fixtures: an app on the fake engine, reached through the official openai SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from oasis.config import Settings
from oasis.engine.fake import FakeEmbedder, FakeEngine
from oasis.models.registry import ModelRegistry, ModelSpec
from oasis.server import create_app

DATA = Path(__file__).parent / "data"
API_KEY = "sk-test-key-123456"


def make_app(engine: FakeEngine | None = None, *, api_key: str | None = API_KEY,
             tmp: Path | None = None, no_auth: bool = False,
             embedder: FakeEmbedder | None = None, **options: Any) -> Any:
    """An app on the fake engine; with ``embedder``, also an embedding model "fake-embed"
    (alias text-embedding-3-small)."""
    engine = engine or FakeEngine()
    specs = [ModelSpec("fake-model", Path(__file__),
                       aliases=("gpt-3.5-turbo", "text-davinci-002"))]
    embedders = {}
    if embedder is not None:
        specs.append(ModelSpec("fake-embed", Path(__file__), aliases=("text-embedding-3-small",),
                               kind="embedding"))
        embedders["fake-embed"] = embedder
    settings = Settings(api_key=api_key, data_dir=tmp or Path("/tmp/oasis-test-data"),
                        no_auth=no_auth, **options)
    return create_app(settings, registry=ModelRegistry(specs),
                      engines={"fake-model": engine}, embedders=embedders)


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def http(fake_engine: FakeEngine, tmp_path: Path) -> Iterator[TestClient]:
    app = make_app(fake_engine, tmp=tmp_path)
    with TestClient(app, headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        yield client


@pytest.fixture
def client(http: TestClient) -> OpenAI:
    return OpenAI(base_url="http://testserver/v1", api_key=API_KEY, http_client=http,
                  max_retries=0)


class Schemas:
    """Validates bodies against the schemas of OpenAI's OpenAPI document (tests/data)."""

    def __init__(self) -> None:
        self.doc = json.loads((DATA / "openapi-schemas.json").read_text())

    def validate(self, name: str, body: Any) -> None:
        schema = {"$ref": f"#/components/schemas/{name}", "components": self.doc["components"]}
        jsonschema.validate(body, schema)


@pytest.fixture(scope="session")
def schemas() -> Schemas:
    return Schemas()


def without_nulls(value: Any) -> Any:
    """``value`` without null members. OpenAI's API sends a batch's unset times and files as
    nulls while its OpenAPI document types them as values; schema checks read past that."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def sse_data(text: str) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order."""
    return [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]
