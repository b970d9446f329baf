"""``response_format``: text, JSON mode or a JSON schema (OpenAI's ``ResponseFormatText``,
``ResponseFormatJSONObject``, ``ResponseFormatJSONSchema``).

The schema itself is a free-form object here; serving/structured.py checks that its grammar can
enforce it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, StrictBool, Tag

from oasis.protocol.fields import Name, Strict, type_discriminator


class TextFormat(Strict):
    type: Literal["text"]


class JSONObjectFormat(Strict):
    type: Literal["json_object"]


class JSONSchemaSpec(Strict):
    name: Name
    description: str | None = None
    # "schema" would shadow a BaseModel attribute: the field has another name, the wire's key
    schema_: Annotated[dict[str, Any] | None, Field(alias="schema")] = None
    strict: StrictBool | None = None


class JSONSchemaFormat(Strict):
    type: Literal["json_schema"]
    json_schema: JSONSchemaSpec


class _OtherFormat(Strict):
    model_config = ConfigDict(extra="allow")  # the type is what is wrong
    type: Literal["text", "json_object", "json_schema"]


ResponseFormat = Annotated[
    Annotated[TextFormat, Tag("type=text")]
    | Annotated[JSONObjectFormat, Tag("type=json_object")]
    | Annotated[JSONSchemaFormat, Tag("type=json_schema")]
    | Annotated[_OtherFormat, Tag("type=?")],
    type_discriminator(("text", "json_object", "json_schema")),
]


def format_dict(fmt: Strict | None) -> dict[str, Any] | None:
    """The format as the client wrote it (the keys it set), for code that reads the wire shape."""
    return None if fmt is None else fmt.model_dump(by_alias=True, exclude_unset=True)
