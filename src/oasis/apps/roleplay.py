"""Role-play dialogue: the model plays a character (a doctor, a teacher...) and, for a
generated dialogue, also the person talking to it."""

from __future__ import annotations

from openai import AsyncOpenAI, OpenAI

from oasis.apps.client import DEFAULT_MODEL, sync_twin, using
from oasis.apps.lang import wants_chinese
from oasis.apps.text import achat_once


def character_prompt(role: str, scenario: str | None = None, language: str | None = None) -> str:
    """The system prompt that makes the model play ``role``."""
    zh = wants_chinese(language, role, scenario or "")
    if zh:
        text = f"你是一位{role}。请始终以{role}的身份和口吻说话，回答简洁、专业、友好。"
        return text + (f"场景：{scenario}" if scenario else "")
    text = (
        f"You are a {role}. Always speak as the {role} would: in character, concise, "
        "professional and kind."
    )
    return text + (f" Scenario: {scenario}" if scenario else "")


def _counterpart_prompt(role: str, scenario: str | None, zh: bool) -> str:
    if zh:
        return (
            f"你正在和一位{role}交谈。请扮演找{role}的人（例如病人、学生或顾客），"
            "每次只说一两句话，提出问题或描述情况。" + (f"场景：{scenario}" if scenario else "")
        )
    return (
        f"You are talking to a {role}. Play the person who came to see the {role} (a patient, "
        "a student, a customer...): say one or two sentences at a time, ask or describe."
        + (f" Scenario: {scenario}" if scenario else "")
    )


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
    visitor = "来访者" if zh else "Visitor"
    character = character_prompt(role, scenario, "zh" if zh else "en")
    counterpart = _counterpart_prompt(role, scenario, zh)
    dialogue: list[tuple[str, str]] = []
    opening = "请开始对话。" if zh else "Start the conversation."

    async def speak(system: str, head: list[dict[str, str]], me: str, max_tokens: int) -> str:
        """The next line of ``me``: its own lines are the assistant's, the other's the user's."""
        messages = [{"role": "system", "content": system}, *head]
        for who, text in dialogue:
            messages.append({"role": "assistant" if who == me else "user", "content": text})
        line = await achat_once(
            messages, model=model, client=api, temperature=temperature, max_tokens=max_tokens
        )
        return line.strip() or "..."

    for _ in range(max(1, turns)):
        dialogue.append(
            (
                visitor,
                await speak(counterpart, [{"role": "user", "content": opening}], visitor, 120),
            )
        )
        dialogue.append((role, await speak(character, [], role, 200)))
    return dialogue


roleplay = sync_twin(aroleplay)
