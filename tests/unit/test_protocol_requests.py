"""Request fidelity through the official SDK on the fake engine: what OpenAI's reference allows
is accepted, what it does not is a 400 naming the parameter (protocol/)."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI
from pydantic import BaseModel

from oasis.engine.fake import FakeEngine

USER = [{"role": "user", "content": "Hi, answer in JSON"}]


def chat(client: OpenAI, **kw: Any) -> Any:
    kw.setdefault("messages", USER)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model="gpt-3.5-turbo", **kw)


def complete(client: OpenAI, **kw: Any) -> Any:
    kw.setdefault("prompt", "x")
    kw.setdefault("temperature", 0)
    return client.completions.create(model="text-davinci-002", **kw)


def refused(call: Any, client: OpenAI, param: str, fragment: str = "", **kw: Any) -> Any:
    with pytest.raises(openai.BadRequestError) as info:
        call(client, **kw)
    body: Any = info.value.body
    assert info.value.status_code == 400
    assert body["param"] == param, body
    assert fragment in body["message"], body
    return body


# -- stream_options ---------------------------------------------------------------------------


@pytest.mark.parametrize("call", [chat, complete])
def test_stream_options_need_stream(client: OpenAI, call: Any) -> None:
    for stream in ({}, {"stream": False}):
        refused(call, client, "stream_options",
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                stream_options={"include_usage": True}, **stream)
    chunks = list(call(client, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage is not None
    refused(call, client, "stream_options.usage", "Unrecognized request argument",
            stream=True, stream_options={"usage": True})


# -- whole numbers written as 2.0 ---------------------------------------------------------------


@pytest.mark.parametrize(("name", "value"), [
    ("n", 2), ("max_tokens", 3), ("max_completion_tokens", 3), ("seed", 7),
    ("top_logprobs", 2),
])
def test_chat_integers_may_be_written_as_floats(client: OpenAI, name: str, value: int) -> None:
    extra: dict[str, Any] = {"logprobs": True} if name == "top_logprobs" else {}
    whole = chat(client, **{name: float(value)}, **extra)
    assert whole.model_dump() | {"id": "", "created": 0} == (
        chat(client, **{name: value}, **extra).model_dump() | {"id": "", "created": 0})
    refused(chat, client, name, "expected an integer, but got a decimal",
            **{name: value + 0.5}, **extra)


@pytest.mark.parametrize(("name", "value"), [
    ("n", 2), ("max_tokens", 3), ("seed", 7), ("logprobs", 2), ("best_of", 3),
])
def test_completions_integers_may_be_written_as_floats(client: OpenAI, name: str,
                                                       value: int) -> None:
    whole = complete(client, **{name: float(value)})
    assert whole.model_dump() | {"id": "", "created": 0} == (
        complete(client, **{name: value}).model_dump() | {"id": "", "created": 0})
    refused(complete, client, name, "expected an integer, but got a decimal",
            **{name: value + 0.5})


def test_non_finite_and_huge_floats_are_not_integers(client: OpenAI, http: TestClient) -> None:
    refused(chat, client, "n", "Expected a value <= 128", n=1e20)
    # Python's JSON parser takes Infinity and NaN (the SDK never sends them)
    for value in ("Infinity", "NaN", "-Infinity"):
        body = '{"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "x"}], '
        r = http.post("/v1/chat/completions", content=f'{body}"max_tokens": {value}}}',
                      headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens", r.text


# -- logit_bias keys ----------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["１", "٣", " 5", "+5", "-5", "5.0", "5_0", "1e2", "", "0x10"])
def test_logit_bias_keys_are_ascii_token_ids(client: OpenAI, key: str) -> None:
    refused(chat, client, "logit_bias", "Invalid key in 'logit_bias'", logit_bias={key: 1})


def test_logit_bias_key_range(client: OpenAI) -> None:
    refused(chat, client, "logit_bias", "Token ids must be in", logit_bias={"1" * 5000: 1})
    token = ord("z") + 3  # the fake engine's id for "z"
    r = chat(client, logit_bias={f"00{token}": 100}, max_tokens=2)
    assert r.choices[0].message.content == "zz"


# -- response_format ------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "param"), [
    ({"type": "text", "strict": True}, "response_format.strict"),
    ({"type": "json_object", "schema": {}}, "response_format.schema"),
    ({"type": "json_schema", "schema": {}, "json_schema": {"name": "a"}},
     "response_format.schema"),
    ({"type": "json_schema", "json_schema": {"name": "a", "schema": {}, "examples": []}},
     "response_format.json_schema.examples"),
])
def test_unknown_keys_in_response_format(client: OpenAI, fmt: dict[str, Any],
                                         param: str) -> None:
    refused(chat, client, param, f"Unrecognized request argument supplied: {param}",
            response_format=fmt)


def test_response_formats_the_sdk_sends_are_accepted(client: OpenAI,
                                                     fake_engine: FakeEngine) -> None:
    class City(BaseModel):
        name: str

    fake_engine.reply = '{"name": "Paris"}'
    r = client.chat.completions.parse(model="gpt-3.5-turbo", messages=USER,  # type: ignore[arg-type]
                                      response_format=City, temperature=0)
    assert r.choices[0].message.parsed == City(name="Paris")
    for fmt in ({"type": "text"}, {"type": "json_object"},
                {"type": "json_schema", "json_schema": {"name": "city", "description": "A city",
                                                        "strict": None}}):
        assert chat(client, response_format=fmt).choices[0].finish_reason == "stop"
    refused(chat, client, "response_format.type", "expected one of 'text', 'json_object' or "
            "'json_schema'", response_format={"type": "grammar"})
    refused(chat, client, "response_format.json_schema.name", "maximum length 64",
            response_format={"type": "json_schema", "json_schema": {"name": "a" * 65}})
