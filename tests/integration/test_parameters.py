"""Every sampling parameter of chat and completions at a non-default value, on the real engine.

Alone and all together, streamed and not: a parameter that only ever ran on the fake engine is
untested (the penalties once killed the engine thread on the first request that set them).
After each request the server must still answer.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from openai import OpenAI

from tests.integration.conftest import LiveServer

pytestmark = pytest.mark.integration

MESSAGES = [{"role": "user", "content": "Name three fruits."}]

# each alone, at a value that changes what the sampler does
ALONE: list[tuple[str, dict[str, Any]]] = [
    ("temperature", {"temperature": 1.3}),
    ("top_p", {"top_p": 0.5}),
    ("presence_penalty", {"presence_penalty": 1.5}),
    ("presence_penalty_negative", {"presence_penalty": -1.0}),
    ("frequency_penalty", {"frequency_penalty": 1.2}),
    ("frequency_penalty_negative", {"frequency_penalty": -0.5}),
    ("logit_bias", {"logit_bias": {"30": 5, "2": -100}}),
    ("seed", {"seed": 1234, "temperature": 0.9}),
    ("stop", {"stop": ["\n", "."]}),
    ("n", {"n": 3, "temperature": 0.8}),
    ("top_k", {"extra_body": {"top_k": 5}}),
    ("min_p", {"extra_body": {"min_p": 0.2}}),
    ("repeat_penalty", {"extra_body": {"repeat_penalty": 1.3}}),
    ("repeat_penalty_low", {"extra_body": {"repeat_penalty": 0.8}}),
]
TOGETHER: dict[str, Any] = {
    "temperature": 0.7,
    "top_p": 0.9,
    "presence_penalty": 0.6,
    "frequency_penalty": 0.4,
    "logit_bias": {"30": 2},
    "seed": 7,
    "n": 2,
    "stop": ["\n\n"],
    "extra_body": {"top_k": 20, "min_p": 0.05, "repeat_penalty": 1.1},
}


def _alive(live: LiveServer, sdk: OpenAI) -> None:
    assert httpx.get(f"{live.base_url}/health", timeout=10).status_code == 200
    r = sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=4)
    assert r.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("stream", [False, True], ids=["body", "stream"])
@pytest.mark.parametrize(("name", "params"), [*ALONE, ("together", TOGETHER)],
                         ids=[n for n, _ in ALONE] + ["together"])
def test_chat_parameter_on_real_engine(live: LiveServer, sdk: OpenAI, name: str,
                                       params: dict[str, Any], stream: bool) -> None:
    n = params.get("n", 1)
    common = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 12,
              "logprobs": True, "top_logprobs": 2, **params}
    if stream:
        texts = [""] * n
        finishes: list[str | None] = [None] * n
        for chunk in sdk.chat.completions.create(stream=True, **common):
            for c in chunk.choices:
                texts[c.index] += c.delta.content or ""
                finishes[c.index] = c.finish_reason or finishes[c.index]
        assert all(f in ("stop", "length") for f in finishes)
    else:
        r = sdk.chat.completions.create(**common)
        assert len(r.choices) == n
        assert all(c.finish_reason in ("stop", "length") for c in r.choices)
        assert r.usage is not None and r.usage.completion_tokens >= n
        for c in r.choices:
            assert c.logprobs is not None and c.logprobs.content is not None
            for lp in c.logprobs.content:
                assert len(lp.top_logprobs) == 2
        if "stop" in params and name == "stop":
            for c in r.choices:
                assert "\n" not in (c.message.content or "")
                assert "." not in (c.message.content or "")
    _alive(live, sdk)


@pytest.mark.parametrize("stream", [False, True], ids=["body", "stream"])
@pytest.mark.parametrize(("name", "params"), [*ALONE, ("together", TOGETHER)],
                         ids=[n for n, _ in ALONE] + ["together"])
def test_completions_parameter_on_real_engine(live: LiveServer, sdk: OpenAI, name: str,
                                              params: dict[str, Any], stream: bool) -> None:
    n = params.get("n", 1)
    common = {"model": "text-davinci-002", "prompt": "Three fruits are", "max_tokens": 10,
              "logprobs": 2, **params}
    if stream:
        seen = set()
        for chunk in sdk.completions.create(stream=True, **common):
            for c in chunk.choices:
                if c.finish_reason:
                    seen.add(c.index)
        assert seen == set(range(n))
    else:
        r = sdk.completions.create(**common)
        assert len(r.choices) == n
        for c in r.choices:
            assert c.finish_reason in ("stop", "length")
            assert c.logprobs is not None and c.logprobs.tokens is not None
    _alive(live, sdk)


def test_seed_reproduces_with_penalties(sdk: OpenAI) -> None:
    """Same seed, same penalties: the same text (the penalty sampler keeps its history per
    sequence, and nothing leaks between requests)."""
    kw: dict[str, Any] = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 16,
                          "temperature": 0.9, "seed": 99, "presence_penalty": 1.0,
                          "frequency_penalty": 0.5}
    a = sdk.chat.completions.create(**kw).choices[0].message.content
    b = sdk.chat.completions.create(**kw).choices[0].message.content
    assert a == b


def test_penalties_change_greedy_text(sdk: OpenAI) -> None:
    """A strong frequency penalty really reaches the sampler: greedy text that repeats
    itself without it repeats less with it."""
    kw: dict[str, Any] = {"model": "text-davinci-002", "max_tokens": 48, "temperature": 0,
                          "prompt": "one two one two one two one two"}
    plain = sdk.completions.create(**kw).choices[0].text
    penalized = sdk.completions.create(frequency_penalty=2.0, **kw).choices[0].text
    assert plain != penalized


def test_logit_bias_forces_a_token(sdk: OpenAI) -> None:
    """+100 on one token id: the answer is that token, repeated."""
    r = sdk.completions.create(model="text-davinci-002", prompt="Hello", max_tokens=5,
                               temperature=0, logit_bias={"30": 100}, logprobs=0)
    assert r.choices[0].logprobs is not None
    tokens = r.choices[0].logprobs.tokens or []
    assert len(tokens) == 5 and len(set(tokens)) == 1
