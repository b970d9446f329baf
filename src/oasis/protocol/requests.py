"""Request bodies of the OpenAI endpoints oasis serves.

Every documented parameter has a field, so an unknown argument is refused (``extra="forbid"``,
down into ``response_format``, ``tools``, ``tool_choice``, ``stream_options`` and the calls of
earlier messages) and a documented but unsupported one is refused by ``unsupported()`` with its
name, never silently dropped. ``top_k``, ``min_p`` and ``repeat_penalty`` are oasis extensions
(llama.cpp samplers).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from oasis.protocol.fields import Strict, Text, Whole
from oasis.protocol.formats import ResponseFormat
from oasis.protocol.tools import (
    CalledFunction,
    FunctionCallChoice,
    LegacyFunction,
    Tool,
    ToolCall,
    ToolChoice,
)

Temperature = Annotated[float, Field(ge=0, le=2)]
Penalty = Annotated[float, Field(ge=-2, le=2)]
TopP = Annotated[float, Field(ge=0, le=1)]
StopParam = str | Annotated[list[str], Field(max_length=4)] | None


class StreamOptions(Strict):
    include_usage: StrictBool | None = None
    include_obfuscation: StrictBool | None = None


class TextPart(Strict):
    type: Literal["text"]
    text: str


class OtherPart(BaseModel):
    """A non-text content part (image_url, input_audio, file, refusal): refused by serving."""

    model_config = ConfigDict(extra="allow")
    type: Literal["image_url", "input_audio", "file", "refusal"]


ContentPart = Annotated[TextPart | OtherPart, Field(discriminator="type")]


class ChatMessage(Strict):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: Text | None = None
    # Fields of assistant / tool messages (which role may carry which: serving/chat.py).
    tool_calls: list[ToolCall] | None = None
    tool_call_id: Text | None = None
    function_call: CalledFunction | None = None
    refusal: str | None = None
    audio: dict[str, Any] | None = None


class _SamplingFields(Strict):
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    n: Annotated[Whole, Field(ge=1, le=128)] | None = None
    seed: Whole | None = None
    stop: StopParam = None
    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    user: str | None = None
    # oasis extensions: llama.cpp samplers.
    top_k: Annotated[Whole, Field(ge=0, le=1_000_000)] | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    repeat_penalty: Annotated[float, Field(gt=0, le=10)] | None = None
    # oasis extension: speculative drafts from the prompt (README: speculative decoding).
    prompt_lookup: StrictBool | None = None

    @model_validator(mode="after")
    def _stream_options(self) -> _SamplingFields:
        if self.stream_options is not None and not self.stream:
            raise ValueError(
                "stream_options: The 'stream_options' parameter is only allowed when 'stream' "
                "is enabled."
            )
        return self

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class ChatCompletionRequest(_SamplingFields):
    model: str
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[Whole, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[Whole, Field(ge=1)] | None = None
    logprobs: StrictBool | None = None
    top_logprobs: Annotated[Whole, Field(ge=0, le=20)] | None = None
    # Accepted: no effect on a local server beyond what is documented in the README.
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    # Tool calling and structured outputs (serving/tools/, serving/structured.py).
    tools: Annotated[list[Tool], Field(min_length=1)] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None
    functions: Annotated[list[LegacyFunction], Field(min_length=1)] | None = None
    function_call: FunctionCallChoice | None = None
    response_format: ResponseFormat | None = None
    # Documented by OpenAI, not supported yet: refused when set (see ``unsupported``).
    audio: dict[str, Any] | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    prediction: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    web_search_options: dict[str, Any] | None = None
    store: StrictBool | None = None
    metadata: dict[str, str] | None = None

    @model_validator(mode="after")
    def _check(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs: `logprobs` must be set to true to use top_logprobs")
        return self

    def unsupported(self) -> list[str]:
        """Names of documented parameters that are set but not supported yet."""
        names = [
            "audio",
            "prediction",
            "reasoning_effort",
            "verbosity",
            "web_search_options",
            "metadata",
        ]
        found = [name for name in names if getattr(self, name) is not None]
        if self.modalities is not None and "audio" in self.modalities:
            found.append("modalities")
        if self.store:
            found.append("store")
        if self.service_tier in ("flex", "scale", "priority"):
            found.append("service_tier")
        return found


# A prompt: a string, a list of strings, a list of token ids, or a list of token-id lists.
PromptParam = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(_SamplingFields):
    model: str
    prompt: PromptParam | None = None
    best_of: Annotated[Whole, Field(ge=0, le=20)] | None = None
    echo: StrictBool | None = None
    logprobs: Annotated[Whole, Field(ge=0, le=5)] | None = None
    max_tokens: Annotated[Whole, Field(ge=0)] | None = None
    suffix: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _prompt_shape(cls, data: Any) -> Any:
        # Validate the prompt's shape here so a mixed list gets one clear message.
        if isinstance(data, dict) and "prompt" in data:
            p = data["prompt"]
            ok = (
                p is None
                or isinstance(p, str)
                or (
                    isinstance(p, list)
                    and (
                        all(isinstance(x, str) for x in p)
                        or all(isinstance(x, int) and not isinstance(x, bool) for x in p)
                        or all(
                            isinstance(x, list)
                            and all(isinstance(t, int) and not isinstance(t, bool) for t in x)
                            for x in p
                        )
                    )
                )
            )
            if not ok:
                raise ValueError(
                    "prompt: expected a string, an array of strings, an array of tokens, "
                    "or an array of token arrays"
                )
        return data

    def unsupported(self) -> list[str]:
        return ["suffix"] if self.suffix is not None else []
