"""Batch benchmark: a batch fills the capacity interactive traffic leaves, without slowing it.

One `oasis serve` on the bundled model. Three measurements, same server, same run:

1. Interactive TTFT on an idle server: streamed chat requests one after another.
2. The same interactive requests while a ``--lines``-line batch runs (batch lines are
   background work: the engine admits interactive requests first, keeps a slot for them, and
   holds batch decodes while an interactive prompt is read). Target: TTFT p50 <= 1.3x idle.
3. Throughput: the batch's lines sent by 16 concurrent clients as ordinary requests, vs the
   same lines as a batch with no other traffic (completions per second, create to completed).
   Target: batch >= 0.9x.

Saves bench/results/<date>-batches.{json,png} and rewrites the README's table.

    python -m bench.batches [--lines 500] [--max-tokens 24] [--interactive 30]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench.engine import RESULTS, ROOT, Server, console, free_port, pct, replace_readme_block
from bench.gateway import oasis_cmd

KEY = "sk-bench-batches"
TOPICS = ["rain", "a lighthouse", "the sea", "a library", "autumn", "a bicycle", "the moon",
          "a market", "a mountain", "coffee", "a train", "winter"]


def line_body(i: int, max_tokens: int) -> dict[str, Any]:
    return {"model": "gpt-3.5-turbo", "max_tokens": max_tokens, "temperature": 0,
            "logit_bias": {"0": -100, "2": -100},  # every answer runs to max_tokens
            "messages": [{"role": "user",
                          "content": f"Write a short note about {TOPICS[i % len(TOPICS)]} "
                                     f"(note {i})."}]}


def interactive_body(i: int) -> dict[str, Any]:
    return {"model": "gpt-3.5-turbo", "max_tokens": 8, "temperature": 0, "stream": True,
            "messages": [{"role": "user", "content": f"Say hello to visitor number {i}."}]}


@dataclass
class Result:
    ttft_idle_p50_ms: float
    ttft_idle_p90_ms: float
    ttft_busy_p50_ms: float
    ttft_busy_p90_ms: float
    ttft_ratio: float
    clients_per_s: float
    batch_per_s: float
    throughput_ratio: float
    busy_samples: int
    idle_samples: int


async def ttft(http: httpx.AsyncClient, i: int) -> float:
    t0 = time.perf_counter()
    async with http.stream("POST", "/v1/chat/completions", json=interactive_body(i)) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[6:]).get("choices") or []
            if choices and choices[0]["delta"].get("content"):
                return (time.perf_counter() - t0) * 1000
    raise AssertionError("no content")


async def interactive(http: httpx.AsyncClient, n: int, gap: float, progress: Progress,
                      label: str, until: asyncio.Event | None = None) -> list[float]:
    task = progress.add_task(label, total=n)
    out = []
    for i in range(n):
        if until is not None and until.is_set():
            break
        out.append(await ttft(http, i))
        progress.advance(task)
        await asyncio.sleep(gap)
    return out


async def run_batch(http: httpx.AsyncClient, lines: int, max_tokens: int, progress: Progress,
                    label: str, done: asyncio.Event | None = None) -> float:
    """Completions per second of a batch, create to completed."""
    data = "".join(json.dumps({"custom_id": f"l{i}", "method": "POST",
                               "url": "/v1/chat/completions",
                               "body": line_body(i, max_tokens)}) + "\n" for i in range(lines))
    f = await http.post("/v1/files", files={"file": ("in.jsonl", data.encode())},
                        data={"purpose": "batch"})
    f.raise_for_status()
    t0 = time.perf_counter()
    b = await http.post("/v1/batches", json={"input_file_id": f.json()["id"],
                                             "endpoint": "/v1/chat/completions",
                                             "completion_window": "24h"})
    b.raise_for_status()
    task = progress.add_task(label, total=lines)
    while True:
        batch = (await http.get(f"/v1/batches/{b.json()['id']}")).json()
        counts = batch.get("request_counts", {})
        progress.update(task, completed=counts.get("completed", 0) + counts.get("failed", 0))
        if batch["status"] in ("completed", "failed", "expired", "cancelled"):
            break
        await asyncio.sleep(0.2)
    seconds = time.perf_counter() - t0
    if done is not None:
        done.set()
    assert batch["status"] == "completed" and counts["failed"] == 0, batch
    return lines / seconds


async def run_clients(http: httpx.AsyncClient, lines: int, max_tokens: int, clients: int,
                      progress: Progress) -> float:
    task = progress.add_task(f"{lines} requests from {clients} clients", total=lines)
    todo = list(range(lines))

    async def client() -> None:
        while todo:
            i = todo.pop()
            r = await http.post("/v1/chat/completions", json=line_body(i, max_tokens))
            r.raise_for_status()
            progress.advance(task)

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return lines / (time.perf_counter() - t0)


async def measure(port: int, args: argparse.Namespace) -> tuple[Result, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=600,
                                 headers=headers,
                                 limits=httpx.Limits(max_connections=64)) as http:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console) as progress:
            await interactive(http, 5, 0.1, progress, "warm-up")
            idle = await interactive(http, args.interactive, args.gap, progress,
                                     "interactive TTFT, idle")
            clients = await run_clients(http, args.lines, args.max_tokens, 16, progress)
            await asyncio.sleep(12)  # no interactive traffic for a while: batches use every slot
            alone = await run_batch(http, args.lines, args.max_tokens, progress,
                                    f"batch of {args.lines}, alone")
            done = asyncio.Event()
            batch = asyncio.ensure_future(run_batch(http, args.lines, args.max_tokens, progress,
                                                    f"batch of {args.lines}, with live traffic",
                                                    done))
            await asyncio.sleep(3)  # the batch is running
            busy = await interactive(http, args.interactive, args.gap, progress,
                                     "interactive TTFT, batch running", until=done)
            await batch
    result = Result(
        ttft_idle_p50_ms=round(pct(idle, 50), 1), ttft_idle_p90_ms=round(pct(idle, 90), 1),
        ttft_busy_p50_ms=round(pct(busy, 50), 1), ttft_busy_p90_ms=round(pct(busy, 90), 1),
        ttft_ratio=round(pct(busy, 50) / pct(idle, 50), 3),
        clients_per_s=round(clients, 3), batch_per_s=round(alone, 3),
        throughput_ratio=round(alone / clients, 3), busy_samples=len(busy),
        idle_samples=len(idle))
    return result, {"idle": idle, "busy": busy}


def chart(raw: dict[str, Any], result: Result, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    a.boxplot([raw["idle"], raw["busy"]], tick_labels=["idle", "batch running"])
    a.set_ylabel("interactive TTFT (ms)")
    a.set_title(f"TTFT p50 x{result.ttft_ratio:.2f} with a batch running")
    bars = b.bar(["16 clients", "batch"], [result.clients_per_s, result.batch_per_s],
                 color=["#888", "#2a7"])
    b.bar_label(bars, fmt="%.2f", fontsize=8)
    b.set_ylabel("completions / s")
    b.set_title(f"throughput x{result.throughput_ratio:.2f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(r: Result, meta: dict[str, Any], png: str) -> str:
    return "\n".join([
        f"{meta['date']}, {meta['machine']}, bundled model, {meta['parallel']} slots, "
        f"{meta['lines']}-line batches of {meta['max_tokens']}-token answers, interactive "
        f"requests streamed one at a time ({r.idle_samples} idle, {r.busy_samples} with the "
        "batch running):",
        "",
        "| measure | without the batch | with the batch | ratio | target |",
        "| --- | --- | --- | --- | --- |",
        f"| interactive TTFT p50 (ms) | {r.ttft_idle_p50_ms:.0f} | {r.ttft_busy_p50_ms:.0f} | "
        f"{r.ttft_ratio:.2f}x | <= 1.3x |",
        f"| interactive TTFT p90 (ms) | {r.ttft_idle_p90_ms:.0f} | {r.ttft_busy_p90_ms:.0f} | "
        f"{r.ttft_busy_p90_ms / r.ttft_idle_p90_ms:.2f}x | |",
        f"| completions/s: 16 clients vs the batch alone | {r.clients_per_s:.2f} | "
        f"{r.batch_per_s:.2f} | {r.throughput_ratio:.2f}x | >= 0.9x |",
        "",
        f"![batch benchmark]({png})",
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=500)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--interactive", type=int, default=30)
    ap.add_argument("--gap", type=float, default=0.5, help="seconds between interactive requests")
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--no-readme", action="store_true")
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    cache = ROOT / "bench" / ".cache"
    cache.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = Server("oasis", oasis_cmd("serve", "--port", str(port), "--parallel",
                                       str(args.parallel), "--log-level", "warning"), port,
                    env={"OASIS_DATA_DIR": str(cache / f"batches-{port}"), "OASIS_API_KEY": KEY},
                    health="/health")
    server.start(cache / "batches-server.log")
    try:
        result, raw = asyncio.run(measure(port, args))
    finally:
        server.stop()
    date = dt.date.today().isoformat()
    meta = {"date": date, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "lines": args.lines, "max_tokens": args.max_tokens, "parallel": args.parallel,
            "interactive": args.interactive, "gap": args.gap}
    out = RESULTS / f"{date}-batches.json"
    out.write_text(json.dumps({"meta": meta, "result": asdict(result), "samples": raw}, indent=1))
    png = RESULTS / f"{date}-batches.png"
    chart(raw, result, png)
    t = Table(title="batches")
    for col in ("measure", "value"):
        t.add_column(col)
    for k, v in asdict(result).items():
        t.add_row(k, str(v))
    console.print(t)
    console.print(
        f"TTFT p50 with a batch running: {result.ttft_ratio:.2f}x idle (target <= 1.3x: "
        f"{'met' if result.ttft_ratio <= 1.3 else 'NOT met'}); batch throughput "
        f"{result.throughput_ratio:.2f}x of 16 clients (target >= 0.9x: "
        f"{'met' if result.throughput_ratio >= 0.9 else 'NOT met'}); saved {out.relative_to(ROOT)}")
    if not args.no_readme:
        replace_readme_block("batches", markdown(result, meta, str(png.relative_to(ROOT))))


if __name__ == "__main__":
    main()
