"""Tool calling on the real model: calls always valid, the tool loop through the SDK."""

from __future__ import annotations

import asyncio
import json
import random
from enum import StrEnum
from typing import Any

import jsonschema
import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from pydantic import BaseModel, Field

from tests.integration.conftest import LiveServer
from tests.integration.test_structured import random_object


class Unit(StrEnum):
    celsius = "celsius"
    fahrenheit = "fahrenheit"


class GetWeather(BaseModel):
    """Current weather in a city."""

    city: str = Field(max_length=24)
    unit: Unit


WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 24},
                   "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
BOOK_SCHEMA = {
    "type": "object",
    "properties": {
        "guests": {"type": "integer"},
        "date": {"type": "string", "format": "date"},
        "options": {"type": "array", "items": {"enum": ["window", "quiet", "terrace"]},
                    "maxItems": 3},
        "contact": {"type": "object", "properties": {
            "name": {"type": "string", "maxLength": 20},
            "phone": {"anyOf": [{"type": "string", "maxLength": 15}, {"type": "null"}]}},
            "required": ["name", "phone"], "additionalProperties": False},
    },
    "required": ["guests", "date", "contact"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather",
                                      "description": "Current weather in a city",
                                      "parameters": WEATHER_SCHEMA}},
    {"type": "function", "function": {"name": "book_table",
                                      "description": "Book a restaurant table",
                                      "parameters": BOOK_SCHEMA}},
]
SCHEMAS = {"get_weather": WEATHER_SCHEMA, "book_table": BOOK_SCHEMA}
ASK = [{"role": "user", "content": "What is the weather like in Paris today?"}]


def get_weather(city: str, unit: str) -> dict[str, Any]:
    return {"city": city, "temperature": 21 if unit == "celsius" else 70, "sky": "sunny"}


def check_calls(message: Any, allowed: set[str]) -> int:
    calls = message.tool_calls or []
    for call in calls:
        assert call.function.name in allowed
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    return len(calls)


def sync(live: LiveServer) -> OpenAI:
    return OpenAI(base_url=live.v1, api_key=live.api_key, max_retries=0)


def test_weather_tool_loop(live: LiveServer) -> None:
    client = sync(live)
    first = client.chat.completions.create(
        model="gpt-4o-mini", messages=ASK, tools=TOOLS, max_tokens=200, seed=1,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    message = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls"
    assert check_calls(message, {"get_weather"}) == 1
    call = (message.tool_calls or [])[0]
    result = json.dumps(get_weather(**json.loads(call.function.arguments)))
    history: list[Any] = [*ASK, message, {"role": "tool", "tool_call_id": call.id,
                                          "content": result}]
    second = client.chat.completions.create(model="gpt-4o-mini", messages=history, tools=TOOLS,
                                            max_tokens=120, seed=1)
    answer = second.choices[0]
    assert answer.finish_reason in ("stop", "length", "tool_calls")
    if answer.finish_reason == "tool_calls":  # auto: calling again is allowed, and valid
        check_calls(answer.message, set(SCHEMAS))
    elif answer.message.tool_calls is None:
        assert answer.message.content
    else:  # a call cut by max_tokens
        assert answer.finish_reason == "length"
    # the call and its result are in the second prompt
    assert second.usage and first.usage
    assert second.usage.prompt_tokens > first.usage.prompt_tokens + 15


def test_weather_tool_loop_streaming(live: LiveServer) -> None:
    client = sync(live)
    tool = openai.pydantic_function_tool(GetWeather, name="get_weather")
    with client.chat.completions.stream(model="gpt-4o-mini", messages=ASK, tools=[tool],
                                        tool_choice="required", max_tokens=200, seed=2) as s:
        deltas = [e for e in s if e.type == "tool_calls.function.arguments.delta"]
        first = s.get_final_completion()
    assert len(deltas) > 3  # the arguments arrived in pieces
    message = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls"
    calls = message.tool_calls or []
    assert calls
    history: list[Any] = [*ASK, message.model_dump(exclude_none=True,
                                                   exclude={"parsed"})]
    for call in calls:
        args = call.function.parsed_arguments
        assert isinstance(args, GetWeather)  # strict tool: the SDK parsed the arguments
        history[-1]["tool_calls"][calls.index(call)].pop("index", None)
        history[-1]["tool_calls"][calls.index(call)]["function"].pop("parsed_arguments", None)
        history.append({"role": "tool", "tool_call_id": call.id,
                        "content": json.dumps(get_weather(args.city, args.unit))})
    pieces: list[str] = []
    finish = None
    for chunk in client.chat.completions.create(model="gpt-4o-mini", messages=history,
                                                tools=[tool], tool_choice="none", stream=True,
                                                max_tokens=80, seed=2):
        delta = chunk.choices[0].delta
        assert delta.tool_calls is None
        pieces.append(delta.content or "")
        finish = chunk.choices[0].finish_reason or finish
    assert "".join(pieces).strip() and finish in ("stop", "length")


def run_many(live: LiveServer, count: int, max_tokens: int = 300, **kw: Any) -> list[Any]:
    async def go() -> list[Any]:
        client = AsyncOpenAI(base_url=live.v1, api_key=live.api_key, max_retries=0)
        try:
            return await asyncio.gather(*(
                client.chat.completions.create(model="gpt-4o-mini", messages=ASK, tools=TOOLS,
                                               max_tokens=max_tokens, seed=seed,
                                               temperature=1.0,
                                               **kw)
                for seed in range(count)))
        finally:
            await client.close()
    return asyncio.run(go())


def test_required_always_calls_with_valid_arguments(live: LiveServer) -> None:
    for r in run_many(live, 10, tool_choice="required"):
        choice = r.choices[0]
        # the small model often calls again and again (up to 8 calls) until max_tokens: a
        # cut-off is reported as "length", the complete calls before it still validate
        if choice.finish_reason == "length":
            calls = choice.message.tool_calls or []
            assert calls
            for call in calls[:-1]:
                jsonschema.validate(json.loads(call.function.arguments),
                                    SCHEMAS[call.function.name])
            continue
        assert choice.finish_reason == "tool_calls"
        assert 1 <= check_calls(choice.message, set(SCHEMAS)) <= 8


def test_named_function_is_the_one_called_once(live: LiveServer) -> None:
    choice = {"type": "function", "function": {"name": "book_table"}}
    for r in run_many(live, 10, tool_choice=choice):
        assert r.choices[0].finish_reason == "tool_calls"
        assert check_calls(r.choices[0].message, {"book_table"}) == 1


def test_none_never_calls(live: LiveServer) -> None:
    for r in run_many(live, 10, 100, tool_choice="none"):
        assert r.choices[0].message.tool_calls is None
        assert r.choices[0].finish_reason in ("stop", "length")
        assert isinstance(r.choices[0].message.content, str)


def test_auto_answers_are_text_or_valid_calls(live: LiveServer) -> None:
    for r in run_many(live, 10, 100, parallel_tool_calls=False):
        choice = r.choices[0]
        if choice.message.tool_calls and choice.finish_reason == "length":
            assert len(choice.message.tool_calls) == 1  # one call, cut by max_tokens
        elif choice.message.tool_calls:
            assert choice.finish_reason == "tool_calls"
            assert check_calls(choice.message, set(SCHEMAS)) == 1
        else:
            assert isinstance(choice.message.content, str)
            assert choice.finish_reason in ("stop", "length")


def test_random_parameter_schemas_always_validate(live: LiveServer) -> None:
    rng = random.Random(6)
    schemas = [random_object(rng) for _ in range(40)]

    async def go() -> list[Any]:
        client = AsyncOpenAI(base_url=live.v1, api_key=live.api_key, max_retries=0)
        try:
            return await asyncio.gather(*(
                client.chat.completions.create(
                    model="gpt-4o-mini", max_tokens=600, seed=i, temperature=0.8,
                    messages=[{"role": "user", "content": f"Record number {i}, please."}],
                    tools=[{"type": "function", "function": {"name": f"save_{i}",
                                                             "parameters": s}}],
                    tool_choice="required", parallel_tool_calls=False)
                for i, s in enumerate(schemas)))
        finally:
            await client.close()

    for i, (schema, r) in enumerate(zip(schemas, asyncio.run(go()), strict=True)):
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls", (schema, choice)
        [call] = choice.message.tool_calls or []
        assert call.function.name == f"save_{i}"
        jsonschema.validate(json.loads(call.function.arguments), schema)


def test_structured_answer_cut_short_is_reported_like_openai(live: LiveServer) -> None:
    class Story(BaseModel):
        title: str
        lines: list[str]

    with pytest.raises(openai.LengthFinishReasonError):
        sync(live).chat.completions.parse(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "A long story."}],
            response_format=Story, max_tokens=5)


def test_tools_with_same_named_definitions_and_a_response_format(live: LiveServer) -> None:
    """Two functions whose schemas both define $defs/Item (differently), and a text answer held
    to response_format under auto: each part keeps its own schema in the one grammar."""
    item_a = {"type": "object", "properties": {"sku": {"type": "integer"}},
              "required": ["sku"], "additionalProperties": False}
    item_b = {"type": "object", "properties": {"colour": {"enum": ["red", "blue"]}},
              "required": ["colour"], "additionalProperties": False}
    schemas = {
        name: {"type": "object", "properties": {"items": {
            "type": "array", "items": {"$ref": "#/$defs/Item"}, "minItems": 1, "maxItems": 2}},
            "required": ["items"], "additionalProperties": False, "$defs": {"Item": item}}
        for name, item in (("order", item_a), ("paint", item_b))
    }
    tools = [{"type": "function", "function": {"name": n, "parameters": s}}
             for n, s in schemas.items()]
    answer = {"type": "object", "properties": {"reply": {"type": "string", "maxLength": 40}},
              "required": ["reply"], "additionalProperties": False}
    client = sync(live)
    texts = calls = 0
    for seed in range(8):
        r = client.chat.completions.create(
            model="gpt-4o-mini", seed=seed, max_tokens=200, tools=tools,
            tool_choice="required" if seed % 2 else "auto",
            messages=[{"role": "user", "content": "Order two red things."}],
            response_format={"type": "json_schema", "json_schema": {
                "name": "reply", "schema": answer, "strict": True}})
        choice = r.choices[0]
        made = choice.message.tool_calls or []
        if choice.finish_reason == "length":  # repeated calls ran into max_tokens: the last
            made = made[:-1]                  # one is cut, the ones before are whole
        for call in made:
            jsonschema.validate(json.loads(call.function.arguments),
                                schemas[call.function.name])
            calls += 1
        if choice.message.tool_calls is None:
            assert choice.finish_reason == "stop"
            jsonschema.validate(json.loads(choice.message.content or ""), answer)
            texts += 1
    assert calls >= 4 and texts + calls >= 8
