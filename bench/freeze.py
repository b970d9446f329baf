"""Freeze benchmark: does one huge request hold up everyone else?

While big requests are sent over and over (20,000 messages in one chat request; one message of
"x<|im_end|>" x 16,000; one message of 900,000 characters), a probe measures the latency of
`GET /health` and of a small chat request (3 tokens). The same probe on the same server, idle,
is the peer: the ratio says what the big requests cost everybody else. With `--peer-ref REF`
the same run is also made against the code of a git ref (a worktree put on PYTHONPATH, the same
venv and model), e.g. the commit before the hardening work, to show the difference.

Saves bench/results/<date>-freeze.json and a PNG chart, and rewrites the README's table.

    python -m bench.freeze [--seconds 20] [--peer-ref 105384d]
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
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.engine import RESULTS, ROOT, Server, console, free_port, pct, replace_readme_block

SMALL = {"model": "gpt-4o-mini", "max_tokens": 3, "temperature": 0,
         "messages": [{"role": "user", "content": "Hi"}]}
BIG = {
    "20,000 messages": {"model": "gpt-4o-mini",
                        "messages": [{"role": "user", "content": "hi"}] * 20_000},
    "x<|im_end|> x 16,000": {"model": "gpt-4o-mini",
                             "messages": [{"role": "user", "content": "x<|im_end|>" * 16_000}]},
    "900,000 characters": {"model": "gpt-4o-mini",
                           "messages": [{"role": "user", "content": "word " * 180_000}]},
}


async def probe(base: str, seconds: float) -> dict[str, list[float]]:
    """Health checks and small chats, one after another, for ``seconds``."""
    out: dict[str, list[float]] = {"health": [], "chat": []}
    async with httpx.AsyncClient(base_url=base, timeout=600) as http:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            for _ in range(5):
                t0 = time.perf_counter()
                await http.get("/health")
                out["health"].append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            r = await http.post("/v1/chat/completions", json=SMALL)
            r.raise_for_status()
            out["chat"].append((time.perf_counter() - t0) * 1000)
    return out


async def attack(base: str, seconds: float, timeout: float) -> dict[str, list[Any]]:
    """The big requests, one kind after another, round after round for ``seconds`` (at least
    one round); status and seconds of each."""
    out: dict[str, list[Any]] = {name: [] for name in BIG}
    raw = {name: json.dumps(body).encode() for name, body in BIG.items()}
    headers = {"Content-Type": "application/json"}
    end = time.perf_counter() + seconds
    async with httpx.AsyncClient(base_url=base, timeout=timeout) as http:
        while not out[next(iter(BIG))] or time.perf_counter() < end:
            for name in BIG:
                t0 = time.perf_counter()
                try:
                    r = await http.post("/v1/chat/completions", content=raw[name],
                                        headers=headers)
                    status: Any = r.status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                out[name].append([status, round(time.perf_counter() - t0, 3)])
    return out


async def under_attack(base: str, seconds: float, timeout: float) -> tuple[Any, Any]:
    task = asyncio.create_task(attack(base, seconds, timeout))
    await asyncio.sleep(0.05)
    samples: dict[str, list[float]] = {"health": [], "chat": []}
    while not task.done():
        got = await probe(base, 1.0)
        for k, v in got.items():
            samples[k] += v
    return samples, await task


def summary(samples: dict[str, list[float]]) -> dict[str, float]:
    return {f"{k}_{q}": round(pct(v, p), 1) for k, v in samples.items() if v
            for q, p in (("p50", 50), ("p99", 99), ("max", 100))}


def run_one(label: str, pythonpath: str | None, seconds: float, timeout: float,
            log: Path) -> dict[str, Any]:
    port = free_port()
    oasis = str(Path(sys.executable).with_name("oasis"))
    env = {"PYTHONPATH": pythonpath} if pythonpath else {}
    data = log.parent / f"data-{label}"
    server = Server(label, [oasis, "serve", "--port", str(port), "--no-auth", "--parallel", "4",
                            "--ctx-size", "8192", "--data-dir", str(data),
                            "--log-level", "warning"], port, env=env, health="/health")
    base = f"http://127.0.0.1:{port}"
    server.start(log)
    try:
        with console.status(f"{label}: idle probe"):
            idle = asyncio.run(probe(base, 10.0))
        with console.status(f"{label}: probe while big requests are sent"):
            busy, big = asyncio.run(under_attack(base, seconds, timeout))
    finally:
        server.stop()
    return {"label": label, "idle": summary(idle), "busy": summary(busy), "big": big,
            "samples": {"idle_health": len(idle["health"]), "busy_health": len(busy["health"])}}


def worktree(ref: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix="oasis-peer-"))
    subprocess.run(["git", "worktree", "add", "--detach", str(path), ref], cwd=ROOT,
                   check=True, capture_output=True)
    return path


def chart(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, what in zip(axes, ("health", "chat"), strict=True):
        names, values, colors = [], [], []
        for run in runs:
            for state, color in (("idle", "#9ab"), ("busy", "#d64")):
                names.append(f"{run['label']}\n{state}")
                values.append(run[state].get(f"{what}_p99", 0.0))
                colors.append(color)
        ax.bar(names, values, color=colors)
        ax.set_yscale("log")
        ax.set_ylabel("p99 latency, ms (log scale)")
        ax.set_title("GET /health" if what == "health" else "small chat request (3 tokens)")
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=8)
    fig.suptitle("Latency of other requests while huge requests are refused")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="how long the big requests are sent (this code)")
    parser.add_argument("--peer-ref", default=None, help="also run the code of this git ref")
    parser.add_argument("--peer-timeout", type=float, default=180.0)
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args()
    log = Path(tempfile.mkdtemp(prefix="oasis-freeze-")) / "server.log"
    runs = [run_one("oasis", None, args.seconds, 600.0, log)]
    console.print(runs[-1])
    if args.peer_ref:
        tree = worktree(args.peer_ref)
        try:
            # one round: the old code spends seconds on each big request
            runs.append(run_one(args.peer_ref, str(tree / "src"), 0, args.peer_timeout, log))
            console.print(runs[-1])
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT,
                           capture_output=True)
    date = dt.date.today().isoformat()
    meta = {"date": date, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "seconds": args.seconds}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{date}-freeze.json").write_text(json.dumps({"meta": meta, "runs": runs},
                                                            indent=1))
    png = RESULTS / f"{date}-freeze.png"
    chart(runs, png)
    lines = [f"{date}, {meta['machine']}, SmolLM2-135M; p50 / p99 / max in ms of other "
             "requests, idle and while the big requests are sent:", "",
             "| code | GET /health idle | GET /health busy | small chat idle | small chat busy "
             "| x idle (chat p99) |", "| --- | --- | --- | --- | --- | --- |"]
    for run in runs:
        i, b = run["idle"], run["busy"]

        def cell(d: dict[str, float], k: str) -> str:
            return f"{d.get(k + '_p50', 0):,.1f} / {d.get(k + '_p99', 0):,.1f} / " \
                   f"{d.get(k + '_max', 0):,.0f}"

        ratio = b.get("chat_p99", 0) / max(i.get("chat_p99", 1), 1e-9)
        lines.append(f"| {run['label']} | {cell(i, 'health')} | {cell(b, 'health')} | "
                     f"{cell(i, 'chat')} | {cell(b, 'chat')} | {ratio:.1f}x |")
    def took(run: dict[str, Any]) -> str:
        parts = []
        for name in BIG:
            rows = run["big"][name]
            statuses = sorted({str(s) for s, _ in rows})
            worst = max(t for _, t in rows)
            parts.append(f"{name}: {len(rows)} x {'/'.join(statuses)}, slowest {worst:.1f} s")
        return "; ".join(parts)

    lines += [""] + [f"Big requests ({run['label']}): {took(run)}." for run in runs] + ["",
              f"![freeze benchmark](bench/results/{png.name})"]
    table = "\n".join(lines)
    console.print(table)
    if not args.no_readme:
        replace_readme_block("freeze", table)


if __name__ == "__main__":
    main()
