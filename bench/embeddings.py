"""Embeddings benchmark: oasis's /v1/embeddings vs llama-server --embeddings on the same GGUF.

Both serve the bundled all-MiniLM-L6-v2 (oasis converts it to GGUF at install time; llama-server
is built from the same llama.cpp source, bench/llama_server.py) with the same threads, mean
pooling and unit-length vectors. 1000 short texts are embedded in two shapes: one text per
request from 16 concurrent clients, and requests of 50 texts from 4 clients, with vectors as
base64 (the official SDK's default encoding) from both servers. Rounds alternate
the servers (A-B-B-A) so drift of this shared machine hits both alike. Reported: inputs per
second per server and shape, and the ratio oasis / llama-server (target >= 1.0x); the vectors
of the two servers are compared too (cosine). Saves bench/results/<date>-embeddings.{json,png}
and rewrites the README's table.

    python -m bench.embeddings [--rounds 4] [--texts 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import json
import os
import platform
import random
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench.engine import RESULTS, ROOT, Server, console, free_port, replace_readme_block
from bench.gateway import oasis_cmd
from bench.llama_server import build as build_llama_server
from oasis.models.embedding_gguf import bundled_embedding_gguf

SHAPES = {"1 text x 16 clients": (1, 16), "50 texts x 4 clients": (50, 4)}
SUBJECTS = ["The cat", "A young engineer", "My neighbour", "The old train", "Our team",
            "A quiet river", "The market", "This algorithm", "The teacher", "A small bird"]
VERBS = ["watched", "improved", "crossed", "described", "measured", "avoided", "painted",
         "explained", "followed", "built"]
OBJECTS = ["the morning light", "a broken bridge", "the quarterly report", "a long novel",
           "the city lights", "a difficult proof", "the mountain road", "an empty room",
           "the garden wall", "a new recipe"]


def texts(n: int) -> list[str]:
    rng = random.Random(7)
    return [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} on day {i}."
            for i in range(n)]


@dataclass
class Row:
    server: str
    shape: str
    inputs_per_s: float  # median over rounds
    runs: list[float]
    ratio: float = 1.0


async def run_shape(port: int, key: str, items: list[str], per_request: int, clients: int,
                    progress: Progress, task: Any) -> float:
    """Inputs per second for embedding all ``items`` in requests of ``per_request``."""
    chunks = [items[i:i + per_request] for i in range(0, len(items), per_request)]
    queue: asyncio.Queue[list[str]] = asyncio.Queue()
    for c in chunks:
        queue.put_nowait(c)
    headers = {"Authorization": f"Bearer {key}"}

    async def client(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            chunk = queue.get_nowait()
            # base64: what the official SDK asks for unless told otherwise
            body = {"model": "text-embedding-3-small", "encoding_format": "base64",
                    "input": chunk[0] if per_request == 1 else chunk}
            r = await http.post("/v1/embeddings", json=body, headers=headers)
            r.raise_for_status()
            data = r.json()["data"]
            assert len(data) == len(chunk)
            assert len(base64.b64decode(data[0]["embedding"])) == 4 * 384
            progress.advance(task, len(chunk))

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=300,
                                 limits=limits) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        return len(items) / (time.perf_counter() - t0)


def vectors(port: int, key: str, items: list[str]) -> np.ndarray:
    r = httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", timeout=120,
                   headers={"Authorization": f"Bearer {key}"},
                   json={"model": "text-embedding-3-small", "input": items,
                         "encoding_format": "float"})
    r.raise_for_status()
    return np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float64)


def chart(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(SHAPES)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.38
    for k, server in enumerate(("oasis", "llama-server")):
        vals = [next(r.inputs_per_s for r in rows if r.server == server and r.shape == s)
                for s in shapes]
        xs = [i + (k - 0.5) * width for i in range(len(shapes))]
        bars = ax.bar(xs, vals, width, label=server)
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks(range(len(shapes)), shapes)
    ax.set_ylabel("inputs / s (higher is better)")
    ax.set_title("all-MiniLM-L6-v2 embeddings, same GGUF, same machine")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(rows: list[Row], meta: dict[str, Any], png: str) -> str:
    lines = [
        f"{meta['date']}, {meta['machine']}, {meta['texts']} short texts, {meta['rounds']} "
        f"rounds per server and shape (median), {meta['threads']} threads each; vectors of the "
        f"two servers agree to cosine >= {meta['min_cosine']:.6f}:",
        "",
        "| shape | oasis inputs/s | llama-server inputs/s | oasis / llama-server |",
        "| --- | --- | --- | --- |",
    ]
    for shape in SHAPES:
        o = next(r for r in rows if r.server == "oasis" and r.shape == shape)
        s = next(r for r in rows if r.server == "llama-server" and r.shape == shape)
        lines.append(f"| {shape} | {o.inputs_per_s:.0f} | {s.inputs_per_s:.0f} | "
                     f"{o.ratio:.2f}x |")
    lines += ["", f"![embeddings benchmark]({png})"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--texts", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--no-readme", action="store_true")
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    cache = ROOT / "bench" / ".cache"
    cache.mkdir(parents=True, exist_ok=True)
    log = cache / "embeddings-servers.log"
    gguf = bundled_embedding_gguf(Path.home() / ".cache" / "oasis")
    binary = build_llama_server(cache / "build.log")
    key = "sk-bench-embeddings"
    op, lp = free_port(), free_port()
    oasis = Server("oasis", oasis_cmd("serve", "--port", str(op), "--log-level", "warning",
                                      "--threads", str(args.threads)), op,
                   env={"OASIS_DATA_DIR": str(cache / f"embeddings-{op}"), "OASIS_API_KEY": key},
                   health="/health")
    llama = Server("llama-server", [str(binary), "-m", str(gguf), "--embeddings", "--pooling",
                                    "mean", "-c", "8192", "-b", "512", "-ub", "512", "-np", "16",
                                    "-t", str(args.threads), "--host", "127.0.0.1", "--port",
                                    str(lp)], lp, health="/health")
    items = texts(args.texts)
    runs: dict[tuple[str, str], list[float]] = {}
    ports = {"oasis": op, "llama-server": lp}
    for server in (oasis, llama):
        server.start(log)
    try:
        a = vectors(op, key, items[:64])
        b = vectors(lp, key, items[:64])
        cosines = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console) as progress:
            for name in ports:  # warm-up
                task = progress.add_task(f"warm-up {name}", total=200)
                asyncio.run(run_shape(ports[name], key, items[:200], 10, 4, progress, task))
            for shape, (per_request, clients) in SHAPES.items():
                for r in range(args.rounds):
                    order = ("oasis", "llama-server") if r % 2 == 0 else ("llama-server", "oasis")
                    for name in order:
                        task = progress.add_task(f"{name}: {shape} (round {r + 1})",
                                                 total=len(items))
                        rate = asyncio.run(run_shape(ports[name], key, items, per_request,
                                                     clients, progress, task))
                        runs.setdefault((name, shape), []).append(rate)
    finally:
        for server in (oasis, llama):
            server.stop()
    rows = [Row(name, shape, round(statistics.median(v), 1), [round(x, 1) for x in v])
            for (name, shape), v in runs.items()]
    for r in rows:
        peer = next(x for x in rows if x.server == "llama-server" and x.shape == r.shape)
        r.ratio = round(r.inputs_per_s / peer.inputs_per_s, 3)
    date = dt.date.today().isoformat()
    meta = {"date": date, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "texts": args.texts, "rounds": args.rounds, "threads": args.threads,
            "min_cosine": float(np.min(cosines)), "gguf": gguf.name,
            "llama_server": binary.parent.parent.name}
    out = RESULTS / f"{date}-embeddings.json"
    out.write_text(json.dumps({"meta": meta, "results": [asdict(r) for r in rows]}, indent=1))
    png = RESULTS / f"{date}-embeddings.png"
    chart(rows, png)
    t = Table(title="embeddings: inputs/s")
    for col in ("server", "shape", "inputs/s", "runs", "x llama-server"):
        t.add_column(col)
    for r in rows:
        t.add_row(r.server, r.shape, f"{r.inputs_per_s:.0f}", str(r.runs), f"{r.ratio:.2f}")
    console.print(t)
    worst = min(r.ratio for r in rows if r.server == "oasis")
    console.print(f"oasis / llama-server, worst shape: {worst:.2f}x (target >= 1.0x: "
                  f"{'met' if worst >= 1.0 else 'NOT met'}); vectors agree to cosine >= "
                  f"{meta['min_cosine']:.6f}; saved {out.relative_to(ROOT)}")
    if not args.no_readme:
        replace_readme_block("embeddings", markdown(rows, meta, str(png.relative_to(ROOT))))


if __name__ == "__main__":
    main()
