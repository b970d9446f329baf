"""Structured-outputs benchmark: decode tokens/s with a JSON-schema constraint versus without,
same prompt, model and server, same run; and the same for tool calling.

Every run streams; decode speed is (completion tokens - 1) / (time of the last token - time of
the first), so prompt evaluation is left out. The constrained run ends when the JSON is
complete; the others then ban the end tokens and run to the constrained run's mean length, so
all decode the same number of tokens. Four ways of asking:

- unconstrained: the plain prompt;
- JSON schema: ``response_format`` with the schema;
- tool call: the schema as a function's parameters, that function named in ``tool_choice``
  (the arguments are timed as they stream);
- tools offered: that function offered under ``tool_choice: auto``, the model answering in
  text (the grammar's text branch is checked at every token).

Saves bench/results/<date>-structured.json and rewrites the README's table.

    python -m bench.structured [--requests 6] [--concurrency 1,4]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench.engine import RESULTS, ROOT, Server, console, free_port, replace_readme_block

PROMPT = "List eight famous explorers with a one-line description of each."
SCHEMA = {
    "type": "object",
    "properties": {
        "explorers": {
            "type": "array",
            "minItems": 8,
            "maxItems": 8,
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 40},
                    "century": {"type": "integer"},
                    "known_for": {"type": "string", "maxLength": 80},
                    "continent": {"enum": ["Europe", "Asia", "Africa", "Americas", "Oceania"]},
                },
                "required": ["name", "century", "known_for", "continent"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["explorers"],
    "additionalProperties": False,
}
NO_END = {"0": -100, "2": -100}


TOOL = {"type": "function", "function": {"name": "record_explorers", "parameters": SCHEMA}}
MODES = ("free", "schema", "tool", "auto")


async def one(
    http: httpx.AsyncClient, url: str, mode: str, max_tokens: int
) -> tuple[float, int]:
    body: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "seed": 1,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if mode == "schema":
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "explorers", "schema": SCHEMA, "strict": True},
        }
    elif mode == "tool":
        body["tools"] = [TOOL]
        body["tool_choice"] = {"type": "function", "function": {"name": "record_explorers"}}
    else:
        body["logit_bias"] = NO_END
        if mode == "auto":
            body["tools"] = [TOOL]
    first = last = None
    tokens = 0
    text: list[str] = []
    async with http.stream("POST", url, json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            data = json.loads(line[6:])
            if data.get("usage"):
                tokens = data["usage"]["completion_tokens"]
            for c in data.get("choices") or []:
                delta = c["delta"]
                piece = delta.get("content")
                for call in delta.get("tool_calls") or []:
                    piece = call["function"].get("arguments")
                if piece:
                    text.append(piece)
                    now = time.perf_counter()
                    first = first or now
                    last = now
    if mode in ("schema", "tool"):
        json.loads("".join(text))  # the constraint held (raises if not)
    assert first is not None and last is not None and last > first
    # a tool call's fixed head (<tool_call>, the name) is decoded before the first argument
    # piece: count the pieces timed, one per token
    timed = len(text) if mode == "tool" else tokens
    return (timed - 1) / (last - first), tokens


async def level(
    url: str, mode: str, clients: int, n: int, max_tokens: int
) -> tuple[float, int]:
    """Mean per-stream decode tokens/s, and mean completion tokens."""
    async with httpx.AsyncClient(timeout=600) as http:
        runs: list[tuple[float, int]] = []
        queue = list(range(n))

        async def worker() -> None:
            while queue:
                queue.pop()
                runs.append(await one(http, url, mode, max_tokens))

        await asyncio.gather(*[worker() for _ in range(clients)])
    return sum(r for r, _ in runs) / len(runs), round(sum(t for _, t in runs) / len(runs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=6)
    ap.add_argument("--concurrency", default="1,4")
    ap.add_argument("--max-tokens", type=int, default=800)
    ap.add_argument("--no-readme", action="store_true")
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    log = ROOT / "bench" / ".cache" / "structured-server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    port = free_port()
    oasis = str(Path(sys.executable).with_name("oasis"))
    server = Server("oasis", [oasis, "serve", "--port", str(port), "--no-auth", "--parallel", "4",
                              "--ctx-size", "8192", "--data-dir", str(log.parent / "sdata")],
                    port, health="/health")
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    rows = []
    server.start(log)
    try:
        asyncio.run(level(url, "schema", 1, 1, args.max_tokens))  # warm-up
        for c in [int(x) for x in args.concurrency.split(",")]:
            with console.status(f"{c} stream(s): JSON schema"):
                held, length = asyncio.run(
                    level(url, "schema", c, args.requests, args.max_tokens))
            speed = {"schema": held}
            # the same length for the others: decode slows as the KV cache grows
            for mode in ("free", "tool", "auto"):
                with console.status(f"{c} stream(s): {mode}, {length} tokens"):
                    cap = args.max_tokens if mode == "tool" else length
                    speed[mode], _ = asyncio.run(level(url, mode, c, args.requests, cap))
            free = speed["free"]
            rows.append({"concurrency": c, "tokens": length,
                         "unconstrained_tps": round(free, 1),
                         "constrained_tps": round(held, 1), "ratio": round(held / free, 3),
                         "tool_call_tps": round(speed["tool"], 1),
                         "tool_call_ratio": round(speed["tool"] / free, 3),
                         "tools_offered_tps": round(speed["auto"], 1),
                         "tools_offered_ratio": round(speed["auto"] / free, 3)})
            console.print(rows[-1])
    finally:
        server.stop()
    date = dt.date.today().isoformat()
    meta = {"date": date, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "requests": args.requests, "max_tokens": args.max_tokens}
    out = RESULTS / f"{date}-structured.json"
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    table = "\n".join(
        [f"{date}, {meta['machine']}, SmolLM2-135M, per-stream decode tokens/s:", "",
         "| streams | tokens per answer | unconstrained | JSON schema | tool call "
         "| tools offered, text answer |",
         "| --- | --- | --- | --- | --- | --- |"]
        + [f"| {r['concurrency']} | {r['tokens']} | {r['unconstrained_tps']} | "
           f"{r['constrained_tps']} ({r['ratio']:.2f}x) | {r['tool_call_tps']} "
           f"({r['tool_call_ratio']:.2f}x) | {r['tools_offered_tps']} "
           f"({r['tools_offered_ratio']:.2f}x) |" for r in rows])
    console.print(table)
    if not args.no_readme:
        replace_readme_block("structured", table)


if __name__ == "__main__":
    main()
