"""Legacy completions through the official SDK, on the fake engine."""

from __future__ import annotations

import json

import openai
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from oasis.engine.fake import FakeEngine
from tests.conftest import sse_data


def test_default_max_tokens_is_16_like_openai(client: OpenAI) -> None:
    r = client.completions.create(model="text-davinci-002", prompt="Say", temperature=0)
    assert r.choices[0].text == "Hello! I am a fa"
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 16


def test_prompt_forms_give_one_choice_per_prompt(client: OpenAI) -> None:
    r = client.completions.create(model="text-davinci-002", prompt=["a", "bb"], n=2,
                                  max_tokens=3, temperature=0)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.usage is not None and r.usage.prompt_tokens == 3
    tokens = [ord(c) + 3 for c in "abc"]
    r = client.completions.create(model="text-davinci-002", prompt=tokens, max_tokens=2,
                                  temperature=0)
    assert r.usage is not None and r.usage.prompt_tokens == 3
    r = client.completions.create(model="text-davinci-002", prompt=[tokens, tokens[:1]],
                                  max_tokens=2, temperature=0)
    assert len(r.choices) == 2
    assert r.usage is not None and r.usage.prompt_tokens == 4


def test_echo_prepends_the_prompt(client: OpenAI) -> None:
    r = client.completions.create(model="text-davinci-002", prompt="Q: ", echo=True,
                                  max_tokens=5, temperature=0)
    assert r.choices[0].text == "Q: Hello"


def test_logprobs_have_the_completions_shape(client: OpenAI) -> None:
    r = client.completions.create(model="text-davinci-002", prompt="x", logprobs=2,
                                  max_tokens=4, temperature=0)
    lp = r.choices[0].logprobs
    assert lp is not None
    assert lp.tokens == list("Hell")
    assert lp.text_offset == [0, 1, 2, 3]
    assert lp.token_logprobs is not None and len(lp.token_logprobs) == 4
    assert lp.top_logprobs is not None and all(len(t) == 2 for t in lp.top_logprobs)


def test_echo_with_logprobs_scores_the_prompt(client: OpenAI) -> None:
    r = client.completions.create(model="text-davinci-002", prompt="ab", echo=True,
                                  logprobs=1, max_tokens=2, temperature=0)
    lp = r.choices[0].logprobs
    assert lp is not None and lp.tokens == ["a", "b", "H", "e"]
    assert lp.token_logprobs is not None and lp.token_logprobs[0] is None
    assert lp.text_offset == [0, 1, 2, 3]


def test_max_tokens_0_gives_an_empty_completion(client: OpenAI) -> None:
    # as OpenAI: allowed with or without echo; nothing generated, finish_reason "length"
    r = client.completions.create(model="text-davinci-002", prompt="Q: ", max_tokens=0)
    assert r.choices[0].text == "" and r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 0
    assert r.usage.prompt_tokens == 3
    chunks = list(client.completions.create(model="text-davinci-002", prompt="Q: ",
                                            max_tokens=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == ""
    assert chunks[-1].choices[0].finish_reason == "length"
    r = client.completions.create(model="text-davinci-002", prompt="Q: ", max_tokens=0,
                                  echo=True)
    assert r.choices[0].text == "Q: "


def test_best_of_returns_n_of_the_candidates(client: OpenAI) -> None:
    r = client.completions.create(model="text-davinci-002", prompt="x", best_of=3, n=2,
                                  max_tokens=3, seed=1)
    assert len(r.choices) == 2
    assert r.usage is not None and r.usage.completion_tokens == 9  # every candidate is billed


def test_best_of_below_n_is_refused(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="text-davinci-002", prompt="x", best_of=1, n=2)
    assert e.value.body["param"] == "best_of"  # type: ignore[index]


def test_stream_sends_text_deltas_then_done(http: TestClient, fake_engine: FakeEngine) -> None:
    r = http.post("/v1/completions", json={"model": "text-davinci-002", "prompt": "x",
                                           "stream": True, "max_tokens": 100,
                                           "temperature": 0})
    assert r.headers["content-type"].startswith("text/event-stream")
    payloads = sse_data(r.text)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == fake_engine.reply
    assert [c["choices"][0]["finish_reason"] for c in chunks][-2:] == [None, "stop"]


def test_stream_through_the_sdk(client: OpenAI, fake_engine: FakeEngine) -> None:
    stream = client.completions.create(model="text-davinci-002", prompt="x", stream=True,
                                       max_tokens=100, temperature=0,
                                       stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == fake_engine.reply
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 1


def test_legacy_engines_path_takes_the_model_from_the_url(http: TestClient) -> None:
    r = http.post("/v1/engines/text-davinci-002/completions",
                  json={"prompt": "x", "max_tokens": 2, "stop": None})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "text-davinci-002"
    r = http.post("/v1/engines/gpt-3.5-turbo/chat/completions",
                  json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "chat.completion"


def test_models_are_listed_with_aliases(client: OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == ["fake-model", "gpt-3.5-turbo", "text-davinci-002"]
    m = client.models.retrieve("gpt-3.5-turbo")
    assert m.id == "gpt-3.5-turbo" and m.owned_by == "oasis"
