"""Gateway benchmark: what auth + rate limits + metering cost, against LiteLLM's proxy.

Every server answers from oasis's scripted fake engine, so only the HTTP path and the gateway are
measured. In the same run, on the same machine:

- ``off``: oasis with ``--no-auth`` (no keys, limits or metering); also the upstream LiteLLM
  forwards to;
- ``oasis``: oasis with a database key (SQLite), limits in memory, usage ledger on;
- ``oasis+pg+redis``: the replica setup: keys and ledger in PostgreSQL, limits in Redis;
- ``litellm``: LiteLLM's proxy (``litellm[proxy]``, in its own virtualenv under bench/.cache)
  with a master key, forwarding to ``off``.

Each gets sequential requests (latency p50/p99; "added" is the difference to ``off``) and then
``--concurrency`` clients for ``--seconds`` (requests/s). Saves bench/results/<date>-gateway.json
and a PNG chart, and rewrites the README's table.

    python -m bench.gateway [--seconds 10] [--concurrency 32] [--sequential 400]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench import loadgen
from bench.engine import RESULTS, ROOT, Server, console, free_port, pct

CACHE = ROOT / "bench" / ".cache"
LITELLM_VERSION = "1.108.7"
POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/0"
BODY = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 4, "temperature": 0}


@dataclass
class Result:
    server: str
    sequential: int
    p50_ms: float
    p99_ms: float
    added_p50_ms: float
    added_p99_ms: float
    concurrency: int
    seconds: float
    requests: int
    failed: int
    rps: float


def litellm_bin() -> Path:
    """LiteLLM's proxy in its own virtualenv (its pins differ from ours), installed once."""
    venv = CACHE / "litellm-venv"
    exe = venv / "bin" / "litellm"
    stamp = venv / f".installed-{LITELLM_VERSION}"
    if not stamp.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet",
                        f"litellm[proxy]=={LITELLM_VERSION}"], check=True)
        stamp.touch()
    return exe


def oasis_cmd(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("oasis")), *args]


def make_key(env: dict[str, str]) -> str:
    """A key with limits high enough never to refuse, so every check runs but none blocks."""
    r = subprocess.run(
        oasis_cmd("keys", "create", "--name", "bench", "--rpm", "100000000", "--tpm",
                  "1000000000", "--budget", "1000000"),
        env={**os.environ, **env}, capture_output=True, text=True, check=True)
    return r.stdout.strip()


def pg_schema(action: str, name: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(POSTGRES)
    with engine.begin() as conn:
        if action == "create":
            conn.execute(text(f"CREATE SCHEMA {name}"))
        else:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {name} CASCADE"))
    engine.dispose()


def chart(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.server for r in results]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.bar(names, [r.rps for r in results], color="#3b7dd8")
    a.set_title("requests/s (higher is better)")
    x = range(len(names))
    a.set_xticks(list(x), names, rotation=15)
    b.bar([i - 0.2 for i in x], [r.p50_ms for r in results], width=0.4, label="p50")
    b.bar([i + 0.2 for i in x], [r.p99_ms for r in results], width=0.4, label="p99")
    b.set_xticks(list(x), names, rotation=15)
    b.set_title("latency, one client (ms, lower is better)")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(results: list[Result], meta: dict[str, Any]) -> str:
    by = {r.server: r for r in results}
    lines = [
        f"{meta['date']}, {meta['machine']}, fake engine ({BODY['max_tokens']} tokens per "
        f"answer), {meta['sequential']} sequential requests, then {meta['concurrency']} "
        f"clients for {meta['seconds']} s:",
        "",
        "| server | p50 ms | p99 ms | added p50 ms | added p99 ms | requests/s | x litellm |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    lite = by.get("litellm")
    for r in results:
        ratio = f"{r.rps / lite.rps:.1f}x" if lite and lite.rps else "-"
        lines.append(f"| {r.server} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.added_p50_ms:+.2f} | "
                     f"{r.added_p99_ms:+.2f} | {r.rps:.0f} | {ratio} |")
    return "\n".join(lines)


def update_readme(table: str, png: Path) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = "<!-- bench:gateway:start -->", "<!-- bench:gateway:end -->"
    if start not in text:
        return
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    rel = png.relative_to(ROOT)
    readme.write_text(f"{head}{start}\n{table}\n\n![gateway benchmark]({rel})\n{end}{tail}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--sequential", type=int, default=400)
    ap.add_argument("--servers", default="off,oasis,oasis+pg+redis,litellm")
    ap.add_argument("--no-readme", action="store_true")
    args = ap.parse_args()
    chosen = args.servers.split(",")
    RESULTS.mkdir(parents=True, exist_ok=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    log = CACHE / "gateway-servers.log"
    run = uuid.uuid4().hex[:8]
    base_env = {"OASIS_ENGINE": "fake", "OASIS_LOG_LEVEL": "warning"}
    work = CACHE / f"gateway-{run}"
    schema = f"bench_{run}"

    off_port = free_port()
    off = Server("off", oasis_cmd("serve", "--no-auth", "--port", str(off_port)), off_port,
                 env={**base_env, "OASIS_DATA_DIR": str(work / "off")}, health="/health")
    plan: list[tuple[Server, str]] = []
    if "off" in chosen:
        plan.append((off, "none"))
    if "oasis" in chosen:
        env = {**base_env, "OASIS_DATA_DIR": str(work / "oasis"),
               "OASIS_PRICES": '{"*": {"input": 0.5, "output": 1.5}}'}
        port = free_port()
        plan.append((Server("oasis", oasis_cmd("serve", "--port", str(port)), port, env=env,
                            health="/health"), make_key(env)))
    if "oasis+pg+redis" in chosen:
        pg_schema("create", schema)
        env = {**base_env, "OASIS_DATA_DIR": str(work / "pg"),
               "OASIS_DATABASE_URL": f"{POSTGRES}?options=-csearch_path%3D{schema}",
               "OASIS_REDIS_URL": REDIS, "OASIS_REDIS_PREFIX": f"bench-{run}",
               "OASIS_PRICES": '{"*": {"input": 0.5, "output": 1.5}}'}
        port = free_port()
        plan.append((Server("oasis+pg+redis", oasis_cmd("serve", "--port", str(port)), port,
                            env=env, health="/health"), make_key(env)))
    if "litellm" in chosen:
        with console.status(f"installing litellm[proxy]=={LITELLM_VERSION} (first run only)"):
            exe = litellm_bin()
        cfg = work / "litellm.yaml"
        cfg.parent.mkdir(parents=True, exist_ok=True)
        cfg.write_text(
            "model_list:\n  - model_name: gpt-3.5-turbo\n    litellm_params:\n"
            f"      model: openai/gpt-3.5-turbo\n      api_base: http://127.0.0.1:{off_port}/v1\n"
            "      api_key: sk-upstream\ngeneral_settings:\n  master_key: sk-bench-master\n")
        port = free_port()
        plan.append((Server("litellm", [str(exe), "--config", str(cfg), "--host", "127.0.0.1",
                                        "--port", str(port), "--num_workers", "1"], port,
                            env={"LITELLM_LOCAL_MODEL_COST_MAP": "True"},
                            health="/health/liveliness"), "sk-bench-master"))

    results: list[Result] = []
    off_lat: list[float] = []
    try:
        off.start(log)  # the baseline and LiteLLM's upstream run throughout
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console) as progress:
            for server, key in plan:
                if server is not off:
                    progress.console.print(f"starting {server.name}")
                    server.start(log)
                host, port = "127.0.0.1", server.port
                raw = loadgen.prepare(host, port, "/v1/chat/completions", BODY, key)
                try:
                    warm = progress.add_task(f"{server.name}: warm-up", total=50)
                    asyncio.run(loadgen.sequential(
                        host, port, raw, 50, lambda t=warm: progress.advance(t)))
                    task = progress.add_task(f"{server.name}: sequential",
                                             total=args.sequential)
                    lat = asyncio.run(loadgen.sequential(
                        host, port, raw, args.sequential, lambda t=task: progress.advance(t)))
                    if server is off:
                        off_lat = lat
                    sat = progress.add_task(
                        f"{server.name}: {args.concurrency} clients, {args.seconds:g} s",
                        total=None)
                    ok, failed, wall = asyncio.run(
                        loadgen.saturate(host, port, raw, args.concurrency, args.seconds))
                    progress.update(sat, total=1, completed=1)
                finally:
                    if server is not off:
                        server.stop()
                p50, p99 = pct(lat, 50) * 1000, pct(lat, 99) * 1000
                base50 = pct(off_lat, 50) * 1000 if off_lat else float("nan")
                base99 = pct(off_lat, 99) * 1000 if off_lat else float("nan")
                results.append(Result(
                    server=server.name, sequential=len(lat), p50_ms=round(p50, 3),
                    p99_ms=round(p99, 3), added_p50_ms=round(p50 - base50, 3),
                    added_p99_ms=round(p99 - base99, 3), concurrency=args.concurrency,
                    seconds=round(wall, 2), requests=ok, failed=failed,
                    rps=round(ok / wall, 1)))
    finally:
        off.stop()
        if "oasis+pg+redis" in chosen:
            pg_schema("drop", schema)

    date = dt.date.today().isoformat()
    meta = {"date": date, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "sequential": args.sequential, "concurrency": args.concurrency,
            "seconds": args.seconds, "litellm": LITELLM_VERSION,
            "python": platform.python_version()}
    out = RESULTS / f"{date}-gateway.json"
    out.write_text(json.dumps({"meta": meta, "results": [asdict(r) for r in results]},
                              indent=1))
    png = RESULTS / f"{date}-gateway.png"
    chart(results, png)
    t = Table(title="gateway benchmark")
    for col in ("server", "p50 ms", "p99 ms", "added p50", "added p99", "req/s", "failed"):
        t.add_column(col)
    for r in results:
        t.add_row(r.server, f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", f"{r.added_p50_ms:+.2f}",
                  f"{r.added_p99_ms:+.2f}", f"{r.rps:.0f}", str(r.failed))
    console.print(t)
    console.print(f"saved {out.relative_to(ROOT)} and {png.relative_to(ROOT)}")
    if not args.no_readme:
        update_readme(markdown(results, meta), png)


if __name__ == "__main__":
    main()
