"""The official openai SDK against the real server on the bundled SmolLM2 model."""

from __future__ import annotations

import asyncio

import pytest
from openai import AsyncOpenAI, OpenAI
from openai.types.chat import ChatCompletionChunk

MSG = [{"role": "user", "content": "What is the capital of France?"}]


def test_chat_answers_sensibly(sdk: OpenAI) -> None:
    r = sdk.chat.completions.create(model="gpt-3.5-turbo", temperature=0, max_tokens=30,
                                    messages=[{"role": "user", "content": "What is 2+2?"}])
    text = r.choices[0].message.content or ""
    assert "4" in text
    assert r.model == "gpt-3.5-turbo"
    assert r.usage is not None and r.usage.prompt_tokens > 5
    assert r.usage.completion_tokens <= 30


def test_chinese_prompt_round_trips(sdk: OpenAI) -> None:
    r = sdk.chat.completions.create(model="gpt-4o-mini", temperature=0, max_tokens=20,
                                    messages=[{"role": "user", "content": "如何学习编程？"}])
    text = r.choices[0].message.content or ""
    assert text and "\ufffd" not in text


def test_async_client_runs_concurrent_requests(async_sdk: AsyncOpenAI) -> None:
    async def run() -> list[str]:
        rs = await asyncio.gather(*[
            async_sdk.chat.completions.create(
                model="gpt-3.5-turbo", max_tokens=12, temperature=0,
                messages=[{"role": "user", "content": f"Count to {i}."}])
            for i in range(3, 7)
        ])
        return [r.choices[0].message.content or "" for r in rs]

    texts = asyncio.run(run())
    assert len(texts) == 4 and all(texts)


def test_streaming_chunks_and_usage(sdk: OpenAI) -> None:
    chunks = list(sdk.chat.completions.create(
        model="gpt-3.5-turbo", messages=MSG, temperature=0, max_tokens=20, stream=True,
        stream_options={"include_usage": True}))
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    whole = sdk.chat.completions.create(model="gpt-3.5-turbo", messages=MSG, temperature=0,
                                        max_tokens=20)
    assert text == whole.choices[0].message.content
    usage = chunks[-1].usage
    assert usage is not None and whole.usage is not None
    assert usage.completion_tokens == whole.usage.completion_tokens
    assert usage.prompt_tokens == whole.usage.prompt_tokens


def test_n_two_choices(sdk: OpenAI) -> None:
    r = sdk.chat.completions.create(model="gpt-3.5-turbo", messages=MSG, n=2, max_tokens=15,
                                    temperature=1.0, seed=11)
    assert [c.index for c in r.choices] == [0, 1]
    assert r.choices[0].message.content != r.choices[1].message.content
    assert r.usage is not None and r.usage.completion_tokens <= 30


def test_max_tokens_gives_finish_reason_length(sdk: OpenAI) -> None:
    r = sdk.chat.completions.create(model="gpt-3.5-turbo", temperature=0, max_tokens=3,
                                    messages=[{"role": "user", "content": "Write a long poem."}])
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 3


def test_natural_end_gives_finish_reason_stop(sdk: OpenAI) -> None:
    r = sdk.chat.completions.create(model="gpt-3.5-turbo", temperature=0, max_tokens=200,
                                    messages=[{"role": "user", "content": "Say hi."}])
    assert r.choices[0].finish_reason == "stop"


def test_stop_string_cuts_the_text(sdk: OpenAI) -> None:
    base = sdk.completions.create(model="davinci", prompt="The days of the week are",
                                  temperature=0, max_tokens=20)
    text = base.choices[0].text
    words = text.split()
    assert len(words) >= 4
    stop = words[2]
    cut = sdk.completions.create(model="davinci", prompt="The days of the week are",
                                 temperature=0, max_tokens=20, stop=[stop, "zzzz"])
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_seed_reproduces_sampled_output(sdk: OpenAI) -> None:
    def ask(seed: int) -> str:
        r = sdk.completions.create(model="davinci", prompt="Once upon a time", max_tokens=24,
                                   temperature=1.2, seed=seed)
        return r.choices[0].text

    assert ask(1234) == ask(1234)
    assert ask(1234) != ask(4321)


def test_chat_logprobs_shape(sdk: OpenAI) -> None:
    r = sdk.chat.completions.create(model="gpt-3.5-turbo", messages=MSG, temperature=0,
                                    max_tokens=5, logprobs=True, top_logprobs=3)
    lp = r.choices[0].logprobs
    assert lp is not None and lp.content is not None and len(lp.content) == 5
    assert "".join(t.token for t in lp.content) == r.choices[0].message.content
    for t in lp.content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3
        # greedy: the chosen token is the most likely one
        assert t.top_logprobs[0].logprob == pytest.approx(t.logprob, abs=1e-4)


def test_completion_logprobs_shape_and_echo(sdk: OpenAI) -> None:
    r = sdk.completions.create(model="davinci", prompt="Hello, my name is", max_tokens=4,
                               temperature=0, logprobs=2, echo=True)
    c = r.choices[0]
    assert c.text.startswith("Hello, my name is")
    lp = c.logprobs
    assert lp is not None and lp.tokens is not None and lp.text_offset is not None
    assert "".join(lp.tokens) == c.text
    assert lp.token_logprobs is not None and lp.token_logprobs[0] is None
    assert lp.text_offset[0] == 0
    assert all(b > a for a, b in zip(lp.text_offset, lp.text_offset[1:], strict=False))
    assert r.usage is not None
    assert len(lp.tokens) == r.usage.prompt_tokens + r.usage.completion_tokens


def test_prompt_lists_and_token_prompts(sdk: OpenAI) -> None:
    r = sdk.completions.create(model="text-davinci-003", prompt=["One, two,", "Red, green,"],
                               max_tokens=3, temperature=0)
    assert len(r.choices) == 2
    tokens = sdk.completions.create(model="davinci", prompt="One, two,", max_tokens=1,
                                    temperature=0, echo=True, logprobs=0)
    assert tokens.usage is not None
    ids = list(range(100, 105))
    r = sdk.completions.create(model="davinci", prompt=[ids, ids[:2]], max_tokens=2,
                               temperature=0)
    assert len(r.choices) == 2
    assert r.usage is not None and r.usage.prompt_tokens == 7


def test_logit_bias_forces_a_token(sdk: OpenAI) -> None:
    r = sdk.completions.create(model="davinci", prompt="Hello", max_tokens=4, temperature=0,
                               logit_bias={"33": 100}, logprobs=0)
    lp = r.choices[0].logprobs
    assert lp is not None and lp.tokens is not None
    assert len(set(lp.tokens)) == 1
