"""What a draft costs and what it changes: llama.cpp's decode of one sequence, B tokens at once.

1. Step cost: the time of one ``llama_decode`` of B tokens of one sequence (after a 200-token
   context), median of 15, for B = 1 .. 32: what decoding B - 1 guessed tokens with the next
   one costs, against decoding one.
2. Batch shape: the largest difference between the logits of K tokens decoded one at a time and
   the same K tokens decoded in one batch, after a context of C tokens. Zero means the engine
   computes those rows bit for bit the same, so a draft changes nothing.

Saves bench/results/<date>-batch-shapes.json.

    python -m bench.batch_shapes [--threads 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import time
from typing import Any

import llama_cpp as L
import numpy as np

from bench.engine import RESULTS, console
from oasis.engine.llamacpp.model import LoadedModel
from oasis.engine.llamacpp.sampling import logits_row
from oasis.models.registry import bundled_model_path

TEXT = "The quick brown fox jumps over the lazy dog and keeps running far away. " * 40


class Decoder:
    def __init__(self, model: LoadedModel, threads: int) -> None:
        params = L.llama_context_default_params()
        params.n_ctx = 8192
        params.n_batch = params.n_ubatch = 512
        params.n_threads = params.n_threads_batch = threads
        params.n_seq_max = 2
        params.kv_unified = False
        self.model = model
        self.ctx = L.llama_init_from_model(model.model, params)
        self.mem = L.llama_get_memory(self.ctx)
        self.batch = L.llama_batch_init(512, 0, 1)

    def decode(self, tokens: list[int], start: int, seq: int, logits: bool = True) -> None:
        b = self.batch
        for i, t in enumerate(tokens):
            b.token[i], b.pos[i], b.n_seq_id[i] = t, start + i, 1
            b.seq_id[i][0] = seq
            b.logits[i] = logits
        b.n_tokens = len(tokens)
        if L.llama_decode(self.ctx, b) != 0:
            raise SystemExit("llama_decode failed")

    def rows(self, n: int) -> list[np.ndarray[Any, Any]]:
        return [logits_row(self.ctx, i, self.model.n_vocab).copy() for i in range(n)]

    def clear(self) -> None:
        L.llama_memory_seq_rm(self.mem, 0, -1, -1)
        L.llama_memory_seq_rm(self.mem, 1, -1, -1)


def step_cost(d: Decoder, sizes: list[int]) -> dict[int, float]:
    context = d.model.tokenize(TEXT, add_special=False, parse_special=False)[:200]
    d.decode(context, 0, 0, logits=False)
    out = {}
    for n in sizes:
        times = []
        for _ in range(15):
            t0 = time.perf_counter()
            d.decode(list(range(100, 100 + n)), 200, 0)
            times.append(time.perf_counter() - t0)
            L.llama_memory_seq_rm(d.mem, 0, 200, -1)
        out[n] = round(statistics.median(times) * 1000, 2)
    d.clear()
    return out


def shape_diff(d: Decoder, context: int, k: int) -> float:
    prompt = d.model.tokenize(TEXT, add_special=False, parse_special=False)[:context]
    follow = list(range(300, 300 + k))
    d.decode(prompt, 0, 0, logits=False)
    one = []
    for j, t in enumerate(follow):
        d.decode([t], context + j, 0)
        one.append(d.rows(1)[0])
    d.decode(prompt, 0, 1, logits=False)
    d.decode(follow, context, 1)
    together = d.rows(k)
    d.clear()
    return round(max(float(np.abs(a - b).max()) for a, b in zip(one, together, strict=True)), 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    model = LoadedModel.load(bundled_model_path())
    d = Decoder(model, args.threads)
    with console.status("step cost"):
        cost = step_cost(d, [1, 2, 3, 4, 8, 16, 32])
    console.print("step ms by batch size:", cost)
    shapes = {}
    with console.status("batch shapes"):
        for context in (50, 200, 255, 256, 300):
            for k in (2, 16, 63, 64):
                shapes[f"context {context}, {k} tokens"] = shape_diff(d, context, k)
    console.print("largest logit difference, one at a time vs one batch:", shapes)
    date = dt.date.today().isoformat()
    out = RESULTS / f"{date}-batch-shapes.json"
    out.write_text(json.dumps({
        "meta": {"date": date, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                 "threads": args.threads, "model": bundled_model_path().name},
        "step_ms": cost, "max_logit_difference": shapes}, indent=1))
    console.print(f"saved {out}")


if __name__ == "__main__":
    main()
