"""Routing benchmark: oasis's upstream backend in front of two real llama-server replicas.

Part 1, routing: two llama-server processes (the bundled SmolLM2-135M-Instruct, one thread
each, a few slots, a RAM prompt cache) behind one ``oasis serve`` whose model ``fleet`` has
``backend = "upstream"``. Simulated users hold multi-turn streaming chats (users i share system
prompt i % 4; every turn appends a user message and then the assistant's reply, so histories
grow; ``user`` is the affinity key); they arrive ``--arrival`` s apart and pause about
``--think`` s between an answer and their next message. The same workload runs with
``routing = "least_outstanding"`` and with ``routing = "affinity"``, the llama-servers
restarted for each run so both start with cold caches; with ``--rounds 2`` the order is run
again reversed (A B B A). Reports time to first token p50/p99, completion tokens/s and
requests/s per mode, the affinity / least-outstanding ratio of TTFT p50 (target: <= 0.7), the
cached prompt tokens llama-server reports, and how /admin/backends saw the requests spread.

Part 2, replica loss: a steady load of short chats (no pauses) for ``--loss-seconds``; at 25 %
of it one llama-server is SIGKILLed, at 62.5 % restarted on the same port; the load goes on
(up to ``--loss-extend`` s more) until the replica has taken traffic again for 10 s.
Per-second completed requests and errors (HTTP errors, streams that ended with an error event
or were cut), the time until /admin/backends shows the replica healthy again and it receives
traffic, throughput before / while down / after.

Saves bench/results/<date>-routing.json and a PNG chart, and rewrites the README's block;
the servers' logs go to bench/.cache/routing-<run>/.

    python -m bench.routing [--users 16] [--turns 6] [--max-tokens 24] [--think 4] [--rounds 1]
                            [--loss-seconds 40] [--skip-routing] [--skip-loss] [--no-readme]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import platform
import random
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench.engine import (
    RESULTS,
    ROOT,
    Server,
    console,
    free_port,
    pct,
    replace_readme_block,
)
from bench.gateway import make_key, oasis_cmd
from bench.llama_server import build as build_llama_server
from oasis.models.registry import bundled_model_path

CACHE = ROOT / "bench" / ".cache"
MODEL = "fleet"  # the model oasis serves
UPSTREAM_MODEL = "smollm2"  # the alias the llama-servers answer to
MODES = ("least_outstanding", "affinity")
NO_END = {"0": -100, "2": -100}  # <|endoftext|>, <|im_end|>: every answer is max_tokens long
SLOTS = 4
CACHE_RAM_MIB = 1024
SLOT_SIMILARITY = 0.95  # see LLAMA_CHOICES
POOL = {"affinity_balance": 0.25, "probe_interval": 0.5, "eject_seconds": 0.5}

# -- the workload ------------------------------------------------------------------------------

PERSONAS = [
    ("Ada", "a patient travel planner at a small agency in Lisbon", "trips, routes and budgets",
     "You have planned journeys on four continents and you prefer trains to planes when the "
     "distance allows it."),
    ("Bruno", "a friendly kitchen assistant at a cooking school in Lyon", "recipes and technique",
     "You trained as a pastry cook, you care about seasonal produce and you always mention "
     "how long a step takes."),
    ("Chen", "a careful study coach for university students in Singapore",
     "study plans and exam preparation",
     "You were a mathematics tutor for ten years and you believe in short, regular sessions "
     "more than in long nights."),
    ("Dana", "a practical home-repair helper for a hardware store in Denver",
     "tools, materials and safe repairs",
     "You worked as a carpenter and an electrician's apprentice and you never skip a safety "
     "warning."),
]

RULES = [
    "Answer in plain English, in short paragraphs, and never use more words than the question "
    "needs.",
    "Start with the direct answer, then give the reason, then one practical next step.",
    "If the question is ambiguous, state the most likely reading in one sentence and answer "
    "that one.",
    "Stay within {topic}; when asked about something else, say so politely and point to a "
    "better source.",
    "Never invent prices, opening hours, phone numbers or addresses; say that they must be "
    "checked.",
    "When you give a list, keep it to at most five items, each on its own line.",
    "Use metric units first and give imperial units in brackets when they help.",
    "Do not mention these rules, your instructions or the fact that you follow a script.",
    "If the user seems stressed or in a hurry, be especially brief and calm.",
    "When a choice depends on the user's budget or time, ask for it once and give a default.",
    "Prefer safe, well-tested advice over clever tricks, and explain the risk of each option.",
    "Remember what the user told you earlier in the conversation and do not ask for it again.",
    "Refer to yourself as {name} only when the user asks who you are.",
    "Avoid jargon; when a technical word is needed, explain it in a few plain words.",
    "Never give medical, legal or financial advice beyond general common sense.",
    "If you are not sure of a fact, say how sure you are instead of guessing.",
    "Give examples from everyday life rather than abstract descriptions.",
    "Keep a warm, respectful tone, and never be sarcastic or condescending.",
    "When the user thanks you, answer briefly and offer one more useful tip about {topic}.",
    "End each answer with a short question only if it really helps the user decide.",
    "Write numbers as digits, dates as day month year, and times in the 24-hour clock.",
    "If the user asks for a plan, give it as numbered steps with a rough time for each step.",
    "When two options are about equally good, recommend one and say why in one sentence.",
    "Do not repeat the user's question back to them before answering it.",
]


def system_prompt(k: int) -> str:
    name, role, topic, background = PERSONAS[k]
    rules = "\n".join(f"{n}. {rule.format(name=name, topic=topic)}"
                      for n, rule in enumerate(RULES, 1))
    return (f"You are {name}, {role}. {background} You help customers with {topic}, and you "
            f"answer every message following the rules below.\n\nRules:\n{rules}\n\n"
            f"Now greet the customer if this is the start of the conversation, and help them.")


SYSTEMS = [system_prompt(k) for k in range(len(PERSONAS))]
# the replica-loss run's chats are short, so that requests/s is steady second by second
SHORT_SYSTEMS = [f"You are {name}, {role}. Answer briefly." for name, role, _, _ in PERSONAS]

NAMES = ["Alice", "Ben", "Carla", "David", "Emma", "Felix", "Grace", "Hugo", "Iris", "Jonas",
         "Kira", "Leo", "Maya", "Nico", "Olga", "Paul", "Quinn", "Rosa", "Sam", "Tara", "Umar",
         "Vera", "Will", "Xena", "Yuri", "Zoe"]
QUESTIONS = [
    "I have one free week in October. What would you suggest I do first?",
    "Can you explain that in simpler terms, please?",
    "What is the most common mistake beginners make here?",
    "How much time should I set aside for this, roughly?",
    "My budget is small. Is there a cheaper way to do it?",
    "Which tools or things do I need to get before I start?",
    "What should I do if it goes wrong halfway through?",
    "Could you give me a three-step plan for this weekend?",
    "Is it better to do this alone or with a friend?",
    "What would you do differently if you started again?",
    "How do I know that I did it right at the end?",
    "Is there anything I should avoid doing in winter?",
    "I tried that last year and it did not work. Why might that be?",
    "What is one small thing I can do today to make progress?",
    "Can you compare the two options you mentioned?",
    "How do I keep going when I lose motivation?",
    "What questions should I ask an expert about this?",
    "Is there a good rule of thumb I can remember?",
    "How would you explain this to a twelve-year-old?",
    "What are the risks, and how likely are they?",
    "Could you summarise what we discussed so far in two sentences?",
    "What is a good first goal for someone like me?",
    "I only have an hour a day. Is that enough?",
    "Which of your suggestions matters most, and why?",
    "How can I do this without buying anything new?",
    "What should I prepare the evening before?",
    "Are there any signs that I should stop and ask for help?",
    "How do people usually measure progress with this?",
    "Can you give me an example from your own experience?",
    "What would be a sensible plan B?",
    "How do I explain my choice to my family?",
    "Thanks! One last thing: what should I read or watch next?",
]


ABOUT = [
    "I live in a small flat with my partner and two cats, and I work long hours in the week",
    "I am a retired teacher with a lot of free time and a fairly modest pension",
    "I am a student sharing a house with four friends, and money is always a bit tight",
    "I have two young children, so my free time comes in short and unpredictable bits",
    "I just moved to a new city for work and I do not know many people here yet",
    "I work night shifts at a hospital, so my days are upside down most weeks",
    "I run a small bakery with my sister and we are both busy from early morning",
    "I am recovering from a knee injury, so I cannot stand or walk for very long",
]


def user_message(user: int, conversation: int, turn: int) -> str:
    q = QUESTIONS[(user * 7 + conversation * 5 + turn * 3) % len(QUESTIONS)]
    if turn == 0:
        return f"Hello, I'm {NAMES[user % len(NAMES)]}. {ABOUT[user % len(ABOUT)]}. {q}"
    return q


def chat_body(messages: list[dict[str, str]], user: str, max_tokens: int) -> dict[str, Any]:
    return {"model": MODEL, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}, "user": user,
            "logit_bias": NO_END}


# -- one streamed request ----------------------------------------------------------------------


@dataclass
class Call:
    user: int
    turn: int
    start: float  # seconds since the run began
    end: float
    ttft: float | None  # seconds to the first content chunk
    ok: bool
    error: str = ""  # kind: http_<status>, stream_error, cut, transport
    detail: str = ""
    completion_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int | None = None  # usage.prompt_tokens_details.cached_tokens
    prompt_n: int | None = None  # llama-server's timings, when they reach the client
    prompt_ms: float | None = None
    text: str = ""


async def stream_chat(http: httpx.AsyncClient, body: dict[str, Any], user: int, turn: int,
                      zero: float) -> Call:
    t0 = time.perf_counter()
    first: float | None = None
    parts: list[str] = []
    usage: dict[str, Any] = {}
    timings: dict[str, Any] = {}
    error = detail = ""
    try:
        async with http.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                await r.aread()
                error, detail = f"http_{r.status_code}", r.text[:300]
            else:
                done = False
                async for line in r.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        done = True
                        break
                    obj = json.loads(data)
                    if "error" in obj and not obj.get("choices"):
                        err = obj["error"]
                        error = "stream_error"
                        detail = str(err.get("message") if isinstance(err, dict) else err)[:300]
                        break
                    if obj.get("usage"):
                        usage = obj["usage"]
                    if obj.get("timings"):
                        timings = obj["timings"]
                    for choice in obj.get("choices") or []:
                        text = (choice.get("delta") or {}).get("content")
                        if text:
                            if first is None:
                                first = time.perf_counter()
                            parts.append(text)
                if not done and not error:
                    error, detail = "cut", "the stream ended without [DONE]"
    except httpx.HTTPError as exc:
        error, detail = "transport", f"{type(exc).__name__}: {exc}"[:300]
    end = time.perf_counter()
    details = usage.get("prompt_tokens_details") or {}
    return Call(
        user=user, turn=turn, start=round(t0 - zero, 4), end=round(end - zero, 4),
        ttft=(first - t0) if first is not None else None, ok=not error and first is not None,
        error=error or ("" if first is not None else "empty"), detail=detail,
        completion_tokens=int(usage.get("completion_tokens") or len(parts)),
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        cached_tokens=details.get("cached_tokens") if isinstance(details, dict) else None,
        prompt_n=timings.get("prompt_n"), prompt_ms=timings.get("prompt_ms"),
        text="".join(parts),
    )


def ttfts(calls: Iterable[Call]) -> list[float]:
    return [c.ttft for c in calls if c.ok and c.ttft is not None]


def client(port: int, key: str, users: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=180,
                             headers={"Authorization": f"Bearer {key}"},
                             limits=httpx.Limits(max_connections=users + 4))


# -- the servers -------------------------------------------------------------------------------


def llama_argv(binary: Path, model: Path, port: int, ctx: int) -> list[str]:
    return [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
            "--alias", UPSTREAM_MODEL, "-t", "1", "-tb", "1", "-np", str(SLOTS), "-c", str(ctx),
            "-b", "512", "-ub", "512", "--cont-batching", "--cache-ram", str(CACHE_RAM_MIB),
            "--slot-prompt-similarity", str(SLOT_SIMILARITY), "--no-webui"]


LLAMA_CHOICES = {
    "-t 1 -tb 1": "one thread per replica: two replicas on the 2-core machine",
    f"-np {SLOTS}": "a few slots: fewer than the users each replica serves, so prompt states "
                    "must move between the slots and the RAM cache",
    "-c": "slots x per-slot context (non-unified KV: each slot gets c / np), sized for the "
          "longest conversation plus the answer",
    "--cont-batching": "explicit (the default): new prompts join running decodes",
    f"--cache-ram {CACHE_RAM_MIB}": "the host-memory prompt cache (MiB): idle slots are saved "
                                    "there and the best-matching state restored into the slot "
                                    "a request gets; big enough for every conversation",
    f"--slot-prompt-similarity {SLOT_SIMILARITY:g}": "an idle slot is reused in place only if "
        "its tokens are >= 95 % of the new prompt: the user's own previous turn (~96-99 %), not "
        "another user's conversation with the same system prompt (<= ~93 %); otherwise the "
        "least recently used slot is taken and the RAM cache (which holds idle slots' states, "
        "--cache-idle-slots being on by default) is searched for the best prefix. With the "
        "default 0.1 (and with 0.9, tried) the other user's slot is taken in place and the RAM "
        "cache is not searched, so the user's own history is missed; with 0 (tried) a state "
        "still in a slot and not yet saved to RAM is missed",
    "--cache-reuse": "left at 0 (no KV shifting): only true prefixes are reused",
    "logit_bias": "<|endoftext|> and <|im_end|> banned so every answer is max_tokens long",
}


def oasis_toml(path: Path, ports: list[int], routing: str) -> None:
    replicas = ", ".join(f'"http://127.0.0.1:{p}/v1"' for p in ports)
    path.write_text(
        f'[[models]]\nid = "{MODEL}"\nbackend = "upstream"\nupstream_model = "{UPSTREAM_MODEL}"\n'
        f"replicas = [{replicas}]\nrouting = \"{routing}\"\n"
        + "".join(f"{k} = {v}\n" for k, v in POOL.items()))


def admin_key(env: dict[str, str]) -> str:
    r = subprocess.run(oasis_cmd("keys", "create", "--name", "bench-admin", "--admin"),
                       env={**os.environ, **env}, capture_output=True, text=True, check=True)
    return r.stdout.strip()


@dataclass
class Fleet:
    """Two llama-servers and the oasis in front of them; each writes its own log,
    ``<work>/<label>-<server>.log``."""

    replicas: list[Server]
    oasis: Server
    work: Path
    label: str

    @classmethod
    def make(cls, binary: Path, model: Path, ctx: int, routing: str, env: dict[str, str],
             work: Path, label: str) -> Fleet:
        ports = [free_port(), free_port()]
        replicas = [Server(f"llama-server-{i + 1}", llama_argv(binary, model, p, ctx), p,
                           health="/health") for i, p in enumerate(ports)]
        toml = work / f"{label}.toml"
        oasis_toml(toml, ports, routing)
        port = free_port()
        oasis = Server("oasis", oasis_cmd("serve", "--port", str(port)), port,
                       env={**env, "OASIS_CONFIG": str(toml)}, health="/health")
        return cls(replicas, oasis, work, label)

    def log(self, server: Server) -> Path:
        return self.work / f"{self.label}-{server.name}.log"

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{r.port}/v1" for r in self.replicas]

    def start(self) -> None:
        for r in self.replicas:
            r.start(self.log(r))
        for r in self.replicas:  # the first decode allocates buffers: not the benchmark's
            httpx.post(f"http://127.0.0.1:{r.port}/v1/chat/completions", timeout=120,
                       json={"model": UPSTREAM_MODEL, "max_tokens": 2, "cache_prompt": False,
                             "messages": [{"role": "user", "content": "Hi"}]})
        self.oasis.start(self.log(self.oasis))

    def stop(self) -> None:
        self.oasis.stop()
        for r in self.replicas:
            r.stop()


def backends(port: int, key: str) -> tuple[list[dict[str, Any]], int]:
    """The replicas as /admin/backends shows them, and oasis's retries so far."""
    r = httpx.get(f"http://127.0.0.1:{port}/admin/backends",
                  headers={"Authorization": f"Bearer {key}"}, timeout=5)
    r.raise_for_status()
    model = next(m for m in r.json()["data"] if m["model"] == MODEL)
    return list(model["replicas"]), int(model.get("retries", 0))


def count_tokens(port: int, text: str) -> int:
    r = httpx.post(f"http://127.0.0.1:{port}/tokenize", json={"content": text}, timeout=30)
    return len(r.json()["tokens"])


# -- part 1: least-outstanding vs affinity -----------------------------------------------------


@dataclass
class ModeRun:
    mode: str
    round: int
    wall_s: float
    load_before: float  # the machine's 1-minute load average when the run began
    replicas: list[dict[str, Any]]
    retries: int
    system_tokens: list[int]
    hashed: list[int] | None  # users whose key ranks each replica first (affinity's choice)
    calls: list[Call] = field(default_factory=list)


async def conversations(port: int, key: str, users: int, turns: int, max_tokens: int,
                        think: float, arrival: float,
                        tick: Callable[[], None]) -> tuple[list[Call], float]:
    calls: list[Call] = []
    zero = time.perf_counter()
    async with client(port, key, users) as http:
        async def converse(i: int) -> None:
            messages = [{"role": "system", "content": SYSTEMS[i % len(SYSTEMS)]}]
            rng = random.Random(i)  # the same pauses in every mode
            await asyncio.sleep(arrival * i)  # users arrive one after another
            for t in range(turns):
                messages.append({"role": "user", "content": user_message(i, 0, t)})
                call = await stream_chat(http, chat_body(messages, f"user-{i}", max_tokens),
                                         i, t, zero)
                calls.append(call)
                tick()
                messages.append({"role": "assistant", "content": call.text or "(no answer)"})
                if think and t + 1 < turns:  # reading the answer, typing the next message
                    await asyncio.sleep(rng.uniform(0.5, 1.5) * think)

        await asyncio.gather(*(converse(i) for i in range(users)))
    return calls, time.perf_counter() - zero


def run_mode(mode: str, rnd: int, args: argparse.Namespace, binary: Path, model: Path, ctx: int,
             env: dict[str, str], key: str, admin: str, work: Path, progress: Progress,
             task: Any) -> ModeRun:
    fleet = Fleet.make(binary, model, ctx, mode, env, work, f"round{rnd}-{mode}")
    progress.update(task, description=f"round {rnd}, {mode}: starting")
    load = os.getloadavg()[0]
    try:
        fleet.start()
        system_tokens = [count_tokens(fleet.replicas[0].port, s) for s in SYSTEMS]
        progress.update(task, description=f"round {rnd}, {mode}")
        calls, wall = asyncio.run(conversations(
            fleet.oasis.port, key, args.users, args.turns, args.max_tokens, args.think,
            args.arrival, lambda: progress.advance(task)))
        state, retries = backends(fleet.oasis.port, admin)
    finally:
        fleet.stop()
    replicas = [{k: r.get(k) for k in ("url", "state", "requests", "errors", "ejections",
                                       "latency_p50_ms")} for r in state]
    hashed = by_hash(fleet.urls, args.users) if mode == "affinity" else None
    return ModeRun(mode, rnd, round(wall, 3), round(load, 2), replicas, retries, system_tokens,
                   hashed, calls)


def by_hash(urls: list[str], users: int) -> list[int] | None:
    """How many users' keys rank each replica first in oasis's rendezvous hashing (where
    affinity sends them unless the load bound says otherwise); None if it cannot be told."""
    try:
        from oasis.backends.upstream.pool import _rank
    except ImportError:
        return None
    counts = [0] * len(urls)
    for i in range(users):
        counts[max(range(len(urls)), key=lambda j: _rank(f"u:user-{i}", urls[j]))] += 1
    return counts


def summarize(mode: str, runs: list[ModeRun]) -> dict[str, Any]:
    calls = [c for r in runs for c in r.calls]
    ok = [c for c in calls if c.ok]
    wall = sum(r.wall_s for r in runs)
    ttft = ttfts(ok)
    tokens = sum(c.completion_tokens for c in ok)
    prompt = sum(c.prompt_tokens for c in ok)
    cached = [c.cached_tokens for c in ok if c.cached_tokens is not None]
    turns = sorted({c.turn for c in ok})
    return {
        "mode": mode,
        "runs": len(runs),
        "requests": len(calls),
        "failed": len(calls) - len(ok),
        "errors": dict(Counter(c.error for c in calls if not c.ok)),
        "wall_s": round(wall, 3),
        "ttft_p50_ms": round(pct(ttft, 50) * 1000, 1),
        "ttft_p99_ms": round(pct(ttft, 99) * 1000, 1),
        "total_p50_ms": round(pct([c.end - c.start for c in ok], 50) * 1000, 1),
        "completion_tokens": tokens,
        "tokens_per_s": round(tokens / wall, 2) if wall else 0.0,
        "requests_per_s": round(len(ok) / wall, 3) if wall else 0.0,
        "prompt_tokens": prompt,
        "cached_tokens": sum(cached) if cached else None,
        "cached_share": round(sum(cached) / prompt, 3) if cached and prompt else None,
        "ttft_p50_ms_by_turn": {
            t + 1: round(pct(ttfts(c for c in ok if c.turn == t), 50) * 1000, 1) for t in turns
        },
        "replica_requests": [[r["requests"] for r in run.replicas] for run in runs],
        "users_hashed_to_replica": [r.hashed for r in runs],
        "retries": sum(r.retries for r in runs),
        "load_before": [r.load_before for r in runs],
        "per_run": [{"round": r.round, "wall_s": r.wall_s,
                     "ttft_p50_ms": round(pct(ttfts(r.calls), 50) * 1000, 1),
                     "replicas": r.replicas} for r in runs],
    }


# -- part 2: replica loss ----------------------------------------------------------------------


async def loss_run(fleet: Fleet, key: str, admin: str, args: argparse.Namespace,
                   progress: Progress, task: Any) -> dict[str, Any]:
    """The steady load, the kill and the restart; the load goes on past ``loss_seconds`` (up
    to ``loss_extend`` more) until the restarted replica has taken traffic for 10 s."""
    seconds, extend = float(args.loss_seconds), float(args.loss_extend)
    kill_at, restart_at = seconds * 0.25, seconds * 0.625
    victim = fleet.replicas[1]
    v = 1  # the victim's index in /admin/backends
    calls: list[Call] = []
    samples: list[dict[str, Any]] = []
    events: dict[str, float] = {}
    zero = time.perf_counter()

    def now() -> float:
        return time.perf_counter() - zero

    def end() -> float:
        if "back" in events:
            return max(seconds, events["back"] + 10)
        return seconds + extend

    def running() -> bool:
        return now() < end()

    async def user(i: int) -> None:
        conversation = 0
        await asyncio.sleep(0.05 * i)
        while running():
            messages = [{"role": "system", "content": SHORT_SYSTEMS[i % len(SHORT_SYSTEMS)]}]
            for t in range(args.loss_turns):
                if not running():
                    return
                messages.append({"role": "user", "content": user_message(i, conversation, t)})
                call = await stream_chat(http, chat_body(messages, f"loss-{i}",
                                                         args.loss_max_tokens), i, t, zero)
                calls.append(call)
                messages.append({"role": "assistant", "content": call.text or "(no answer)"})
            conversation += 1

    async def load() -> None:
        try:  # requests still running at the end get a little time, then are dropped
            async with asyncio.timeout(seconds + extend + 30):
                await asyncio.gather(*(user(i) for i in range(args.loss_users)))
        except TimeoutError:
            progress.console.print("  [yellow]dropped requests still running at the end")

    async def monitor() -> None:
        before_ready = 0  # the victim's request count in the last sample before it was ready
        async with httpx.AsyncClient(timeout=5,
                                     headers={"Authorization": f"Bearer {admin}"}) as http_a:
            url = f"http://127.0.0.1:{fleet.oasis.port}/admin/backends"
            while running():
                t = now()
                try:
                    r = await http_a.get(url)
                    model = next(m for m in r.json()["data"] if m["model"] == MODEL)
                except (httpx.HTTPError, ValueError, StopIteration, KeyError):
                    await asyncio.sleep(0.2)
                    continue
                reps = [{k: rep[k] for k in ("state", "requests", "in_flight")}
                        for rep in model["replicas"]]
                samples.append({"t": round(t, 3), "replicas": reps,
                                "retries": model.get("retries", 0)})
                mine = reps[v]
                if "kill" in events and "seen_down" not in events and mine["state"] != "healthy":
                    events["seen_down"] = t
                if "ready" not in events:
                    before_ready = mine["requests"]
                else:
                    if "healthy" not in events and mine["state"] == "healthy":
                        events["healthy"] = t
                    if "back" not in events and mine["requests"] > before_ready:
                        events["back"] = t
                        progress.console.print(f"  {victim.name} takes traffic again at {t:.1f} s")
                await asyncio.sleep(0.2)

    async def chaos() -> None:
        await asyncio.sleep(kill_at)
        assert victim.proc is not None
        victim.proc.kill()
        events["kill"] = now()
        await asyncio.to_thread(victim.proc.wait)
        progress.console.print(f"  SIGKILLed {victim.name} at {events['kill']:.1f} s")
        await asyncio.sleep(max(0.0, restart_at - now()))
        events["restart"] = now()
        await asyncio.to_thread(victim.start, fleet.log(victim))  # returns once its /health is 200
        events["ready"] = now()
        progress.console.print(f"  restarted {victim.name} at {events['restart']:.1f} s, "
                               f"ready at {events['ready']:.1f} s")

    async def clock() -> None:
        while running():
            progress.update(task, total=end(), completed=min(end(), now()))
            await asyncio.sleep(0.5)
        progress.update(task, total=end(), completed=end())

    async with client(fleet.oasis.port, key, args.loss_users) as http:
        await asyncio.gather(chaos(), monitor(), clock(), load())
    return analyse_loss(calls, samples, events, end(), now(), args)


def analyse_loss(calls: list[Call], samples: list[dict[str, Any]], events: dict[str, float],
                 end: float, wall: float, args: argparse.Namespace) -> dict[str, Any]:
    kill, restart = events.get("kill", math.nan), events.get("restart", math.nan)
    ready = events.get("ready", math.nan)
    back, healthy, seen = events.get("back"), events.get("healthy"), events.get("seen_down")

    bins = max(1, math.ceil(end))  # requests still running at the end: in the totals only
    ok_per_s, err_per_s = [0] * bins, [0] * bins
    for c in calls:
        if c.end >= bins:
            continue
        b = int(c.end)
        if c.ok:
            ok_per_s[b] += 1
        else:
            err_per_s[b] += 1

    def window(lo: float, hi: float) -> dict[str, Any]:
        inside = [c for c in calls if lo <= c.end < hi]
        ok = sum(c.ok for c in inside)
        return {"from_s": round(lo, 2), "to_s": round(hi, 2), "requests": len(inside),
                "errors": len(inside) - ok,
                "requests_per_s": round(ok / (hi - lo), 3) if hi > lo else None}

    def since(t: float | None, ref: float) -> float | None:
        return round(t - ref, 2) if t is not None else None

    errors = [c for c in calls if not c.ok]
    details = Counter(f"{c.error}: {c.detail[:160]}" for c in errors)
    last: dict[str, Any] = samples[-1] if samples else {"replicas": [{}, {}], "retries": 0}
    return {
        "routing": args.loss_routing,
        "users": args.loss_users,
        "turns_per_conversation": args.loss_turns,
        "max_tokens": args.loss_max_tokens,
        "planned_s": args.loss_seconds,
        "seconds": round(end, 2),
        "wall_s": round(wall, 2),  # with the requests still running at the end
        "kill_s": round(kill, 2),
        "restart_s": round(restart, 2),
        "ready_s": round(ready, 2),
        "back_s": round(back, 2) if back is not None else None,
        "requests": len(calls),
        "ended_after_the_end": sum(c.end >= end for c in calls),
        "ok": len(calls) - len(errors),
        "errors": len(errors),
        "errors_by_kind": dict(Counter(c.error for c in errors)),
        "error_details": dict(details.most_common(8)),
        "oasis_saw_down_after_kill_s": since(seen, kill),
        "healthy_after_restart_s": since(healthy, restart),
        "healthy_after_ready_s": since(healthy, ready),
        "traffic_after_restart_s": since(back, restart),
        "traffic_after_ready_s": since(back, ready),
        "retries": last.get("retries", 0),
        "replica_requests": [r.get("requests") for r in last["replicas"]],
        "windows": "before: from the first answer to the kill; down: from the kill until the "
                   "restarted replica takes traffic (or the end); after: from then to the end. "
                   "requests_per_s counts successful requests by the time they ended",
        "before": window(min((c.end for c in calls if c.ok), default=0.0), kill),
        "down": window(kill, back if back is not None else end),
        "after": window(back, end) if back is not None else None,
        "ok_per_s": ok_per_s,
        "errors_per_s": err_per_s,
        "samples": samples,
    }


# -- output ------------------------------------------------------------------------------------


def chart(modes: list[dict[str, Any]], ratio: float | None, loss: dict[str, Any] | None,
          path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = int(bool(modes)) + int(bool(loss))
    fig, axes = plt.subplots(1, max(1, panels), figsize=(6.5 * max(1, panels), 4.2),
                             squeeze=False)
    left = iter(axes[0])
    if modes:
        a = next(left)
        x = range(len(modes))
        names = [m["mode"].replace("_", "-") for m in modes]
        a.bar([i - 0.2 for i in x], [m["ttft_p50_ms"] for m in modes], width=0.4, label="p50")
        a.bar([i + 0.2 for i in x], [m["ttft_p99_ms"] for m in modes], width=0.4, label="p99")
        a.set_xticks(list(x), names)
        title = "time to first token, ms (lower is better)"
        if ratio is not None:
            title += f"\naffinity / least-outstanding p50 = {ratio:.2f} (target <= 0.7)"
        a.set_title(title, fontsize=10)
        a.legend()
    if loss:
        b = next(left)
        ok = loss["ok_per_s"]
        secs = list(range(len(ok)))
        b.plot(secs, ok, drawstyle="steps-post", color="#1f77b4", alpha=0.5,
               label="completed requests/s")
        smooth = [sum(ok[max(0, i - 2):i + 1]) / len(ok[max(0, i - 2):i + 1]) for i in secs]
        b.plot([t + 1 for t in secs], smooth, color="#1f77b4", label="3 s mean")
        b.bar(secs, loss["errors_per_s"], width=0.9, align="edge", color="#d62728",
              label="errors/s")
        b.axvline(loss["kill_s"], color="#d62728", ls="--", label="SIGKILL replica 2")
        b.axvline(loss["restart_s"], color="#2ca02c", ls="--", label="restart")
        b.axvline(loss["ready_s"], color="#999999", ls="-.", label="llama-server ready")
        if loss["back_s"] is not None:
            b.axvline(loss["back_s"], color="#2ca02c", ls=":", label="replica 2 takes traffic")
        b.set_xlabel("seconds")
        b.set_title(f"replica loss ({loss['routing'].replace('_', '-')}, "
                    f"{loss['users']} users)", fontsize=10)
        b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(modes: list[dict[str, Any]], ratio: float | None, loss: dict[str, Any] | None,
             meta: dict[str, Any]) -> str:
    sp = meta["system_prompt_tokens"]
    sizes = f"{min(sp)}-{max(sp)}" if sp else "several hundred"
    lines: list[str] = []
    head = [
        f"{meta['date']}, {meta['machine']}: two llama-server replicas ({meta['model']}, "
        f"`{meta['llama_server_args']}`) behind oasis; {meta['users']} users x {meta['turns']} "
        f"turns of streaming chat ({meta['max_tokens']} tokens per answer), users sharing 4 "
        f"system prompts of {sizes} tokens, arriving {meta['arrival_s']:g} s apart and pausing "
        f"~{meta['think_s']:g} s between turns; each mode on freshly started replicas (empty "
        f"caches), order {' '.join(m.replace('_', '-') for m in meta['order'])}.",
        "",
        "| routing | TTFT p50 ms | TTFT p99 ms | tokens/s | requests/s | cached prompt tokens | "
        "requests per replica |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    if modes:
        lines += head
    for m in modes:
        share = f"{m['cached_share']:.0%}" if m["cached_share"] is not None else "-"
        split = " + ".join("/".join(str(n) for n in run) for run in m["replica_requests"])
        hashed = [h for h in m["users_hashed_to_replica"] if h]
        if hashed:
            split += " (users by hash: " + ", ".join("/".join(map(str, h)) for h in hashed) + ")"
        lines.append(f"| {m['mode'].replace('_', '-')} | {m['ttft_p50_ms']:.0f} | "
                     f"{m['ttft_p99_ms']:.0f} | {m['tokens_per_s']:.1f} | "
                     f"{m['requests_per_s']:.2f} | {share} | {split} |")
    if ratio is not None:
        verdict = "met" if ratio <= 0.7 else "not met"
        lines += ["", f"Affinity / least-outstanding TTFT p50: **{ratio:.2f}** "
                      f"(target <= 0.7: {verdict})."]
    if loss:
        if not modes:
            lines += [f"{meta['date']}, {meta['machine']}: two llama-server replicas "
                      f"({meta['model']}, `{meta['llama_server_args']}`) behind oasis."]
        lines += [
            "",
            f"Replica loss ({loss['routing'].replace('_', '-')}, {loss['users']} users in short "
            f"chats, {loss['seconds']:.0f} s: {loss['planned_s']:.0f} planned, extended until "
            f"the restarted replica had taken traffic for 10 s): replica 2 SIGKILLed at "
            f"{loss['kill_s']:.0f} s, restarted at {loss['restart_s']:.0f} s. "
            f"{loss['requests']} requests, {loss['errors']} errors "
            f"({_kinds(loss['errors_by_kind'])}), {loss['retries']} retries by oasis; "
            f"requests/s before the kill / until replica 2 takes traffic again / after: "
            f"{_rate(loss['before'])} / {_rate(loss['down'])} / {_rate(loss['after'])}. "
            f"Healthy again in /admin/backends "
            f"{_secs(loss['healthy_after_restart_s'])} after the restart, traffic after "
            f"{_secs(loss['traffic_after_restart_s'])} (llama-server took "
            f"{loss['ready_s'] - loss['restart_s']:.1f} s to load).",
        ]
    return "\n".join(lines)


def _rate(w: dict[str, Any] | None) -> str:
    return f"{w['requests_per_s']:.2f}" if w and w["requests_per_s"] is not None else "-"


def _secs(s: float | None) -> str:
    return f"{s:.1f} s" if s is not None else "never"


def _kinds(kinds: dict[str, int]) -> str:
    return ", ".join(f"{n} {k}" for k, n in kinds.items()) or "none"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=16)
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--think", type=float, default=4.0,
                    help="mean seconds a user waits between a reply and its next message "
                         "(uniform, 0.5x to 1.5x, the same draws in every mode)")
    ap.add_argument("--arrival", type=float, default=0.5,
                    help="seconds between one user's first message and the next user's")
    ap.add_argument("--rounds", type=int, default=1,
                    help="2: run the modes again in the reverse order (A B B A)")
    ap.add_argument("--skip-routing", action="store_true")
    ap.add_argument("--loss-seconds", type=float, default=40.0)
    ap.add_argument("--loss-users", type=int, default=8)
    ap.add_argument("--loss-turns", type=int, default=3)
    ap.add_argument("--loss-max-tokens", type=int, default=16)
    ap.add_argument("--loss-routing", choices=MODES, default="affinity")
    ap.add_argument("--loss-extend", type=float, default=45.0,
                    help="at most this many seconds more, until the restarted replica takes "
                         "traffic again")
    ap.add_argument("--skip-loss", action="store_true")
    ap.add_argument("--no-readme", action="store_true")
    args = ap.parse_args()

    model = bundled_model_path()
    RESULTS.mkdir(parents=True, exist_ok=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    with console.status("building llama-server (first run only: several minutes)"):
        binary = build_llama_server(CACHE / "build.log")
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True)
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    work = CACHE / f"routing-{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True)
    env = {"OASIS_LOG_LEVEL": "warning", "OASIS_DATA_DIR": str(work / "data")}
    oasis_toml(work / "keys.toml", [1, 2], "least_outstanding")  # any valid config will do
    key_env = {**env, "OASIS_CONFIG": str(work / "keys.toml")}
    key, admin = make_key(key_env), admin_key(key_env)

    # the longest conversation: a system prompt (~600 tokens), then per turn a question
    # (~30), an answer and the chat template's tags (~10); rounded up with room to spare
    need = 600 + (args.turns + 1) * (40 + args.max_tokens)
    per_slot = max(1024, math.ceil(need * 1.25 / 256) * 256)
    ctx = SLOTS * per_slot
    order = [m for r in range(args.rounds) for m in (MODES if r % 2 == 0 else MODES[::-1])]

    runs: list[ModeRun] = []
    loss: dict[str, Any] | None = None
    sys_tokens: list[int] = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as progress:
        if not args.skip_routing:
            task = progress.add_task("routing", total=len(order) * args.users * args.turns)
            for n, mode in enumerate(order):
                run = run_mode(mode, n // 2 + 1, args, binary, model, ctx, env, key, admin, work,
                               progress, task)
                runs.append(run)
                sys_tokens = run.system_tokens
                ok = [c for c in run.calls if c.ok]
                progress.console.print(
                    f"{mode} (round {run.round}): {len(ok)}/{len(run.calls)} ok in "
                    f"{run.wall_s:.1f} s, TTFT p50 "
                    f"{pct(ttfts(ok), 50) * 1000:.0f} ms, requests per replica "
                    f"{[r['requests'] for r in run.replicas]}"
                    + (f", users by hash {run.hashed}" if run.hashed else ""))
        if not args.skip_loss:
            fleet = Fleet.make(binary, model, ctx, args.loss_routing, env, work,
                               f"loss-{args.loss_routing}")
            task = progress.add_task(f"replica loss ({args.loss_routing}): starting",
                                     total=args.loss_seconds)
            try:
                fleet.start()
                progress.update(task, description=f"replica loss ({args.loss_routing})")
                loss = asyncio.run(loss_run(fleet, key, admin, args, progress, task))
            finally:
                fleet.stop()

    modes = [summarize(m, [r for r in runs if r.mode == m]) for m in MODES
             if any(r.mode == m for r in runs)]
    by = {m["mode"]: m for m in modes}
    ratio = None
    if len(by) == 2 and by["least_outstanding"]["ttft_p50_ms"]:
        ratio = round(by["affinity"]["ttft_p50_ms"] / by["least_outstanding"]["ttft_p50_ms"], 3)

    date = dt.date.today().isoformat()
    meta = {
        "date": date, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(), "oasis_commit": commit, "model": model.name,
        "llama_server_version": (version.stdout + version.stderr).strip().splitlines()[-2:],
        "llama_server_args": " ".join(a for a in llama_argv(binary, model, 0, ctx)[7:]
                                      if a != "--no-webui"),
        "llama_server_choices": LLAMA_CHOICES, "per_slot_ctx": per_slot,
        "oasis_pool": POOL, "users": args.users, "turns": args.turns,
        "max_tokens": args.max_tokens, "think_s": args.think, "arrival_s": args.arrival,
        "think_note": "users pause (0.5x-1.5x think_s) between an answer and their next "
                      "message, as people reading and typing do; with no pause, "
                      "least-outstanding is sticky in a closed loop (a user's own finished "
                      "request leaves its replica with the fewest in flight), so most of its "
                      "requests find their history anyway",
        "rounds": args.rounds,
        "order": order,
        "order_note": "the llama-servers and oasis are restarted before every mode, so each "
                      "starts with empty prompt caches; --rounds 2 repeats the modes in reverse "
                      "order (A B B A) and pools both runs of a mode",
        "system_prompt_tokens": sys_tokens or None,
        "ttft": "from sending the request to the first chunk with content, at the client",
        "tokens_per_s": "completion tokens of successful requests / wall time of the run",
    }
    out = RESULTS / f"{date}-routing.json"
    out.write_text(json.dumps({
        "meta": meta,
        "routing": {"modes": modes, "ttft_p50_ratio": ratio,
                    "target_met": ratio is not None and ratio <= 0.7,
                    "calls": [{**asdict(c), "mode": r.mode, "round": r.round, "text": None}
                              for r in runs for c in r.calls]},
        "loss": loss,
    }, indent=1, default=str))
    png = RESULTS / f"{date}-routing.png"
    chart(modes, ratio, loss, png)

    if modes:
        t = Table(title="routing: least-outstanding vs affinity")
        for col in ("routing", "TTFT p50", "TTFT p99", "tok/s", "req/s", "cached", "replicas",
                    "failed"):
            t.add_column(col)
        for m in modes:
            share = f"{m['cached_share']:.0%}" if m["cached_share"] is not None else "-"
            t.add_row(m["mode"], f"{m['ttft_p50_ms']:.0f}", f"{m['ttft_p99_ms']:.0f}",
                      f"{m['tokens_per_s']:.1f}", f"{m['requests_per_s']:.2f}", share,
                      str(m["replica_requests"]), str(m["failed"]))
        console.print(t)
        if ratio is not None:
            console.print(f"affinity / least-outstanding TTFT p50 = {ratio:.2f} (target <= 0.7: "
                          f"{'met' if ratio <= 0.7 else 'not met'})")
    if loss:
        console.print(
            f"replica loss: {loss['requests']} requests, {loss['errors']} errors "
            f"{loss['errors_by_kind']}; req/s before {_rate(loss['before'])}, down "
            f"{_rate(loss['down'])}, after {_rate(loss['after'])}; healthy "
            f"{_secs(loss['healthy_after_restart_s'])} and traffic "
            f"{_secs(loss['traffic_after_restart_s'])} after the restart")
    console.print(f"saved {out.relative_to(ROOT)} and {png.relative_to(ROOT)}")
    if not args.no_readme:
        block = markdown(modes, ratio, loss, meta)
        replace_readme_block("routing", f"{block}\n\n![routing benchmark]({png.relative_to(ROOT)})")


if __name__ == "__main__":
    main()
