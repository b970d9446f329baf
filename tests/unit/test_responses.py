"""The Responses API through the official SDK on the fake engine: create, stream, tools and a
full tool loop with previous_response_id, stored responses per key, every 400, and every body
and stream event validated against OpenAI's OpenAPI schemas."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI
from pydantic import BaseModel

from oasis.engine.fake import FakeEngine
from tests.conftest import API_KEY, Schemas, make_app
from tests.unit.test_tools import CALL, ScriptedEngine

WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"]}}


@pytest.fixture
def engine() -> FakeEngine:
    return ScriptedEngine(n_ctx=8192)


@pytest.fixture
def http(engine: FakeEngine, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(make_app(engine, tmp=tmp_path),
                    headers={"Authorization": f"Bearer {API_KEY}"}) as c:
        yield c


@pytest.fixture
def client(http: TestClient) -> OpenAI:
    return OpenAI(base_url="http://testserver/v1", api_key=API_KEY, http_client=http,
                  max_retries=0)


@pytest.fixture(scope="module")
def schemas() -> Schemas:
    return Schemas()


def prompt_text(engine: FakeEngine) -> str:
    assert engine.last_request is not None
    return engine.detokenize(list(engine.last_request.prompt))


def raw_events(http: TestClient, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    with http.stream("POST", "/v1/responses", json={**body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        lines = list(r.iter_lines())
    events, name = [], None
    for line in lines:
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            assert name is not None
            events.append((name, json.loads(line[6:])))
            name = None
    assert "[DONE]" not in "\n".join(lines)
    return events


def test_a_string_input_gets_a_completed_response(
    client: OpenAI, http: TestClient, engine: FakeEngine, schemas: Schemas
) -> None:
    r = client.responses.create(model="gpt-3.5-turbo", temperature=0, input="Say hello.",
                                instructions="Be brief.", metadata={"who": "test"})
    assert r.id.startswith("resp_") and r.object == "response" and r.status == "completed"
    assert r.output_text == engine.reply and r.model == "gpt-3.5-turbo"
    assert r.instructions == "Be brief." and r.metadata == {"who": "test"}
    (item,) = r.output
    assert item.type == "message" and item.role == "assistant" and item.id.startswith("msg_")
    assert r.usage is not None and r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    text = prompt_text(engine)
    assert text.index("Be brief.") < text.index("Say hello.")  # instructions first
    schemas.validate("Response", http.get(f"/v1/responses/{r.id}").json())


def test_item_lists_with_roles_and_parts(client: OpenAI, engine: FakeEngine) -> None:
    client.responses.create(model="gpt-3.5-turbo", temperature=0, input=[
        {"role": "developer", "content": "Rule one."},
        {"role": "user", "content": [{"type": "input_text", "text": "First"},
                                     {"type": "input_text", "text": " part."}]},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "Earlier answer.", "annotations": []}]},
        {"role": "user", "content": "Next question."},
    ])
    text = prompt_text(engine)
    for piece in ("Rule one.", "First part.", "Earlier answer.", "Next question."):
        assert piece in text


def test_max_output_tokens_cut_is_incomplete(client: OpenAI, engine: FakeEngine) -> None:
    engine.reply = "word " * 100
    r = client.responses.create(model="gpt-3.5-turbo", temperature=0, input="Talk.",
                                max_output_tokens=16)
    assert r.status == "incomplete" and r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens"
    assert r.usage is not None and r.usage.output_tokens == 16


def test_streams_send_openais_event_sequence(
    client: OpenAI, http: TestClient, engine: FakeEngine, schemas: Schemas
) -> None:
    events = raw_events(http, {"model": "gpt-3.5-turbo", "temperature": 0, "input": "Hi"})
    names = [n for n, _ in events]
    assert names[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert names[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    assert {n for n in names[4:-4]} == {"response.output_text.delta"}
    assert [e["sequence_number"] for _, e in events] == list(range(len(events)))
    for name, event in events:
        assert event["type"] == name
        schemas.validate("ResponseStreamEvent", event)
    deltas = "".join(e["delta"] for n, e in events if n == "response.output_text.delta")
    done = events[-1][1]["response"]
    assert deltas == engine.reply == done["output"][0]["content"][0]["text"]
    assert done["usage"]["output_tokens"] > 0
    # the SDK's stream helper assembles the same response
    with client.responses.stream(model="gpt-3.5-turbo", temperature=0, input="Hi") as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == final.output_text == engine.reply
    assert client.responses.retrieve(final.id).output_text == engine.reply  # stored


def test_a_function_call_and_the_tool_loop_through_previous_response_id(
    client: OpenAI, http: TestClient, engine: FakeEngine, schemas: Schemas
) -> None:
    engine.reply = CALL
    first = client.responses.create(model="gpt-3.5-turbo", temperature=0, input="Weather in Paris?",
                                    tools=[WEATHER], tool_choice="required")  # type: ignore[list-item]
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"} and call.call_id
    assert first.tools[0].name == "get_weather"  # type: ignore[union-attr]
    schemas.validate("Response", http.get(f"/v1/responses/{first.id}").json())
    engine.reply = "It is sunny in Paris."
    second = client.responses.create(
        model="gpt-3.5-turbo", temperature=0, previous_response_id=first.id, tools=[WEATHER],  # type: ignore[list-item]
        input=[{"type": "function_call_output", "call_id": call.call_id,
                "output": '{"sky": "sunny"}'}])
    assert second.output_text == "It is sunny in Paris."
    assert second.previous_response_id == first.id
    text = prompt_text(engine)
    # the whole conversation: the first question, the call, its output
    assert "Weather in Paris?" in text and '"city": "Paris"' in text and '"sky": "sunny"' in text


def test_streamed_function_calls_send_argument_events(
    http: TestClient, engine: FakeEngine, schemas: Schemas
) -> None:
    engine.reply = CALL
    events = raw_events(http, {"model": "gpt-3.5-turbo", "temperature": 0, "input": "Weather?",
                               "tools": [WEATHER], "tool_choice": "required"})
    names = [n for n, _ in events]
    assert "response.function_call_arguments.delta" in names
    done = next(e for n, e in events if n == "response.function_call_arguments.done")
    assert json.loads(done["arguments"]) == {"city": "Paris"}
    item = next(e["item"] for n, e in events if n == "response.output_item.done")
    assert item["type"] == "function_call" and item["status"] == "completed"
    for _, event in events:
        schemas.validate("ResponseStreamEvent", event)


def test_parse_with_a_pydantic_text_format(client: OpenAI, engine: FakeEngine) -> None:
    class Weather(BaseModel):
        city: str
        sunny: bool

    engine.reply = '{"city": "Paris", "sunny": true}'
    r = client.responses.parse(model="gpt-3.5-turbo", temperature=0, input="Weather?",
                               text_format=Weather)
    assert r.output_parsed == Weather(city="Paris", sunny=True)
    assert engine.last_request is not None and engine.last_request.grammar is not None


def test_retrieve_delete_and_input_items(
    client: OpenAI, http: TestClient, schemas: Schemas
) -> None:
    r = client.responses.create(model="gpt-3.5-turbo", temperature=0, input=[
        {"role": "user", "content": f"message {i}"} for i in range(5)])
    assert client.responses.retrieve(r.id).id == r.id
    items = client.responses.input_items.list(r.id, limit=2, order="asc")
    assert [i.content[0].text for i in items.data] == ["message 0", "message 1"]  # type: ignore[union-attr]
    assert items.has_more
    every = [i.content[0].text for i in client.responses.input_items.list(r.id)]  # type: ignore[union-attr]
    assert every == [f"message {i}" for i in range(4, -1, -1)]  # newest first by default
    page = http.get(f"/v1/responses/{r.id}/input_items", params={"limit": 3}).json()
    schemas.validate("ResponseItemList", page)
    client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(r.id)


def test_store_false_is_not_kept(client: OpenAI) -> None:
    r = client.responses.create(model="gpt-3.5-turbo", temperature=0, input="Hi", store=False)
    assert r.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="gpt-3.5-turbo", temperature=0, input="again",
                                previous_response_id=r.id)
    assert caught.value.code == "previous_response_not_found"


def test_a_key_sees_only_its_own_responses(client: OpenAI, http: TestClient) -> None:
    r = client.responses.create(model="gpt-3.5-turbo", temperature=0, input="mine")
    other = http.post("/admin/keys", json={"name": "other"}).json()["value"]
    theirs = OpenAI(base_url="http://testserver/v1", api_key=other, http_client=http,
                    max_retries=0)
    with pytest.raises(openai.NotFoundError):
        theirs.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        theirs.responses.delete(r.id)
    with pytest.raises(openai.BadRequestError):
        theirs.responses.create(model="gpt-3.5-turbo", input="x", previous_response_id=r.id)
    assert client.responses.retrieve(r.id).id == r.id  # still there for its owner


@pytest.mark.parametrize(("body", "param"), [
    ({"tools": [{"type": "web_search"}]}, "tools"),
    ({"tools": [{"type": "file_search", "vector_store_ids": ["x"]}]}, "tools"),
    ({"reasoning": {"effort": "high"}}, "reasoning"),
    ({"background": True}, "background"),
    ({"include": ["file_search_call.results"]}, "include"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "input"),
    ({"input": [{"type": "reasoning", "id": "rs_1", "summary": []}]}, "input"),
    ({"conversation": "conv_1"}, "conversation"),
    ({"frobnicate": 1}, "frobnicate"),
    ({"max_output_tokens": 8}, "max_output_tokens"),
    ({"temperature": 3}, "temperature"),
    ({"text": {"format": {"type": "xml"}}}, "text.format.type"),
    ({"input": [{"role": "robot", "content": "x"}]}, "input.[0].role"),
    ({"input": "x", "stream_options": {"include_obfuscation": False}}, "stream_options"),
])
def test_what_cannot_be_honoured_is_a_400_naming_it(
    http: TestClient, body: dict[str, Any], param: str
) -> None:
    r = http.post("/v1/responses", json={"model": "gpt-3.5-turbo", "input": "Hi", **body})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert param in (err["param"] or "") or param in err["message"], err


def test_unknown_previous_response_and_missing_input(http: TestClient) -> None:
    r = http.post("/v1/responses", json={"model": "gpt-3.5-turbo", "input": "x",
                                         "previous_response_id": "resp_nope"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "previous_response_id"
    r = http.post("/v1/responses", json={"model": "gpt-3.5-turbo"})
    assert r.status_code == 400 and "input" in r.json()["error"]["message"]
    assert http.get("/v1/responses/resp_%00x").status_code == 404
    assert http.get("/v1/responses/x/input_items", params={"limit": 0}).status_code == 400


def test_truncation_auto_drops_the_oldest_turns(client: OpenAI, engine: FakeEngine,
                                                http: TestClient) -> None:
    long = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "x" * 900}
            for i in range(20)] + [{"role": "user", "content": "the last question"}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="gpt-3.5-turbo", temperature=0, input=long)  # type: ignore[arg-type]
    assert caught.value.code == "context_length_exceeded"
    r = client.responses.create(model="gpt-3.5-turbo", temperature=0, input=long,  # type: ignore[arg-type]
                                truncation="auto")
    assert r.status == "completed" and r.truncation == "auto"
    text = prompt_text(engine)
    assert "the last question" in text and "turn 0 " not in text


def test_responses_are_metered_under_their_endpoint(http: TestClient, client: OpenAI) -> None:
    client.responses.create(model="gpt-3.5-turbo", temperature=0, input="Hi")
    state = http.app.state.oasis  # type: ignore[attr-defined]
    http.portal.call(state.gateway.ledger.flush)  # type: ignore[union-attr]
    (rec,) = state.gateway.usage.records()
    assert rec.endpoint == "/v1/responses" and rec.status == 200 and rec.completion_tokens > 0


def test_truncation_auto_keeps_tool_outputs_with_their_calls(
    client: OpenAI, engine: FakeEngine
) -> None:
    loop: list[dict[str, Any]] = [{"role": "user", "content": "plan " + "y" * 900}]
    for i in range(12):
        loop += [{"type": "function_call", "call_id": f"c{i}", "name": "get_weather",
                  "arguments": json.dumps({"city": "x" * 300})},
                 {"type": "function_call_output", "call_id": f"c{i}",
                  "output": f"result {i} " + "z" * 400}]
    r = client.responses.create(model="gpt-3.5-turbo", temperature=0, input=loop,  # type: ignore[arg-type]
                                tools=[WEATHER], truncation="auto")  # type: ignore[list-item]
    assert r.status == "completed"
    text = prompt_text(engine)
    assert ("plan " not in text and '"c11"' not in text) or "z" * 400 in text  # the last output


def test_hostile_limits_and_item_counts_are_400s(http: TestClient) -> None:
    for limit in ("²", "9" * 5000, "-1", "1.5"):
        r = http.get("/v1/responses/resp_x/input_items", params={"limit": limit})
        assert r.status_code == 400, (limit, r.status_code)
    r = http.post("/v1/responses", json={"model": "gpt-3.5-turbo",
                                         "input": [{"role": "user", "content": "x"}] * 5000})
    assert r.status_code == 400 and r.json()["error"]["code"] == "array_above_max_length"
    r = http.post("/v1/responses", json={"model": "gpt-3.5-turbo", "input": "x",
                                         "text": {"verbosity": "low"}})
    assert r.status_code == 400 and "verbosity" in r.json()["error"]["message"]


def test_include_logprobs_fills_output_text_logprobs(
    client: OpenAI, http: TestClient, schemas: Schemas
) -> None:
    r = client.responses.create(model="gpt-3.5-turbo", temperature=0, input="Hi",
                                include=["message.output_text.logprobs"], top_logprobs=2)
    part = r.output[0].content[0]  # type: ignore[union-attr]
    assert part.logprobs and len(part.logprobs[0].top_logprobs) == 2
    assert "".join(lp.token for lp in part.logprobs) == r.output_text
    events = raw_events(http, {"model": "gpt-3.5-turbo", "temperature": 0, "input": "Hi",
                               "include": ["message.output_text.logprobs"], "top_logprobs": 1})
    deltas = [e for n, e in events if n == "response.output_text.delta"]
    assert all(d["logprobs"] for d in deltas)
    for _, event in events:
        schemas.validate("ResponseStreamEvent", event)
    plain = client.responses.create(model="gpt-3.5-turbo", temperature=0, input="Hi")
    assert plain.output[0].content[0].logprobs == []  # type: ignore[union-attr]
