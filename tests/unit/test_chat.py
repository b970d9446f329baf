"""Chat completions through the official SDK, on the fake engine."""

from __future__ import annotations

import openai
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletionChunk

from oasis.engine.fake import FakeEngine

USER = [{"role": "user", "content": "Hi"}]


def test_plain_chat_answers_with_usage(client: OpenAI, fake_engine: FakeEngine) -> None:
    r = client.chat.completions.create(model="gpt-3.5-turbo", messages=USER, temperature=0)
    assert r.object == "chat.completion"
    assert r.model == "gpt-3.5-turbo"
    assert r.choices[0].message.content == fake_engine.reply
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == "stop"
    prompt = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert r.usage is not None
    assert r.usage.prompt_tokens == len(prompt.encode())
    # every byte of the reply is a token, plus the end-of-sequence token
    assert r.usage.completion_tokens == len(fake_engine.reply.encode()) + 1
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_content_parts_and_developer_role_are_honoured(client: OpenAI) -> None:
    r = client.chat.completions.create(
        model="gpt-3.5-turbo",
        messages=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hel"},
                                         {"type": "text", "text": "lo"}]},
        ],
        temperature=0,
    )
    prompt = ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
              "<|im_start|>assistant\n")
    assert r.usage is not None and r.usage.prompt_tokens == len(prompt)


def test_max_tokens_cuts_with_finish_reason_length(client: OpenAI) -> None:
    for kwargs in ({"max_tokens": 5}, {"max_completion_tokens": 5}):
        r = client.chat.completions.create(model="gpt-3.5-turbo", messages=USER,
                                           temperature=0, **kwargs)  # type: ignore[arg-type]
        assert r.choices[0].message.content == "Hello"
        assert r.choices[0].finish_reason == "length"
        assert r.usage is not None and r.usage.completion_tokens == 5


def test_stop_string_ends_with_finish_reason_stop(client: OpenAI) -> None:
    r = client.chat.completions.create(model="gpt-3.5-turbo", messages=USER, temperature=0,
                                       stop=["I am"])
    assert r.choices[0].message.content == "Hello! "
    assert r.choices[0].finish_reason == "stop"


def test_n_choices_differ_and_seed_reproduces(client: OpenAI) -> None:
    def ask() -> list[str | None]:
        r = client.chat.completions.create(model="gpt-3.5-turbo", messages=USER, n=2,
                                           seed=7, temperature=1)
        assert [c.index for c in r.choices] == [0, 1]
        return [c.message.content for c in r.choices]

    first = ask()
    assert first == ask()
    assert first[0] != first[1]


def test_stream_chunks_parse_and_usage_comes_last(client: OpenAI,
                                                  fake_engine: FakeEngine) -> None:
    stream = client.chat.completions.create(model="gpt-3.5-turbo", messages=USER,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == fake_engine.reply
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(fake_engine.reply) + 1
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


def test_logprobs_have_the_chat_shape(client: OpenAI) -> None:
    r = client.chat.completions.create(model="gpt-3.5-turbo", messages=USER, temperature=0,
                                       logprobs=True, top_logprobs=3, max_tokens=4)
    lp = r.choices[0].logprobs
    assert lp is not None and lp.content is not None
    assert [t.token for t in lp.content] == list("Hell")
    for t in lp.content:
        assert t.bytes == list(t.token.encode())
        assert len(t.top_logprobs) == 3
        assert t.logprob <= 0


def test_logit_bias_changes_the_output(client: OpenAI) -> None:
    token = ord("z") + 3  # the fake engine's id for "z"
    r = client.chat.completions.create(model="gpt-3.5-turbo", messages=USER, temperature=0,
                                       logit_bias={str(token): 100}, max_tokens=3)
    assert r.choices[0].message.content == "zzz"


def test_extension_samplers_are_accepted(client: OpenAI) -> None:
    r = client.chat.completions.create(
        model="gpt-3.5-turbo", messages=USER,
        extra_body={"top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1},
    )
    assert r.choices[0].message.content


def test_top_logprobs_without_logprobs_is_refused(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="gpt-3.5-turbo", messages=USER, top_logprobs=2)
    assert e.value.body["param"] == "top_logprobs"  # type: ignore[index]
