"""Engine benchmark: oasis vs llama-server vs llama-cpp-python's server, same run, same GGUF.

N concurrent streaming chat clients against each server, all servers started up front with the
same slot count, context and threads (a server that is not being measured idles), through the
workloads one after the other:

- fixed: llama-server's sampler stated on every request and the end tokens banned, so every
  answer has exactly --max-tokens tokens;
- openai: what an OpenAI client sends by default (a temperature and a seed, nothing else), so
  answers end at the model's end token, at most --openai-max-tokens.

A shared VM drifts by 10% or so over minutes, so the servers are measured side by side: each
(workload, concurrency) level runs --rounds rounds, each round on every server, in the order
reversed every other round (A, B; B, A; ...), so that drift hits both sides alike. Tokens/s is
the median over the rounds (each round's value is kept, and their spread (max - min) / median
shows the noise); TTFT and ITL percentiles are over the requests of all rounds. Ratios to
llama-server in the same workload and level are then median over median, and for the fixed
workload tokens/s over llama.cpp's llama-batched-bench generation speed at the same parallelism
(the engine alone, without HTTP: bench/batched_bench.py, run before any server starts). Saves
bench/results/<date>-engine.json and a PNG chart and rewrites the README's tables.

    python -m bench.engine [--workload fixed,openai] [--concurrency 1,4,8,16,32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench import batched_bench
from bench.llama_server import build as build_llama_server
from oasis.models.registry import bundled_model_path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CACHE = ROOT / "bench" / ".cache"
console = Console()

PROMPTS = [
    "Explain how a bicycle works.",
    "Write a short story about a lighthouse keeper.",
    "What are the benefits of drinking water?",
    "Describe the water cycle.",
    "How do airplanes stay in the air?",
    "Give me tips for learning a new language.",
    "What is photosynthesis?",
    "Describe a busy market in the morning.",
    "Why is the sky blue?",
    "How does a computer store information?",
    "Write a letter to a friend about your holiday.",
    "What makes a good teacher?",
    "Explain the rules of chess briefly.",
    "Describe the life of a honeybee.",
    "How do volcanoes form?",
    "What should I pack for a camping trip?",
]
NO_END = {"0": -100, "2": -100}  # <|endoftext|>, <|im_end|>: fixed-length answers
# The same sampler chain on every server (llama-server's defaults, stated explicitly).
SAMPLING = {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "seed": 1}
# What an OpenAI client sends: no top_k, top_p, min_p or logit_bias, so each server's defaults.
OPENAI = {"temperature": 0.8, "seed": 1}
# Servers whose streams carry no usage chunk even with stream_options.include_usage:
# llama-cpp-python rebuilds the chat stream from completion chunks without it
# (llama_chat_format._convert_text_completion_chunks_to_chat). Their tokens are counted one per
# content chunk (it streams about one token per chunk).
NO_STREAM_USAGE = {"llama-cpp-python"}
SERVER_NAMES = ["oasis", "llama-server", "llama-cpp-python"]


@dataclass(frozen=True)
class Workload:
    name: str
    max_tokens: int
    prompts: tuple[str, ...]
    body: dict[str, Any]  # the request's fields besides model, messages, max_tokens, stream
    exact: bool  # every answer must have exactly max_tokens tokens
    about: str  # one line for the README


def make_workloads(max_tokens: int, openai_max_tokens: int) -> dict[str, Workload]:
    fixed = Workload(
        name="fixed",
        max_tokens=max_tokens,
        prompts=tuple(PROMPTS),
        body={"logit_bias": NO_END, **SAMPLING},
        exact=True,
        about="llama-server's sampler stated on every request (temperature 0.8, top_k 40, "
        "top_p 0.95, min_p 0.05, seed 1) and the end tokens banned: every answer is exactly "
        f"{max_tokens} tokens; {len(PROMPTS)} prompts.",
    )
    openai = Workload(
        name="openai",
        max_tokens=openai_max_tokens,
        prompts=tuple(PROMPTS[:8]),
        body=OPENAI,
        exact=False,
        about="an OpenAI client's request: temperature 0.8 and seed 1 only (no top_k, top_p, "
        "min_p or logit_bias: each server's own defaults); answers end at the model's end "
        f"token, at most {openai_max_tokens} tokens; 8 prompts.",
    )
    return {fixed.name: fixed, openai.name: openai}


@dataclass
class RequestResult:
    ttft: float
    itls: list[float]
    tokens: int
    ok: bool
    error: str = ""


@dataclass
class Round:
    """One server's run of one level: its requests and its wall time."""

    results: list[RequestResult]
    wall_s: float

    @property
    def tokens_per_s(self) -> float:
        tokens = sum(r.tokens for r in self.results if r.ok)
        return round(tokens / self.wall_s, 2) if self.wall_s else 0.0


@dataclass
class LevelResult:
    """One server at one level of one workload over all rounds: tokens/s is the median of the
    rounds' (listed in ``rounds_tokens_per_s``), ``spread`` their (max - min) / median; the
    counts and wall time are sums, the latency percentiles over all rounds' requests."""

    workload: str
    server: str
    concurrency: int
    requests: int
    failed: int
    wall_s: float
    output_tokens: int
    tokens_per_answer: float
    tokens_per_s: float
    rounds_tokens_per_s: list[float]
    spread: float
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
            self.proc = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                cwd=ROOT,
            )
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
    llama_server = build_llama_server(CACHE / "build.log")
    p1, p2, p3 = free_port(), free_port(), free_port()
    bin_dir = Path(sys.executable).parent
    batch = batched_bench.BATCH  # the same batch size for the engine limit
    llama_server_args = (
        f"--host 127.0.0.1 --port {p1} -np {slots} -c {ctx} -t {threads} -tb {threads} "
        f"-b {batch} -ub {batch} --no-webui"
    )
    oasis_args = (
        f"serve --port {p2} --parallel {slots} --ctx-size {ctx} --threads {threads} "
        "--alias bench --no-auth --log-level warning"
    )
    lcpp_args = (
        f"--host 127.0.0.1 --port {p3} --n_ctx {lcpp_ctx} --n_threads {threads} "
        f"--n_threads_batch {threads} --n_batch {batch} --model_alias bench "
        "--interrupt_requests False"
    )
    lcpp = [sys.executable, "-m", "llama_cpp.server", "--model", str(model)]
    return [
        Server(
            "llama-server", [str(llama_server), "-m", str(model), *llama_server_args.split()], p1
        ),
        Server("oasis", [str(bin_dir / "oasis"), *oasis_args.split()], p2),
        Server("llama-cpp-python", [*lcpp, *lcpp_args.split()], p3),
    ]


async def one_request(
    http: httpx.AsyncClient, url: str, prompt: str, workload: Workload, usage_required: bool
) -> RequestResult:
    body = {
        "model": "bench",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": workload.max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        **workload.body,
    }
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
    end = time.perf_counter()
    # Token count from usage where the server sends it (a chunk may carry more than one
    # token, or none while a multi-byte character is incomplete), else one per chunk.
    n = usage_tokens if usage_tokens is not None else tokens
    if workload.exact:
        if n != workload.max_tokens:
            return RequestResult(0, [], n, False, f"{n} tokens instead of {workload.max_tokens}")
        if first is None:
            return RequestResult(0, [], n, False, "no content")
    elif usage_required and usage_tokens is None:
        return RequestResult(0, [], n, False, "no usage chunk")
    # An answer that ends at once (no content) has its first token when the stream ends.
    return RequestResult((first or end) - t0, itls, n, True)


async def run_level(
    server: Server,
    workload: Workload,
    concurrency: int,
    n_requests: int,
    progress: Progress,
    task: Any,
) -> Round:
    url = f"http://127.0.0.1:{server.port}/v1/chat/completions"
    usage_required = server.name not in NO_STREAM_USAGE
    queue: asyncio.Queue[str] = asyncio.Queue()
    for i in range(n_requests):
        queue.put_nowait(workload.prompts[i % len(workload.prompts)])
    results: list[RequestResult] = []
    limits = httpx.Limits(max_connections=concurrency + 4)

    async with httpx.AsyncClient(timeout=600, limits=limits) as http:

        async def worker() -> None:
            while True:
                try:
                    prompt = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                result = await one_request(http, url, prompt, workload, usage_required)
                if result.error.startswith("RemoteProtocolError") and not result.tokens:
                    # a kept-alive connection the server had closed (llama-server does, now
                    # and then, between two requests): nothing was asked yet, so ask again
                    result = await one_request(http, url, prompt, workload, usage_required)
                results.append(result)
                progress.advance(task)

        t0 = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        wall = time.perf_counter() - t0
    for err in sorted({r.error for r in results if not r.ok}):
        console.print(
            f"[yellow]{server.name} {workload.name} x{concurrency}: failed: {err}[/yellow]"
        )
    return Round(results, wall)


def summarize(workload: str, server: str, concurrency: int, rounds: list[Round]) -> LevelResult:
    """The rounds of one server at one level as one result (see LevelResult)."""
    results = [r for rd in rounds for r in rd.results]
    ok = [r for r in results if r.ok]
    itls = [x for r in ok for x in r.itls]
    tokens = sum(r.tokens for r in ok)
    rates = [rd.tokens_per_s for rd in rounds]
    median = statistics.median(rates)
    return LevelResult(
        workload=workload,
        server=server,
        concurrency=concurrency,
        requests=len(results),
        failed=len(results) - len(ok),
        wall_s=round(sum(rd.wall_s for rd in rounds), 3),
        output_tokens=tokens,
        tokens_per_answer=round(tokens / len(ok), 1) if ok else 0.0,
        tokens_per_s=round(median, 2),
        rounds_tokens_per_s=rates,
        spread=ratio(max(rates) - min(rates), median),
        ttft_p50_ms=round(pct([r.ttft for r in ok], 50) * 1000, 1),
        ttft_p99_ms=round(pct([r.ttft for r in ok], 99) * 1000, 1),
        itl_p50_ms=round(pct(itls, 50) * 1000, 2),
        itl_p99_ms=round(pct(itls, 99) * 1000, 2),
    )


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


def add_ratios(levels: list[LevelResult], limits: dict[str, dict[int, float]]) -> None:
    """Ratios to llama-server in the same workload and concurrency, and to the engine limit."""
    ref = {(lv.workload, lv.concurrency): lv for lv in levels if lv.server == "llama-server"}
    for lv in levels:
        base = ref.get((lv.workload, lv.concurrency))
        if base is not None:
            lv.ratios = {
                "tokens_per_s": ratio(lv.tokens_per_s, base.tokens_per_s),
                "ttft_p50": ratio(lv.ttft_p50_ms, base.ttft_p50_ms),
                "ttft_p99": ratio(lv.ttft_p99_ms, base.ttft_p99_ms),
                "itl_p50": ratio(lv.itl_p50_ms, base.itl_p50_ms),
                "itl_p99": ratio(lv.itl_p99_ms, base.itl_p99_ms),
            }
        limit = limits.get(lv.workload, {}).get(lv.concurrency)
        if limit:
            lv.ratios["limit"] = ratio(lv.tokens_per_s, limit)


def num(value: float | None, spec: str) -> str:
    """``value`` formatted with ``spec``, or "-" where there is none."""
    return "-" if value is None or value != value else format(value, spec)


def percent(value: float) -> str:
    """``value`` as a whole percentage, or "-" where there is none."""
    return "-" if value != value else f"{value * 100:.0f}%"


def workload_table(
    levels: list[LevelResult], limit: dict[int, float] | None, lengths: bool
) -> list[str]:
    """One workload's markdown table; ``x limit`` if there is a limit, tokens per answer if
    ``lengths`` (answers of varying length)."""
    cols = ["concurrency", "server", "tokens/s", "spread", "x llama-server"]
    cols += (["x limit"] if limit else []) + (["tokens/answer"] if lengths else [])
    cols += ["TTFT p50 / p99 ms", "ITL p50 / p99 ms", "x llama-server (TTFT p99)"]
    lines = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    for lv in sorted(levels, key=lambda x: (x.concurrency, x.server != "oasis", x.server)):
        r = lv.ratios
        cells = [
            str(lv.concurrency),
            lv.server,
            f"{lv.tokens_per_s:.1f}",
            percent(lv.spread),
            num(r.get("tokens_per_s"), ".2f"),
        ]
        cells += [num(r.get("limit"), ".2f")] if limit else []
        cells += [f"{lv.tokens_per_answer:.0f}"] if lengths else []
        cells += [
            f"{num(lv.ttft_p50_ms, '.0f')} / {num(lv.ttft_p99_ms, '.0f')}",
            f"{num(lv.itl_p50_ms, '.1f')} / {num(lv.itl_p99_ms, '.1f')}",
            num(r.get("ttft_p99"), ".2f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(
    levels: list[LevelResult],
    meta: dict[str, Any],
    workloads: list[Workload],
    limits: dict[str, dict[int, float]],
) -> str:
    lines = [
        f"Run {meta['date']} on {meta['machine']}: {meta['model']}, {meta['slots']} slots, "
        f"{meta['threads']} threads, all servers started up front. Each level ran "
        f"{meta['rounds']} rounds, each round on every server, the order reversed every other "
        "round; tokens/s is the median over the rounds and `spread` their (max - min) / "
        "median (the machine's noise); latencies are over the requests of all rounds. Ratios "
        "are to llama-server in the same workload and level, median over median (tokens/s: "
        "higher is better; latencies: lower is better).",
    ]
    bb = meta.get("batched_bench") or {}
    for wl in workloads:
        limit = limits.get(wl.name)
        about = f"**{wl.name}**: {wl.about}"
        if limit:
            speeds = ", ".join(f"{c}: {v:.0f}" for c, v in sorted(limit.items()))
            about += (
                " `x limit`: tokens/s over llama-batched-bench's generation speed at the same "
                "parallelism (S_TG: the same llama.cpp with the same flags, without HTTP, "
                f"scheduling or sampling; {bb.get('npp')} prompt and {bb.get('ntg')} generated "
                f"tokens per sequence): {speeds} tokens/s."
            )
        sub = [lv for lv in levels if lv.workload == wl.name]
        lines += ["", about, "", *workload_table(sub, limit, lengths=not wl.exact)]
    return "\n".join(lines)


def chart(
    levels: list[LevelResult],
    workloads: list[Workload],
    limits: dict[str, dict[int, float]],
    path: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in SERVER_NAMES if any(lv.server == n for lv in levels)]
    width = 0.8 / len(names)
    fig, axes = plt.subplots(len(workloads), 3, figsize=(15, 4.5 * len(workloads)), squeeze=False)
    for row, wl in zip(axes, workloads, strict=True):
        sub = [lv for lv in levels if lv.workload == wl.name]
        conc = sorted({lv.concurrency for lv in sub})
        by = {(lv.server, lv.concurrency): lv for lv in sub}
        centers = [x + width * (len(names) - 1) / 2 for x in range(len(conc))]
        for ax, attr, title in (
            (row[0], "tokens_per_s", "output tokens/s, median of rounds (higher is better)"),
            (row[1], "ttft_p99_ms", "time to first token p99, ms (lower is better)"),
            (row[2], "itl_p50_ms", "inter-token latency p50, ms (lower is better)"),
        ):
            for i, name in enumerate(names):
                vals = [getattr(by[name, c], attr) if (name, c) in by else 0 for c in conc]
                xs = [x + i * width for x in range(len(conc))]
                kw: dict[str, Any] = {}
                if attr == "tokens_per_s":  # the median, whiskers to the rounds' min and max
                    rs = [by[name, c].rounds_tokens_per_s if (name, c) in by else [0] for c in conc]
                    lo = [max(0, v - min(r)) for v, r in zip(vals, rs, strict=True)]
                    hi = [max(0, max(r) - v) for v, r in zip(vals, rs, strict=True)]
                    kw = {"yerr": [lo, hi], "capsize": 2}
                ax.bar(xs, vals, width, label=name, **kw)
            ax.set_xticks(centers, [str(c) for c in conc])
            ax.set_xlabel("concurrent streams")
            ax.set_title(f"{wl.name}: {title}", fontsize=10)
            ax.set_yscale("log" if attr == "ttft_p99_ms" else "linear")
        limit = limits.get(wl.name, {})
        xs = [x for x, c in zip(centers, conc, strict=True) if c in limit]
        if xs:
            ys = [limit[c] for c in conc if c in limit]
            row[0].plot(xs, ys, "k--o", label="llama-batched-bench (engine limit)")
        row[0].legend(fontsize=8)
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


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--workload", default="fixed,openai", help="run in this order (default: %(default)s)"
    )
    ap.add_argument("--concurrency", default="1,4,8,16,32", help="slots = the largest")
    ap.add_argument("--max-tokens", type=int, default=128, help="answer length (fixed)")
    ap.add_argument("--openai-max-tokens", type=int, default=96, help="max_tokens (openai)")
    ap.add_argument("--requests-per-stream", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="per level (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--servers", default="llama-server,oasis,llama-cpp-python")
    ap.add_argument("--no-limit", action="store_true", help="skip llama-batched-bench")
    ap.add_argument("--no-readme", action="store_true")
    args = ap.parse_args()
    known = make_workloads(args.max_tokens, args.openai_max_tokens)
    if unknown := [n for n in args.workload.split(",") if n not in known]:
        ap.error(f"unknown workload {', '.join(unknown)} (known: {', '.join(known)})")
    args.workloads = [known[n] for n in args.workload.split(",")]
    args.levels = list(dict.fromkeys(int(c) for c in args.concurrency.split(",")))
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    return args


def run_servers(
    chosen: list[Server],
    workloads: list[Workload],
    levels_c: list[int],
    per_stream: int,
    rounds: int,
) -> list[LevelResult]:
    """Every server started and warmed up first; then for every workload and concurrency,
    ``rounds`` rounds, each on every server, in the order reversed every other round; every
    server stopped at the end, whatever happens."""
    log = CACHE / "servers.log"
    n_requests = {c: max(c * per_stream, 8) for c in levels_c}
    total = sum(n_requests[c] for c in levels_c) * len(workloads) * len(chosen) * rounds
    warm_up = replace(workloads[0], max_tokens=8)
    measured: dict[tuple[str, str, int], list[Round]] = {}
    started: list[Server] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("requests", total=total)
        hidden = progress.add_task("warm-up", total=2 * len(chosen), visible=False)
        try:
            for server in chosen:
                progress.update(task, description=f"{server.name}: starting")
                started.append(server)  # before start(): one that never answers is stopped too
                server.start(log)
            for server in chosen:
                progress.update(task, description=f"{server.name}: warm-up")
                asyncio.run(run_level(server, warm_up, 2, 2, progress, hidden))
            for wl in workloads:
                for c in levels_c:
                    for r in range(rounds):
                        for server in chosen if r % 2 == 0 else chosen[::-1]:
                            progress.update(
                                task,
                                description=f"{wl.name} x{c} round {r + 1}/{rounds}: {server.name}",
                            )
                            level = run_level(server, wl, c, n_requests[c], progress, task)
                            key = (wl.name, server.name, c)
                            measured.setdefault(key, []).append(asyncio.run(level))
        finally:
            for server in started:
                server.stop()
    return [summarize(wl, name, c, rds) for (wl, name, c), rds in measured.items()]


def rich_table(levels: list[LevelResult]) -> Table:
    t = Table(title="engine benchmark")
    for col in ("workload", "c", "server", "tok/s", "spread", "x ls", "x limit"):
        t.add_column(col)
    for col in ("TTFT p50", "TTFT p99", "ITL p50", "ITL p99"):
        t.add_column(col)
    for lv in levels:
        r = lv.ratios
        t.add_row(
            lv.workload,
            str(lv.concurrency),
            lv.server,
            f"{lv.tokens_per_s:.1f}",
            percent(lv.spread),
            num(r.get("tokens_per_s"), ".2f"),
            num(r.get("limit"), ".2f"),
            num(lv.ttft_p50_ms, ".0f"),
            num(lv.ttft_p99_ms, ".0f"),
            num(lv.itl_p50_ms, ".1f"),
            num(lv.itl_p99_ms, ".1f"),
        )
    return t


def engine_limit(
    model: Path, threads: int, ctx: int, workload: Workload, levels_c: list[int]
) -> tuple[dict[int, float], dict[str, Any]]:
    """llama-batched-bench's generation speed at each concurrency, and its parameters."""
    npp, ntg, npl = batched_bench.PROMPT_TOKENS, workload.max_tokens, sorted(set(levels_c))
    log = CACHE / "batched-bench.log"
    limit = batched_bench.run(model, threads, ctx, npp, ntg, npl, log=log)
    args = batched_bench.flags(threads, ctx, npp, ntg, npl)
    return limit, {"workload": workload.name, "npp": npp, "ntg": ntg, "npl": npl, "args": args}


def main() -> None:
    args = parse_args()
    workloads: list[Workload] = args.workloads
    slots = max(args.levels)
    ctx = slots * 1024
    model = bundled_model_path()
    RESULTS.mkdir(parents=True, exist_ok=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    # The engine limit: llama-batched-bench at the fixed workload's lengths.
    fixed = next((wl for wl in workloads if wl.name == "fixed" and not args.no_limit), None)
    with console.status("building llama.cpp's tools (first run only: several minutes)"):
        all_servers = servers(model, slots, ctx, args.threads, 2048)
        if fixed:
            build_llama_server(CACHE / "build.log", target=batched_bench.TARGET)
    limits: dict[str, dict[int, float]] = {}
    bb_meta = None
    if fixed:
        # Before any server starts, so that nothing else runs on the cores.
        with console.status(f"{batched_bench.TARGET}: the engine limit without HTTP"):
            limits[fixed.name], bb_meta = engine_limit(model, args.threads, ctx, fixed, args.levels)
    chosen = [s for s in all_servers if s.name in args.servers.split(",")]
    levels = run_servers(chosen, workloads, args.levels, args.requests_per_stream, args.rounds)
    add_ratios(levels, limits)
    date = dt.date.today().isoformat()
    meta = {
        "date": date,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "model": model.name,
        "slots": slots,
        "ctx": ctx,
        "threads": args.threads,
        "requests_per_stream": args.requests_per_stream,
        "rounds": args.rounds,
        "order": "every server each round, reversed every other round",
        "workloads": {
            wl.name: {
                "max_tokens": wl.max_tokens,
                "prompts": len(wl.prompts),
                "exact_length": wl.exact,
                "body": wl.body,
            }
            for wl in workloads
        },
        "batched_bench": bb_meta,
        "python": platform.python_version(),
    }
    out = RESULTS / f"{date}-engine.json"
    results = {"meta": meta, "levels": [asdict(lv) for lv in levels], "limit": limits}
    out.write_text(json.dumps(results, indent=1))
    png = RESULTS / f"{date}-engine.png"
    chart(levels, workloads, limits, png)
    console.print(rich_table(levels))
    console.print(f"saved {out.relative_to(ROOT)} and {png.relative_to(ROOT)}")
    if not args.no_readme:
        update_readme(markdown(levels, meta, workloads, limits), png)


if __name__ == "__main__":
    main()
