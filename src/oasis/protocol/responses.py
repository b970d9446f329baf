"""The request body of ``POST /v1/responses`` (OpenAI's Responses API).

As for chat, every documented parameter has a field, so an unknown argument is refused by name
(``extra="forbid"``, down into items, content parts, tools and ``text.format``). What is
well-formed but cannot be honoured here (hosted tools, image or file inputs, reasoning effort,
background mode, conversations, prompt templates) is named by ``unsupported()`` and refused by
serving with a 400, never dropped.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, StrictBool, Tag, model_validator

from oasis.protocol.fields import Name, Strict, Text, Whole, type_discriminator

Temperature = Annotated[float, Field(ge=0, le=2)]
TopP = Annotated[float, Field(ge=0, le=1)]

# -- input content parts -----------------------------------------------------------------------


class InputText(Strict):
    type: Literal["input_text"]
    text: Text


class OutputText(Strict):
    """An assistant message's text, as a response gave it (replayed in ``input``)."""

    type: Literal["output_text"]
    text: Text
    annotations: list[dict[str, Any]] = Field(default_factory=list)
    logprobs: list[dict[str, Any]] | None = None


class RefusalPart(Strict):
    type: Literal["refusal"]
    refusal: Text


class OtherPart(BaseModel):
    """An image, file or audio input: well-formed, refused by serving, naming it."""

    model_config = ConfigDict(extra="allow")
    type: Literal["input_image", "input_file", "input_audio"]


_PART_TYPES = ("input_text", "output_text", "refusal", "input_image", "input_file", "input_audio")
ContentPart = Annotated[
    Annotated[InputText, Tag("type=input_text")]
    | Annotated[OutputText, Tag("type=output_text")]
    | Annotated[RefusalPart, Tag("type=refusal")]
    | Annotated[OtherPart, Tag("type=input_image")]
    | Annotated[OtherPart, Tag("type=input_file")]
    | Annotated[OtherPart, Tag("type=input_audio")]
    | Annotated[OtherPart, Tag("type=?")],
    type_discriminator(_PART_TYPES),
]

# -- input items -------------------------------------------------------------------------------


class MessageItem(Strict):
    """A message: ``{"role", "content"}`` (the easy form, no ``type``) or a full message item;
    an assistant message replays an earlier response's output."""

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: Text | list[ContentPart]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class FunctionCallItem(Strict):
    """A call the model made (replayed so the next turn can answer it)."""

    type: Literal["function_call"]
    call_id: Annotated[Text, Field(min_length=1, max_length=256)]
    name: Name
    arguments: Text
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class FunctionCallOutputItem(Strict):
    """What the caller's function returned for ``call_id``."""

    type: Literal["function_call_output"]
    call_id: Annotated[Text, Field(min_length=1, max_length=256)]
    output: Text | list[ContentPart]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class OtherItem(BaseModel):
    """An item of a kind oasis does not produce or run (reasoning, item references, hosted
    tool calls): well-formed as far as its ``type`` goes, refused by serving, naming it."""

    model_config = ConfigDict(extra="allow")
    type: str


_ITEM_TYPES = ("message", "function_call", "function_call_output")


def _item_tag(value: Any) -> str:
    t = value.get("type", "message") if isinstance(value, dict) else getattr(value, "type", None)
    return f"type={t}" if t in _ITEM_TYPES else "type=?"


InputItem = Annotated[
    Annotated[MessageItem, Tag("type=message")]
    | Annotated[FunctionCallItem, Tag("type=function_call")]
    | Annotated[FunctionCallOutputItem, Tag("type=function_call_output")]
    | Annotated[OtherItem, Tag("type=?")],
    Discriminator(_item_tag),
]

# -- tools, tool_choice, text ------------------------------------------------------------------


class FunctionToolDef(Strict):
    type: Literal["function"]
    name: Name
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class HostedTool(BaseModel):
    """web_search, file_search, code_interpreter, computer use, image generation, mcp...:
    refused by serving, naming the type."""

    model_config = ConfigDict(extra="allow")
    type: str


ResponsesTool = Annotated[
    Annotated[FunctionToolDef, Tag("type=function")] | Annotated[HostedTool, Tag("type=?")],
    type_discriminator(("function",)),
]


class FunctionChoice(Strict):
    type: Literal["function"]
    name: Name


class OtherChoice(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str


ToolChoiceParam = (
    Literal["none", "auto", "required"]
    | Annotated[
        Annotated[FunctionChoice, Tag("type=function")] | Annotated[OtherChoice, Tag("type=?")],
        type_discriminator(("function",)),
    ]
)


class TextFormatText(Strict):
    type: Literal["text"]


class TextFormatJSONObject(Strict):
    type: Literal["json_object"]


class TextFormatJSONSchema(Strict):
    type: Literal["json_schema"]
    name: Name
    # "schema" would shadow a BaseModel attribute: the field has another name, the wire's key
    schema_: Annotated[dict[str, Any], Field(alias="schema")]
    description: str | None = None
    strict: StrictBool | None = None


TextFormat = Annotated[
    Annotated[TextFormatText, Tag("type=text")]
    | Annotated[TextFormatJSONObject, Tag("type=json_object")]
    | Annotated[TextFormatJSONSchema, Tag("type=json_schema")]
    | Annotated[TextFormatText, Tag("type=?")],
    type_discriminator(("text", "json_object", "json_schema")),
]


class TextConfig(Strict):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningConfig(Strict):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


class StreamOptionsR(Strict):
    include_obfuscation: StrictBool | None = None


# the `include` values that apply to what oasis produces
INCLUDABLE = ("message.output_text.logprobs",)
Metadata = Annotated[
    dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]],
    Field(max_length=16),
]


class ResponseCreateRequest(Strict):
    model: str
    input: Text | list[InputItem] | None = None
    instructions: Text | None = None
    max_output_tokens: Annotated[Whole, Field(ge=16)] | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_logprobs: Annotated[Whole, Field(ge=0, le=20)] | None = None
    tools: list[ResponsesTool] | None = None
    tool_choice: ToolChoiceParam | None = None
    parallel_tool_calls: StrictBool | None = None
    text: TextConfig | None = None
    store: StrictBool | None = None
    stream: StrictBool | None = None
    stream_options: StreamOptionsR | None = None
    previous_response_id: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    metadata: Metadata | None = None
    user: Text | None = None
    safety_identifier: Annotated[Text, Field(max_length=64)] | None = None
    prompt_cache_key: Text | None = None
    truncation: Literal["auto", "disabled"] | None = None
    include: list[str] | None = None
    service_tier: Literal["auto", "default", "flex", "scale", "priority", "fast", "ultrafast"] | (
        None
    ) = None
    # Documented, not supported here: refused when set (see ``unsupported``).
    reasoning: ReasoningConfig | None = None
    background: StrictBool | None = None
    conversation: str | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None
    max_tool_calls: Whole | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    context_management: list[dict[str, Any]] | None = None
    moderation: dict[str, Any] | None = None
    access_programs: dict[str, Any] | None = None
    image: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> ResponseCreateRequest:
        if self.stream_options is not None and not self.stream:
            raise ValueError(
                "stream_options: The 'stream_options' parameter is only allowed when 'stream' "
                "is enabled."
            )
        if self.input is None and self.previous_response_id is None:
            raise ValueError("input: Missing required parameter: 'input'.")
        return self

    def unsupported(self) -> list[str]:
        """Names of documented parameters, tools and inputs set here that oasis cannot
        honour (each is a 400 naming it)."""
        found = [
            name
            for name in (
                "conversation",
                "prompt",
                "max_tool_calls",
                "prompt_cache_retention",
                "prompt_cache_options",
                "context_management",
                "moderation",
                "access_programs",
                "image",
            )
            if getattr(self, name) is not None
        ]
        if self.background:
            found.append("background")
        if self.reasoning is not None and (
            self.reasoning.effort not in (None, "none")
            or self.reasoning.summary is not None
            or self.reasoning.generate_summary is not None
        ):
            found.append("reasoning")
        if self.service_tier not in (None, "auto", "default"):
            found.append("service_tier")
        if self.text is not None and self.text.verbosity not in (None, "medium"):
            found.append("text.verbosity")
        for value in self.include or ():
            if value not in INCLUDABLE:
                found.append(f"include: {value}")
        for tool in self.tools or ():
            if not isinstance(tool, FunctionToolDef):
                found.append(f"tools: {tool.type}")
        if self.tool_choice is not None and isinstance(self.tool_choice, OtherChoice):
            found.append(f"tool_choice: {self.tool_choice.type}")
        if isinstance(self.input, list):
            for item in self.input:
                if isinstance(item, OtherItem):
                    found.append(f"input: {item.type}")
                    continue
                content = getattr(item, "content", None) or getattr(item, "output", None)
                if isinstance(content, list):
                    found += [f"input: {p.type}" for p in content if isinstance(p, OtherPart)]
        return list(dict.fromkeys(found))
