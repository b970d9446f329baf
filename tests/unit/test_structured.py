"""response_format through the SDK on the fake engine: what is enforced reaches the engine as a
grammar, what cannot be is refused with a 400 naming it."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from openai import OpenAI

from oasis.engine.fake import FakeEngine
from oasis.serving.structured import grammar_for

MSG = [{"role": "user", "content": "Reply in JSON."}]


def schema_format(schema: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema,
                                                   "strict": True}}


def test_a_schema_reaches_the_engine_as_a_grammar(client: OpenAI,
                                                  fake_engine: FakeEngine) -> None:
    fake_engine.reply = '{"city": "Paris"}'
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
              "required": ["city"], "additionalProperties": False}
    r = client.chat.completions.create(model="gpt-3.5-turbo", messages=MSG,  # type: ignore[arg-type]
                                       response_format=schema_format(schema),  # type: ignore[arg-type]
                                       temperature=0)
    assert r.choices[0].message.content == '{"city": "Paris"}'
    req = fake_engine.last_request
    assert req is not None and req.grammar is not None
    assert '"\\"city\\""' in req.grammar and "root ::=" in req.grammar
    # JSON strings cannot hold raw control characters
    assert "\\x00-\\x1F" in req.grammar
    # json_object: any object; plain text: no grammar
    client.chat.completions.create(model="gpt-3.5-turbo", messages=MSG,  # type: ignore[arg-type]
                                   response_format={"type": "json_object"})
    assert fake_engine.last_request is not None and fake_engine.last_request.grammar
    client.chat.completions.create(model="gpt-3.5-turbo", messages=MSG,  # type: ignore[arg-type]
                                   response_format={"type": "text"})
    assert fake_engine.last_request is not None and fake_engine.last_request.grammar is None


@pytest.mark.parametrize("schema, named", [
    ({"type": "number", "minimum": 0.5}, "'minimum' 0.5"),
    ({"type": "object", "properties": {"n": {"type": "string", "exclusiveMaximum": 1}}},
     "'exclusiveMaximum'"),
    ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "'uniqueItems'"),
    ({"type": "string", "format": "email"}, "format 'email'"),
    ({"type": "object", "properties": {"a": {"not": {"type": "null"}}}}, "'not'"),
    ({"$ref": "https://example.com/s.json"}, "reference"),
    ({"type": "object", "patternProperties": {"^x": {}}}, "'patternProperties'"),
])
def test_what_cannot_be_enforced_is_refused(client: OpenAI, schema: Any, named: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="gpt-3.5-turbo", messages=MSG,  # type: ignore[arg-type]
                                       response_format=schema_format(schema))  # type: ignore[arg-type]
    err = info.value.body
    assert isinstance(err, dict) and err["param"] == "response_format"
    assert err["code"] == "unsupported_parameter" and named in err["message"]


def test_bad_response_formats(client: OpenAI) -> None:
    cases: list[tuple[dict[str, Any], list[dict[str, str]], str]] = [
        ({"type": "json_object"}, [{"role": "user", "content": "hi"}], "messages"),
        ({"type": "xml"}, MSG, "response_format.type"),
        ({"type": "json_schema"}, MSG, "response_format.json_schema"),
        ({"type": "json_schema", "json_schema": {"name": "has space", "schema": {}}}, MSG,
         "response_format.json_schema.name"),
        (schema_format({"type": "colour"}), MSG, "response_format"),
        (schema_format({"type": "integer", "minimum": 5, "maximum": 4}), MSG,
         "response_format"),
        (schema_format({"type": "integer", "minimum": "0"}), MSG, "response_format"),
    ]
    for fmt, messages, param in cases:
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="gpt-3.5-turbo", messages=messages,  # type: ignore[arg-type]
                                           response_format=fmt)  # type: ignore[arg-type]
        assert isinstance(info.value.body, dict) and info.value.body["param"] == param, fmt


def test_an_engine_that_cannot_build_the_grammar_refuses(client: OpenAI) -> None:
    # a property named so that the fake engine's grammar check fails, as llama.cpp's can
    schema = {"type": "object", "properties": {"bad_grammar": {"type": "string"}}}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="gpt-3.5-turbo", messages=MSG,  # type: ignore[arg-type]
                                       response_format=schema_format(schema))  # type: ignore[arg-type]
    assert "refused rather than answered unconstrained" in str(info.value)


def test_pydantic_style_schema_converts() -> None:
    schema = {
        "$defs": {"Color": {"enum": ["red", "green"], "type": "string"}},
        "type": "object",
        "properties": {"c": {"$ref": "#/$defs/Color"},
                       "n": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
                       "when": {"type": "string", "format": "date"},
                       "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3}},
        "required": ["c", "n", "when", "tags"],
        "additionalProperties": False,
    }
    gbnf = grammar_for(schema_format(schema))
    assert gbnf is not None and '"\\"red\\""' in gbnf
