"""The engine's limit without HTTP: llama.cpp's llama-batched-bench on the same llama.cpp.

llama-batched-bench (tools/batched-bench in llama-cpp-python's vendored llama.cpp, built by
bench/llama_server.py with the same CMake flags) decodes ``npl`` sequences of ``npp`` random
prompt tokens, then ``ntg`` tokens each in one batch per step: no HTTP, no scheduling, no
sampling, no detokenisation. Its generation speed (S_TG) at B parallel sequences is what the
engine alone can do, the ceiling for any server's tokens/s at concurrency B.

    python -m bench.batched_bench [--npl 1,4,8,16,32] [--ntg 128] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path

from bench.llama_server import build
from oasis.models.registry import bundled_model_path

TARGET = "llama-batched-bench"

# Prompt tokens per sequence: the benchmark chats as the model sees them. SmolLM2's chat
# template wraps bench/engine.py's one-sentence questions (6-10 tokens) in its default system
# prompt and the role markers, about 30-35 tokens in all.
PROMPT_TOKENS = 32

# Logical and physical batch size: what bench/engine.py gives llama-server (-b/-ub 512).
BATCH = 512


def flags(
    threads: int, ctx: int, npp: int, ntg: int, npl: list[int], batch: int = BATCH
) -> list[str]:
    """llama-batched-bench's arguments besides the model (common/arg.cpp in the vendored tree).

    - ``-c``: total KV size, as llama-server's ``-c``. batched-bench sets n_seq_max to
      max(npl) (batched-bench.cpp: ``ctx_params.n_seq_max = ... max_element(n_pl)``), so
      each sequence gets ctx / max(npl) cells, as each of llama-server's ``-np max(npl)``
      slots does; a level with npl * (npp + ntg) > ctx is skipped by the tool.
    - ``--no-kv-unified``: one KV stream per sequence, as oasis (kv_unified=false) and
      llama-server with an explicit ``-np``. common_params.kv_unified already defaults to
      false (common.h) and batched-bench does not change it; stated so that the
      LLAMA_ARG_KV_UNIFIED environment variable cannot turn it on.
    - no ``-pps``: every sequence has its own prompt (N_KV = B * (PP + TG)), as the chats.
    - no ``-tgs``: all sequences decode together, one token each per step, as a server does.
    """
    return (
        f"-c {ctx} -b {batch} -ub {batch} -t {threads} -tb {threads} --no-kv-unified "
        f"-npp {npp} -ntg {ntg} -npl {','.join(str(n) for n in npl)}"
    ).split()


def parse(text: str) -> dict[int, float]:
    """{B: S_TG tokens/s} from batched-bench's markdown table (stdout, default ``md`` format).

    The columns are found by name in the header row
    ``|    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s | ...``.
    """
    out: dict[int, float] = {}
    cols: list[str] = []
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if "S_TG t/s" in cells:
            cols = cells
            continue
        if not cols or len(cells) != len(cols):
            continue
        try:
            row = dict(zip(cols, cells, strict=True))
            out[int(row["B"])] = float(row["S_TG t/s"])
        except (KeyError, ValueError):  # the |-----|-----| rule under the header
            continue
    return out


def run(
    model: Path,
    threads: int,
    ctx: int,
    npp: int,
    ntg: int,
    npl: list[int],
    *,
    batch: int = BATCH,
    log: Path | None = None,
) -> dict[int, float]:
    """Run llama-batched-bench (built on first use): {parallel: S_TG tokens/s} for npl.

    Levels the tool skipped (not enough context) are missing from the answer. Its log (model
    loading, timings) is appended to ``log`` if given.
    """
    binary = build(log, target=TARGET)
    argv = [str(binary), "-m", str(model), *flags(threads, ctx, npp, ntg, npl, batch)]
    if log is None:
        proc = subprocess.run(argv, capture_output=True, text=True)
    else:
        with open(log, "a") as err:
            proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=err, text=True)
    if proc.returncode != 0:
        where = proc.stderr[-2000:] if log is None else f"see {log}"
        raise SystemExit(f"{TARGET} exited with {proc.returncode}: {where}")
    return parse(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--npl", default="1,4,8,16,32")
    ap.add_argument("--npp", type=int, default=PROMPT_TOKENS)
    ap.add_argument("--ntg", type=int, default=128)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    npl = [int(n) for n in args.npl.split(",")]
    limit = run(bundled_model_path(), args.threads, max(npl) * 1024, args.npp, args.ntg, npl)
    for n, tps in limit.items():
        print(f"{n:4d} {tps:8.1f} tokens/s")


if __name__ == "__main__":
    main()
