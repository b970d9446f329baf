"""Build llama.cpp's llama-server from the same source as the installed llama-cpp-python.

The source is llama-cpp-python's own sdist (its vendor/llama.cpp), fetched from PyPI with pip,
built once with the Makefile's CMake flags into bench/.cache/.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "bench" / ".cache"


def cmake_flags() -> list[str]:
    """The LLAMA_CMAKE_ARGS of the Makefile: the same flags as the Python bindings."""
    text = (ROOT / "Makefile").read_text()
    m = re.search(r"^LLAMA_CMAKE_ARGS\s*:=\s*(.+)$", text, re.M)
    if not m:
        raise SystemExit("LLAMA_CMAKE_ARGS not found in the Makefile")
    return m.group(1).split()


def build(log: Path | None = None) -> Path:
    """Return the path of a llama-server binary, building it on first use."""
    ver = version("llama-cpp-python")
    out = CACHE / f"llama-server-{ver}"
    binary = out / "bin" / "llama-server"
    if binary.exists():
        return binary
    src_dir = CACHE / "src"
    src_dir.mkdir(parents=True, exist_ok=True)
    sdist = src_dir / f"llama_cpp_python-{ver}.tar.gz"
    if not sdist.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--no-binary", ":all:", f"llama-cpp-python=={ver}", "-d", str(src_dir)],
                       check=True)
    tree = src_dir / f"llama_cpp_python-{ver}"
    if not tree.exists():
        with tarfile.open(sdist) as tar:
            tar.extractall(src_dir, filter="data")
    llama = tree / "vendor" / "llama.cpp"
    build_dir = CACHE / f"build-{ver}"
    sink = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    try:
        subprocess.run(["cmake", "-S", str(llama), "-B", str(build_dir),
                        "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF",
                        "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
                        "-DLLAMA_BUILD_SERVER=ON", "-DBUILD_SHARED_LIBS=OFF", *cmake_flags()],
                       check=True, stdout=sink, stderr=sink)
        subprocess.run(["cmake", "--build", str(build_dir), "--target", "llama-server", "-j2"],
                       check=True, stdout=sink, stderr=sink)
    finally:
        if log:
            sink.close()  # type: ignore[union-attr]
    (out / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(build_dir / "bin" / "llama-server", binary)
    return binary


if __name__ == "__main__":
    print(build())
