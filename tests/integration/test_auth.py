"""The first `oasis serve` on an empty database prints an admin key; that key works."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from tests.integration.conftest import _free_port

KEY = re.compile(r"sk-oasis-[A-Za-z0-9]{8}-[0-9a-f]{64}")


def serve(tmp: Path, port: int) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "OASIS_DATA_DIR": str(tmp), "OASIS_PORT": str(port)}
    for name in ("OASIS_API_KEY", "OASIS_NO_AUTH", "OASIS_DATABASE_URL", "OASIS_CONFIG"):
        env.pop(name, None)
    proc = subprocess.Popen([str(Path(sys.executable).with_name("oasis")), "serve"], env=env,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            cwd=tmp)
    assert proc.stderr is not None
    printed = ""
    deadline = time.monotonic() + 120
    for line in proc.stderr:
        printed += line
        if "OpenAI-compatible API at" in line or time.monotonic() > deadline:
            break
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    return proc, printed


def test_first_start_prints_an_admin_key_once(tmp_path: Path) -> None:
    port = _free_port()
    proc, printed = serve(tmp_path, port)
    try:
        found = KEY.findall(printed)
        assert len(found) == 1, printed
        base = f"http://127.0.0.1:{port}/v1"
        sdk = OpenAI(base_url=base, api_key=found[0], max_retries=0)
        assert [m.id for m in sdk.models.list()]
        with pytest.raises(openai.AuthenticationError):
            OpenAI(base_url=base, api_key="sk-oasis-wrong", max_retries=0).models.list()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    proc, printed = serve(tmp_path, port)  # the database has a key now: none is printed
    try:
        assert not KEY.findall(printed)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
