"""Engine benchmark: oasis vs llama-server vs llama-cpp-python's server, same run, same GGUF.

N concurrent streaming chat clients with fixed prompts and max_tokens (end tokens banned, so
every answer has exactly max_tokens tokens) against each server in turn, started with the same
slot count, context and threads. Reports aggregate output tokens/s, time to first token and
inter-token latency (p50/p99), each also as a ratio to llama-server; saves
bench/results/<date>-engine.json and a PNG chart and rewrites the README's table.

    python bench/engine.py [--concurrency 1,4,8,16] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench.llama_server import build as build_llama_server
from oasis.models.registry import bundled_model_path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
console = Console()

PROMPTS = [
    "Explain how a bicycle works.", "Write a short story about a lighthouse keeper.",
    "What are the benefits of drinking water?", "Describe the water cycle.",
    "How do airplanes stay in the air?", "Give me tips for learning a new language.",
    "What is photosynthesis?", "Describe a busy market in the morning.",
    "Why is the sky blue?", "How does a computer store information?",
    "Write a letter to a friend about your holiday.", "What makes a good teacher?",
    "Explain the rules of chess briefly.", "Describe the life of a honeybee.",
    "How do volcanoes form?", "What should I pack for a camping trip?",
]
NO_END = {"0": -100, "2": -100}  # <|endoftext|>, <|im_end|>: fixed-length answers
# The same sampler chain on every server (llama-server's defaults, stated explicitly).
SAMPLING = {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "seed": 1}


@dataclass
class RequestResult:
    ttft: float
    itls: list[float]
    tokens: int
    ok: bool
    error: str = ""


@dataclass
class LevelResult:
    server: str
    concurrency: int
    requests: int
    failed: int
    wall_s: float
    output_tokens: int
    tokens_per_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    itl_p50_ms: float
    itl_p99_ms: float
    ratios: dict[str, float] = field(default_factory=dict)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    name: str
    argv: list[str]
    port: int
    env: dict[str, str] = field(default_factory=dict)
    health: str = "/v1/models"  # a path that answers 200 without a key once it is ready
    proc: subprocess.Popen[bytes] | None = None

    def start(self, log: Path) -> None:
        with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, **self.env}, cwd=ROOT)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited; see {log}")
            try:
                r = httpx.get(f"http://127.0.0.1:{self.port}{self.health}", timeout=1)
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise SystemExit(f"{self.name} did not start; see {log}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def servers(model: Path, slots: int, ctx: int, threads: int, lcpp_ctx: int) -> list[Server]:
    llama_server = build_llama_server(RESULTS.parent / ".cache" / "build.log")
    p1, p2, p3 = free_port(), free_port(), free_port()
    bin_dir = Path(sys.executable).parent
    return [
        Server("llama-server", [str(llama_server), "-m", str(model), "--host", "127.0.0.1",
                                "--port", str(p1), "-np", str(slots), "-c", str(ctx),
                                "-t", str(threads), "-tb", str(threads), "-b", "512",
                                "-ub", "512", "--no-webui"], p1),
        Server("oasis", [str(bin_dir / "oasis"), "serve", "--port", str(p2),
                         "--parallel", str(slots), "--ctx-size", str(ctx),
                         "--threads", str(threads), "--alias", "bench", "--no-auth",
                         "--log-level", "warning"], p2),
        Server("llama-cpp-python", [sys.executable, "-m", "llama_cpp.server", "--model",
                                    str(model), "--host", "127.0.0.1", "--port", str(p3),
                                    "--n_ctx", str(lcpp_ctx), "--n_threads", str(threads),
                                    "--n_threads_batch", str(threads), "--n_batch", "512",
                                    "--model_alias", "bench", "--interrupt_requests", "False"],
               p3),
    ]


async def one_request(http: httpx.AsyncClient, url: str, prompt: str,
                      max_tokens: int) -> RequestResult:
    body = {"model": "bench", "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True},
            "logit_bias": NO_END, **SAMPLING}
    t0 = time.perf_counter()
    first = None
    last = t0
    itls: list[float] = []
    tokens = 0
    usage_tokens = None
    try:
        async with http.stream("POST", url, json=body) as r:
            if r.status_code != 200:
                await r.aread()
                return RequestResult(0, [], 0, False, f"{r.status_code} {r.text[:200]}")
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                data = json.loads(line[6:])
                if data.get("usage"):
                    usage_tokens = data["usage"].get("completion_tokens")
                choices = data.get("choices") or []
                if not choices or not choices[0].get("delta", {}).get("content"):
                    continue
                now = time.perf_counter()
                if first is None:
                    first = now
                else:
                    itls.append(now - last)
                last = now
                tokens += 1
    except httpx.HTTPError as exc:
        return RequestResult(0, [], tokens, False, f"{type(exc).__name__}: {exc}")
    # Token count from usage where the server sends it (a chunk may carry more than one
    # token, or none while a multi-byte character is incomplete), else one per chunk.
    n = usage_tokens if usage_tokens is not None else tokens
    if n != max_tokens:
        return RequestResult(0, [], n, False, f"{n} tokens instead of {max_tokens}")
    return RequestResult((first or last) - t0, itls, n, first is not None)


async def run_level(server: Server, concurrency: int, n_requests: int, max_tokens: int,
                    progress: Progress, task: Any) -> LevelResult:
    url = f"http://127.0.0.1:{server.port}/v1/chat/completions"
    queue: asyncio.Queue[str] = asyncio.Queue()
    for i in range(n_requests):
        queue.put_nowait(PROMPTS[i % len(PROMPTS)])
    results: list[RequestResult] = []
    limits = httpx.Limits(max_connections=concurrency + 4)

    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        async def worker() -> None:
            while True:
                try:
                    prompt = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                results.append(await one_request(http, url, prompt, max_tokens))
                progress.advance(task)

        t0 = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        wall = time.perf_counter() - t0
    ok = [r for r in results if r.ok]
    for err in sorted({r.error for r in results if not r.ok}):
        console.print(f"[yellow]{server.name} x{concurrency}: failed: {err}[/yellow]")
    itls = [x for r in ok for x in r.itls]
    tokens = sum(r.tokens for r in ok)
    return LevelResult(
        server=server.name, concurrency=concurrency, requests=len(results),
        failed=len(results) - len(ok), wall_s=round(wall, 3), output_tokens=tokens,
        tokens_per_s=round(tokens / wall, 2),
        ttft_p50_ms=round(pct([r.ttft for r in ok], 50) * 1000, 1),
        ttft_p99_ms=round(pct([r.ttft for r in ok], 99) * 1000, 1),
        itl_p50_ms=round(pct(itls, 50) * 1000, 2), itl_p99_ms=round(pct(itls, 99) * 1000, 2),
    )


def add_ratios(levels: list[LevelResult]) -> None:
    ref = {lv.concurrency: lv for lv in levels if lv.server == "llama-server"}
    for lv in levels:
        base = ref.get(lv.concurrency)
        if base is None:
            continue
        lv.ratios = {
            "tokens_per_s": round(lv.tokens_per_s / base.tokens_per_s, 3),
            "ttft_p50": round(lv.ttft_p50_ms / base.ttft_p50_ms, 3),
            "ttft_p99": round(lv.ttft_p99_ms / base.ttft_p99_ms, 3),
            "itl_p50": round(lv.itl_p50_ms / base.itl_p50_ms, 3),
            "itl_p99": round(lv.itl_p99_ms / base.itl_p99_ms, 3),
        }


def markdown(levels: list[LevelResult], meta: dict[str, Any]) -> str:
    lines = [
        f"Run {meta['date']} on {meta['machine']}: {meta['model']}, {meta['slots']} slots, "
        f"{meta['threads']} threads, {meta['max_tokens']} tokens per answer. "
        "Ratios are to llama-server in the same run (tokens/s: higher is better; "
        "latencies: lower is better).",
        "",
        "| concurrency | server | tokens/s | x llama-server | TTFT p50 / p99 ms | "
        "ITL p50 / p99 ms | x llama-server (TTFT p99) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for lv in sorted(levels, key=lambda x: (x.concurrency, x.server != "oasis", x.server)):
        r = lv.ratios
        lines.append(
            f"| {lv.concurrency} | {lv.server} | {lv.tokens_per_s:.1f} | "
            f"{r.get('tokens_per_s', float('nan')):.2f} | {lv.ttft_p50_ms:.0f} / "
            f"{lv.ttft_p99_ms:.0f} | {lv.itl_p50_ms:.1f} / {lv.itl_p99_ms:.1f} | "
            f"{r.get('ttft_p99', float('nan')):.2f} |"
        )
    return "\n".join(lines)


def chart(levels: list[LevelResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["oasis", "llama-server", "llama-cpp-python"]
    conc = sorted({lv.concurrency for lv in levels})
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    width = 0.8 / len(names)
    for ax, attr, title in (
        (axes[0], "tokens_per_s", "output tokens/s (higher is better)"),
        (axes[1], "ttft_p99_ms", "time to first token p99, ms (lower is better)"),
        (axes[2], "itl_p50_ms", "inter-token latency p50, ms (lower is better)"),
    ):
        for i, name in enumerate(names):
            vals = [next((getattr(lv, attr) for lv in levels
                          if lv.server == name and lv.concurrency == c), 0) for c in conc]
            ax.bar([x + i * width for x in range(len(conc))], vals, width, label=name)
        ax.set_xticks([x + width for x in range(len(conc))], [str(c) for c in conc])
        ax.set_xlabel("concurrent streams")
        ax.set_title(title, fontsize=10)
        ax.set_yscale("log" if attr == "ttft_p99_ms" else "linear")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def replace_readme_block(name: str, block: str) -> None:
    """Put ``block`` between the README's ``<!-- bench:NAME:start/end -->`` markers."""
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    if start not in text:
        return
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{block}\n{end}{tail}")


def update_readme(table: str, png: Path) -> None:
    replace_readme_block("engine", f"{table}\n\n![engine benchmark]({png.relative_to(ROOT)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concurrency", default="1,4,8,16")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--requests-per-stream", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--servers", default="llama-server,oasis,llama-cpp-python")
    ap.add_argument("--no-readme", action="store_true")
    args = ap.parse_args()
    levels_c = [int(c) for c in args.concurrency.split(",")]
    slots = max(levels_c)
    ctx = slots * 1024
    model = bundled_model_path()
    RESULTS.mkdir(parents=True, exist_ok=True)
    log = RESULTS.parent / ".cache" / "servers.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with console.status("building llama-server (first run only: several minutes)"):
        all_servers = servers(model, slots, ctx, args.threads, 2048)
    chosen = [s for s in all_servers if s.name in args.servers.split(",")]
    levels: list[LevelResult] = []
    total = sum(max(c * args.requests_per_stream, 8) for c in levels_c) * len(chosen)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("requests", total=total)
        for server in chosen:
            progress.update(task, description=f"{server.name}: starting")
            server.start(log)
            try:
                asyncio.run(run_level(server, 2, 2, 8, progress, progress.add_task(
                    "warm-up", total=2, visible=False)))
                for c in levels_c:
                    progress.update(task, description=f"{server.name} x{c}")
                    n = max(c * args.requests_per_stream, 8)
                    levels.append(asyncio.run(
                        run_level(server, c, n, args.max_tokens, progress, task)))
            finally:
                server.stop()
    add_ratios(levels)
    date = dt.date.today().isoformat()
    meta = {"date": date, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "model": model.name, "slots": slots, "ctx": ctx, "threads": args.threads,
            "max_tokens": args.max_tokens, "python": platform.python_version()}
    out = RESULTS / f"{date}-engine.json"
    out.write_text(json.dumps({"meta": meta, "levels": [asdict(lv) for lv in levels]},
                              indent=1))
    png = RESULTS / f"{date}-engine.png"
    chart(levels, png)
    table = markdown(levels, meta)
    t = Table(title="engine benchmark")
    for col in ("c", "server", "tok/s", "x ls", "TTFT p50", "TTFT p99", "ITL p50", "ITL p99"):
        t.add_column(col)
    for lv in levels:
        t.add_row(str(lv.concurrency), lv.server, f"{lv.tokens_per_s:.1f}",
                  f"{lv.ratios.get('tokens_per_s', float('nan')):.2f}", f"{lv.ttft_p50_ms:.0f}",
                  f"{lv.ttft_p99_ms:.0f}", f"{lv.itl_p50_ms:.1f}", f"{lv.itl_p99_ms:.1f}")
    console.print(t)
    console.print(f"saved {out.relative_to(ROOT)} and {png.relative_to(ROOT)}")
    if not args.no_readme:
        update_readme(table, png)


if __name__ == "__main__":
    main()
