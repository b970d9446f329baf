"""Reading a reply under a tool plan as it streams: text, or calls as OpenAI's events."""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass, field
from typing import Literal

from oasis.serving.tools.markup import AFTER_NAME, HEAD, OPEN, TAGS
from oasis.serving.tools.plan import ToolPlan
from oasis.serving.tools.prompt import prefill

_ALPHABET = string.ascii_letters + string.digits


def new_call_id() -> str:
    return "call_" + "".join(secrets.choice(_ALPHABET) for _ in range(24))


@dataclass
class Call:
    id: str
    name: str
    arguments: list[str] = field(default_factory=list)
    complete: bool = False


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class CallStart:
    index: int
    call: Call


@dataclass(frozen=True)
class CallArguments:
    index: int
    fragment: str


Event = Text | CallStart | CallArguments


def _tag_start(text: str) -> int:
    """How many characters at the end of ``text`` could be the start of a tag."""
    at = text.rfind("<")
    if at < 0:
        return 0
    tail = text[at:]
    return len(tail) if any(t.startswith(tail) for t in TAGS) else 0


class ReplyParser:
    """Splits a reply, as it streams, into text or calls (the grammar fixed its shape).

    ``prefix`` is the start of the reply that is in the prompt (``prompt.prefill``): it is read
    as if the model had written it. In text, ``guard`` keeps the markup out: the text ends
    before the first tag (as at a stop string; under the grammar nothing can follow a tag), and
    a possible start of one is held back until it is known not to be one.
    """

    def __init__(self, prefix: str = "", *, guard: bool = True) -> None:
        self._mode: Literal["undecided", "text", "calls"] = "undecided"
        self._buf = prefix
        self._pos = 0
        self._state: Literal["head", "name", "args"] = "head"
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self._guard = guard
        self._held = ""  # text that may be the start of a tag
        self._cut = False  # a tag was met: the text has ended
        self.calls: list[Call] = []

    @classmethod
    def for_plan(cls, plan: ToolPlan, *, prefilled: bool = True) -> ReplyParser:
        """The parser of a reply under ``plan`` (``prefilled``: the prompt ends with
        ``prefill(plan)``)."""
        return cls(prefill(plan) if prefilled else "", guard=not plan.json_text)

    @property
    def is_calls(self) -> bool:
        return self._mode == "calls"

    @property
    def complete(self) -> bool:
        return bool(self.calls) and all(c.complete for c in self.calls)

    def feed(self, text: str) -> list[Event]:
        if self._mode == "text":
            return self._text(text)
        self._buf += text
        if self._mode == "undecided":
            if OPEN.startswith(self._buf) and len(self._buf) < len(OPEN):
                return []
            if not self._buf.startswith(OPEN):
                self._mode = "text"
                out, self._buf = self._buf, ""
                return self._text(out)
            self._mode = "calls"
        return self._scan()

    def finish(self) -> list[Event]:
        """The end of the reply: a held-back start of ``<tool_call>`` or of a tag was text
        after all (as the start of a stop string is when generation ends)."""
        if self._mode == "undecided":
            if self._buf.startswith(OPEN):  # a prefix with nothing generated after it
                self._mode = "calls"
                return self._scan()
            self._mode = "text"
            out, self._buf = self._buf, ""
            events = self._text(out)
        elif self._mode == "text":
            events = []
        else:
            return []
        held, self._held = self._held, ""
        if held and not self._cut:
            events.append(Text(held))
        return events

    def _text(self, text: str) -> list[Event]:
        if not self._guard:
            return [Text(text)] if text else []
        if self._cut:
            return []
        text = self._held + text
        cut = min((i for i in (text.find(t) for t in TAGS) if i >= 0), default=-1)
        if cut >= 0:
            text, self._held, self._cut = text[:cut], "", True
        else:
            keep = _tag_start(text)
            text, self._held = text[: len(text) - keep], text[len(text) - keep :]
        return [Text(text)] if text else []

    def _scan(self) -> list[Event]:
        out: list[Event] = []
        buf = self._buf
        while True:
            if self._state == "head":
                at = buf.find(HEAD, self._pos)
                if at < 0:
                    break
                self._pos = at + len(HEAD)
                self._state = "name"
            elif self._state == "name":
                end = buf.find(AFTER_NAME, self._pos)
                if end < 0:
                    break
                call = Call(new_call_id(), buf[self._pos : end])
                self.calls.append(call)
                out.append(CallStart(len(self.calls) - 1, call))
                self._pos = end + len(AFTER_NAME)
                self._state = "args"
                self._depth, self._in_string, self._escaped = 0, False, False
            else:
                start = self._pos
                done = False
                while self._pos < len(buf):
                    c = buf[self._pos]
                    self._pos += 1
                    if self._in_string:
                        if self._escaped:
                            self._escaped = False
                        elif c == "\\":
                            self._escaped = True
                        elif c == '"':
                            self._in_string = False
                    elif c == '"':
                        self._in_string = True
                    elif c in "{[":
                        self._depth += 1
                    elif c in "}]":
                        self._depth -= 1
                        if self._depth == 0:
                            done = True
                            break
                fragment = buf[start : self._pos]
                call = self.calls[-1]
                if fragment:
                    call.arguments.append(fragment)
                    out.append(CallArguments(len(self.calls) - 1, fragment))
                if not done:
                    break
                call.complete = True
                self._state = "head"
        # keep only what a later piece may still need
        keep = self._pos if self._state != "head" else max(self._pos, len(buf) - len(HEAD))
        self._buf = buf[keep:]
        self._pos -= keep
        if self._pos < 0:
            self._pos = 0
        return out
