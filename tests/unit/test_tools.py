"""Tool calling through the official SDK on the fake engine: shapes, streaming, history, errors.

The fake engine cannot constrain its output, so each test scripts the reply the grammar would
allow; the real grammar is exercised on the real model in integration/test_tools.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from oasis.engine.fake import FakeEngine
from tests.conftest import API_KEY, Schemas, make_app, sse_data

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"},
                           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}}}
ASK = [{"role": "user", "content": "Weather in Paris?"}]
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
TWO = CALL + '\n<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>'


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine(n_ctx=8192)


@pytest.fixture
def http(engine: FakeEngine, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(make_app(engine, tmp=tmp_path),
                    headers={"Authorization": f"Bearer {API_KEY}"}) as c:
        yield c


@pytest.fixture
def client(http: TestClient) -> OpenAI:
    return OpenAI(base_url="http://testserver/v1", api_key=API_KEY, http_client=http,
                  max_retries=0)


def prompt_text(engine: FakeEngine) -> str:
    assert engine.last_request is not None
    return engine.detokenize(list(engine.last_request.prompt))


def test_a_call_comes_back_as_tool_calls(client: OpenAI, engine: FakeEngine) -> None:
    engine.reply = CALL
    r = client.chat.completions.create(model="gpt-3.5-turbo", messages=ASK, tools=[WEATHER],
                                       temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_") and len(call.id) == 29
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    # the model was told about the tool, and the grammar allows text or a call (auto)
    assert '"name": "get_weather"' in prompt_text(engine)
    assert engine.last_request is not None and engine.last_request.grammar is not None
    assert "oasis-text" in engine.last_request.grammar


def test_parallel_calls_get_their_own_ids_and_indexes(client: OpenAI, engine: FakeEngine) -> None:
    engine.reply = TWO
    r = client.chat.completions.create(model="gpt-3.5-turbo", messages=ASK,
                                       tools=[WEATHER, TIME], tool_choice="required",
                                       temperature=0)
    calls = r.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert calls[0].id != calls[1].id
    assert json.loads(calls[1].function.arguments) == {"zone": "CET"}
    grammar = engine.last_request.grammar if engine.last_request else None
    assert grammar is not None and "oasis-text" not in grammar  # required: no text branch


def test_each_choice_makes_its_own_calls(client: OpenAI, engine: FakeEngine) -> None:
    engine.reply = CALL
    r = client.chat.completions.create(model="gpt-3.5-turbo", messages=ASK, tools=[WEATHER],
                                       temperature=0, n=3)
    ids = set()
    for choice in r.choices:
        assert choice.finish_reason == "tool_calls"
        [call] = choice.message.tool_calls or []
        ids.add(call.id)
    assert len(ids) == 3


def test_text_answers_stay_text(client: OpenAI, engine: FakeEngine) -> None:
    for reply in ("It is sunny.", "<b>sunny</b>", "<tool_call"):
        engine.reply = reply
        r = client.chat.completions.create(model="gpt-3.5-turbo", messages=ASK,
                                           tools=[WEATHER], temperature=0)
        assert r.choices[0].message.content == reply
        assert r.choices[0].message.tool_calls is None
        assert r.choices[0].finish_reason == "stop"


def test_streamed_calls_arrive_as_openai_deltas(client: OpenAI, engine: FakeEngine) -> None:
    engine.reply = TWO
    chunks = list(client.chat.completions.create(
        model="gpt-3.5-turbo", messages=ASK, tools=[WEATHER, TIME], temperature=0,
        stream=True))
    first = chunks[0].choices[0].delta
    assert first.role == "assistant" and first.content is None
    assert first.tool_calls and first.tool_calls[0].function
    assert first.tool_calls[0].function.name == "get_weather"
    assert first.tool_calls[0].function.arguments == ""
    args: dict[int, str] = {}
    ids: dict[int, str] = {}
    for ch in chunks:
        for tc in ch.choices[0].delta.tool_calls or []:
            if tc.id:
                ids[tc.index] = tc.id
            assert tc.function is not None
            args[tc.index] = args.get(tc.index, "") + (tc.function.arguments or "")
        assert ch.choices[0].delta.content is None
    assert len(chunks) > 6  # arguments come in fragments, not at the end
    assert {i: json.loads(a) for i, a in args.items()} == {0: {"city": "Paris"},
                                                          1: {"zone": "CET"}}
    assert len(set(ids.values())) == 2
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("reply", [CALL, "<i>text</i>", "<tool", ""])
def test_streamed_logprobs_cover_every_token(client: OpenAI, engine: FakeEngine,
                                             reply: str) -> None:
    engine.reply = reply
    chunks = list(client.chat.completions.create(
        model="gpt-3.5-turbo", messages=ASK, tools=[WEATHER], temperature=0, stream=True,
        logprobs=True, stream_options={"include_usage": True}))
    tokens = "".join(lp.token for c in chunks if c.choices and c.choices[0].logprobs
                     for lp in c.choices[0].logprobs.content or [])
    assert tokens == reply  # byte tokens: none lost while the reply's shape was undecided
    assert chunks[0].choices[0].delta.role == "assistant"
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.role) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ("" if reply == CALL else reply)


def test_the_sdk_stream_helper_assembles_the_calls(client: OpenAI, engine: FakeEngine) -> None:
    engine.reply = CALL
    with client.chat.completions.stream(model="gpt-3.5-turbo", messages=ASK, tools=[WEATHER],
                                        temperature=0) as stream:
        done = [e for e in stream if e.type == "tool_calls.function.arguments.done"]
        final = stream.get_final_completion()
    assert [e.name for e in done] == ["get_weather"]
    message = final.choices[0].message
    assert message.tool_calls and message.tool_calls[0].function.name == "get_weather"
    assert json.loads(message.tool_calls[0].function.arguments) == {"city": "Paris"}


def test_streamed_text_with_tools_offered(client: OpenAI, engine: FakeEngine) -> None:
    engine.reply = "<i>no tools needed</i>"
    chunks = list(client.chat.completions.create(
        model="gpt-3.5-turbo", messages=ASK, tools=[WEATHER], temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == engine.reply
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_a_call_cut_by_max_tokens_reports_length(client: OpenAI, engine: FakeEngine) -> None:
    engine.reply = CALL
    r = client.chat.completions.create(model="gpt-3.5-turbo", messages=ASK, tools=[WEATHER],
                                       tool_choice="required", temperature=0, max_tokens=50)
    choice = r.choices[0]
    assert choice.finish_reason == "length"
    [call] = choice.message.tool_calls or []
    assert call.function.name == "get_weather"
    assert '{"city": "Pa'.startswith(call.function.arguments[:5])
    with pytest.raises(json.JSONDecodeError):
        json.loads(call.function.arguments)


def test_tool_results_are_fed_back(client: OpenAI, engine: FakeEngine) -> None:
    engine.reply = TWO
    first = client.chat.completions.create(model="gpt-3.5-turbo", messages=ASK,
                                           tools=[WEATHER, TIME], temperature=0)
    message = first.choices[0].message
    calls = message.tool_calls or []
    engine.reply = "It is 21 degrees and 14:00 in Paris."
    history: list[Any] = [
        {"role": "developer", "content": "Answer in one sentence."},
        *ASK,
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": calls[0].id, "content": '{"temp": 21}'},
        {"role": "tool", "tool_call_id": calls[1].id,
         "content": [{"type": "text", "text": "14:00"}]},
    ]
    r = client.chat.completions.create(model="gpt-3.5-turbo", messages=history,
                                       tools=[WEATHER, TIME], temperature=0)
    assert r.choices[0].message.content == engine.reply
    prompt = prompt_text(engine)
    # the tools join the developer's system turn; the calls are in the assistant turn; both
    # results are one user turn
    assert prompt.startswith("<|im_start|>system\nAnswer in one sentence.\n\nYou can call")
    assert ('<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": '
            '{"city": "Paris"}}\n</tool_call>\n<tool_call>') in prompt
    assert ('<|im_start|>user\n<tool_response name="get_weather">\n{"temp": 21}\n'
            '</tool_response>\n<tool_response name="get_time">\n14:00\n</tool_response>'
            '<|im_end|>') in prompt


def test_tool_choice_none_and_no_tools(client: OpenAI, engine: FakeEngine) -> None:
    engine.reply = CALL  # even text that looks like a call stays text
    r = client.chat.completions.create(model="gpt-3.5-turbo", messages=ASK, tools=[WEATHER],
                                       tool_choice="none", temperature=0)
    assert r.choices[0].message.content == CALL and r.choices[0].message.tool_calls is None
    assert r.choices[0].finish_reason == "stop"
    assert engine.last_request is not None and engine.last_request.grammar is None
    assert "get_weather" not in prompt_text(engine)


def test_named_and_allowed_tools_narrow_the_grammar(client: OpenAI, engine: FakeEngine) -> None:
    engine.reply = CALL
    client.chat.completions.create(
        model="gpt-3.5-turbo", messages=ASK, tools=[WEATHER, TIME], temperature=0,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert engine.last_request is not None
    grammar = engine.last_request.grammar or ""
    assert "get_weather" in grammar and "get_time" not in grammar
    assert "Now call the function get_weather." in prompt_text(engine)
    client.chat.completions.create(
        model="gpt-3.5-turbo", messages=ASK, tools=[WEATHER, TIME], temperature=0,
        tool_choice={"type": "allowed_tools", "allowed_tools": {
            "mode": "auto", "tools": [{"type": "function", "function": {"name": "get_time"}}]}})
    grammar = engine.last_request.grammar or ""
    assert "get_time" in grammar and "get_weather" not in grammar and "oasis-text" in grammar
    # both described to the model, only get_time callable
    assert "get_weather" in prompt_text(engine)


def test_parallel_tool_calls_false_allows_one_call(client: OpenAI, engine: FakeEngine) -> None:
    engine.reply = CALL
    client.chat.completions.create(model="gpt-3.5-turbo", messages=ASK, tools=[WEATHER, TIME],
                                   parallel_tool_calls=False, temperature=0)
    assert engine.last_request is not None
    assert "oasis-calls ::= oasis-call\n" in (engine.last_request.grammar or "")
    assert "one block per call" not in prompt_text(engine)


def test_legacy_functions(client: OpenAI, engine: FakeEngine, http: TestClient) -> None:
    engine.reply = CALL
    fn = WEATHER["function"]
    r = client.chat.completions.create(model="gpt-3.5-turbo", messages=ASK, functions=[fn],
                                       function_call={"name": "get_weather"}, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "function_call"
    assert choice.message.tool_calls is None and choice.message.function_call is not None
    assert choice.message.function_call.name == "get_weather"
    assert json.loads(choice.message.function_call.arguments) == {"city": "Paris"}
    chunks = list(client.chat.completions.create(
        model="gpt-3.5-turbo", messages=ASK, functions=[fn], temperature=0, stream=True))
    assert chunks[0].choices[0].delta.function_call is not None
    assert chunks[0].choices[0].delta.function_call.name == "get_weather"
    args = "".join((c.choices[0].delta.function_call.arguments or "")
                   for c in chunks if c.choices[0].delta.function_call)
    assert json.loads(args) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "function_call"
    # the result goes back as a 'function' message
    engine.reply = "21 degrees."
    r = client.chat.completions.create(model="gpt-3.5-turbo", functions=[fn], temperature=0,
                                       messages=[*ASK, choice.message.model_dump(exclude_none=True),
                                                 {"role": "function", "name": "get_weather",
                                                  "content": "21"}])
    assert r.choices[0].message.content == "21 degrees."
    assert '<tool_response name="get_weather">\n21\n</tool_response>' in prompt_text(engine)


def test_bodies_and_chunks_match_openais_schemas(http: TestClient, engine: FakeEngine,
                                                 schemas: Schemas) -> None:
    engine.reply = TWO
    for extra in ({"tools": [WEATHER, TIME]},
                  {"functions": [WEATHER["function"], TIME["function"]]}):
        body = {"model": "gpt-3.5-turbo", "messages": ASK, "temperature": 0, **extra}
        r = http.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        schemas.validate("CreateChatCompletionResponse", r.json())
        r = http.post("/v1/chat/completions", json={**body, "stream": True})
        for p in sse_data(r.text)[:-1]:
            schemas.validate("CreateChatCompletionStreamResponse", json.loads(p))


def bad(client: OpenAI, param: str, fragment: str, **kw: Any) -> None:
    kw.setdefault("messages", ASK)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="gpt-3.5-turbo", **kw)
    body: Any = info.value.body
    assert body["param"] == param, body
    assert fragment in body["message"], body


def test_bad_tool_requests_are_400s_naming_the_problem(client: OpenAI) -> None:
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{}"}}
    asked = {"role": "assistant", "tool_calls": [call]}
    bad(client, "tool_choice", "only allowed when 'tools'", tool_choice="auto")
    bad(client, "parallel_tool_calls", "only allowed", parallel_tool_calls=False)
    bad(client, "tools", "empty array", tools=[])
    bad(client, "tool_choice.function.name", "no function named 'nope'", tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "nope"}})
    bad(client, "tools[0].type", "Custom tools",
        tools=[{"type": "custom", "custom": {"name": "sh"}}])
    bad(client, "tools[0].function.name", "does not match",
        tools=[{"type": "function", "function": {"name": "get weather"}}])
    bad(client, "tools[0].function.parameters", "type: \"object\"",
        tools=[{"type": "function", "function": {"name": "f",
                                                 "parameters": {"type": "string"}}}])
    bad(client, "tools[0].function.parameters", "'minimum'",
        tools=[{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"n": {"type": "number", "minimum": 0.5}}}}}])
    bad(client, "tools", "used twice", tools=[WEATHER, WEATHER])
    bad(client, "tools[0].function.strictly", "Unrecognized request argument",
        tools=[{"type": "function", "function": {"name": "f", "strictly": True}}])
    bad(client, "functions", "not both", tools=[WEATHER], functions=[WEATHER["function"]])
    bad(client, "messages.[0].role", "must be a response to a preceding message",
        messages=[{"role": "tool", "tool_call_id": "call_1", "content": "1"}])
    bad(client, "messages.[1].tool_call_id", "Missing required parameter",
        messages=[asked, {"role": "tool", "content": "1"}])
    bad(client, "messages.[0].role", "did not have response messages: call_1",
        messages=[asked, {"role": "user", "content": "and?"}])
    bad(client, "messages.[0].role", "did not have response messages: call_1",
        messages=[*ASK[:0], asked])
    bad(client, "messages.[0].tool_calls", "only allowed on messages with role 'assistant'",
        messages=[{"role": "user", "content": "x", "tool_calls": [call]}])
    bad(client, "messages.[1].name", "Missing required parameter",
        messages=[*ASK, {"role": "function", "content": "1"}])
