"""Summaries of documents of any length: split by tokens into pieces the model's context holds,
summarize each (map), then summarize the summaries (reduce)."""

from __future__ import annotations

import asyncio
import re

import openai
from openai import AsyncOpenAI, OpenAI

from oasis.apps.client import DEFAULT_MODEL, sync_twin, using
from oasis.apps.lang import CJK
from oasis.apps.text import achat_once

_SENTENCE = re.compile(r"(?<=[.!?。！？；;\n])\s*")


def language_of(text: str) -> str:
    return "zh" if len(CJK.findall(text[:2000])) > 20 else "en"


def _instruction(words: int, language: str, partial: bool) -> str:
    if language == "zh":
        what = "这是一篇长文的一部分。" if partial else ""
        return f"{what}用中文概括下面的内容，不超过{words}个字。只输出摘要。"
    what = "This is one part of a longer document. " if partial else ""
    return (
        f"{what}Summarize the following text in English in at most {words} words. "
        "Reply with the summary only."
    )


def _estimate(text: str) -> int:
    """Tokens of text when the server cannot count them: ~4 characters per token, CJK ~1.5 per
    character."""
    cjk = len(CJK.findall(text))
    return int((len(text) - cjk) / 4 + cjk * 1.5) + 1


async def _count(api: AsyncOpenAI, pieces: list[str], model: str) -> list[int]:
    """Token counts by the server's own tokenizer (completions with echo), else estimates."""
    counts: list[int] = []
    for start in range(0, len(pieces), 32):
        group = pieces[start : start + 32]
        try:
            done = await api.completions.create(
                model=model, prompt=group, max_tokens=0, echo=True, logprobs=0
            )
            by_index = {c.index: c for c in done.choices}
            for i, piece in enumerate(group):
                lp = by_index[i].logprobs if i in by_index else None
                counts.append(len(lp.tokens) if lp and lp.tokens else _estimate(piece))
        except (openai.BadRequestError, openai.NotFoundError):
            counts.extend(_estimate(p) for p in group)
    return counts


def _sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE.split(text) if s.strip()]


async def split(api: AsyncOpenAI, text: str, max_tokens: int, model: str) -> list[str]:
    """Pieces of ``text`` of at most ``max_tokens`` tokens each, cut between sentences."""
    sentences = _sentences(text)
    counts = await _count(api, sentences, model)
    pieces: list[str] = []
    current: list[str] = []
    used = 0
    for sentence, n in zip(sentences, counts, strict=True):
        if n > max_tokens:  # one huge sentence: cut it by characters
            step = max(1, len(sentence) * max_tokens // n)
            parts = [sentence[i : i + step] for i in range(0, len(sentence), step)]
        else:
            parts = [sentence]
        for part in parts:
            m = n if len(parts) == 1 else max_tokens
            if current and used + m > max_tokens:
                pieces.append(" ".join(current))
                current, used = [], 0
            current.append(part)
            used += m
    if current:
        pieces.append(" ".join(current))
    return pieces


async def asummarize(
    text: str,
    *,
    words: int = 100,
    language: str | None = None,
    model: str = DEFAULT_MODEL,
    chunk_tokens: int = 1200,
    concurrency: int = 4,
    client: OpenAI | AsyncOpenAI | None = None,
) -> str:
    """A summary of ``text`` in at most about ``words`` words (characters, in Chinese)."""
    async with using(client) as api:
        return await _summarize(api, text, words, language, model, chunk_tokens, concurrency)


async def _summarize(
    api: AsyncOpenAI,
    text: str,
    words: int,
    language: str | None,
    model: str,
    chunk_tokens: int,
    concurrency: int,
) -> str:
    lang = language or language_of(text)
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(piece: str, limit: int, partial: bool) -> str:
        async with gate:
            messages = [
                {"role": "system", "content": _instruction(limit, lang, partial)},
                {"role": "user", "content": piece},
            ]
            answer = await achat_once(
                messages, model=model, client=api, temperature=0.3, max_tokens=limit * 3
            )
            return answer.strip()

    pieces = await split(api, text, chunk_tokens, model)
    while len(pieces) > 1:
        partials = await asyncio.gather(*(one(p, words, True) for p in pieces))
        pieces = await split(api, "\n".join(partials), chunk_tokens, model)
    return await one(pieces[0] if pieces else text, words, False)


summarize = sync_twin(asummarize)
