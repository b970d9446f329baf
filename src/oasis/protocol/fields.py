"""Field types the request models share: whole numbers, names, text, and the strict base.

Each type refuses with a message that ``server/validation.py`` turns into OpenAI's 400 naming
the field; none of them walks nested data, so deep JSON inside ``dict[str, Any]`` fields (a
function's ``parameters``, a schema) is never traversed here.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Discriminator

# OpenAI's pattern for function and schema names, and its length limit.
NAME_PATTERN = "^[a-zA-Z0-9_-]+$"
NAME_MAX = 64
_NAME = re.compile(r"[a-zA-Z0-9_-]+")


class Strict(BaseModel):
    """A part of a request whose every documented key has a field: any other key is refused
    with OpenAI's ``Unrecognized request argument supplied: NAME``."""

    model_config = ConfigDict(extra="forbid")


def _whole(value: Any) -> Any:
    """JSON does not tell 2 from 2.0 and OpenAI takes either for an integer: a float with an
    integral value becomes that integer; 2.5 stays a float and the integer check refuses it."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _unicode(text: str) -> str:
    # Only non-ASCII text can hold a lone surrogate; encoding finds one without a scan in Python.
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                "the string contains a lone surrogate (a \\uD800-\\uDFFF escape that is not "
                "part of a pair), which is not valid Unicode."
            ) from None
    return text


def _name(text: str) -> str:
    if not _NAME.fullmatch(text):
        raise ValueError(
            "string does not match pattern. Expected a string that matches the pattern "
            f"'{NAME_PATTERN}'."
        )
    if len(text) > NAME_MAX:
        raise ValueError(
            f"string too long. Expected a string with maximum length {NAME_MAX}, but got a "
            f"string with length {len(text)} instead."
        )
    return text


# An integer field: 2 and 2.0 are accepted, 2.5 is not.
Whole = Annotated[int, BeforeValidator(_whole)]
# Text that is valid Unicode (no lone surrogate): it can be encoded, tokenized and echoed back.
Text = Annotated[str, AfterValidator(_unicode)]
# A function or schema name, as OpenAI checks it: ^[a-zA-Z0-9_-]+$, at most 64 characters.
Name = Annotated[str, AfterValidator(_name)]


def name_ok(text: str) -> bool:
    """Whether ``text`` is a valid function or schema name."""
    return bool(_NAME.fullmatch(text)) and len(text) <= NAME_MAX


def type_tag(value: Any, tags: tuple[str, ...]) -> str:
    """The union branch a request object's ``type`` picks (``type=NAME``), or ``type=?`` for an
    unknown or missing type: that branch's only job is to refuse it as an invalid value of
    ``type`` (not of the whole object)."""
    t = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return f"type={t}" if t in tags else "type=?"


def type_discriminator(tags: tuple[str, ...]) -> Discriminator:
    return Discriminator(lambda value: type_tag(value, tags))
