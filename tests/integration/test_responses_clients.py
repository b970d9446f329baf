"""The Responses API on the real engine, through the clients that default to it: the official
SDK, the OpenAI Agents SDK (its default Responses model) and LangChain's ChatOpenAI with
use_responses_api=True."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from openai import AsyncOpenAI, OpenAI
from pydantic import BaseModel

from tests.integration.conftest import LiveServer

pytestmark = pytest.mark.integration
MODEL = "gpt-4o-mini"  # an alias of the bundled model, as a tutorial's code would name it


class City(BaseModel):
    city: str
    country: str


def test_sdk_create_stream_parse_and_a_tool_loop(sdk: OpenAI) -> None:
    r = sdk.responses.create(model=MODEL, input="Name a colour.", max_output_tokens=16,
                             instructions="Answer in one word.", temperature=0)
    assert r.status in ("completed", "incomplete") and r.output_text
    # the helper's final response needs `response.completed`: room for the whole answer
    with sdk.responses.stream(model=MODEL, input="Say: one, two, three.", temperature=0,
                              instructions="Answer in one short sentence.",
                              max_output_tokens=300) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text and final.usage is not None
    parsed = sdk.responses.parse(model=MODEL, input="Where is the Eiffel Tower?", temperature=0,
                                 text_format=City, max_output_tokens=60)
    assert isinstance(parsed.output_parsed, City)
    tool = {"type": "function", "name": "get_weather", "strict": True,
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"], "additionalProperties": False}}
    first = sdk.responses.create(model=MODEL, input="What is the weather in Paris?", temperature=0,
                                 tools=[tool], tool_choice="required",  # type: ignore[list-item]
                                 max_output_tokens=60)
    call = next(i for i in first.output if i.type == "function_call")
    assert call.name == "get_weather" and isinstance(json.loads(call.arguments)["city"], str)
    second = sdk.responses.create(
        model=MODEL, previous_response_id=first.id, tools=[tool],  # type: ignore[list-item]
        tool_choice="none",  # the loop's last turn: an answer in words
        input=[{"type": "function_call_output", "call_id": call.call_id,
                "output": json.dumps({"forecast": "sunny", "celsius": 24})}],
        max_output_tokens=40, temperature=0)
    assert second.status in ("completed", "incomplete") and second.output_text
    items = sdk.responses.input_items.list(second.id)
    assert [i.type for i in items.data] == ["function_call_output"]
    sdk.responses.delete(second.id)


def test_a_cut_is_incomplete_and_bad_input_names_the_parameter(sdk: OpenAI) -> None:
    r = sdk.responses.create(model=MODEL, input="Tell me a long story about the sea.",
                             max_output_tokens=16, temperature=0)
    assert r.status == "incomplete" and r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens"
    import openai

    with pytest.raises(openai.BadRequestError) as caught:
        sdk.responses.create(model=MODEL, input="x", tools=[{"type": "web_search"}])  # type: ignore[list-item]
    assert "web_search" in str(caught.value)


@pytest.fixture
def agents(live: LiveServer) -> Iterator[object]:
    import agents

    agents.set_tracing_disabled(True)
    agents.set_default_openai_client(
        AsyncOpenAI(base_url=live.v1, api_key=live.api_key, max_retries=0, timeout=120),
        use_for_tracing=False)
    agents.set_default_openai_api("responses")
    yield agents


def test_the_agents_sdk_default_model(agents: object) -> None:
    from agents import Agent, ModelSettings, Runner, function_tool

    settings = ModelSettings(max_tokens=60, temperature=0)
    calls: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        calls.append(city)
        return f"It is sunny in {city}."

    plain = Agent(name="helper", instructions="Answer in a few words.", model=MODEL,
                  model_settings=settings)
    typed = Agent(name="geo", instructions="Answer with the city and its country.",
                  model=MODEL, model_settings=settings, output_type=City)
    weather = Agent(name="weather", instructions="Use the tool, then answer.", model=MODEL,
                    tools=[get_weather],
                    model_settings=ModelSettings(max_tokens=60, temperature=0,
                                                 tool_choice="required"),
                    tool_use_behavior="stop_on_first_tool")

    async def runs() -> list[object]:  # one event loop: the client's connections live in it
        return [
            (await Runner.run(plain, "Name a fruit.")).final_output,
            (await Runner.run(typed, "Where is the Colosseum?")).final_output,
            (await Runner.run(weather, "What is the weather in Rome?")).final_output,
        ]

    text, city, answer = asyncio.run(runs())
    assert isinstance(text, str) and text
    assert isinstance(city, City)
    assert calls and isinstance(calls[0], str) and answer == f"It is sunny in {calls[0]}."


def test_langchain_chat_openai_on_the_responses_api(live: LiveServer) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=MODEL, base_url=live.v1, api_key=live.api_key,  # type: ignore[arg-type]
                     use_responses_api=True, max_tokens=40, temperature=0, max_retries=0)
    reply = llm.invoke("Say hello in French.")
    assert reply.text
    chunks = list(llm.stream("Count to three."))
    assert "".join(c.text for c in chunks)
    structured = llm.with_structured_output(City, method="json_schema")
    got = structured.invoke("Where is the Brandenburg Gate?")
    assert isinstance(got, City)
