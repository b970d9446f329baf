"""Reading an upstream: SSE lines and events, size caps against a hostile upstream, token
estimates and affinity keys (backends/upstream/relay.py and backend.py's readers)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from oasis.backends.upstream import backend
from oasis.backends.upstream.relay import (
    chat_affinity,
    estimate_tokens,
    sse_data,
)
from oasis.protocol.requests import ChatCompletionRequest

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def body(parts: list[bytes]) -> AsyncIterator[bytes]:
    for p in parts:
        yield p


async def lines_of(parts: list[bytes]) -> list[str]:
    return [line async for line in backend._capped_lines(body(parts))]


async def test_lines_are_split_across_parts_and_characters_stay_whole() -> None:
    text = "data: 你好\r\n\r\ndata: [DONE]\n\n".encode()
    for cut in range(1, len(text)):
        got = await lines_of([text[:cut], text[cut:]])
        assert got == ["data: 你好", "", "data: [DONE]", ""], cut
    events = [e async for e in sse_data(_aiter(await lines_of([text])))]
    assert events == ["你好", "[DONE]"]


async def _aiter(items: list[str]) -> AsyncIterator[str]:
    for i in items:
        yield i


async def test_sse_comments_and_multi_line_data() -> None:
    lines = [": keep-alive", "event: x", "data: {\"a\":", "data: 1}", "", "data:[DONE]"]
    assert [e async for e in sse_data(_aiter(lines))] == ['{"a":\n1}', "[DONE]"]


async def test_a_line_without_end_is_cut_off_at_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend, "MAX_ANSWER_BYTES", 1000)
    with pytest.raises(backend.AnswerTooLargeError, match="over 1000 bytes"):
        await lines_of([b"data: " + b"x" * 300] * 10)  # never a newline
    assert await lines_of([b"x" * 900 + b"\n"] * 10) == ["x" * 900] * 10  # many lines: fine


async def test_a_whole_answer_is_capped_by_length_and_by_what_arrives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(backend, "MAX_ANSWER_BYTES", 1000)
    with pytest.raises(backend.AnswerTooLargeError, match="5000 bytes"):
        await backend._read_capped(5000, body([b"x"]))
    with pytest.raises(backend.AnswerTooLargeError):
        await backend._read_capped(None, body([b"y" * 400] * 5))
    assert await backend._read_capped(None, body([b"z" * 400] * 2)) == b"z" * 800


def test_estimates_err_high_for_chinese_and_round_up_ascii() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd") == 1 and estimate_tokens("abcde") == 2
    assert estimate_tokens("你好世界") == 4  # at least a token a character
    assert estimate_tokens("hi 你好") == 1 + 2


def test_affinity_key_prefers_prompt_cache_key_then_user_then_the_prefix() -> None:
    def req(**kw: object) -> ChatCompletionRequest:
        messages = kw.pop("messages", [{"role": "system", "content": "S"},
                                       {"role": "user", "content": "first"},
                                       {"role": "assistant", "content": "reply"},
                                       {"role": "user", "content": "second"}])
        return ChatCompletionRequest.model_validate({"model": "m", "messages": messages, **kw})

    assert chat_affinity(req(prompt_cache_key="k", user="u")) == "k:k"
    assert chat_affinity(req(user="u")) == "u:u"
    grown = req(messages=[{"role": "system", "content": "S"},
                          {"role": "user", "content": "first"}])
    assert chat_affinity(req()) == chat_affinity(grown)  # a growing history keeps its key
    other = req(messages=[{"role": "system", "content": "S"},
                          {"role": "user", "content": "another"}])
    assert chat_affinity(other) != chat_affinity(grown)
