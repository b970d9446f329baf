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

The scoring prompt and its calibration (bench/classify_zh.py measures them, in Chinese and
English, on SmolLM2-135M and Qwen2.5-0.5B):

- The built-in sentiment labels come with three short examples in the labels' language and a
  one-line meaning for each label. Without them a small model's label probabilities follow the
  label more than the text (both models said 中性 for every Chinese text).
- Calibration: the label probabilities are divided by the model's prior for the labels under
  the same prompt (Zhao et al. 2021, "Calibrate before use"), measured once per call and label
  set with one more request, then renormalized. For the sentiment labels the prior is the mean
  over three labelled texts, one per label: the paper's content-free inputs ("N/A") are
  themselves neutral, and dividing by them erased the neutral label. Custom labels are
  calibrated on content-free inputs, as in the paper (``calibrate=False`` turns it off: do so
  when one of your labels means "none of these").
- ``examples`` (``(text, label)`` pairs) replace the built-in examples; custom labels have none
  unless given. Given examples appear in every method's prompt; the built-in ones in scoring's.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Sequence
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
Example = tuple[str, str]  # (text, label)

# One-line meanings of the sentiment labels, for the scoring prompt.
_SENTIMENT_TASK: dict[tuple[str, ...], str] = {
    SENTIMENT_ZH: "判断下面文本的情感：积极（称赞、满意、喜欢）、消极（批评、不满、失望）"
    "或中性（只陈述事实，不表达好恶）。",
    SENTIMENT_EN: "Classify the sentiment of each text: positive (praise, satisfaction), "
    "negative (complaint, disappointment) or neutral (a plain statement of fact, no opinion).",
}
# Shown in the scoring prompt, in this order (the order moves small models' answers: this one
# did best over both models and languages; calibration makes it matter much less).
SENTIMENT_EXAMPLES: dict[tuple[str, ...], tuple[Example, ...]] = {
    SENTIMENT_ZH: (
        ("这家书店位于市中心。", "中性"),
        ("这个蛋糕真好吃，我很喜欢。", "积极"),
        ("等了半天也没人理，太让人失望了。", "消极"),
    ),
    SENTIMENT_EN: (
        ("The bookshop is in the city centre.", "neutral"),
        ("I love this cake, it is delicious.", "positive"),
        ("I waited for ages and nobody helped. So disappointing.", "negative"),
    ),
}
# Scored once per call to measure the model's prior over the labels (one text per label: two
# per label measured the same on bench/classify_zh.py, and each costs a scoring request's work).
SENTIMENT_CALIBRATION: dict[tuple[str, ...], tuple[str, ...]] = {
    SENTIMENT_ZH: (
        "周末去的那家火锅店味道很棒，服务也贴心。",
        "买的台灯用了一周就不亮了，太失望了。",
        "这趟公交车每十五分钟一班。",
    ),
    SENTIMENT_EN: (
        "The hotpot place we tried at the weekend was great, and the service was lovely.",
        "The lamp stopped working after a week. So disappointing.",
        "This bus runs every fifteen minutes.",
    ),
}
# Content-free inputs (the paper's), for custom labels.
CONTENT_FREE_ZH = ("无", "N/A", "")
CONTENT_FREE_EN = ("N/A", "", "[MASK]")


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


def _fields(labels: tuple[str, ...]) -> tuple[str, str]:
    """The prompt's "Text:" and answer field names, in the labels' language."""
    if has_cjk(*labels):
        return "文本：", ("情感：" if _is_sentiment(labels) else "类别：")
    return "Text: ", ("Sentiment:" if _is_sentiment(labels) else "Label:")


def _task(labels: tuple[str, ...]) -> str:
    if has_cjk(*labels):
        task = "情感" if _is_sentiment(labels) else "类别"
        return f"判断下面文本的{task}，从{'、'.join(labels)}中选一个。"
    what = "the sentiment of" if _is_sentiment(labels) else "a label for"
    return f"Choose {what} the text from: {', '.join(labels)}."


def _joiner(labels: tuple[str, ...]) -> str:
    return "" if has_cjk(*labels) else " "


def _shots(labels: tuple[str, ...], examples: Sequence[Example]) -> str:
    text_field, answer = _fields(labels)
    sep = _joiner(labels)
    return "".join(f"{text_field}{t}\n{answer}{sep}{lab}\n\n" for t, lab in examples)


def _prompt(text: str, labels: tuple[str, ...], examples: Sequence[Example] = ()) -> str:
    """The instruction and the text (schema and chat; scoring without examples)."""
    text_field, answer = _fields(labels)
    if not examples:
        return f"{_task(labels)}\n{text_field}{text}\n{answer}"
    return f"{_task(labels)}\n\n{_shots(labels, examples)}{text_field}{text}\n{answer}"


def _scoring_prompt(text: str, labels: tuple[str, ...], examples: Sequence[Example]) -> str:
    """What each label is appended to: the built-in sentiment labels' own instruction and
    examples, or the plain prompt with the caller's examples."""
    if not examples:
        return _prompt(text, labels)
    text_field, answer = _fields(labels)
    task = _SENTIMENT_TASK.get(labels) or _task(labels)
    return f"{task}\n\n{_shots(labels, examples)}{text_field}{text}\n{answer}"


def _calibration_inputs(labels: tuple[str, ...]) -> tuple[str, ...]:
    if labels in SENTIMENT_CALIBRATION:
        return SENTIMENT_CALIBRATION[labels]
    return CONTENT_FREE_ZH if has_cjk(*labels) else CONTENT_FREE_EN


def _normalized(logprobs: Sequence[float]) -> list[float]:
    """Log-probabilities renormalized over the labels (a log-softmax)."""
    top = max(logprobs)
    norm = math.log(sum(math.exp(v - top) for v in logprobs)) + top
    return [v - norm for v in logprobs]


def label_prior(label_logprobs: Sequence[Sequence[float]]) -> list[float]:
    """The log of the mean label distribution over several inputs (each input's label
    log-probabilities, renormalized): what calibration divides by."""
    rows = [[math.exp(v) for v in _normalized(row)] for row in label_logprobs]
    mean = [sum(col) / len(rows) for col in zip(*rows, strict=True)]
    return _normalized([math.log(max(p, 1e-300)) for p in mean])


def calibrated(label_logprobs: Sequence[float], prior: Sequence[float] | None) -> list[float]:
    """Label probabilities divided by the prior (log: subtracted), renormalized."""
    own = _normalized(label_logprobs)
    if prior is None:
        return [math.exp(v) for v in own]
    return [math.exp(v) for v in _normalized([a - b for a, b in zip(own, prior, strict=True)])]


class _Unsupported(Exception):
    pass


async def _score(
    api: AsyncOpenAI, heads: Sequence[str], labels: tuple[str, ...], model: str
) -> list[list[float]]:
    """Each head's label log-probabilities (the sum over each label's tokens): one request."""
    sep = _joiner(labels)
    try:
        done = await api.completions.create(
            model=model,
            prompt=[head + sep + label for head in heads for label in labels],
            max_tokens=0,
            echo=True,
            logprobs=0,
            temperature=0,
        )
    except openai.BadRequestError as exc:
        raise _Unsupported(str(exc)) from exc
    if len(done.choices) != len(heads) * len(labels):
        raise _Unsupported("fewer choices than prompts")
    out = [[0.0] * len(labels) for _ in heads]
    seen = set()
    for choice in done.choices:
        lp = choice.logprobs
        if lp is None or lp.token_logprobs is None or lp.text_offset is None:
            raise _Unsupported("no prompt logprobs in the response")
        h, k = divmod(choice.index, len(labels))
        if not 0 <= h < len(heads):
            raise _Unsupported("a choice index out of range")
        start = len(heads[h])
        out[h][k] = sum(
            value
            for offset, value in zip(lp.text_offset, lp.token_logprobs, strict=False)
            if offset >= start and value is not None
        )
        seen.add(choice.index)
    if len(seen) != len(heads) * len(labels):
        raise _Unsupported("fewer choices than prompts")
    return out


def _scored(
    text: str, labels: tuple[str, ...], own: Sequence[float], prior: Sequence[float] | None
) -> Classification:
    scores = dict(zip(labels, calibrated(own, prior), strict=True))
    best = max(labels, key=lambda k: scores[k])
    return Classification(text, best, scores[best], scores, "scoring")


async def _by_schema(
    api: AsyncOpenAI,
    text: str,
    labels: tuple[str, ...],
    model: str,
    examples: Sequence[Example],
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
            messages=[{"role": "user", "content": _prompt(text, labels, examples)}],
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
    api: AsyncOpenAI,
    text: str,
    labels: tuple[str, ...],
    model: str,
    retries: int,
    examples: Sequence[Example],
) -> Classification:
    instruction = (
        _prompt(text, labels, examples)
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


def _checked_examples(
    examples: Sequence[Example] | None, labels: tuple[str, ...] | None
) -> tuple[Example, ...] | None:
    if examples is None:
        return None
    out = tuple((str(t), str(lab)) for t, lab in examples)
    if labels is not None:
        stray = sorted({lab for _, lab in out} - set(labels))
        if stray:
            raise ValueError(f"example labels not among the labels: {', '.join(stray)}")
    elif out:
        raise ValueError("examples need their labels: give labels too")
    return out


async def aclassify(
    texts: str | list[str],
    labels: list[str] | tuple[str, ...] | None = None,
    *,
    examples: Sequence[Example] | None = None,
    calibrate: bool = True,
    language: str | None = None,
    model: str = DEFAULT_MODEL,
    retries: int = 3,
    concurrency: int = 4,
    method: Method = "auto",
    client: OpenAI | AsyncOpenAI | None = None,
) -> list[Classification]:
    """One ``Classification`` per text, in order (``method``, ``examples`` and ``calibrate``:
    see the module's docstring)."""
    items = [texts] if isinstance(texts, str) else list(texts)
    given = tuple(labels) if labels else None
    if given is not None and (len(given) < 2 or len(set(given)) != len(given)):
        raise ValueError("give at least two different labels")
    shown = _checked_examples(examples, given)
    gate = asyncio.Semaphore(max(1, concurrency))
    if method != "auto" and method not in METHODS:
        raise ValueError(f"method must be auto or one of {', '.join(METHODS)}")
    methods: list[str] = list(METHODS) if method == "auto" else [method]
    # the label prior for calibration, measured once per label set in this call
    priors: dict[tuple[str, ...], asyncio.Task[list[float]]] = {}

    def scoring_examples(chosen: tuple[str, ...]) -> tuple[Example, ...]:
        if shown is not None:
            return shown
        return SENTIMENT_EXAMPLES.get(chosen, ())

    def prior_of(api: AsyncOpenAI, chosen: tuple[str, ...]) -> asyncio.Task[list[float]] | None:
        if not calibrate:
            return None
        if chosen not in priors:
            heads = [
                _scoring_prompt(x, chosen, scoring_examples(chosen))
                for x in _calibration_inputs(chosen)
            ]

            async def measure() -> list[float]:
                async with gate:
                    return label_prior(await _score(api, heads, chosen, model))

            priors[chosen] = asyncio.ensure_future(measure())
        return priors[chosen]

    async def one(api: AsyncOpenAI, text: str) -> Classification:
        # sentiment labels follow each text's language unless labels or a language are given
        chosen = given or default_labels([text], language)
        while True:
            current = methods[0]
            try:
                if current == "scoring":
                    prior = prior_of(api, chosen)
                    head = _scoring_prompt(text, chosen, scoring_examples(chosen))
                    async with gate:
                        (own,) = await _score(api, [head], chosen, model)
                    # the prior is awaited outside the gate: measuring it takes a place in it
                    return _scored(text, chosen, own, await prior if prior else None)
                async with gate:
                    if current == "schema":
                        return await _by_schema(api, text, chosen, model, shown or ())
                    return await _by_chat(api, text, chosen, model, retries, shown or ())
            except _Unsupported as exc:
                if methods == [current]:  # nothing else to try (or the method asked for)
                    raise ClassificationError(
                        f"the server cannot classify by {current}: {exc}"
                    ) from None
                if current in methods:  # (another text may have found out first)
                    methods.remove(current)  # this server cannot do it: skip it for the rest

    async with using(client) as api:
        try:
            return list(await asyncio.gather(*(one(api, t) for t in items)))
        finally:
            for task in priors.values():
                if task.done() and not task.cancelled():
                    task.exception()  # seen (a text's own request failed the same way)
                task.cancel()


classify = sync_twin(aclassify)
