"""Tool calling: ``tools``, ``tool_choice``, ``parallel_tool_calls`` and the legacy ``functions``
/ ``function_call``, on any model, by constrained decoding.

The functions are described to the model in a system message, and a grammar holds its answer
to one of two shapes: plain text (only when ``tool_choice`` is ``auto``), or one or more blocks

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

where the name is one the request allows and the arguments follow that function's parameter
schema. Everything but the name and the arguments is fixed by the grammar, so the model spends
its tokens on what matters and the reply is parsed without guessing, while it streams. Earlier
calls and their results are written into the conversation in the same format (results as
``<tool_response>`` blocks in a user turn), whatever roles the model's chat template knows.
"""

from __future__ import annotations

import json
import secrets
import string
from dataclasses import dataclass, field
from typing import Any, Literal

from oasis.errors import InvalidRequestError, UnsupportedParameterError
from oasis.protocol.requests import ChatCompletionRequest
from oasis.serving.structured import NAME, GrammarBuilder, check_schema

OPEN = "<tool_call>\n"
HEAD = OPEN + '{"name": "'
AFTER_NAME = '", "arguments": '
CLOSE = "}\n</tool_call>"
MAX_PARALLEL = 8  # calls in one answer; a tiny model may otherwise repeat a call until max_tokens
_ALPHABET = string.ascii_letters + string.digits


def _bad(message: str, param: str, code: str | None = "invalid_value") -> InvalidRequestError:
    return InvalidRequestError(message, param=param, code=code)


@dataclass(frozen=True)
class Function:
    name: str
    description: str | None
    parameters: dict[str, Any]


@dataclass(frozen=True)
class ToolPlan:
    """What a request lets the model do with tools (None when it may not call any)."""

    functions: tuple[Function, ...]  # described to the model
    allowed: tuple[Function, ...]  # the grammar allows calls to these
    mode: Literal["auto", "required"]
    parallel: bool
    legacy: bool  # the deprecated functions / function_call fields: answer with function_call

    @property
    def forced(self) -> str | None:
        if self.mode == "required" and len(self.allowed) == 1:
            return self.allowed[0].name
        return None


def _function(raw: Any, where: str) -> Function:
    if not isinstance(raw, dict):
        raise _bad(f"Invalid type for '{where}': expected an object.", where, "invalid_type")
    unknown = sorted(set(raw) - {"name", "description", "parameters", "strict"})
    if unknown:
        raise _bad(
            f"Unrecognized request argument supplied: {where}.{unknown[0]}",
            f"{where}.{unknown[0]}",
            None,  # as OpenAI's own unrecognized arguments
        )
    name = raw.get("name")
    if name is None:
        raise _bad(
            f"Missing required parameter: '{where}.name'.",
            f"{where}.name",
            "missing_required_parameter",
        )
    if not isinstance(name, str) or not NAME.match(name):
        raise _bad(
            f"Invalid '{where}.name': {name!r} does not match '^[a-zA-Z0-9_-]{{1,64}}$'.",
            f"{where}.name",
        )
    description = raw.get("description")
    if description is not None and not isinstance(description, str):
        raise _bad(
            f"Invalid type for '{where}.description': expected a string.",
            f"{where}.description",
            "invalid_type",
        )
    if raw.get("strict") not in (None, True, False):
        raise _bad(
            f"Invalid type for '{where}.strict': expected a boolean.",
            f"{where}.strict",
            "invalid_type",
        )
    params = raw.get("parameters")
    at = f"{where}.parameters"
    if params is None:  # OpenAI: omitting parameters defines a function without any
        params = {"type": "object", "properties": {}, "additionalProperties": False}
    if not isinstance(params, dict):
        raise _bad(f"Invalid type for '{at}': expected a JSON Schema object.", at, "invalid_type")
    if params.get("type", "object") != "object" or any(
        k in params for k in ("anyOf", "oneOf", "$ref", "enum", "const")
    ):
        raise _bad(
            f"Invalid schema for function '{name}': the parameters must be a JSON Schema of "
            "'type: \"object\"' with properties (the arguments are always one object).",
            at,
            "invalid_function_parameters",
        )
    params = {"type": "object", **params}
    check_schema(params, where=at, param=at)
    return Function(name, description, params)


def plan_tools(req: ChatCompletionRequest) -> ToolPlan | None:
    """Check the tool fields of a request; None when the model may not call a tool."""
    if req.tools is not None and req.functions is not None:
        raise _bad("Use either 'tools' or the deprecated 'functions', not both.", "functions")
    if req.functions is not None:
        return _plan_legacy(req)
    if req.tools is None:
        for name in ("tool_choice", "parallel_tool_calls", "function_call"):
            if getattr(req, name) is not None:
                source = "functions" if name == "function_call" else "tools"
                raise _bad(
                    f"Invalid value for '{name}': '{name}' is only allowed when '{source}' "
                    "are specified.",
                    name,
                )
        return None
    if req.function_call is not None:
        raise _bad(
            "'function_call' goes with the deprecated 'functions'; with 'tools' use 'tool_choice'.",
            "function_call",
        )
    if not req.tools:
        raise _bad(
            "Invalid 'tools': empty array. Expected an array with minimum length 1.",
            "tools",
            "empty_array",
        )
    functions: list[Function] = []
    for i, tool in enumerate(req.tools):
        where = f"tools[{i}]"
        kind = tool.get("type")
        if kind == "custom":
            raise UnsupportedParameterError(
                "Custom tools (free-form input) are not supported by oasis; declare a "
                "'function' tool with a parameter schema instead.",
                param=f"{where}.type",
            )
        if kind != "function":
            raise _bad(
                f"Invalid value for '{where}.type': {kind!r}. Supported values are: 'function' "
                "and 'custom'.",
                f"{where}.type",
            )
        unknown = sorted(set(tool) - {"type", "function"})
        if unknown:
            raise _bad(
                f"Unrecognized request argument supplied: {where}.{unknown[0]}",
                f"{where}.{unknown[0]}",
                None,  # as OpenAI's own unrecognized arguments
            )
        if "function" not in tool:
            raise _bad(
                f"Missing required parameter: '{where}.function'.",
                f"{where}.function",
                "missing_required_parameter",
            )
        functions.append(_function(tool["function"], f"{where}.function"))
    _no_duplicates(functions, "tools")
    mode, allowed = _tool_choice(req.tool_choice, functions)
    if mode == "none":
        return None
    return ToolPlan(
        functions=tuple(functions),
        allowed=allowed,
        mode=mode,
        parallel=req.parallel_tool_calls is not False and len(allowed) > 0,
        legacy=False,
    )


def _no_duplicates(functions: list[Function], param: str) -> None:
    seen: set[str] = set()
    for f in functions:
        if f.name in seen:
            raise _bad(f"Invalid '{param}': the function name '{f.name}' is used twice.", param)
        seen.add(f.name)


def _lookup(functions: list[Function], name: Any, param: str) -> Function:
    for f in functions:
        if f.name == name:
            return f
    raise _bad(
        f"Invalid value for '{param}': no function named {name!r} was declared (declared: "
        f"{', '.join(f.name for f in functions)}).",
        param,
    )


def _tool_choice(
    choice: Any, functions: list[Function]
) -> tuple[Literal["none", "auto", "required"], tuple[Function, ...]]:
    every = tuple(functions)
    if choice is None or choice == "auto":
        return "auto", every
    if choice == "none":
        return "none", ()
    if choice == "required":
        return "required", every
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind == "function":
            fn = choice.get("function")
            name = fn.get("name") if isinstance(fn, dict) else None
            return "required", (_lookup(functions, name, "tool_choice.function.name"),)
        if kind == "allowed_tools":
            spec = choice.get("allowed_tools")
            if not isinstance(spec, dict) or spec.get("mode") not in ("auto", "required"):
                raise _bad(
                    "Invalid 'tool_choice.allowed_tools': expected an object with 'mode' "
                    "('auto' or 'required') and 'tools'.",
                    "tool_choice.allowed_tools",
                )
            tools = spec.get("tools")
            if not isinstance(tools, list) or not tools:
                raise _bad(
                    "Invalid 'tool_choice.allowed_tools.tools': expected a non-empty array.",
                    "tool_choice.allowed_tools.tools",
                )
            allowed = []
            for i, t in enumerate(tools):
                where = f"tool_choice.allowed_tools.tools[{i}]"
                fn = t.get("function") if isinstance(t, dict) else None
                if (
                    not isinstance(t, dict)
                    or t.get("type") != "function"
                    or not isinstance(fn, dict)
                ):
                    raise _bad(
                        f'Invalid \'{where}\': expected {{"type": "function", "function": '
                        '{"name": ...}}.',
                        where,
                    )
                allowed.append(_lookup(functions, fn.get("name"), f"{where}.function.name"))
            return spec["mode"], tuple(allowed)
        if kind == "custom":
            raise UnsupportedParameterError(
                "Custom tools are not supported by oasis.", param="tool_choice.type"
            )
    raise _bad(
        "Invalid value for 'tool_choice': expected 'none', 'auto', 'required', "
        '{"type": "function", "function": {"name": ...}} or {"type": "allowed_tools", ...}.',
        "tool_choice",
    )


def _plan_legacy(req: ChatCompletionRequest) -> ToolPlan | None:
    assert req.functions is not None
    if req.tool_choice is not None:
        raise _bad(
            "'tool_choice' goes with 'tools'; with 'functions' use 'function_call'.", "tool_choice"
        )
    if not req.functions:
        raise _bad(
            "Invalid 'functions': empty array. Expected an array with minimum length 1.",
            "functions",
            "empty_array",
        )
    functions = [_function(f, f"functions[{i}]") for i, f in enumerate(req.functions)]
    _no_duplicates(functions, "functions")
    choice = req.function_call
    if choice == "none":
        return None
    if choice is None or choice == "auto":
        mode: Literal["auto", "required"] = "auto"
        allowed = tuple(functions)
    elif isinstance(choice, dict) and set(choice) == {"name"}:
        mode, allowed = "required", (_lookup(functions, choice["name"], "function_call.name"),)
    else:
        raise _bad(
            "Invalid value for 'function_call': expected 'none', 'auto' or {\"name\": ...}.",
            "function_call",
        )
    return ToolPlan(tuple(functions), allowed, mode, parallel=False, legacy=True)


# -- what the model is told ----------------------------------------------------------------


def system_text(plan: ToolPlan) -> str:
    lines = [
        "You can call functions to help with the request. Each function is described by one "
        "line of JSON:",
        "<tools>",
    ]
    for f in plan.functions:
        entry: dict[str, Any] = {"name": f.name}
        if f.description:
            entry["description"] = f.description
        entry["parameters"] = f.parameters
        lines.append(json.dumps(entry, ensure_ascii=False))
    lines += [
        "</tools>",
        "To call a function, answer with this block and nothing else:",
        "<tool_call>",
        '{"name": "<function name>", "arguments": <the arguments as a JSON object>}',
        "</tool_call>",
    ]
    if plan.parallel:
        lines.append("To call several functions, write one block per call.")
    lines.append("Each result comes back in a <tool_response> block; then answer the user.")
    if plan.forced:
        lines.append(f"Now call the function {plan.forced}.")
    elif plan.mode == "required":
        lines.append("Now call a function.")
    return "\n".join(lines)


def call_text(name: str, arguments: str) -> str:
    """An earlier call, written as the model would have written it."""
    try:
        args = json.dumps(json.loads(arguments), ensure_ascii=False)
    except ValueError:
        args = json.dumps(arguments, ensure_ascii=False)
    return f"{HEAD}{name}{AFTER_NAME}{args}{CLOSE}"


def response_text(name: str | None, content: str) -> str:
    head = f'<tool_response name="{name}">' if name else "<tool_response>"
    return f"{head}\n{content}\n</tool_response>"


# -- the grammar ---------------------------------------------------------------------------


def _literal(text: str) -> str:
    return json.dumps(text)  # a GBNF literal is a double-quoted string with JSON's escapes


def _class_char(c: str) -> str:
    return {"\n": "\\n", "\\": "\\\\", "]": "\\]", "[": "\\[", "^": "\\^", "-": "\\-"}.get(c, c)


def _not_starting_with(text: str) -> str:
    """GBNF for every string (the empty one included) that does not start with ``text``."""

    def level(i: int) -> str:
        alt = f"[^{_class_char(text[i])}] oasis-any*"
        if i + 1 < len(text):
            alt += f" | {_literal(text[i])} ( {level(i + 1)} )?"
        return alt

    return f"( {level(0)} )?"


def tool_grammar(plan: ToolPlan, answer: dict[str, Any] | None) -> str:
    """The grammar of a reply under ``plan``; ``answer`` is response_format's schema, which
    a text reply (``auto``) must then follow."""
    b = GrammarBuilder()
    alts = []
    for i, f in enumerate(plan.allowed):
        param = "tools" if not plan.legacy else "functions"
        args = b.schema(f.parameters, f"oasis-args-{i}", param=param)
        alts.append(f"{_literal(f.name + AFTER_NAME)} {args}")
    b.rule("oasis-call", f"{_literal(HEAD)} ( {' | '.join(alts)} ) {_literal(CLOSE)}")
    if plan.parallel and not plan.forced:
        b.rule("oasis-calls", f'oasis-call ( "\\n" oasis-call ){{0,{MAX_PARALLEL - 1}}}')
    else:
        b.rule("oasis-calls", "oasis-call")
    if plan.mode == "required":
        return b.build("oasis-calls")
    if answer is not None:
        text = b.schema(answer, "oasis-answer", param="response_format")
    else:
        b.rule("oasis-any", "[^\\x00]")
        b.rule("oasis-text", _not_starting_with(OPEN))
        text = "oasis-text"
    return b.build(f"oasis-calls | {text}")


# -- reading the reply ---------------------------------------------------------------------


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


class ReplyParser:
    """Splits a reply, as it streams, into text or calls (the grammar fixed its shape)."""

    def __init__(self) -> None:
        self._mode: Literal["undecided", "text", "calls"] = "undecided"
        self._buf = ""
        self._pos = 0
        self._state: Literal["head", "name", "args"] = "head"
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self.calls: list[Call] = []

    @property
    def is_calls(self) -> bool:
        return self._mode == "calls"

    @property
    def complete(self) -> bool:
        return bool(self.calls) and all(c.complete for c in self.calls)

    def feed(self, text: str) -> list[Event]:
        if self._mode == "text":
            return [Text(text)] if text else []
        self._buf += text
        if self._mode == "undecided":
            if OPEN.startswith(self._buf) and len(self._buf) < len(OPEN):
                return []
            if not self._buf.startswith(OPEN):
                self._mode = "text"
                out, self._buf = self._buf, ""
                return [Text(out)]
            self._mode = "calls"
        return self._scan()

    def finish(self) -> list[Event]:
        """The end of the reply: a held-back start of ``<tool_call>`` was text after all."""
        if self._mode == "undecided":
            self._mode = "text"
            out, self._buf = self._buf, ""
            return [Text(out)] if out else []
        return []

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
