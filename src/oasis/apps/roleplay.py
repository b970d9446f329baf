"""Role-play dialogue: the model plays a character (a doctor, a teacher...) and, for a
generated dialogue, also the person talking to it.

Small models keep roles loosely. Told in a system prompt to play the visitor, Qwen2.5-0.5B
played a helpful assistant or narrated the scenario in the third person, and answered the
character's lines by copying them. So in Chinese the visitor's line is asked for as a writing
task (the dialogue so far, then "write the visitor's next line, in the first person"), which
that model follows far better; in English the visitor is played in the chat as before. Each
line is cleaned of a speaker name in front of it or a turn written for the other side, and a
line that copies an earlier line of the dialogue (or the character's line that opens by
addressing its own role: "你好，医生。") is sampled again, up to twice.
"""

from __future__ import annotations

import difflib
import re

from openai import AsyncOpenAI, OpenAI

from oasis.apps.client import DEFAULT_MODEL, sync_twin, using
from oasis.apps.lang import wants_chinese
from oasis.apps.text import achat_once

VISITOR_ZH = "来访者"
VISITOR_EN = "Visitor"
# Names a small model puts in front of the visitor's lines (besides the visitor's own).
VISITOR_NAMES = ("病人", "患者", "学生", "顾客", "客户", "Patient", "Student", "Customer")
REPEAT_RATIO = 0.6  # this similar to an earlier line (difflib's ratio) is a copy
RESAMPLES = 2


def _sentence(text: str) -> str:
    """A Chinese sentence ending with one full stop."""
    return text.strip().rstrip("。.") + "。"


def character_prompt(role: str, scenario: str | None = None, language: str | None = None) -> str:
    """The system prompt that makes the model play ``role``."""
    zh = wants_chinese(language, role, scenario or "")
    if zh:
        text = f"你是一位{role}。请始终以{role}的身份和口吻说话，回答简洁、专业、友好。"
        return text + (f"场景：{_sentence(scenario)}" if scenario else "")
    text = (
        f"You are a {role}. Always speak as the {role} would: in character, concise, "
        "professional and kind."
    )
    return text + (f" Scenario: {scenario}" if scenario else "")


def _counterpart_prompt(role: str, scenario: str | None) -> str:
    """The English visitor's system prompt (it plays the visitor in the chat)."""
    return (
        f"You are talking to a {role}. Play the person who came to see the {role} (a patient, "
        "a student, a customer...): say one or two sentences at a time, ask or describe."
        + (f" Scenario: {scenario}" if scenario else "")
    )


def visitor_request_zh(
    role: str, scenario: str | None, dialogue: list[tuple[str, str]]
) -> list[dict[str, str]]:
    """The messages asking for the Chinese visitor's next line, as a writing task."""
    v = VISITOR_ZH
    who = f"场景：{_sentence(scenario)}{v}就是场景里来找{role}的那个人。" if scenario else ""
    system = f"你在写一段{role}和{v}的对话。{who or f'{v}是来找{role}的人。'}"
    only = f"只写{v}说的话本身，不要写{role}的话，不要旁白。"
    if not dialogue:
        ask = (
            f"请写出{v}对{role}说的第一句话：以“{role}您好，我”开头，"
            f"用第一人称说说自己的具体情况或问题，一两句，不要照抄场景的原话。{only}"
        )
    else:
        so_far = "\n".join(f"{who_}：{text}" for who_, text in dialogue)
        ask = (
            f"到目前为止的对话：\n{so_far}\n\n请写出{v}的下一句话：回应{role}刚才说的话，"
            f"用第一人称“我”说新的内容（回答{role}的问题，补充新的细节或感受，或再问一个问题），"
            f"一两句。不要重复{role}的话，也不要重复自己说过的话。{only}"
        )
    return [{"role": "system", "content": system}, {"role": "user", "content": ask}]


def _label(names: tuple[str, ...]) -> re.Pattern[str]:
    """A speaker name and a colon at the start of a line (``**医生**：``, ``Doctor:``)."""
    alternatives = "|".join(re.escape(n) for n in sorted(set(names), key=len, reverse=True))
    return re.compile(rf"^[\s*#>]*(?:{alternatives})[\s*]*[:：]\s*", re.IGNORECASE)


def clean_line(text: str, own: tuple[str, ...], other: tuple[str, ...]) -> str:
    """``text`` without a leading name of its speaker (``own``), up to the first line that
    starts with the other side's name (the model writing the other's turn; empty if it began
    with one)."""
    mine, theirs = _label(own), _label(other)
    kept: list[str] = []
    for line in text.strip().splitlines():
        if theirs.match(line) and not mine.match(line):
            break
        kept.append(mine.sub("", line, count=1))
    return "\n".join(kept).strip()


def calls_itself(line: str, role: str) -> bool:
    """Whether the character's line opens by addressing its own role ("你好，医生。",
    "医生，我最近..."): it has taken the visitor's part."""
    pattern = rf"^[\W_]*(?:(?:你好|您好|hello|hi)[\W_]*)?{re.escape(role)}(?:[\W_]|你好|您好|$)"
    return re.match(pattern, line.strip(), re.IGNORECASE) is not None


def similarity(a: str, b: str) -> float:
    """How much two lines are the same text (0..1): difflib's ratio, or 1 when one holds the
    other (a turn that copies the previous one and adds a little is still a copy)."""
    a, b = a.strip(), b.strip()
    if not a or not b:
        return 0.0
    if min(len(a), len(b)) >= 8 and (a in b or b in a):
        return 1.0
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


async def aroleplay(
    role: str,
    *,
    scenario: str | None = None,
    turns: int = 3,
    language: str | None = None,
    model: str = DEFAULT_MODEL,
    temperature: float = 0.8,
    client: OpenAI | AsyncOpenAI | None = None,
) -> list[tuple[str, str]]:
    """A dialogue of ``turns`` exchanges: ``(speaker, text)`` pairs, the visitor first."""
    async with using(client) as api:
        return await _dialogue(api, role, scenario, turns, language, model, temperature)


async def _dialogue(
    api: AsyncOpenAI,
    role: str,
    scenario: str | None,
    turns: int,
    language: str | None,
    model: str,
    temperature: float,
) -> list[tuple[str, str]]:
    zh = wants_chinese(language, role, scenario or "")
    visitor = VISITOR_ZH if zh else VISITOR_EN
    character = character_prompt(role, scenario, "zh" if zh else "en")
    names = {visitor: (visitor, *VISITOR_NAMES), role: (role,)}
    dialogue: list[tuple[str, str]] = []

    def as_chat(system: str, head: list[dict[str, str]], me: str) -> list[dict[str, str]]:
        """The dialogue as a chat: ``me``'s lines are the assistant's, the other's the user's."""
        messages = [{"role": "system", "content": system}, *head]
        for who, text in dialogue:
            messages.append({"role": "assistant" if who == me else "user", "content": text})
        return messages

    async def speak(messages: list[dict[str, str]], me: str, max_tokens: int) -> str:
        """The next line of ``me``, sampled again while it copies an earlier line."""
        other = role if me == visitor else visitor
        earlier = [text for _, text in dialogue]
        best, best_score = "", 2.0
        for _ in range(RESAMPLES + 1):
            # (not hotter: at 1.2 Qwen2.5-0.5B wrote nonsense, which copies nothing)
            raw = await achat_once(
                messages, model=model, client=api, temperature=temperature, max_tokens=max_tokens
            )
            line = clean_line(raw, names[me], names[other])
            score = max((similarity(line, e) for e in earlier), default=0.0)
            if me == role and calls_itself(line, role):
                score = max(score, 1.0)  # as bad as a copy
            if line and score < best_score:
                best, best_score = line, score
            if line and score < REPEAT_RATIO:
                break
        return best or "..."

    opening = [{"role": "user", "content": "Start the conversation."}]
    for _ in range(max(1, turns)):
        if zh:
            asking = visitor_request_zh(role, scenario, dialogue)
        else:
            asking = as_chat(_counterpart_prompt(role, scenario), opening, visitor)
        dialogue.append((visitor, await speak(asking, visitor, 120)))
        dialogue.append((role, await speak(as_chat(character, [], role), role, 200)))
    return dialogue


roleplay = sync_twin(aroleplay)
