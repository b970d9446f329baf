"""The console's usage page at a million usage records: server time of its JSON calls on SQLite
and on PostgreSQL (the issue's target: under 500 ms for the default view).

Each database gets the real schema (the app migrates it), 20 keys and 1,000,000 records over
the last 30 days (a busy key is asked for far more than a quiet one; ~4 models; chat, legacy
completions, embeddings and Responses endpoints; ~2.5% errors and disconnects), inserted in
bulk (SQLite executemany, PostgreSQL COPY), then the daily sums computed from them by
``rebuild_daily`` (what ``oasis usage rebuild-daily`` runs). PostgreSQL lives in a schema of
the ``test`` database made for the run and dropped
after it; SQLite in a temporary directory.

The calls go through the real app (create_app on the fake engine, in-process through
Starlette's TestClient, so the time is the server's: routing, auth, the queries, JSON), each
view ``--runs`` times after one warm-up, median reported. Views:

- ``default view``: what the usage page asks for when it opens (``/console/api/me``, the 7-day
  chart with its totals, the log's first page of 50), summed: the number held to 500 ms;
- the same for a user key (every query forced to its own records);
- the 30-day chart by key; the log filtered by a key, by a model, by errors, by a rare endpoint
  (3% of the records), and the log's 50th page (``before=`` from the 49th);
- the peer: the 7-day chart's query summed from the records themselves (what the chart would
  cost without ``usage_daily``; the query alone, no HTTP).

Saves bench/results/<date>-console-usage.json and .png and prints a README-ready table.

    python -m bench.console_usage [--rows 1000000] [--runs 7] [--databases sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, text

from bench.engine import RESULTS, ROOT
from oasis.config import Settings
from oasis.engine.fake import FakeEngine
from oasis.models.registry import ModelRegistry, ModelSpec
from oasis.server.app import create_app
from oasis.store.keys import KeyStore
from oasis.store.usage import rebuild_daily

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
STATIC = "bench-console-static-key"
TARGET_MS = 500.0
DAYS = 30
KEYS = 20
MODELS = [
    ("gpt-4o-mini", 0.5),
    ("llama-3.1-8b", 0.25),
    ("qwen2.5-coder-0.5b", 0.15),
    ("text-embedding-3-small", 0.10),
]
ENDPOINTS = [("/v1/chat/completions", 0.80), ("/v1/completions", 0.07), ("/v1/responses", 0.03)]
COLUMNS = (
    "request_id",
    "created_at",
    "key_id",
    "model",
    "endpoint",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "cost_usd",
    "latency_ms",
    "ttft_ms",
    "status",
    "disconnected",
    "estimated",
    "batch_id",
    "finish_reason",
)


def records(n: int, key_ids: list[int], now: int, seed: int = 7) -> Iterator[tuple[Any, ...]]:
    """``n`` plausible usage records, oldest first, spread over the last ``DAYS`` days."""
    rnd = random.Random(seed)
    weights = [1 / (i + 1) for i in range(len(key_ids))]  # a few busy keys, many quiet ones
    keys: list[int | None] = [*key_ids, None]
    weights.append(0.1)  # the static key
    models, model_w = zip(*MODELS, strict=True)
    start = now - DAYS * 86400
    for i in range(n):
        t = start + i * DAYS * 86400 // n
        key = rnd.choices(keys, weights)[0]
        model = rnd.choices(models, model_w)[0]
        if model == "text-embedding-3-small":
            endpoint, completion, finish = "/v1/embeddings", 0, None
        else:
            endpoint = rnd.choices(*zip(*ENDPOINTS, strict=True))[0]
            completion = rnd.randint(1, 800)
            finish = rnd.choices(["stop", "length", "tool_calls"], [0.85, 0.1, 0.05])[0]
        prompt = rnd.randint(5, 4000)
        cached = rnd.choice((0, 0, prompt // 2))
        roll = rnd.random()
        status, disconnected = 200, False
        if roll < 0.01:
            status = 429
        elif roll < 0.015:
            status = 400
        elif roll < 0.02:
            status = 500
        elif roll < 0.025:
            status, disconnected = 499, True
        if status != 200:
            completion, finish = (completion // 3, None) if disconnected else (0, None)
        latency = 20.0 + completion * rnd.uniform(5, 15)
        yield (
            uuid.UUID(int=rnd.getrandbits(128)).hex,
            t,
            key,
            model,
            endpoint,
            prompt,
            cached,
            completion,
            (prompt * 0.15 + completion * 0.6) / 1e6,
            round(latency, 3),
            None if completion == 0 else round(rnd.uniform(15, 400), 3),
            status,
            disconnected,
            False,
            None,
            finish,
        )


def fill(engine: Engine, key_ids: list[int], n: int, now: int) -> float:
    """Bulk-insert ``n`` records and their daily sums; returns seconds taken."""
    t0 = time.perf_counter()
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        if engine.dialect.name == "sqlite":
            sql = (
                f"INSERT INTO usage_records ({', '.join(COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(COLUMNS))})"
            )
            batch: list[tuple[Any, ...]] = []
            for row in records(n, key_ids, now):
                batch.append(row)
                if len(batch) == 50_000:
                    cur.executemany(sql, batch)
                    batch.clear()
            cur.executemany(sql, batch)
        else:
            with cur.copy(  # type: ignore[attr-defined]
                f"COPY usage_records ({', '.join(COLUMNS)}) FROM STDIN"
            ) as copy:
                for row in records(n, key_ids, now):
                    copy.write_row(row)
        raw.commit()
        with engine.begin() as conn:  # the daily sums, as `oasis usage rebuild-daily` makes them
            rebuild_daily(conn)
        if engine.dialect.name == "postgresql":
            cur.execute("ANALYZE usage_records")
            cur.execute("ANALYZE usage_daily")
            raw.commit()
    finally:
        raw.close()
    return time.perf_counter() - t0


@contextmanager
def database(kind: str) -> Iterator[tuple[str, Path]]:
    """A database URL (and a data directory) for one run, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="oasis-bench-console-") as tmp:
        if kind == "sqlite":
            yield f"sqlite:///{tmp}/oasis.db", Path(tmp)
            return
        schema = f"bench_console_{uuid.uuid4().hex[:10]}"
        admin = create_engine(POSTGRES)
        with admin.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        try:
            yield f"{POSTGRES}?options=-csearch_path%3D{schema}", Path(tmp)
        finally:
            with admin.begin() as conn:
                conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
            admin.dispose()


def timed(http: TestClient, path: str, headers: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    r = http.get(path, headers=headers)
    ms = (time.perf_counter() - t0) * 1000
    if r.status_code != 200:
        raise RuntimeError(f"{path}: {r.status_code} {r.text[:200]}")
    return ms


def median_of(runs: int, fn: Any) -> tuple[float, list[float]]:
    fn()  # warm-up
    times = [fn() for _ in range(runs)]
    return statistics.median(times), times


def run_one(kind: str, rows: int, runs: int) -> dict[str, Any]:
    with database(kind) as (url, tmp):
        settings = Settings(api_key=STATIC, data_dir=tmp, database_url=url)
        spec = ModelSpec("fake-model", Path(__file__), aliases=("gpt-4o-mini",))
        app = create_app(
            settings, registry=ModelRegistry([spec]), engines={"fake-model": FakeEngine()}
        )
        with TestClient(app, headers={"Authorization": f"Bearer {STATIC}"}) as http:
            gw = app.state.oasis.gateway
            store: KeyStore = gw.keys
            made = [store.create(f"team-{i:02d}") for i in range(KEYS)]
            key_ids = [info.id for info, _ in made]
            user_secret = made[3][1]  # a mid-sized key
            now = int(time.time())
            print(f"{kind}: inserting {rows:,} records ...", flush=True)
            fill_s = fill(gw.usage.engine, key_ids, rows, now)
            print(f"{kind}: filled in {fill_s:.1f} s", flush=True)
            user = {"Authorization": f"Bearer {user_secret}"}

            def default_view(headers: dict[str, str] | None = None) -> float:
                return (
                    timed(http, "/console/api/me", headers)
                    + timed(http, "/console/api/usage?days=7", headers)
                    + timed(http, "/console/api/requests?limit=50", headers)
                )

            # the 49th page's next_before, read once
            before = None
            for _ in range(49):
                q = f"&before={before}" if before else ""
                before = http.get(f"/console/api/requests?limit=50{q}").json()["next_before"]
            busy, quiet = key_ids[0], key_ids[-1]
            views: dict[str, Any] = {
                "default view (admin)": default_view,
                "default view (user key)": lambda: default_view(user),
                "chart 7 days": lambda: timed(http, "/console/api/usage?days=7"),
                "chart 30 days by key": lambda: timed(
                    http, "/console/api/usage?days=30&group_by=key"
                ),
                "log first page": lambda: timed(http, "/console/api/requests?limit=50"),
                "log, busy key": lambda: timed(http, f"/console/api/requests?key=key_{busy}"),
                "log, quiet key": lambda: timed(http, f"/console/api/requests?key=key_{quiet}"),
                "log, model": lambda: timed(http, "/console/api/requests?model=qwen2.5-coder-0.5b"),
                "log, errors": lambda: timed(http, "/console/api/requests?status=error"),
                "log, rare endpoint": lambda: timed(
                    http, "/console/api/requests?endpoint=/v1/responses"
                ),
                "log, page 50": lambda: timed(
                    http, f"/console/api/requests?limit=50&before={before}"
                ),
            }
            today = now - now % 86400 + 86400

            def raw_chart() -> float:
                # the peer: the same 7-day chart summed from the records (an end one second
                # short of a whole day makes UsageStore.buckets read usage_records)
                t0 = time.perf_counter()
                gw.usage.buckets(
                    start=today - 7 * 86400, end=today - 1, width=86400, group_by=("model",)
                )
                return (time.perf_counter() - t0) * 1000

            views["chart 7 days, from the records"] = raw_chart
            results = {}
            for name, fn in views.items():
                med, times = median_of(runs, fn)
                results[name] = {
                    "median_ms": round(med, 2),
                    "runs_ms": [round(t, 2) for t in times],
                }
                print(f"{kind}: {name}: {med:.1f} ms", flush=True)
        return {"database": kind, "rows": rows, "fill_seconds": round(fill_s, 1), "views": results}


def chart(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results[0]["views"])
    fig, ax = plt.subplots(figsize=(11, 4.6))
    width = 0.8 / len(results)
    for k, res in enumerate(results):
        xs = [i + (k - (len(results) - 1) / 2) * width for i in range(len(names))]
        ax.bar(
            xs, [res["views"][n]["median_ms"] for n in names], width=width, label=res["database"]
        )
    ax.axhline(TARGET_MS, color="#c0392b", linestyle="--", linewidth=1, label="target (500 ms)")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("ms (median, lower is better)")
    ax.set_yscale("log")
    ax.set_title(f"console usage API, {results[0]['rows']:,} usage records")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    dbs = [r["database"] for r in results]
    lines = [
        f"{meta['date']}, {meta['machine']}, {results[0]['rows']:,} usage records over "
        f"{DAYS} days, {KEYS} keys; median of {meta['runs']} runs, server time in ms:",
        "",
        "| view | " + " | ".join(dbs) + " |",
        "| --- |" + " --- |" * len(dbs),
    ]
    for name in results[0]["views"]:
        cells = [f"{r['views'][name]['median_ms']:.1f}" for r in results]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--databases", default="sqlite,postgresql")
    args = ap.parse_args()
    results = [run_one(kind, args.rows, args.runs) for kind in args.databases.split(",")]
    date = dt.date.today().isoformat()
    meta = {
        "date": date,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
        "runs": args.runs,
        "target_ms": TARGET_MS,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{date}-console-usage.json"
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    png = RESULTS / f"{date}-console-usage.png"
    chart(results, png)
    print()
    print(markdown(results, meta))
    print(f"\n![console usage benchmark]({png.relative_to(ROOT)})")
    print(f"\nsaved {out.relative_to(ROOT)} and {png.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
