"""The README's curl and SDK examples, run as written against the live server."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.integration.conftest import ROOT, LiveServer

BLOCK = re.compile(r"<!-- readme-test: ([\w-]+) -->\n```\w+\n(.*?)```", re.S)


def examples() -> dict[str, str]:
    found = dict(BLOCK.findall((ROOT / "README.md").read_text()))
    assert set(found) == {"curl", "python", "python-apps", "python-tools", "upstream-config",
                          "python-embeddings", "python-batch"}, found
    return found


def as_written(code: str, live: LiveServer) -> str:
    """The example with only the address and key of the test server put in."""
    assert "http://127.0.0.1:8000" in code
    return code.replace("http://127.0.0.1:8000", live.base_url).replace("sk-local",
                                                                        live.api_key)


def test_curl_example(live: LiveServer) -> None:
    proc = subprocess.run(["bash", "-c", as_written(examples()["curl"], live)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    body = json.loads(proc.stdout)
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"]


@pytest.mark.parametrize("name", ["python", "python-apps", "python-tools",
                                  "python-embeddings", "python-batch"])
def test_python_example(live: LiveServer, name: str) -> None:
    proc = subprocess.run([sys.executable, "-c", as_written(examples()[name], live)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) >= 2
