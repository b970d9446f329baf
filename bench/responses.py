"""Responses API benchmark: what the translation layer costs, against chat on the same prompts.

One `oasis serve` on the bundled model. The same streamed prompts go to `/v1/chat/completions`
and to `/v1/responses` (`max_tokens` / `max_output_tokens` alike, temperature 0: the same
messages, so the same answers), interleaved A-B-B-A in rounds so drift of this shared machine hits
both alike, at `--concurrency` clients. Per request: time to the first text delta and decode
tokens/s (tokens after the first over the time after it); overall: tokens/s of the run. Saves
bench/results/<date>-responses.json and rewrites the README's table (target: >= 0.97x).

    python -m bench.responses [--rounds 6] [--concurrency 4] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench.engine import RESULTS, ROOT, Server, console, free_port, pct, replace_readme_block
from bench.gateway import oasis_cmd

PROMPTS = [
    "Explain what a transformer's attention does.", "Write a haiku about rain.",
    "List three uses of a paperclip.", "Describe the water cycle.",
    "What is a prime number?", "Give advice for a job interview.",
    "Summarize the plot of a heist film.", "How do bees make honey?",
]


@dataclass
class Sample:
    endpoint: str
    ttft_ms: float
    decode_tps: float
    tokens: int
    seconds: float


@dataclass
class Summary:
    endpoint: str
    requests: int
    ttft_p50_ms: float
    ttft_p99_ms: float
    decode_tps_p50: float
    tokens_per_s: float
    ratios: dict[str, float] = field(default_factory=dict)


def body(endpoint: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    if endpoint == "chat":
        return {"model": "bench", "messages": [{"role": "user", "content": prompt}],
                "max_tokens": max_tokens, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}}
    return {"model": "bench", "input": prompt, "max_output_tokens": max_tokens,
            "temperature": 0, "stream": True, "store": False}


async def one(http: httpx.AsyncClient, endpoint: str, prompt: str, max_tokens: int) -> Sample:
    path = "/v1/chat/completions" if endpoint == "chat" else "/v1/responses"
    t0 = time.perf_counter()
    first = last = None
    deltas = 0
    async with http.stream("POST", path, json=body(endpoint, prompt, max_tokens)) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if endpoint == "chat":
                choices = event.get("choices") or []
                text = choices[0]["delta"].get("content") if choices else None
            else:
                text = event.get("delta") if event["type"] == "response.output_text.delta" \
                    else None
            if text:
                now = time.perf_counter()
                first = first or now
                last = now
                deltas += 1
    end = time.perf_counter()
    assert first is not None and last is not None
    decode = (deltas - 1) / (last - first) if deltas > 1 and last > first else 0.0
    return Sample(endpoint, (first - t0) * 1000, decode, deltas, end - t0)


async def run(port: int, rounds: int, concurrency: int, max_tokens: int,
              progress: Progress) -> tuple[list[Sample], dict[str, float]]:
    samples: list[Sample] = []
    busy: dict[str, float] = {"chat": 0.0, "responses": 0.0}
    tokens: dict[str, int] = {"chat": 0, "responses": 0}
    task = progress.add_task("requests", total=rounds * 2 * len(PROMPTS))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=300) as http:
        for r in range(rounds):
            order = ("chat", "responses") if r % 2 == 0 else ("responses", "chat")
            for endpoint in order:
                sem = asyncio.Semaphore(concurrency)

                async def go(prompt: str, endpoint: str = endpoint,
                             sem: asyncio.Semaphore = sem) -> Sample:
                    async with sem:
                        s = await one(http, endpoint, prompt, max_tokens)
                        progress.advance(task)
                        return s

                t0 = time.perf_counter()
                got = await asyncio.gather(*(go(p) for p in PROMPTS))
                busy[endpoint] += time.perf_counter() - t0
                tokens[endpoint] += sum(s.tokens for s in got)
                samples += got
    return samples, {e: tokens[e] / busy[e] for e in busy}


def summarize(samples: list[Sample], tps: dict[str, float]) -> list[Summary]:
    out = []
    for endpoint in ("chat", "responses"):
        mine = [s for s in samples if s.endpoint == endpoint]
        ttft = [s.ttft_ms / 1000 for s in mine]
        out.append(Summary(endpoint, len(mine), round(pct(ttft, 50) * 1000, 1),
                           round(pct(ttft, 99) * 1000, 1),
                           round(statistics.median(s.decode_tps for s in mine), 1),
                           round(tps[endpoint], 1)))
    chat, resp = out
    resp.ratios = {"tokens_per_s": round(resp.tokens_per_s / chat.tokens_per_s, 3),
                   "decode_tps_p50": round(resp.decode_tps_p50 / chat.decode_tps_p50, 3),
                   "ttft_p50": round(resp.ttft_p50_ms / chat.ttft_p50_ms, 3)}
    return out


def markdown(rows: list[Summary], meta: dict[str, Any]) -> str:
    lines = [
        f"{meta['date']}, {meta['machine']}, bundled model, {meta['rounds']} rounds x "
        f"{meta['prompts']} streamed prompts per endpoint, {meta['concurrency']} clients, "
        f"{meta['max_tokens']} tokens each:",
        "",
        "| endpoint | TTFT p50 ms | TTFT p99 ms | decode tok/s p50 | tokens/s (run) | x chat |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        ratio = r.ratios.get("tokens_per_s", 1.0)
        lines.append(f"| {r.endpoint} | {r.ttft_p50_ms:.0f} | {r.ttft_p99_ms:.0f} | "
                     f"{r.decode_tps_p50:.1f} | {r.tokens_per_s:.1f} | {ratio:.3f}x |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--no-readme", action="store_true")
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    log = ROOT / "bench" / ".cache" / "responses-server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = Server("oasis", oasis_cmd("serve", "--port", str(port), "--no-auth", "--alias",
                                       "bench", "--parallel", str(args.concurrency),
                                       "--log-level", "warning"), port,
                    env={"OASIS_DATA_DIR": str(log.parent / f"responses-{port}")},
                    health="/health")
    server.start(log)
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console) as progress:
            asyncio.run(run(port, 1, args.concurrency, 16, progress))  # warm-up (16: the least
            samples, tps = asyncio.run(run(port, args.rounds, args.concurrency,
                                           args.max_tokens, progress))
    finally:
        server.stop()
    rows = summarize(samples, tps)
    date = dt.date.today().isoformat()
    meta = {"date": date, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "rounds": args.rounds, "prompts": len(PROMPTS), "concurrency": args.concurrency,
            "max_tokens": args.max_tokens, "python": platform.python_version()}
    out = RESULTS / f"{date}-responses.json"
    out.write_text(json.dumps({"meta": meta, "results": [asdict(r) for r in rows]}, indent=1))
    t = Table(title="responses vs chat")
    for col in ("endpoint", "TTFT p50", "TTFT p99", "decode tok/s", "tokens/s", "x chat"):
        t.add_column(col)
    for r in rows:
        t.add_row(r.endpoint, f"{r.ttft_p50_ms:.0f}", f"{r.ttft_p99_ms:.0f}",
                  f"{r.decode_tps_p50:.1f}", f"{r.tokens_per_s:.1f}",
                  f"{r.ratios.get('tokens_per_s', 1.0):.3f}")
    console.print(t)
    ratio = rows[1].ratios["tokens_per_s"]
    console.print(f"responses/chat tokens/s: {ratio:.3f}x (target >= 0.97x: "
                  f"{'met' if ratio >= 0.97 else 'NOT met'}); saved {out.relative_to(ROOT)}")
    if not args.no_readme:
        replace_readme_block("responses", markdown(rows, meta))


if __name__ == "__main__":
    main()
