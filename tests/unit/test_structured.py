"""response_format through the SDK on the fake engine: what is enforced reaches the engine as a
grammar, what cannot be is refused with a 400 naming it, and no schema, however large, deep or
malformed, gets anything but a grammar or a 400."""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

import openai
import pytest
from openai import OpenAI
from pydantic import AnyUrl, BaseModel, Field, HttpUrl

from oasis.engine.fake import FakeEngine
from oasis.errors import InvalidRequestError, OasisError, UnsupportedParameterError
from oasis.serving.gbnf import Limits
from oasis.serving.structured import (
    GrammarBuilder,
    answer_grammar,
    answer_schema,
    check_schema,
    grammar_for,
)
from tests.unit.test_schema_gbnf import gbnf_regex

MSG = [{"role": "user", "content": "Reply in JSON."}]


def schema_format(schema: Any) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": schema, "strict": True},
    }


def test_a_schema_reaches_the_engine_as_a_grammar(client: OpenAI, fake_engine: FakeEngine) -> None:
    fake_engine.reply = '{"city": "Paris"}'
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
        "additionalProperties": False,
    }
    r = client.chat.completions.create(
        model="gpt-3.5-turbo",
        messages=MSG,  # type: ignore[arg-type]
        response_format=schema_format(schema),  # type: ignore[arg-type]
        temperature=0,
    )
    assert r.choices[0].message.content == '{"city": "Paris"}'
    req = fake_engine.last_request
    assert req is not None and req.grammar is not None
    assert '"\\"city\\""' in req.grammar and "root ::=" in req.grammar
    # JSON strings cannot hold raw control characters
    assert "\\x00-\\x1F" in req.grammar
    # json_object: any object; plain text: no grammar
    client.chat.completions.create(
        model="gpt-3.5-turbo",
        messages=MSG,  # type: ignore[arg-type]
        response_format={"type": "json_object"},
    )
    assert fake_engine.last_request is not None and fake_engine.last_request.grammar
    client.chat.completions.create(
        model="gpt-3.5-turbo",
        messages=MSG,  # type: ignore[arg-type]
        response_format={"type": "text"},
    )
    assert fake_engine.last_request is not None and fake_engine.last_request.grammar is None


@pytest.mark.parametrize(
    "schema, named",
    [
        ({"type": "number", "multipleOf": 0.5}, "'multipleOf'"),
        (
            {"type": "object", "properties": {"n": {"type": "string", "exclusiveMaximum": 1}}},
            "'exclusiveMaximum'",
        ),
        ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "'uniqueItems'"),
        ({"type": "string", "format": "idn-email"}, "format 'idn-email'"),
        ({"type": "object", "properties": {"a": {"not": {"type": "null"}}}}, "'not'"),
        ({"$ref": "https://example.com/s.json"}, "reference"),
        ({"type": "object", "patternProperties": {"^x": {}}}, "'patternProperties'"),
    ],
)
def test_what_cannot_be_enforced_is_refused(client: OpenAI, schema: Any, named: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="gpt-3.5-turbo",
            messages=MSG,  # type: ignore[arg-type]
            response_format=schema_format(schema),
        )  # type: ignore[arg-type]
    err = info.value.body
    assert isinstance(err, dict) and err["param"] == "response_format"
    assert err["code"] == "unsupported_parameter" and named in err["message"]


def test_bad_response_formats(client: OpenAI) -> None:
    cases: list[tuple[dict[str, Any], list[dict[str, str]], str]] = [
        ({"type": "json_object"}, [{"role": "user", "content": "hi"}], "messages"),
        ({"type": "xml"}, MSG, "response_format.type"),
        ({"type": "json_schema"}, MSG, "response_format.json_schema"),
        (
            {"type": "json_schema", "json_schema": {"name": "has space", "schema": {}}},
            MSG,
            "response_format.json_schema.name",
        ),
        (schema_format({"type": "colour"}), MSG, "response_format"),
        (schema_format({"type": "integer", "minimum": 5, "maximum": 4}), MSG, "response_format"),
        (schema_format({"type": "integer", "minimum": "0"}), MSG, "response_format"),
    ]
    for fmt, messages, param in cases:
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(
                model="gpt-3.5-turbo",
                messages=messages,  # type: ignore[arg-type]
                response_format=fmt,
            )  # type: ignore[arg-type]
        assert isinstance(info.value.body, dict) and info.value.body["param"] == param, fmt


def test_an_engine_that_cannot_build_the_grammar_refuses(client: OpenAI) -> None:
    # a property named so that the fake engine's grammar check fails, as llama.cpp's can
    schema = {"type": "object", "properties": {"bad_grammar": {"type": "string"}}}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="gpt-3.5-turbo",
            messages=MSG,  # type: ignore[arg-type]
            response_format=schema_format(schema),
        )  # type: ignore[arg-type]
    assert "refused rather than answered unconstrained" in str(info.value)


def test_pydantic_style_schema_converts() -> None:
    schema = {
        "$defs": {"Color": {"enum": ["red", "green"], "type": "string"}},
        "type": "object",
        "properties": {
            "c": {"$ref": "#/$defs/Color"},
            "n": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
            "when": {"type": "string", "format": "date"},
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        },
        "required": ["c", "n", "when", "tags"],
        "additionalProperties": False,
    }
    gbnf = grammar_for(schema_format(schema))
    assert gbnf is not None and '"\\"red\\""' in gbnf


# -- limits: a few hundred bytes of schema never become a grammar llama.cpp cannot hold ------

BIG = [
    ({"type": "string", "maxLength": 100000}, "'maxLength' 100000"),
    ({"type": "string", "minLength": 100000}, "'minLength' 100000"),
    ({"type": "array", "items": {"type": "integer"}, "maxItems": 1000000000}, "'maxItems'"),
    ({"type": "array", "items": {"type": "integer"}, "minItems": 5000}, "'minItems' 5000"),
    ({"type": "string", "pattern": "^a{0,100000}$"}, "100000"),
    ({"type": "string", "pattern": "^a{5000,}$"}, "5000"),
]


@pytest.mark.parametrize("schema, named", BIG)
def test_repetitions_past_the_limit_are_refused(client: OpenAI, schema: Any, named: str) -> None:
    wrapped = {"type": "object", "properties": {"text": schema}, "required": ["text"]}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="gpt-3.5-turbo",
            messages=MSG,  # type: ignore[arg-type]
            response_format=schema_format(wrapped),
        )  # type: ignore[arg-type]
    err: Any = info.value.body
    assert err["param"] == "response_format" and err["code"] == "unsupported_parameter"
    assert named in err["message"] and "limit of 2000" in err["message"]
    assert "response_format 'answer'" in err["message"] and "properties.text" in err["message"]
    tool = {"type": "function", "function": {"name": "f", "parameters": wrapped}}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="gpt-3.5-turbo",
            messages=MSG,  # type: ignore[arg-type]
            tools=[tool],
            tool_choice="required",
        )  # type: ignore[list-item]
    err = info.value.body
    assert err["param"] == "tools[0].function.parameters" and named in err["message"]


def test_the_message_names_the_keyword_the_place_and_the_limit() -> None:
    with pytest.raises(UnsupportedParameterError) as info:
        answer_schema(
            schema_format(
                {"type": "object", "properties": {"text": {"type": "string", "maxLength": 100000}}}
            )
        )
    assert info.value.message == (
        "Invalid schema for response_format 'answer': 'maxLength' 100000 at properties.text "
        "is above the limit of 2000 that oasis can enforce."
    )
    assert info.value.param == "response_format" and info.value.status == 400


def test_limits_are_configurable() -> None:
    small = Limits(repetition=10, depth=8, properties=3, references=2)
    check_schema({"type": "string", "maxLength": 10}, limits=small)
    for schema, named in [
        ({"type": "string", "maxLength": 11}, "limit of 10"),
        (json.loads('{"type": "array", "items": ' * 9 + "{}" + "}" * 9), "8 levels"),
        ({"type": "object", "properties": {k: {} for k in "abcd"}}, "4 properties"),
        ({"$defs": {k: {} for k in "abc"}, "type": "object"}, "more than 2 definitions"),
    ]:
        with pytest.raises(UnsupportedParameterError, match=named):
            check_schema(schema, limits=small)
        with pytest.raises(UnsupportedParameterError, match=named):
            GrammarBuilder(small).schema(schema, "x", param="tools")


@pytest.mark.parametrize("key", ["items", "properties", "anyOf", "additionalProperties"])
def test_a_schema_ten_thousand_levels_deep_is_a_400(key: str) -> None:
    schema: Any = {"type": "string"}
    for _ in range(10_000):
        if key == "items":
            schema = {"type": "array", "items": schema}
        elif key == "properties":
            schema = {"type": "object", "properties": {"a": schema}}
        elif key == "anyOf":
            schema = {"anyOf": [schema, {"type": "null"}]}
        else:
            schema = {"type": "object", "additionalProperties": schema}
    with pytest.raises(UnsupportedParameterError, match="nests more than 64 levels"):
        answer_schema(schema_format(schema))
    with pytest.raises(UnsupportedParameterError, match="nests more than 64 levels"):
        GrammarBuilder().schema(schema, "x", param="tools")


def test_a_chain_of_references_never_deepens_the_walk() -> None:
    defs = {f"d{i}": {"$ref": f"#/$defs/d{i + 1}"} for i in range(900)}
    defs["d900"] = {"type": "string", "maxLength": 3}
    gbnf = answer_grammar({"$defs": defs, "$ref": "#/$defs/d0"})
    assert "d900" in gbnf or "d9" in gbnf
    defs = {f"d{i}": {"$ref": f"#/$defs/d{i + 1}"} for i in range(5000)}
    with pytest.raises(UnsupportedParameterError, match="more than 1000 definitions"):
        answer_grammar({"$defs": defs, "$ref": "#/$defs/d0"})


def test_grammar_size_and_total_repetitions_are_bounded() -> None:
    same = {
        "type": "object",
        "properties": {f"f{i}": {"type": "string", "maxLength": 2000} for i in range(30)},
    }
    answer_grammar(same)  # one rule, shared by the 30 fields: llama.cpp expands it once
    many = {
        "type": "object",
        "properties": {f"f{i}": {"type": "string", "maxLength": 2000 - i} for i in range(30)},
    }
    with pytest.raises(
        UnsupportedParameterError, match=r"add up to 595\d\d, above the limit of 50000"
    ):
        answer_grammar(many)
    huge = {"enum": ["x" * 1000 + str(i) for i in range(300)]}
    with pytest.raises(UnsupportedParameterError, match="262144 bytes"):
        answer_grammar(huge)
    with pytest.raises(UnsupportedParameterError, match="262144"):
        check_schema(
            {
                "type": "object",
                "properties": {f"p{i}" * 40: {"type": "integer"} for i in range(900)},
            }
        )


# -- shapes: any JSON value in a keyword is a 400 naming it ----------------------------------

SHAPES = [
    ({"type": {"a": 1}}, "'type'"),
    ({"type": [["string"]]}, "'type'"),
    ({"type": []}, "'type'"),
    ({"type": "string", "format": ["date"]}, "'format'"),
    ({"type": "string", "format": {"a": 1}}, "'format'"),
    ({"type": "number", "maximum": float("inf")}, "'maximum'"),
    ({"type": "number", "minimum": float("-inf")}, "'minimum'"),
    ({"type": "integer", "exclusiveMaximum": float("nan")}, "'exclusiveMaximum'"),
    ({"type": "number", "maximum": True}, "'maximum'"),
    ({"type": "string", "pattern": 5}, "'pattern'"),
    ({"enum": "red"}, "'enum'"),
    ({"enum": []}, "'enum'"),
    ({"const": float("nan")}, "not JSON"),
    ({"enum": [1, float("inf")]}, "not JSON"),
    ({"type": "object", "required": "a"}, "'required'"),
    ({"type": "object", "required": [1]}, "'required'"),
    ({"type": "object", "properties": []}, "'properties'"),
    ({"type": "object", "properties": {"a": 5}}, "properties.a"),
    ({"type": "object", "additionalProperties": 1}, "'additionalProperties'"),
    ({"type": "array", "items": 5}, "'items'"),
    ({"type": "array", "items": [5]}, "items.0"),
    ({"type": "array", "prefixItems": {}}, "'prefixItems'"),
    ({"$ref": 5}, "'$ref'"),
    ({"$ref": "#/nowhere"}, "points at no schema"),
    ({"$ref": "#/$defs", "$defs": {"a": {}}}, "'a'"),
    ({"$defs": {"a": 1}, "type": "object"}, "$defs.a"),
    ({"$defs": [], "type": "object"}, "'$defs'"),
    ({"anyOf": {}}, "'anyOf'"),
    ({"anyOf": [1]}, "anyOf[0]"),
    ({"type": "string", "maxLength": -1}, "'maxLength'"),
    ({"type": "string", "maxLength": 1.5}, "'maxLength'"),
    ({"type": "string", "minLength": 5, "maxLength": 2}, "'minLength'"),
    ({"type": "array", "minItems": 5, "maxItems": 2}, "'minItems'"),
    ({"type": "integer", "minimum": 5, "maximum": 4}, "admit no integer"),
    ({"type": "number", "minimum": 0.5, "exclusiveMaximum": 0.5}, "admit no number"),
    ({"type": "object", "required": ["a"], "additionalProperties": False}, "'required'"),
    ({"type": "object", "properties": {"a": False}, "required": ["a"]}, "required"),
    ({"type": "string", "enum": [1, 2]}, "'enum'"),
    (False, "no value satisfies"),
    ([], "expected a schema"),
    ({"type": "object", "properties": {"a": {"type": "string"}}, 3: 4}, "not a string"),
]


@pytest.mark.parametrize("schema, named", SHAPES)
def test_wrong_values_in_keywords_are_400s_naming_them(schema: Any, named: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        answer_schema(schema_format(schema))
    assert info.value.status == 400 and info.value.param == "response_format"
    assert named in info.value.message, info.value.message
    with pytest.raises(OasisError):
        GrammarBuilder().schema(schema, "x", param="tools")


# -- what pydantic emits, and the keywords the README promises -------------------------------


class Site(BaseModel):
    home: HttpUrl
    docs: AnyUrl
    owner: str = Field(json_schema_extra={"format": "email"})
    server: ipaddress.IPv4Address
    mirror: ipaddress.IPv6Address
    score: float = Field(ge=0.5, lt=2.75)
    share: float = Field(gt=0.1, le=1)
    note: str | None = Field(default=None, max_length=20)


def test_pydantic_urls_emails_addresses_and_fractional_bounds_are_enforced(
    client: OpenAI, fake_engine: FakeEngine
) -> None:
    site = {
        "home": "https://example.com/a?b=1",
        "docs": "http://docs.example.org",
        "owner": "a.b@example.com",
        "server": "10.0.0.1",
        "mirror": "::1",
        "score": 0.5,
        "share": 1,
        "note": None,
    }
    fake_engine.reply = json.dumps(site)
    r = client.chat.completions.parse(
        model="gpt-3.5-turbo",
        messages=MSG,  # type: ignore[arg-type]
        response_format=Site,
        temperature=0,
    )
    assert r.choices[0].message.parsed is not None
    grammar = fake_engine.last_request.grammar if fake_engine.last_request else None
    assert grammar is not None
    got = gbnf_regex_for(Site.model_json_schema(), "answer")
    text = json.dumps(site)
    assert got.fullmatch(text)
    for field, bad in [
        ("score", 2.75),
        ("score", 0.49),
        ("share", 0.1),
        ("share", 1.01),
        ("server", "256.0.0.1"),
        ("home", "ftp://x.com"),
        ("owner", "a@b"),
        ("note", "x" * 21),
    ]:
        assert not got.fullmatch(json.dumps({**site, field: bad})), (field, bad)


def gbnf_regex_for(schema: dict[str, Any], rule: str) -> re.Pattern[str]:
    return gbnf_regex(answer_grammar(schema), rule)


def test_keywords_keep_their_meaning_beside_each_other() -> None:
    # a type list keeps each type's keywords; keywords beside anyOf apply to every branch
    got = gbnf_regex_for({"type": ["string", "null"], "maxLength": 3}, "answer")
    assert got.fullmatch('"abc"') and got.fullmatch("null") and not got.fullmatch('"abcd"')
    got = gbnf_regex_for({"type": "string", "anyOf": [{"maxLength": 2}, {"pattern": "^x"}]},
                         "answer")  # fmt: skip
    assert got.fullmatch('"ab"') and got.fullmatch('"xyzzy"') and not got.fullmatch('"abc"')
    # an extra key is never one of the declared ones
    got = gbnf_regex_for({"type": "object", "properties": {"a": {"type": "integer"}},
                          "additionalProperties": {"type": "string"}}, "answer")  # fmt: skip
    assert got.fullmatch('{"a": 1, "b": "x"}') and got.fullmatch('{"ab": "x", "b": "y"}')
    assert not got.fullmatch('{"a": 1, "a": "x"}') and not got.fullmatch('{"a": "x"}')
    # declared order, optional members anywhere
    got = gbnf_regex_for({"type": "object", "properties": {
        "a": {"type": "null"}, "b": {"type": "null"}, "c": {"type": "null"}},
        "required": ["b"], "additionalProperties": False}, "answer")  # fmt: skip
    for ok in (
        '{"b": null}',
        '{"a": null, "b": null}',
        '{"b": null, "c": null}',
        '{"a": null, "b": null, "c": null}',
    ):
        assert got.fullmatch(ok), ok
    for bad in ("{}", '{"a": null}', '{"b": null, "a": null}', '{"a": null, "c": null}'):
        assert not got.fullmatch(bad), bad
    # formats with lengths; enums keep only values of the type
    got = gbnf_regex_for({"type": "string", "format": "date", "maxLength": 10}, "answer")
    assert got.fullmatch('"2024-02-29"') and not got.fullmatch('"2023-02-29"')
    got = gbnf_regex_for({"type": "string", "enum": ["a", 1, None]}, "answer")
    assert got.fullmatch('"a"') and not got.fullmatch("1") and not got.fullmatch("null")


def test_a_tool_keeps_the_public_checks(client: OpenAI) -> None:
    check_schema(
        {"type": "object", "properties": {"n": {"type": "number", "minimum": 0.5}}},
        where="tools[0].function.parameters",
        param="tools[0].function.parameters",
    )
    with pytest.raises(UnsupportedParameterError) as info:
        check_schema(
            {"type": "object", "properties": {"s": {"type": "string", "maxLength": 9999}}},
            where="tools[0].function.parameters",
            param="tools[0].function.parameters",
        )
    assert info.value.param == "tools[0].function.parameters"
    assert info.value.message.startswith(
        "Invalid schema for tools[0].function.parameters: 'maxLength' 9999 at properties.s"
    )
