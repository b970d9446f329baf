"""One real `oasis serve` on the bundled model, shared by every integration test of a session."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from openai import AsyncOpenAI, OpenAI

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-oasis-integration-key"


@dataclass
class LiveServer:
    base_url: str  # http://127.0.0.1:PORT
    api_key: str
    log: Path

    @property
    def v1(self) -> str:
        return f"{self.base_url}/v1"

    def metric(self, name: str) -> float:
        """One sample of GET /metrics (the bundled model's)."""
        text = httpx.get(f"{self.base_url}/metrics", timeout=10,
                         headers={"Authorization": f"Bearer {self.api_key}"}).text
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        raise KeyError(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(tmp: Path, **env_overrides: str) -> tuple[subprocess.Popen[bytes], LiveServer]:
    """`oasis serve` as a user starts it, configured through OASIS_* variables."""
    port = int(env_overrides.get("OASIS_PORT") or _free_port())  # a restart keeps its port
    log = tmp / "server.log"
    env = {**os.environ, "OASIS_DATA_DIR": str(tmp / "data"), "OASIS_PORT": str(port),
           "OASIS_API_KEY": KEY, **env_overrides}
    env.pop("OASIS_CONFIG", None)
    oasis = Path(sys.executable).with_name("oasis")
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(oasis), "serve"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, cwd=tmp)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            pytest.fail(f"oasis serve exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"oasis serve did not become healthy:\n{log.read_text()}")
        time.sleep(0.2)
    return proc, LiveServer(base, KEY, log)


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The shared server: 8 slots of 2048 tokens."""
    proc, server = start_server(tmp_path_factory.mktemp("live"), OASIS_PARALLEL="8",
                                OASIS_CTX_SIZE="16384")
    yield server
    stop_server(proc)


@pytest.fixture(scope="session")
def sdk(live: LiveServer) -> OpenAI:
    return OpenAI(base_url=live.v1, api_key=live.api_key, max_retries=0, timeout=120)


@pytest.fixture
def async_sdk(live: LiveServer) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=live.v1, api_key=live.api_key, max_retries=0, timeout=120)
