"""Extract the schemas our contract tests need from OpenAI's openapi.json.

Keeps structure only (types, required, enums, refs), drops prose, examples and vendor
extensions, and records the upstream commit.  Usage:

    python scripts/extract_openapi_schemas.py openapi.json COMMIT > tests/data/openapi-schemas.json
"""

from __future__ import annotations

import json
import sys
from typing import Any

ROOTS = [
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse",
    "Model",
    "ListModelsResponse",
    "ErrorResponse",
    "UsageResponse",
    # the Responses API: the object, every stream event, the input_items list
    "Response",
    "ResponseStreamEvent",
    "ResponseItemList",
    # embeddings, files and batches
    "CreateEmbeddingResponse",
    "OpenAIFile",
    "ListFilesResponse",
    "DeleteFileResponse",
    "Batch",
    "ListBatchesResponse",
]
DROP = {"description", "example", "examples", "title", "deprecated", "default", "format"}


def strip(node: Any) -> Any:
    """Drop prose; turn OpenAPI 3.0 `nullable: true` into JSON Schema's anyOf with null."""
    if isinstance(node, dict):
        out = {
            k: strip(v)
            for k, v in node.items()
            if k not in DROP and k != "nullable" and not k.startswith("x-")
        }
        if node.get("nullable") is True:
            return {"anyOf": [out, {"type": "null"}]}
        return out
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def refs(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            found.add(ref.rsplit("/", 1)[-1])
        for v in node.values():
            found |= refs(v)
    elif isinstance(node, list):
        for v in node:
            found |= refs(v)
    return found


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    schemas = spec["components"]["schemas"]
    keep: dict[str, Any] = {}
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        keep[name] = strip(schemas[name])
        todo.extend(refs(keep[name]) - keep.keys())
    out = {
        "source": "openai/openai-openapi openapi.json",
        "commit": sys.argv[2],
        "components": {"schemas": dict(sorted(keep.items()))},
    }
    json.dump(out, sys.stdout, indent=1, sort_keys=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
