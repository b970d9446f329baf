"""Extract the request schemas the fuzz test draws from, out of OpenAI's openapi.json.

The same stripping as scripts/extract_openapi_schemas.py (structure only, OpenAPI's
``nullable`` as ``anyOf`` with null), for the request bodies of the routes oasis serves::

    python tests/fuzz/extract_request_schemas.py openapi.json COMMIT \
        > tests/fuzz/openapi-request-schemas.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from extract_openapi_schemas import refs, strip

ROOTS = ["CreateChatCompletionRequest", "CreateCompletionRequest"]


def main() -> None:
    with open(sys.argv[1]) as f:
        schemas = json.load(f)["components"]["schemas"]
    keep: dict[str, Any] = {}
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name not in keep:
            keep[name] = strip(schemas[name])
            todo.extend(refs(keep[name]) - keep.keys())
    out = {
        "source": "openai/openai-openapi openapi.json",
        "commit": sys.argv[2],
        "components": {"schemas": dict(sorted(keep.items()))},
    }
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
