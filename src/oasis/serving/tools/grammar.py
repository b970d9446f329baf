"""The grammar of a reply under a tool plan: calls whose names and arguments follow the
request, or (under ``auto``) text that cannot contain the markup's tags.

A call is ``HEAD name AFTER_NAME arguments CLOSE``. When an answer holds a single call (a forced
function, or ``parallel_tool_calls: false``) it ends with the arguments: the closing markup
would cost tokens and decide nothing. With ``prefilled``, the grammar starts where
``prompt.prefill`` leaves off (that text is already in the prompt).
"""

from __future__ import annotations

import functools
from typing import Any

from oasis.serving.gbnf import class_char, literal
from oasis.serving.structured import GrammarBuilder
from oasis.serving.tools.markup import AFTER_NAME, CLOSE, HEAD, TAGS
from oasis.serving.tools.plan import MAX_PARALLEL, ToolPlan

# A text answer whose first non-blank character is not '<': when no call can be made but the
# conversation holds tool markup, the hidden stop strings (plan.hidden_stops) end an answer
# where a tag starts, so one that started with a tag would be empty.
NO_LEADING_TAG = r"root ::= [ \t\n]* [^<\x00 \t\n] [^\x00]*"


def _class(chars: str) -> str:
    return "".join(class_char(ord(c)) for c in chars)


def step(state: str, char: str) -> str | None:
    """The tag-matching automaton: after ``state`` (the longest end of the text so far that
    starts a tag), ``char`` leads to the next such state, or to None when a tag is complete."""
    text = state + char
    if any(text.endswith(t) for t in TAGS):
        return None
    while text and not any(t.startswith(text) for t in TAGS):
        text = text[1:]
    return text


@functools.cache
def _text_automaton() -> tuple[tuple[str, str], ...]:
    """The rules of ``text_rules`` as (name, body): they depend on ``TAGS`` alone, so they are
    worked out once. The start rule comes first."""
    states = sorted({t[:i] for t in TAGS for i in range(len(t))})  # "" first
    names = {s: f"oasis-text-{i}" for i, s in enumerate(states)}
    alphabet = sorted(set("".join(TAGS)))
    rules = []
    for s in states:
        targets: dict[str | None, str] = {}
        for c in alphabet:
            to = step(s, c)
            targets[to] = targets.get(to, "") + c
        alts = []
        for to, chars in targets.items():
            if to == "":
                continue  # with every character outside the alphabet, below
            alts.append(f"[{_class(chars)}]" + ("" if to is None else f" {names[to]}"))
        elsewhere = "".join(c for to, cs in targets.items() if to != "" for c in cs)
        alts.append(f"[^{_class(elsewhere)}\\x00] {names['']}")
        rules.append((names[s], f"( {' | '.join(alts)} )?"))
    return tuple(rules)


def text_rules(b: GrammarBuilder) -> str:
    """Add the rules of a text answer that holds none of the markup's ``TAGS``, except that it
    may end with one (the reply parser drops it): the model that starts to imitate the markup
    can only stop. One rule per state of ``step``'s automaton; returns the start rule."""
    rules = _text_automaton()
    for name, body in rules:
        b.rule(name, body)
    return rules[0][0]


def tool_grammar(plan: ToolPlan, answer: dict[str, Any] | None, *, prefilled: bool = False) -> str:
    """The grammar of a reply under ``plan``; ``answer`` is response_format's schema, which a
    text reply (``auto``) must then follow. With ``prefilled``, the grammar of what follows
    ``prompt.prefill(plan)``."""
    b = GrammarBuilder()
    param = "tools" if not plan.legacy else "functions"
    args = []  # the top rule of each allowed function's arguments
    for i, f in enumerate(plan.allowed):
        args.append(b.schema(f.parameters, f"oasis-args-{i}", param=param))
    names = [literal(f.name + AFTER_NAME) for f in plan.allowed]
    b.rule("oasis-fn", " | ".join(f"{n} {a}" for n, a in zip(names, args, strict=True)))
    if plan.several:
        b.rule("oasis-call", f"{literal(HEAD)} oasis-fn {literal(CLOSE)}")
        rest = f'{literal(CLOSE)} ( "\\n" oasis-call ){{0,{MAX_PARALLEL - 1}}}'
    else:
        rest = ""  # one call: the reply ends with its arguments
    if prefilled and plan.forced:
        return b.build(f'" " {args[0]}')
    if prefilled and plan.mode == "required":
        return b.build(f"oasis-fn {rest}".strip())
    b.rule("oasis-calls", f"{literal(HEAD)} oasis-fn {rest}".strip())
    if plan.mode == "required":
        return b.build("oasis-calls")
    text = (
        b.schema(answer, "oasis-answer", param="response_format")
        if answer is not None
        else text_rules(b)
    )
    return b.build(f"oasis-calls | {text}")
