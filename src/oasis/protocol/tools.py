"""The tool-calling parts of a chat request: ``tools``, ``tool_choice``, the legacy ``functions``
/ ``function_call``, and the calls of earlier assistant messages.

Fields as in OpenAI's API reference (the ``openai`` SDK's ``ChatCompletionFunctionToolParam``,
``ChatCompletionToolChoiceOptionParam``, ``ChatCompletionMessageToolCallUnionParam``...): an
unknown key anywhere in them is refused by name. Unions are told apart by their ``type`` (or,
for ``tool_choice``, by being a string); an unknown ``type`` is refused as an invalid value of
that ``type`` field. What is well-formed but unsupported (custom tools) is left to serving to
refuse, naming it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Discriminator, Field, StrictBool, Tag

from oasis.protocol.fields import Name, Strict, Text, type_discriminator, type_tag

# -- tool definitions ------------------------------------------------------------------------


class FunctionDefinition(Strict):
    name: Name
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON Schema; checked by serving
    strict: StrictBool | None = None


class FunctionTool(Strict):
    type: Literal["function"]
    function: FunctionDefinition


class CustomToolDefinition(Strict):
    name: str
    description: str | None = None
    format: dict[str, Any] | None = None


class CustomTool(Strict):
    """A free-form tool: well-formed, refused by serving (oasis's calls are JSON)."""

    type: Literal["custom"]
    custom: CustomToolDefinition


class LegacyFunction(Strict):
    """An entry of the deprecated ``functions`` (no ``strict`` there)."""

    name: Name
    description: str | None = None
    parameters: dict[str, Any] | None = None


class _OtherTool(Strict):
    model_config = ConfigDict(extra="allow")  # the type is what is wrong
    type: Literal["function", "custom"]


Tool = Annotated[
    Annotated[FunctionTool, Tag("type=function")]
    | Annotated[CustomTool, Tag("type=custom")]
    | Annotated[_OtherTool, Tag("type=?")],
    type_discriminator(("function", "custom")),
]


# -- tool_choice and function_call ----------------------------------------------------------


class _Named(Strict):
    name: str


class NamedToolChoice(Strict):
    """``{"type": "function", "function": {"name": ...}}``: exactly this function."""

    type: Literal["function"]
    function: _Named


class NamedCustomToolChoice(Strict):
    type: Literal["custom"]
    custom: _Named


class AllowedFunction(Strict):
    """An entry of ``allowed_tools.tools``. OpenAI types these as free-form tool definitions
    (``Dict[str, object]``), so a whole definition may be passed: only the name is read."""

    model_config = ConfigDict(extra="allow")
    name: str


class AllowedTool(Strict):
    type: Literal["function"]
    function: AllowedFunction


class AllowedTools(Strict):
    mode: Literal["auto", "required"]
    tools: Annotated[list[AllowedTool], Field(min_length=1)]


class AllowedToolsChoice(Strict):
    """``{"type": "allowed_tools", ...}``: every function described, only these callable."""

    type: Literal["allowed_tools"]
    allowed_tools: AllowedTools


class _OtherChoice(Strict):
    model_config = ConfigDict(extra="allow")
    type: Literal["function", "allowed_tools", "custom"]


def _choice_kind(value: Any) -> str:
    if isinstance(value, str):
        return "mode"
    return type_tag(value, ("function", "allowed_tools", "custom"))


ToolChoice = Annotated[
    Annotated[Literal["none", "auto", "required"], Tag("mode")]
    | Annotated[NamedToolChoice, Tag("type=function")]
    | Annotated[AllowedToolsChoice, Tag("type=allowed_tools")]
    | Annotated[NamedCustomToolChoice, Tag("type=custom")]
    | Annotated[_OtherChoice, Tag("type=?")],
    Discriminator(_choice_kind),
]


class FunctionCallOption(Strict):
    """The legacy ``function_call: {"name": ...}``."""

    name: str


FunctionCallChoice = Literal["none", "auto"] | FunctionCallOption


# -- calls in earlier assistant messages ---------------------------------------------------


class CalledFunction(Strict):
    name: Name
    arguments: Text  # JSON text, as the model wrote it (not necessarily valid)


class FunctionToolCall(Strict):
    id: Text
    type: Literal["function"]
    function: CalledFunction


class CalledCustom(Strict):
    name: str
    input: str


class CustomToolCall(Strict):
    """A call of a custom tool: well-formed, refused by serving."""

    id: Text
    type: Literal["custom"]
    custom: CalledCustom


class _OtherCall(Strict):
    model_config = ConfigDict(extra="allow")
    type: Literal["function", "custom"]


ToolCall = Annotated[
    Annotated[FunctionToolCall, Tag("type=function")]
    | Annotated[CustomToolCall, Tag("type=custom")]
    | Annotated[_OtherCall, Tag("type=?")],
    type_discriminator(("function", "custom")),
]
