"""The request body of ``POST /v1/embeddings``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from oasis.protocol.fields import Strict, Text, Whole

TokenId = Annotated[Whole, Field(ge=0)]


class EmbeddingRequest(Strict):
    # a text, texts, a token array or token arrays (the model's own token ids)
    input: Text | list[Text] | list[TokenId] | list[list[TokenId]]
    model: Text
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Annotated[Whole, Field(ge=1)] | None = None
    user: Text | None = None
