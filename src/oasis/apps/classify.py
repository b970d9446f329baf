"""Sentiment (or any labels) for texts; the answer is always exactly one of the labels.

How, in order of preference:

1. Scoring: each label is appended to the prompt and the server returns the label tokens'
   log-probabilities (completions with ``echo`` and ``logprobs``, which oasis supports). The
   most likely label wins, and every label gets a probability (a softmax over the labels).
2. ``response_format`` JSON schema with an enum of the labels (constrained decoding), for
   servers that support it and not the above.
3. A chat answer checked against the labels, asked again (up to ``retries`` times) until it
   is one of them.

``method="auto"`` goes down that list, skipping what the server refuses; ``method="schema"``
(``oasis classify --method schema``) asks for the enum-constrained answer only, and so on.
Scoring comes first because it is the exact most likely label under the model (which greedy
enum-constrained decoding only approximates, one token at a time) and the only way to get a
probability per label.
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass
from typing import Any, Literal

import openai
from openai import AsyncOpenAI, OpenAI

from oasis.apps.client import DEFAULT_MODEL, sync_twin, using
from oasis.apps.lang import has_cjk, wants_chinese

SENTIMENT_EN = ("positive", "negative", "neutral")
SENTIMENT_ZH = ("积极", "消极", "中性")
METHODS = ("scoring", "schema", "chat")
Method = Literal["auto", "scoring", "schema", "chat"]


@dataclass(frozen=True)
class Classification:
    text: str
    label: str
    confidence: float | None  # probability of ``label`` among the labels (scoring only)
    scores: dict[str, float] | None
    method: str  # "scoring", "schema" or "chat"


class ClassificationError(Exception):
    """The server never produced one of the labels."""


def default_labels(texts: list[str], language: str | None = None) -> tuple[str, ...]:
    """Sentiment labels: Chinese ones when asked in Chinese (``language="zh"`` or Chinese
    text), English ones otherwise."""
    if wants_chinese(language, *texts):
        return SENTIMENT_ZH
    return SENTIMENT_EN


def _is_sentiment(labels: tuple[str, ...]) -> bool:
    return labels in (SENTIMENT_EN, SENTIMENT_ZH)


def _prompt(text: str, labels: tuple[str, ...]) -> str:
    if has_cjk(*labels):
        task = "情感" if _is_sentiment(labels) else "类别"
        return f"判断下面文本的{task}，从{'、'.join(labels)}中选一个。\n文本：{text}\n{task}："
    task = "Sentiment" if _is_sentiment(labels) else "Label"
    what = "the sentiment of" if _is_sentiment(labels) else "a label for"
    return f"Choose {what} the text from: {', '.join(labels)}.\nText: {text}\n{task}:"


def _joiner(labels: tuple[str, ...]) -> str:
    return "" if has_cjk(*labels) else " "


class _Unsupported(Exception):
    pass


async def _by_scoring(
    api: AsyncOpenAI, text: str, labels: tuple[str, ...], model: str
) -> Classification:
    head = _prompt(text, labels)
    sep = _joiner(labels)
    try:
        done = await api.completions.create(
            model=model,
            prompt=[head + sep + label for label in labels],
            max_tokens=0,
            echo=True,
            logprobs=0,
            temperature=0,
        )
    except openai.BadRequestError as exc:
        raise _Unsupported(str(exc)) from exc
    totals: dict[str, float] = {}
    for choice in sorted(done.choices, key=lambda c: c.index):
        lp = choice.logprobs
        if lp is None or lp.token_logprobs is None or lp.text_offset is None:
            raise _Unsupported("no prompt logprobs in the response")
        label = labels[choice.index]
        total = 0.0
        for offset, value in zip(lp.text_offset, lp.token_logprobs, strict=False):
            if offset >= len(head) and value is not None:
                total += value
        totals[label] = total
    if len(totals) != len(labels):
        raise _Unsupported("fewer choices than labels")
    top = max(totals.values())
    weights = {k: math.exp(v - top) for k, v in totals.items()}
    norm = sum(weights.values())
    scores = {k: w / norm for k, w in weights.items()}
    best = max(labels, key=lambda k: scores[k])
    return Classification(text, best, scores[best], scores, "scoring")


async def _by_schema(
    api: AsyncOpenAI, text: str, labels: tuple[str, ...], model: str
) -> Classification:
    schema = {
        "type": "object",
        "properties": {"label": {"type": "string", "enum": list(labels)}},
        "required": ["label"],
        "additionalProperties": False,
    }
    try:
        done = await api.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": _prompt(text, labels)}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "classification", "schema": schema, "strict": True},
            },
            temperature=0,
        )
    except openai.BadRequestError as exc:
        raise _Unsupported(str(exc)) from exc
    try:
        label = json.loads(done.choices[0].message.content or "")["label"]
    except (ValueError, KeyError, TypeError) as exc:
        raise _Unsupported("the answer did not follow the schema") from exc
    if label not in labels:
        raise _Unsupported("the answer is not one of the labels")
    return Classification(text, label, None, None, "schema")


def _match(answer: str, labels: tuple[str, ...]) -> str | None:
    cleaned = answer.strip().strip(".。!！\"'`*").strip().lower()
    for label in labels:
        if cleaned == label.lower():
            return label
    found = [label for label in labels if label.lower() in answer.lower()]
    return found[0] if len(found) == 1 else None


async def _by_chat(
    api: AsyncOpenAI, text: str, labels: tuple[str, ...], model: str, retries: int
) -> Classification:
    instruction = (
        _prompt(text, labels)
        + f"\nAnswer with exactly one of: {', '.join(labels)}. No other words."
    )
    answer = ""
    for attempt in range(retries + 1):
        messages: list[Any] = [{"role": "user", "content": instruction}]
        if attempt and answer:
            messages += [
                {"role": "assistant", "content": answer},
                {"role": "user", "content": f"Only one of: {', '.join(labels)}."},
            ]
        done = await api.chat.completions.create(
            model=model, messages=messages, temperature=0 if attempt == 0 else 0.7, max_tokens=16
        )
        answer = done.choices[0].message.content or ""
        label = _match(answer, labels)
        if label is not None:
            return Classification(text, label, None, None, "chat")
    raise ClassificationError(
        f"the model did not answer with one of {', '.join(labels)} in {retries + 1} tries "
        f"(last answer: {answer[:60]!r})"
    )


async def aclassify(
    texts: str | list[str],
    labels: list[str] | tuple[str, ...] | None = None,
    *,
    language: str | None = None,
    model: str = DEFAULT_MODEL,
    retries: int = 3,
    concurrency: int = 4,
    method: Method = "auto",
    client: OpenAI | AsyncOpenAI | None = None,
) -> list[Classification]:
    """One ``Classification`` per text, in order (``method``: see the module's docstring)."""
    items = [texts] if isinstance(texts, str) else list(texts)
    given = tuple(labels) if labels else None
    if given is not None and (len(given) < 2 or len(set(given)) != len(given)):
        raise ValueError("give at least two different labels")
    gate = asyncio.Semaphore(max(1, concurrency))
    if method != "auto" and method not in METHODS:
        raise ValueError(f"method must be auto or one of {', '.join(METHODS)}")
    methods = list(METHODS) if method == "auto" else [method]

    async def one(api: AsyncOpenAI, text: str) -> Classification:
        # sentiment labels follow each text's language unless labels or a language are given
        chosen = given or default_labels([text], language)
        async with gate:
            while True:
                current = methods[0]
                try:
                    if current == "scoring":
                        return await _by_scoring(api, text, chosen, model)
                    if current == "schema":
                        return await _by_schema(api, text, chosen, model)
                    return await _by_chat(api, text, chosen, model, retries)
                except _Unsupported as exc:
                    if len(methods) == 1:  # nothing else to try (the method asked for)
                        raise ClassificationError(
                            f"the server cannot classify by {current}: {exc}"
                        ) from None
                    if methods and methods[0] == current:
                        methods.pop(0)  # this server cannot do it: skip it for the rest

    async with using(client) as api:
        return list(await asyncio.gather(*(one(api, t) for t in items)))


classify = sync_twin(aclassify)
