"""Every body and stream chunk validates against OpenAI's OpenAPI schemas (fake engine).

The schemas are extracted from openai/openai-openapi (commit recorded in tests/data) by
scripts/extract_openapi_schemas.py. integration/test_contract.py runs the same on the real model.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import Schemas, sse_data

MSGS = [{"role": "user", "content": "hi"}]

CHAT_CASES: list[dict[str, Any]] = [
    {},
    {"n": 2, "temperature": 0.7, "seed": 3},
    {"logprobs": True, "top_logprobs": 2, "max_tokens": 3},
    {"stop": "am", "service_tier": "auto"},
]
COMPLETION_CASES: list[dict[str, Any]] = [
    {"prompt": "x"},
    {"prompt": ["x", "y"], "n": 2, "logprobs": 2},
    {"prompt": [5, 6, 7], "max_tokens": 3, "best_of": 2},
    {"prompt": "x", "echo": True},
]


def test_schema_file_records_its_source(schemas: Schemas) -> None:
    assert schemas.doc["source"].startswith("openai/openai-openapi")
    assert len(schemas.doc["commit"]) == 40


@pytest.mark.parametrize("extra", CHAT_CASES)
def test_chat_completion_body(http: TestClient, schemas: Schemas, extra: dict[str, Any]) -> None:
    r = http.post("/v1/chat/completions", json={"model": "gpt-3.5-turbo", "messages": MSGS,
                                                **extra})
    assert r.status_code == 200, r.text
    schemas.validate("CreateChatCompletionResponse", r.json())


@pytest.mark.parametrize("extra", CHAT_CASES)
def test_chat_completion_chunks(http: TestClient, schemas: Schemas,
                                extra: dict[str, Any]) -> None:
    r = http.post("/v1/chat/completions", json={
        "model": "gpt-3.5-turbo", "messages": MSGS, "stream": True,
        "stream_options": {"include_usage": True}, **extra})
    payloads = sse_data(r.text)
    assert payloads[-1] == "[DONE]"
    for p in payloads[:-1]:
        schemas.validate("CreateChatCompletionStreamResponse", json.loads(p))


@pytest.mark.parametrize("extra", COMPLETION_CASES)
def test_completion_body(http: TestClient, schemas: Schemas, extra: dict[str, Any]) -> None:
    r = http.post("/v1/completions", json={"model": "text-davinci-002", **extra})
    assert r.status_code == 200, r.text
    schemas.validate("CreateCompletionResponse", r.json())


def test_completion_chunks(http: TestClient, schemas: Schemas) -> None:
    r = http.post("/v1/completions", json={"model": "text-davinci-002", "prompt": "x",
                                           "stream": True, "logprobs": 1,
                                           "stream_options": {"include_usage": True}})
    payloads = sse_data(r.text)
    for p in payloads[:-1]:
        body = json.loads(p)
        # OpenAI streams completion chunks with finish_reason null until the last one; the
        # document's schema (shared with the non-stream body) does not say so.
        for choice in body["choices"]:
            if choice["finish_reason"] is None:
                choice = dict(choice, finish_reason="stop")
                body = dict(body, choices=[choice])
        schemas.validate("CreateCompletionResponse", body)


def test_models(http: TestClient, schemas: Schemas) -> None:
    schemas.validate("ListModelsResponse", http.get("/v1/models").json())
    schemas.validate("Model", http.get("/v1/models/gpt-3.5-turbo").json())


def test_required_nullable_fields_are_present(http: TestClient) -> None:
    body = http.post("/v1/chat/completions", json={"model": "gpt-3.5-turbo",
                                                   "messages": MSGS}).json()
    choice = body["choices"][0]
    assert choice["logprobs"] is None and choice["message"]["refusal"] is None
    assert "created" in http.get("/v1/models/gpt-3.5-turbo").json()
