"""Real-model responses validate against OpenAI's OpenAPI schemas."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.conftest import Schemas, sse_data
from tests.integration.conftest import LiveServer

MSGS = [{"role": "user", "content": "Name a color."}]


def post(live: LiveServer, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{live.v1}{path}", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {live.api_key}"})


TOOL = {"type": "function", "function": {"name": "pick", "parameters": {
    "type": "object", "properties": {"color": {"type": "string", "maxLength": 10}},
    "required": ["color"]}}}


@pytest.mark.parametrize("extra", [
    {},
    {"n": 2, "logprobs": True, "top_logprobs": 2},
    {"tools": [TOOL], "tool_choice": "required", "parallel_tool_calls": False, "n": 2,
     "logprobs": True, "max_tokens": 60},
    {"functions": [TOOL["function"]], "function_call": {"name": "pick"}, "max_tokens": 60},
])
def test_chat(live: LiveServer, schemas: Schemas, extra: dict[str, Any]) -> None:
    r = post(live, "/chat/completions", {"model": "gpt-4o", "messages": MSGS,
                                         "max_tokens": 8, **extra})
    if "tools" in extra or "functions" in extra:
        assert r.json()["choices"][0]["finish_reason"] in ("tool_calls", "function_call")
    assert r.status_code == 200, r.text
    schemas.validate("CreateChatCompletionResponse", r.json())
    r = post(live, "/chat/completions", {"model": "gpt-4o", "messages": MSGS, "max_tokens": 8,
                                         "stream": True,
                                         "stream_options": {"include_usage": True}, **extra})
    payloads = sse_data(r.text)
    assert payloads[-1] == "[DONE]"
    for p in payloads[:-1]:
        schemas.validate("CreateChatCompletionStreamResponse", json.loads(p))


def test_completion(live: LiveServer, schemas: Schemas) -> None:
    r = post(live, "/completions", {"model": "davinci", "prompt": ["a", "b"], "max_tokens": 4,
                                    "logprobs": 3})
    assert r.status_code == 200, r.text
    schemas.validate("CreateCompletionResponse", r.json())


def test_errors_and_models(live: LiveServer, schemas: Schemas) -> None:
    r = post(live, "/chat/completions", {"model": "gpt-4o", "messages": MSGS,
                                         "max_tokens": 100000})
    assert r.status_code == 400
    schemas.validate("ErrorResponse", r.json())
    assert r.json()["error"]["code"] == "context_length_exceeded"
    headers = {"Authorization": f"Bearer {live.api_key}"}
    models = httpx.get(f"{live.v1}/models", headers=headers).json()
    schemas.validate("ListModelsResponse", models)
    ids = {m["id"] for m in models["data"]}
    assert {"SmolLM2-135M-Instruct", "gpt-3.5-turbo", "gpt-4o-mini", "gpt-4o", "gpt-4",
            "text-davinci-002", "text-davinci-003", "davinci", "babbage-002"} <= ids
