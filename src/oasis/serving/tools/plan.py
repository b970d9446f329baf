"""What a request lets the model do with tools: ``tools`` / ``tool_choice`` /
``parallel_tool_calls`` or the legacy ``functions`` / ``function_call``, checked.

The request's shape (keys, types, names) is checked by protocol/tools.py when it is parsed;
what is left here needs the request as a whole: which field goes with which, duplicate names,
names that must refer to a declared function, parameter schemas the grammar can enforce.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from oasis.errors import InvalidRequestError, UnsupportedParameterError
from oasis.protocol.formats import JSONObjectFormat, JSONSchemaFormat
from oasis.protocol.requests import ChatCompletionRequest
from oasis.protocol.tools import (
    AllowedToolsChoice,
    CustomTool,
    FunctionDefinition,
    FunctionTool,
    LegacyFunction,
    NamedCustomToolChoice,
    NamedToolChoice,
)
from oasis.serving.structured import check_schema
from oasis.serving.tools.markup import TAGS

MAX_PARALLEL = 8  # calls in one answer; a tiny model may otherwise repeat a call until max_tokens


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
    # A text answer (under auto) follows response_format's JSON schema instead of being free.
    json_text: bool = False

    @property
    def forced(self) -> str | None:
        """The one function the answer must call, if there is only one choice."""
        if self.mode == "required" and len(self.allowed) == 1:
            return self.allowed[0].name
        return None

    @property
    def several(self) -> bool:
        """Whether one answer may hold several calls."""
        return self.parallel and not self.forced


def _function(fn: FunctionDefinition | LegacyFunction, where: str) -> Function:
    params = fn.parameters
    at = f"{where}.parameters"
    if params is None:  # OpenAI: omitting parameters defines a function without any
        params = {"type": "object", "properties": {}, "additionalProperties": False}
    if params.get("type", "object") != "object" or any(
        k in params for k in ("anyOf", "oneOf", "$ref", "enum", "const")
    ):
        raise _bad(
            f"Invalid schema for function '{fn.name}': the parameters must be a JSON Schema of "
            "'type: \"object\"' with properties (the arguments are always one object).",
            at,
            "invalid_function_parameters",
        )
    params = {"type": "object", **params}
    check_schema(params, where=at, param=at)
    return Function(fn.name, fn.description, params)


def _json_text(req: ChatCompletionRequest) -> bool:
    return isinstance(req.response_format, JSONObjectFormat | JSONSchemaFormat)


def plan_tools(req: ChatCompletionRequest) -> ToolPlan | None:
    """Check the tool fields of a request; None when the model may not call a tool."""
    if req.tools is not None and req.functions is not None:
        raise _bad("Use either 'tools' or the deprecated 'functions', not both.", "functions")
    if req.functions is not None:
        return _plan_legacy(req, req.functions)
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
    functions: list[Function] = []
    for i, tool in enumerate(req.tools):
        where = f"tools[{i}]"
        if isinstance(tool, CustomTool):
            raise UnsupportedParameterError(
                "Custom tools (free-form input) are not supported by oasis; declare a "
                "'function' tool with a parameter schema instead.",
                param=f"{where}.type",
            )
        assert isinstance(tool, FunctionTool)  # the protocol refuses any other type
        functions.append(_function(tool.function, f"{where}.function"))
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
        json_text=_json_text(req),
    )


def _no_duplicates(functions: list[Function], param: str) -> None:
    seen: set[str] = set()
    for f in functions:
        if f.name in seen:
            raise _bad(f"Invalid '{param}': the function name '{f.name}' is used twice.", param)
        seen.add(f.name)


def _lookup(functions: Sequence[Function], name: str, param: str) -> Function:
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
    if isinstance(choice, NamedToolChoice):
        return "required", (_lookup(functions, choice.function.name, "tool_choice.function.name"),)
    if isinstance(choice, AllowedToolsChoice):
        spec = choice.allowed_tools
        where = "tool_choice.allowed_tools.tools"
        allowed = tuple(
            _lookup(functions, t.function.name, f"{where}[{i}].function.name")
            for i, t in enumerate(spec.tools)
        )
        return spec.mode, allowed
    assert isinstance(choice, NamedCustomToolChoice)  # the protocol refuses anything else
    raise UnsupportedParameterError(
        "Custom tools are not supported by oasis.", param="tool_choice.type"
    )


def _plan_legacy(req: ChatCompletionRequest, declared: list[LegacyFunction]) -> ToolPlan | None:
    if req.tool_choice is not None:
        raise _bad(
            "'tool_choice' goes with 'tools'; with 'functions' use 'function_call'.", "tool_choice"
        )
    functions = [_function(f, f"functions[{i}]") for i, f in enumerate(declared)]
    _no_duplicates(functions, "functions")
    choice = req.function_call
    if choice == "none":
        return None
    if choice is None or choice == "auto":
        mode: Literal["auto", "required"] = "auto"
        allowed = tuple(functions)
    else:
        mode, allowed = "required", (_lookup(functions, choice.name, "function_call.name"),)
    return ToolPlan(
        tuple(functions), allowed, mode, parallel=False, legacy=True, json_text=_json_text(req)
    )


def hidden_stops(plan: ToolPlan | None, req: ChatCompletionRequest) -> tuple[str, ...]:
    """Stop strings to add to the request's own when no call can be made (``tool_choice:
    "none"``, or no tools) but the conversation holds earlier calls or results, so the model
    has seen oasis's markup and may imitate it: the answer ends where a tag would start, and
    nothing of the tag is sent (finish_reason ``stop``, as for any stop string).

    Not when a call can be made (the grammar and the reply parser keep tags out of the text
    branch: a stop string would cut the calls themselves), nor when the answer is JSON
    (response_format: cutting it would break the JSON).
    """
    if plan is not None or _json_text(req):
        return ()
    if any(
        m.role in ("tool", "function") or m.tool_calls or m.function_call is not None
        for m in req.messages
    ):
        return TAGS
    return ()
