"""Speculative decoding benchmark: the same requests with drafts and without, same run, same
model; the answers must be the same (greedy) and the table shows what the drafts buy.

- jump-forward: a tool call (a function named in ``tool_choice``, arguments mostly keys and
  enum values the grammar forces) and a ``json_schema`` answer, on a server started with
  jump-forward (the default) and on one started with ``--no-jump-forward``;
- prompt lookup: answers that quote their input (summaries and extractions of short
  documents) and free chat, each asked with ``"prompt_lookup": true`` and without.

Speed is the answer's tokens over the request's whole time (prompt included: what a caller
waits for), summed over the requests of a level. Saves bench/results/<date>-speculative.json
and rewrites the README's table.

    python -m bench.speculative [--concurrency 1,4] [--requests 8]
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.engine import PROMPTS, RESULTS, ROOT, Server, console, free_port, replace_readme_block

DOCS = [
    "The city council met on Tuesday to discuss the new park on Elm Street. The park will have "
    "a playground, a pond with ducks and a walking path of two kilometres around the lake. "
    "Construction begins in March and ends in October. The budget is two million dollars, "
    "paid by the city and the Northern Bank. Mayor Lisa Grant said the park is for everyone.",
    "Acme Robotics reported sales of 45 million dollars in the third quarter, up 12 percent "
    "from last year. The company sold 3,000 warehouse robots, most of them to customers in "
    "Germany and Japan. Its chief executive, Tom Okafor, said a new factory in Ohio will open "
    "in May and hire 400 workers. The shares rose 5 percent on Friday.",
    "The school trip to the science museum is on Thursday, 14 November. Buses leave the main "
    "gate at 8:30 and come back at 15:00. Each student needs a packed lunch, a notebook and "
    "ten dollars for the planetarium show. Parents who want to help should call Mrs. Patel "
    "before Monday.",
    "Heavy rain is expected across the northern coast from Saturday night until Monday "
    "morning. The weather service warns of floods near the Silver River and asks drivers to "
    "avoid the coast road. Schools in Port Maris will stay closed on Monday. Temperatures "
    "will stay between 8 and 12 degrees.",
]
QUOTING = [
    f"{ask}\n\n{doc}"
    for doc in DOCS
    for ask in ("Summarize this text in two sentences.", "List the names, numbers and dates "
                "in this text, one per line, with what each is.")
]
FLIGHT = {
    "type": "function",
    "function": {
        "name": "book_flight",
        "description": "Book a flight for a traveller.",
        "parameters": {
            "type": "object",
            "properties": {
                "origin_city": {"type": "string", "maxLength": 30},
                "destination_city": {"type": "string", "maxLength": 30},
                "departure_date": {"type": "string", "format": "date"},
                "travel_class": {"enum": ["economy", "premium_economy", "business", "first"]},
                "passenger_count": {"type": "integer"},
                "seat_preference": {"enum": ["window", "aisle", "no_preference"]},
                "checked_bags": {"type": "integer"},
            },
            "required": ["origin_city", "destination_city", "departure_date", "travel_class",
                         "passenger_count", "seat_preference", "checked_bags"],
            "additionalProperties": False,
        },
    },
}
TRIPS = [
    "Book me a business class flight from Paris to Tokyo on 2026-12-03, window seat, 2 bags.",
    "I need two economy seats from Berlin to Madrid on 2027-01-15, aisle please, no bags.",
    "Fly my family of four from Toronto to Lima on 2027-02-20 in premium economy, 4 bags.",
    "One first class ticket from Dubai to Sydney on 2026-12-24, any seat, one bag.",
]
PLAN = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 40},
        "steps": {
            "type": "array", "minItems": 3, "maxItems": 3,
            "items": {
                "type": "object",
                "properties": {
                    "step_number": {"type": "integer"},
                    "instruction": {"type": "string", "maxLength": 60},
                    "difficulty_level": {"enum": ["easy", "medium", "hard"]},
                    "estimated_minutes": {"type": "integer"},
                },
                "required": ["step_number", "instruction", "difficulty_level",
                             "estimated_minutes"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["title", "steps"],
    "additionalProperties": False,
}
TASKS = ["Plan how to bake bread.", "Plan how to paint a room.", "Plan how to plant a tree.",
         "Plan how to learn to swim."]


@dataclass
class Row:
    workload: str
    concurrency: int
    temperature: float
    requests: int
    tokens_off: int
    tokens_on: int
    tps_off: float
    tps_on: float
    ratio: float
    same_answers: bool
    drafted: int
    kept: int


def bodies(workload: str, temperature: float) -> list[dict[str, Any]]:
    base = {"model": "gpt-4o-mini", "temperature": temperature, "seed": 7}
    if workload == "tool call":
        return [{**base, "messages": [{"role": "user", "content": t}], "max_tokens": 200,
                 "tools": [FLIGHT],
                 "tool_choice": {"type": "function", "function": {"name": "book_flight"}}}
                for t in TRIPS]
    if workload == "json_schema":
        fmt = {"type": "json_schema", "json_schema": {"name": "plan", "schema": PLAN,
                                                      "strict": True}}
        return [{**base, "messages": [{"role": "user", "content": t}], "max_tokens": 400,
                 "response_format": fmt} for t in TASKS]
    prompts = QUOTING if workload == "summaries and extraction" else PROMPTS[:8]
    return [{**base, "messages": [{"role": "user", "content": p}], "max_tokens": 128}
            for p in prompts]


async def ask(http: httpx.AsyncClient, url: str, body: dict[str, Any]) -> tuple[str, int, float]:
    t0 = time.perf_counter()
    r = await http.post(url, json=body)
    r.raise_for_status()
    data = r.json()
    msg = data["choices"][0]["message"]
    # a call's id is random: the name and arguments are the answer
    calls = [c["function"] for c in msg.get("tool_calls") or []]
    answer = msg.get("content") or json.dumps(calls)
    return answer, data["usage"]["completion_tokens"], time.perf_counter() - t0


async def level(url: str, jobs: list[dict[str, Any]], clients: int) -> tuple[list[str], int, float]:
    """Answers (in job order), total completion tokens and wall time."""
    answers: list[str] = [""] * len(jobs)
    tokens = 0
    queue = list(enumerate(jobs))
    async with httpx.AsyncClient(timeout=600) as http:

        async def worker() -> None:
            nonlocal tokens
            while queue:
                i, body = queue.pop(0)
                answers[i], n, _ = await ask(http, url, body)
                tokens += n

        t0 = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(clients)])
    return answers, tokens, time.perf_counter() - t0


def counters(port: int) -> tuple[int, int]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    values = {}
    for line in text.splitlines():
        for name in ("oasis_draft_tokens_total", "oasis_draft_tokens_accepted_total"):
            if line.startswith(name + "{"):
                values[name] = values.get(name, 0) + float(line.rsplit(" ", 1)[1])
    return (int(values.get("oasis_draft_tokens_total", 0)),
            int(values.get("oasis_draft_tokens_accepted_total", 0)))


def start(name: str, extra: list[str], log: Path) -> Server:
    port = free_port()
    oasis = str(Path(sys.executable).with_name("oasis"))
    server = Server(name, [oasis, "serve", "--port", str(port), "--no-auth", "--parallel", "4",
                           "--ctx-size", "8192", "--log-level", "warning",
                           "--data-dir", str(log.parent / f"spec-{name}"), *extra],
                    port, health="/health")
    server.start(log)
    return server


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concurrency", default="1,4")
    ap.add_argument("--repeat", type=int, default=2, help="times each request list is run")
    ap.add_argument("--only", default="", help="comma-separated workloads (default: all)")
    ap.add_argument("--no-readme", action="store_true")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    log = ROOT / "bench" / ".cache" / "speculative-server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    # jump-forward: two servers, one without it
    plans = [("tool call", 0.0), ("json_schema", 0.0), ("tool call", 0.7),
             ("summaries and extraction", 0.0), ("summaries and extraction", 0.7),
             ("free chat", 0.0), ("free chat", 0.7)]
    if args.only:
        plans = [p for p in plans if p[0] in args.only.split(",")]
    on = start("jump", [], log)
    off = start("nojump", ["--no-jump-forward"], log)
    try:
        for srv in (on, off):  # warm-up
            asyncio.run(level(f"http://127.0.0.1:{srv.port}/v1/chat/completions",
                              bodies("tool call", 0.0)[:1], 1))
        for workload, temp in plans:
            for c in levels:
                jobs = bodies(workload, temp) * args.repeat
                lookup = workload in ("summaries and extraction", "free chat")
                # lookup: one server, the request parameter; jump-forward: the two servers
                srv_on = on
                srv_off = on if lookup else off
                jobs_on = [{**b, "prompt_lookup": True} for b in jobs] if lookup else jobs
                with console.status(f"{workload}, T={temp}, {c} stream(s)"):
                    url_off = f"http://127.0.0.1:{srv_off.port}/v1/chat/completions"
                    url_on = f"http://127.0.0.1:{srv_on.port}/v1/chat/completions"
                    a_off, t_off, w_off = asyncio.run(level(url_off, jobs, c))
                    d0 = counters(srv_on.port)
                    a_on, t_on, w_on = asyncio.run(level(url_on, jobs_on, c))
                    d1 = counters(srv_on.port)
                row = Row(workload, c, temp, len(jobs), t_off, t_on, round(t_off / w_off, 1),
                          round(t_on / w_on, 1), round((t_on / w_on) / (t_off / w_off), 3),
                          a_on == a_off, d1[0] - d0[0], d1[1] - d0[1])
                rows.append(row)
                console.print(asdict(row))
    finally:
        on.stop()
        off.stop()
    date = dt.date.today().isoformat()
    meta = {"date": date, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "model": "SmolLM2-135M-Instruct Q4_1 (bundled)", "slots": 4, "repeat": args.repeat}
    out = RESULTS / f"{date}-speculative.json"
    out.write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=1))
    table = "\n".join(
        [f"Run {date} on {meta['machine']}, {meta['model']}; tokens/s = answer tokens over "
         "the whole request time; drafts kept / made during the run with drafts:", "",
         "| workload | temperature | streams | without | with | x | same answers | drafts kept |",
         "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        + [f"| {r.workload} | {r.temperature} | {r.concurrency} | {r.tps_off} | {r.tps_on} | "
           f"{r.ratio:.2f} | {'yes' if r.same_answers else 'no'} | {r.kept} / {r.drafted} |"
           for r in rows])
    console.print(table)
    console.print(f"saved {out.relative_to(ROOT)}")
    if not args.no_readme:
        replace_readme_block("speculative", table)


if __name__ == "__main__":
    main()
