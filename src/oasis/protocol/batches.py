"""The request body of ``POST /v1/batches`` (OpenAI's Batch API)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from oasis.protocol.fields import Strict, Text, Whole

# OpenAI's metadata limits: 16 pairs, keys up to 64 characters, values up to 512.
MAX_METADATA = 16


class OutputExpiresAfter(Strict):
    anchor: Literal["created_at"]
    seconds: Annotated[Whole, Field(ge=3600, le=2_592_000)]


class BatchCreateRequest(Strict):
    input_file_id: Text
    endpoint: Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"]
    completion_window: Literal["24h"]
    metadata: (
        dict[Annotated[Text, Field(max_length=64)], Annotated[Text, Field(max_length=512)]] | None
    ) = None
    output_expires_after: OutputExpiresAfter | None = None

    @field_validator("metadata")
    @classmethod
    def _few(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None and len(value) > MAX_METADATA:
            raise ValueError(f"metadata: at most {MAX_METADATA} key-value pairs")
        return value
