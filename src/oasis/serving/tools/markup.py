"""oasis's tool markup: the text a call, a result and the tool descriptions are written in.

A call is the block

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

and a result ``<tool_response name="get_weather">...</tool_response>``. The same text is used
for earlier calls written back into the conversation, so the model sees one format throughout.
It is scaffolding: ``TAGS`` never reach a client as answer text (see ``plan.hidden_stops``,
``grammar.text_rules`` and ``parser.ReplyParser``).
"""

from __future__ import annotations

import json
from typing import Any

OPEN = "<tool_call>\n"
HEAD = OPEN + '{"name": "'
NAME_END = '", "arguments":'
AFTER_NAME = NAME_END + " "  # the grammar writes the space, so " {" is one token
CLOSE = "}\n</tool_call>"
# The markup's tags: a text answer ends where one of them would start.
TAGS = ("<tool_call>", "</tool_call>", "<tool_response", "</tool_response>")


def json_text(value: Any) -> str:
    """``value`` as JSON, non-ASCII characters as they are unless one is a lone surrogate (from
    a ``\\ud800`` escape): those are escaped, so the text can always be encoded and tokenized."""
    text = json.dumps(value, ensure_ascii=False)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return json.dumps(value)
    return text


def call_text(name: str, arguments: str) -> str:
    """An earlier call, written as the model would have written it.

    ``arguments`` is normalised to the grammar's JSON style when it parses; otherwise (not
    JSON, or nested too deep to parse) it goes in as a JSON string."""
    try:
        args = json_text(json.loads(arguments))
    except (ValueError, RecursionError):
        args = json_text(arguments)
    return f"{HEAD}{name}{AFTER_NAME}{args}{CLOSE}"


def response_text(name: str | None, content: str) -> str:
    head = f'<tool_response name="{name}">' if name else "<tool_response>"
    return f"{head}\n{content}\n</tool_response>"
