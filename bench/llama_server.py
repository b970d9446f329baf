"""Build llama.cpp's tools (llama-server, llama-batched-bench) from llama-cpp-python's source.

The source is llama-cpp-python's own sdist (its vendor/llama.cpp), fetched from PyPI with pip,
built once per target and version with the Makefile's CMake flags into bench/.cache/.

    python -m bench.llama_server [llama-server | llama-batched-bench]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tarfile
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "bench" / ".cache"
TARGETS = ["llama-server", "llama-batched-bench"]  # the ones the benchmarks use
PIP_DOWNLOAD = ["-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
# Tools (llama-batched-bench among them) are on by default for a top-level build; stated since
# the benchmarks need them.
CMAKE_OPTIONS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DBUILD_SHARED_LIBS=OFF",
]


def cmake_flags() -> list[str]:
    """The LLAMA_CMAKE_ARGS of the Makefile: the same flags as the Python bindings."""
    text = (ROOT / "Makefile").read_text()
    m = re.search(r"^LLAMA_CMAKE_ARGS\s*:=\s*(.+)$", text, re.M)
    if not m:
        raise SystemExit("LLAMA_CMAKE_ARGS not found in the Makefile")
    return m.group(1).split()


def source(ver: str) -> Path:
    """The vendored llama.cpp of llama-cpp-python ``ver``, downloaded and extracted once."""
    src_dir = CACHE / "src"
    src_dir.mkdir(parents=True, exist_ok=True)
    sdist = src_dir / f"llama_cpp_python-{ver}.tar.gz"
    if not sdist.exists():
        pip = [sys.executable, *PIP_DOWNLOAD, f"llama-cpp-python=={ver}", "-d", str(src_dir)]
        subprocess.run(pip, check=True)
    tree = src_dir / f"llama_cpp_python-{ver}"
    if not tree.exists():
        with tarfile.open(sdist) as tar:
            tar.extractall(src_dir, filter="data")
    return tree / "vendor" / "llama.cpp"


def build(log: Path | None = None, target: str = "llama-server") -> Path:
    """Return the path of llama.cpp's ``target`` binary, building it on first use.

    All targets share one CMake build directory per version (one configuration: a second
    target compiles only its own sources), and each binary is copied to
    bench/.cache/<target>-<version>/bin/.
    """
    ver = version("llama-cpp-python")
    out = CACHE / f"{target}-{ver}"
    binary = out / "bin" / target
    if binary.exists():
        return binary
    llama = source(ver)
    build_dir = CACHE / f"build-{ver}"
    configure = ["cmake", "-S", str(llama), "-B", str(build_dir), *CMAKE_OPTIONS, *cmake_flags()]
    sink = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    try:
        subprocess.run(configure, check=True, stdout=sink, stderr=sink)
        subprocess.run(
            ["cmake", "--build", str(build_dir), "--target", target, "-j2"],
            check=True,
            stdout=sink,
            stderr=sink,
        )
    finally:
        if log:
            sink.close()  # type: ignore[union-attr]
    (out / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(build_dir / "bin" / target, binary)
    return binary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("target", nargs="?", default="llama-server", choices=TARGETS)
    print(build(target=ap.parse_args().target))


if __name__ == "__main__":
    main()
