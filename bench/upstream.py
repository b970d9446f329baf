"""Upstream benchmark: what oasis's routing to upstream replicas costs, against LiteLLM's router.

Two fake OpenAI servers (``tests/fake_upstream.py``, 4 tokens per answer, no model behind them)
are the replicas of every contender, so only the forwarding path is measured. In the same run,
on the same machine:

- ``direct``: the load generator straight at one fake upstream (what the upstream alone costs);
- ``oasis``: ``oasis serve`` with an upstream model over both replicas (least_outstanding), a
  database key (SQLite), limits in memory, usage ledger on: the real gateway path;
- ``oasis --no-auth``: the same without keys, limits or metering (the routing alone);
- ``litellm``: LiteLLM's proxy (``litellm[proxy]``, in its own virtualenv under bench/.cache)
  with a master key, two deployments of one model name, ``least-busy`` routing.

Each gets a warm-up, sequential requests (latency p50/p99; "added" is the difference to
``direct``) and then ``--concurrency`` clients for ``--seconds`` (requests/s). Then, with fake
upstreams that stream 64 chunks 5 ms apart, ``--streams`` streams one after another straight
and through oasis: the gaps between consecutive chunks as a client receives them show whether
oasis relays each chunk as it arrives. Saves bench/results/<date>-upstream.json and a PNG
chart, and rewrites the README's table.

    python -m bench.upstream [--seconds 10] [--concurrency 32] [--sequential 400] [--streams 50]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import json
import os
import platform
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench import loadgen
from bench.engine import RESULTS, ROOT, Server, console, free_port, pct, replace_readme_block
from bench.gateway import CACHE, LITELLM_VERSION, litellm_bin, make_key, oasis_cmd

MODEL = "up"  # the model name clients ask oasis and LiteLLM for
UPSTREAM_MODEL = "fake"
TOKENS = 4
STREAM_TOKENS, CHUNK_DELAY = 64, 0.005
MASTER = "sk-bench-master"
WARMUP = 50
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": TOKENS, "temperature": 0}
TARGET_ADDED_P50_MS, TARGET_X_LITELLM = 1.0, 5.0
CONTENDERS = ("direct", "oasis", "oasis --no-auth", "litellm")


@dataclass
class Result:
    server: str
    sequential: int
    sequential_failed: int
    p50_ms: float
    p99_ms: float
    added_p50_ms: float
    added_p99_ms: float
    concurrency: int
    seconds: float
    requests: int
    failed: int
    rps: float
    replica_requests: list[int]  # generation requests each fake upstream saw, all phases


@dataclass
class StreamResult:
    server: str
    streams: int
    failed: int
    gaps: int
    gap_p50_ms: float
    gap_p99_ms: float
    added_gap_p50_ms: float
    added_gap_p99_ms: float
    first_chunk_p50_ms: float


@dataclass
class Contender:
    name: str
    server: Server
    key: str
    model: str
    managed: bool = True  # started and stopped here (direct's upstream runs throughout)


def fake_upstream(name: str, tokens: int, chunk_delay: float = 0.0) -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "tests.fake_upstream", "--port", str(port), "--name", name,
            "--tokens", str(tokens), "--chunk-delay", str(chunk_delay)]
    return Server(f"fake upstream {name}", argv, port, health="/health")


def replica_urls(upstreams: list[Server]) -> list[str]:
    return [f"http://127.0.0.1:{u.port}/v1" for u in upstreams]


def oasis_server(name: str, work: Path, upstreams: list[Server], no_auth: bool,
                 ) -> tuple[Server, dict[str, str]]:
    """An oasis with one upstream model over ``upstreams``; its own data dir and oasis.toml."""
    work.mkdir(parents=True, exist_ok=True)
    replicas = ", ".join(f'"{u}"' for u in replica_urls(upstreams))
    toml = work / "oasis.toml"
    toml.write_text(
        f'[[models]]\nid = "{MODEL}"\nbackend = "upstream"\nupstream_model = "{UPSTREAM_MODEL}"\n'
        f'replicas = [{replicas}]\nrouting = "least_outstanding"\n')
    env = {"OASIS_LOG_LEVEL": "warning", "OASIS_DATA_DIR": str(work / "data"),
           "OASIS_CONFIG": str(toml)}
    if not no_auth:
        env["OASIS_PRICES"] = '{"*": {"input": 0.5, "output": 1.5}}'
    port = free_port()
    args = ["serve", "--port", str(port)] + (["--no-auth"] if no_auth else [])
    return Server(name, oasis_cmd(*args), port, env=env, health="/health"), env


def litellm_server(work: Path, upstreams: list[Server]) -> Server:
    with console.status(f"installing litellm[proxy]=={LITELLM_VERSION} (first run only)"):
        exe = litellm_bin()
    work.mkdir(parents=True, exist_ok=True)
    cfg = work / "litellm.yaml"
    deployments = "".join(
        f"  - model_name: {MODEL}\n    litellm_params:\n      model: openai/{UPSTREAM_MODEL}\n"
        f"      api_base: {url}\n      api_key: x\n" for url in replica_urls(upstreams))
    cfg.write_text(f"model_list:\n{deployments}router_settings:\n  routing_strategy: least-busy\n"
                   f"general_settings:\n  master_key: {MASTER}\n")
    port = free_port()
    return Server("litellm", [str(exe), "--config", str(cfg), "--host", "127.0.0.1",
                              "--port", str(port), "--num_workers", "1"], port,
                  env={"LITELLM_LOCAL_MODEL_COST_MAP": "True"}, health="/health/liveliness")


def upstream_stats(upstreams: list[Server], reset: bool = False) -> list[int]:
    """Generation requests each fake upstream has seen (and zero the counters if ``reset``)."""
    out = []
    for u in upstreams:
        base = f"http://127.0.0.1:{u.port}"
        r = (httpx.post(f"{base}/control/reset-stats", json={}, timeout=5) if reset
             else httpx.get(f"{base}/control", timeout=5))
        r.raise_for_status()
        out.append(int(r.json()["requests"]))
    return out


# -- streaming ------------------------------------------------------------------------------
async def one_stream(port: int, raw: bytes) -> tuple[float, list[float]] | None:
    """One streamed chat on a raw socket: (seconds to the first text chunk, arrival times of
    every text chunk), or None if it failed. A chunk's time is when its bytes were read."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.perf_counter()
    times: list[float] = []
    buf = b""

    def events(data: bytes, now: float) -> bool:
        """Split complete SSE events out of the buffer; True at [DONE]."""
        nonlocal buf
        buf += data.replace(b"\r\n", b"\n")
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    return True
                obj = json.loads(payload)
                if "error" in obj:
                    raise ValueError(obj["error"])
                for choice in obj.get("choices") or ():
                    if (choice.get("delta") or {}).get("content"):
                        times.append(now)
                        break
        return False

    try:
        writer.write(raw)
        head = await reader.readuntil(b"\r\n\r\n")
        if int(head.split(b" ", 2)[1]) != 200:
            return None
        chunked = b"transfer-encoding: chunked" in head.lower()
        while True:
            if chunked:
                size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
                data = (await reader.readexactly(size + 2))[:-2]
                if size == 0:
                    break
            else:
                data = await reader.read(65536)
                if not data:
                    break
            if events(data, time.perf_counter()):
                break
    except (OSError, ValueError, asyncio.IncompleteReadError):
        return None
    finally:
        writer.close()
    if len(times) < 2:
        return None
    return times[0] - t0, times


async def streams(port: int, key: str, model: str, n: int, on_done: Any) -> tuple[
        list[float], list[float], int]:
    """``n`` streams one after another: (gaps between chunks s, first-chunk s, failures)."""
    body = {**BODY, "model": model, "max_tokens": STREAM_TOKENS, "stream": True}
    raw = loadgen.prepare("127.0.0.1", port, "/v1/chat/completions", body, key)
    gaps: list[float] = []
    firsts: list[float] = []
    failed = 0
    for _ in range(n):
        got = await one_stream(port, raw)
        if got is None:
            failed += 1
        else:
            first, times = got
            firsts.append(first)
            gaps.extend(b - a for a, b in itertools.pairwise(times))
        on_done()
    return gaps, firsts, failed


# -- report ---------------------------------------------------------------------------------
def chart(results: list[Result], gaps: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.server for r in results]
    x = list(range(len(names)))
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(14, 4))
    a.bar(names, [r.rps for r in results], color="#3b7dd8")
    a.set_title("requests/s (higher is better)")
    a.set_xticks(x, names, rotation=15)
    b.bar([i - 0.2 for i in x], [r.added_p50_ms for r in results], width=0.4, label="p50")
    b.bar([i + 0.2 for i in x], [r.added_p99_ms for r in results], width=0.4, label="p99")
    b.axhline(0, color="black", linewidth=0.6)
    b.set_xticks(x, names, rotation=15)
    b.set_yscale("symlog", linthresh=1)
    b.set_title("added latency vs direct, one client (ms)")
    b.legend()
    right = 3 * CHUNK_DELAY * 1000
    for name, values in gaps.items():
        if values:
            ms = sorted(v * 1000 for v in values)
            c.plot(ms, [(i + 1) / len(ms) for i in range(len(ms))], label=name)
            right = max(right, 1.2 * pct(ms, 99.5))
    c.set_xlim(0, right)  # the last half-percent of gaps (scheduler noise) off the axis
    c.axvline(CHUNK_DELAY * 1000, color="grey", linestyle=":", linewidth=0.8)
    c.set_xlabel("gap between chunks (ms)")
    c.set_ylabel("fraction of gaps")
    c.set_title(f"stream chunk gaps (upstream sends every {CHUNK_DELAY * 1000:g} ms)")
    c.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def targets(results: list[Result]) -> list[str]:
    by = {r.server: r for r in results}
    lite = by.get("litellm")
    out = []
    for name in ("oasis", "oasis --no-auth"):
        r = by.get(name)
        if r is None:
            continue
        met = "met" if r.added_p50_ms <= TARGET_ADDED_P50_MS else "NOT met"
        line = (f"{name}: added p50 {r.added_p50_ms:+.2f} ms "
                f"(target <= {TARGET_ADDED_P50_MS:g} ms: {met})")
        if lite is not None and lite.rps:
            ratio = r.rps / lite.rps
            met = "met" if ratio >= TARGET_X_LITELLM else "NOT met"
            line += f"; {ratio:.1f}x LiteLLM's requests/s (target >= {TARGET_X_LITELLM:g}x: {met})"
        out.append(line)
    return out


def stream_line(stream: list[StreamResult]) -> str | None:
    by = {s.server: s for s in stream}
    d, o = by.get("direct"), by.get("oasis")
    if d is None or o is None:
        return None
    return (f"Streams ({o.streams} x {STREAM_TOKENS} chunks, {CHUNK_DELAY * 1000:g} ms apart "
            f"upstream): chunk gaps direct p50 {d.gap_p50_ms:.2f} / p99 {d.gap_p99_ms:.2f} ms, "
            f"oasis p50 {o.gap_p50_ms:.2f} / p99 {o.gap_p99_ms:.2f} ms: added inter-chunk "
            f"p50 {o.added_gap_p50_ms:+.3f} ms, p99 {o.added_gap_p99_ms:+.3f} ms; first chunk "
            f"p50 {d.first_chunk_p50_ms:.2f} ms direct, {o.first_chunk_p50_ms:.2f} ms oasis.")


def markdown(results: list[Result], stream: list[StreamResult], meta: dict[str, Any],
             png: Path) -> str:
    by = {r.server: r for r in results}
    lite = by.get("litellm")
    lines = [
        f"{meta['date']}, {meta['machine']}, two fake upstreams ({TOKENS} tokens per answer), "
        f"{meta['sequential']} sequential requests, then {meta['concurrency']} clients for "
        f"{meta['seconds']} s:",
        "",
        "| contender | p50 ms | p99 ms | added p50 ms | added p99 ms | requests/s | failed "
        "| x litellm |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        ratio = f"{r.rps / lite.rps:.1f}x" if lite and lite.rps else "-"
        lines.append(f"| {r.server} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.added_p50_ms:+.2f} | "
                     f"{r.added_p99_ms:+.2f} | {r.rps:.0f} | {r.failed} | {ratio} |")
    extra = [stream_line(stream), *targets(results)]
    lines += ["", *[f"{e}  " for e in extra if e]]
    lines += ["", f"![upstream benchmark]({png.relative_to(ROOT)})"]
    return "\n".join(lines)


def print_tables(results: list[Result], stream: list[StreamResult]) -> None:
    lite = next((r for r in results if r.server == "litellm"), None)
    t = Table(title="upstream benchmark")
    for col in ("contender", "p50 ms", "p99 ms", "added p50", "added p99", "req/s", "failed",
                "x LiteLLM req/s", "requests per replica"):
        t.add_column(col)
    for r in results:
        ratio = f"{r.rps / lite.rps:.1f}x" if lite and lite.rps else "-"
        t.add_row(r.server, f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", f"{r.added_p50_ms:+.2f}",
                  f"{r.added_p99_ms:+.2f}", f"{r.rps:.0f}", str(r.failed + r.sequential_failed),
                  ratio, " / ".join(map(str, r.replica_requests)))
    console.print(t)
    if stream:
        s = Table(title="streams: gaps between chunks as the client receives them")
        for col in ("contender", "streams", "failed", "gaps", "p50 ms", "p99 ms", "added p50",
                    "added p99", "first chunk p50 ms"):
            s.add_column(col)
        for x in stream:
            s.add_row(x.server, str(x.streams), str(x.failed), str(x.gaps),
                      f"{x.gap_p50_ms:.3f}", f"{x.gap_p99_ms:.3f}", f"{x.added_gap_p50_ms:+.3f}",
                      f"{x.added_gap_p99_ms:+.3f}", f"{x.first_chunk_p50_ms:.2f}")
        console.print(s)
    line = stream_line(stream)
    if line:
        console.print(line)
    for line in targets(results):
        console.print(line)


# -- the run ---------------------------------------------------------------------------------
def measure(c: Contender, args: argparse.Namespace, progress: Progress,
            upstreams: list[Server], direct_lat: list[float]) -> tuple[Result, list[float]]:
    host, port = "127.0.0.1", c.server.port
    raw = loadgen.prepare(host, port, "/v1/chat/completions", {**BODY, "model": c.model}, c.key)
    upstream_stats(upstreams, reset=True)
    warm = progress.add_task(f"{c.name}: warm-up", total=WARMUP)
    asyncio.run(loadgen.sequential(host, port, raw, WARMUP, lambda: progress.advance(warm)))
    task = progress.add_task(f"{c.name}: sequential", total=args.sequential)
    lat = asyncio.run(loadgen.sequential(host, port, raw, args.sequential,
                                         lambda: progress.advance(task)))
    sat = progress.add_task(f"{c.name}: {args.concurrency} clients, {args.seconds:g} s",
                            total=None)
    ok, failed, wall = asyncio.run(loadgen.saturate(host, port, raw, args.concurrency,
                                                    args.seconds))
    progress.update(sat, total=1, completed=1)
    per_replica = upstream_stats(upstreams)
    base = lat if c.name == "direct" else direct_lat  # nan without a direct run
    p50, p99 = pct(lat, 50) * 1000, pct(lat, 99) * 1000
    return Result(
        server=c.name, sequential=len(lat), sequential_failed=args.sequential - len(lat),
        p50_ms=round(p50, 3), p99_ms=round(p99, 3),
        added_p50_ms=round(p50 - pct(base, 50) * 1000, 3),
        added_p99_ms=round(p99 - pct(base, 99) * 1000, 3), concurrency=args.concurrency,
        seconds=round(wall, 2), requests=ok, failed=failed, rps=round(ok / wall, 1),
        replica_requests=per_replica), lat


def stream_results(raw: dict[str, tuple[list[float], list[float], int]],
                   n: int) -> list[StreamResult]:
    base = raw.get("direct")
    out = []
    for name, (gaps, firsts, failed) in raw.items():
        p50, p99 = pct(gaps, 50) * 1000, pct(gaps, 99) * 1000
        b50 = pct(base[0], 50) * 1000 if base else float("nan")
        b99 = pct(base[0], 99) * 1000 if base else float("nan")
        out.append(StreamResult(
            server=name, streams=n, failed=failed, gaps=len(gaps), gap_p50_ms=round(p50, 4),
            gap_p99_ms=round(p99, 4), added_gap_p50_ms=round(p50 - b50, 4),
            added_gap_p99_ms=round(p99 - b99, 4),
            first_chunk_p50_ms=round(pct(firsts, 50) * 1000, 3)))
    return out


def start(server: Server, log: Path, running: list[Server]) -> None:
    running.append(server)  # before start: one that fails to come up is still stopped
    server.start(log)


def stop(server: Server, running: list[Server]) -> None:
    server.stop()
    if server in running:
        running.remove(server)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--sequential", type=int, default=400)
    ap.add_argument("--streams", type=int, default=50, help="streams per contender (0: none)")
    ap.add_argument("--servers", default=",".join(CONTENDERS),
                    help="comma-separated contenders")
    ap.add_argument("--no-readme", action="store_true")
    args = ap.parse_args()
    chosen = [s.strip() for s in args.servers.split(",")]
    unknown = set(chosen) - set(CONTENDERS)
    if unknown:
        ap.error(f"unknown contenders {sorted(unknown)}; choose among {', '.join(CONTENDERS)}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    log = CACHE / "upstream-servers.log"
    work = CACHE / f"upstream-{uuid.uuid4().hex[:8]}"
    # a SIGTERM (make killed, say) unwinds like Ctrl-C, so every child is stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    running: list[Server] = []
    results: list[Result] = []
    stream: list[StreamResult] = []
    gaps: dict[str, list[float]] = {}
    try:
        ups = [fake_upstream("a", TOKENS), fake_upstream("b", TOKENS)]
        plan: list[Contender] = []
        if "direct" in chosen:
            plan.append(Contender("direct", ups[0], "x", UPSTREAM_MODEL, managed=False))
        if "oasis" in chosen:
            server, env = oasis_server("oasis", work / "oasis", ups, no_auth=False)
            plan.append(Contender("oasis", server, make_key(env), MODEL))
        if "oasis --no-auth" in chosen:
            server, _ = oasis_server("oasis --no-auth", work / "off", ups, no_auth=True)
            plan.append(Contender("oasis --no-auth", server, "none", MODEL))
        if "litellm" in chosen:
            plan.append(Contender("litellm", litellm_server(work, ups), MASTER, MODEL))

        for u in ups:
            start(u, log, running)
        direct_lat: list[float] = []
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console) as progress:
            for c in plan:
                if c.managed:
                    progress.console.print(f"starting {c.name}")
                    start(c.server, log, running)
                try:
                    result, lat = measure(c, args, progress, ups, direct_lat)
                finally:
                    if c.managed:
                        stop(c.server, running)
                if c.name == "direct":
                    direct_lat = lat
                results.append(result)
            for u in ups:
                stop(u, running)

            wanted = [n for n in ("direct", "oasis") if n in chosen]
            if args.streams > 0 and wanted:
                sups = [fake_upstream("sa", STREAM_TOKENS, CHUNK_DELAY),
                        fake_upstream("sb", STREAM_TOKENS, CHUNK_DELAY)]
                for u in sups:
                    start(u, log, running)
                raw: dict[str, tuple[list[float], list[float], int]] = {}
                for name in wanted:
                    if name == "direct":
                        server, key, model, managed = sups[0], "x", UPSTREAM_MODEL, False
                    else:
                        server, env = oasis_server("oasis (streams)", work / "oasis-streams",
                                                   sups, no_auth=False)
                        key, model, managed = make_key(env), MODEL, True
                        progress.console.print("starting oasis (streams)")
                        start(server, log, running)
                    try:
                        warm = progress.add_task(f"{name}: stream warm-up", total=5)
                        asyncio.run(streams(server.port, key, model, 5,
                                            lambda t=warm: progress.advance(t)))
                        task = progress.add_task(f"{name}: streams", total=args.streams)
                        raw[name] = asyncio.run(streams(server.port, key, model, args.streams,
                                                        lambda t=task: progress.advance(t)))
                    finally:
                        if managed:
                            stop(server, running)
                gaps = {name: g for name, (g, _, _) in raw.items()}
                stream = stream_results(raw, args.streams)
    finally:
        for server in reversed(running):
            server.stop()

    date = dt.date.today().isoformat()
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    meta = {"date": date, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "cores": os.cpu_count(), "python": platform.python_version(),
            "litellm": LITELLM_VERSION, "oasis_commit": commit, "sequential": args.sequential,
            "warmup": WARMUP, "concurrency": args.concurrency, "seconds": args.seconds,
            "tokens": TOKENS, "streams": args.streams, "stream_tokens": STREAM_TOKENS,
            "chunk_delay_s": CHUNK_DELAY, "routing": {"oasis": "least_outstanding",
                                                      "litellm": "least-busy"}}
    out = RESULTS / f"{date}-upstream.json"
    out.write_text(json.dumps({
        "meta": meta, "results": [asdict(r) for r in results],
        "streams": [asdict(s) for s in stream], "targets": targets(results),
        "chunk_gaps_ms": {k: [round(v * 1000, 4) for v in g] for k, g in gaps.items()},
    }, indent=1))
    png = RESULTS / f"{date}-upstream.png"
    chart(results, gaps, png)
    print_tables(results, stream)
    console.print(f"saved {out.relative_to(ROOT)} and {png.relative_to(ROOT)}")
    if not args.no_readme:
        replace_readme_block("upstream", markdown(results, stream, meta, png))


if __name__ == "__main__":
    main()
