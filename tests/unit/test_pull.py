"""`oasis pull` from a fake Hugging Face Hub (tests/fake_hub.py), as a person types it.

The CLI runs as a subprocess with ``HF_ENDPOINT`` pointing at the fake hub (huggingface_hub
reads it when imported); a few edge cases call ``oasis.models.hub.pull`` directly with
``endpoint=``. The files served are real, small GGUF files written with gguf's GGUFWriter.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pexpect
import pytest

from oasis.cli.models import human_size
from oasis.errors import InvalidRequestError, ModelPullError
from oasis.models.hub import HubFile, choose_file, pull
from oasis.models.store import ModelStore
from tests.fake_hub import FakeHub, make_gguf

OASIS = str(Path(sys.executable).with_name("oasis"))
MIB = 1 << 20
CHUNK = 10 * MIB  # huggingface_hub writes what it received in chunks of this size

TINY = "acme/Tiny-GGUF"
TINY_FILES = {
    "tiny-Q8_0.gguf": make_gguf(file_type=7, seed=1, tensor_bytes=8192),
    "tiny-Q4_K_M.gguf": make_gguf(file_type=15, seed=2),
    "tiny-Q4_K_S.gguf": make_gguf(file_type=14, seed=3),
    "mmproj-tiny-f16.gguf": make_gguf(arch="clip", file_type=1, seed=4, tensor_bytes=64),
    "tiny-Q6_K-00001-of-00002.gguf": make_gguf(file_type=18, seed=5),
    "tiny-Q6_K-00002-of-00002.gguf": b"second part",
    "README.md": b"# tiny\n",
}
BIG = "acme/Big-GGUF"
BIG_FILE = "big-Q4_K_M.gguf"
BIG_BYTES = make_gguf(file_type=15, seed=6, tensor_bytes=12 * MIB)


@pytest.fixture(scope="module")
def hub() -> Iterator[FakeHub]:
    fake = FakeHub()
    fake.add(TINY, TINY_FILES)
    fake.add(BIG, {BIG_FILE: BIG_BYTES})
    fake.add(
        "acme/Gated-GGUF",
        {"gated-Q4_K_M.gguf": make_gguf(seed=7)},
        gated=True,
        allowed_tokens={"hf_good"},
    )
    fake.add("acme/Fake-GGUF", {"model-Q4_K_M.gguf": b"<html>not a model</html>\n" * 40})
    fake.add("acme/Safetensors", {"model.safetensors": b"\0" * 64, "config.json": b"{}"})
    with fake.running():
        yield fake


@pytest.fixture(autouse=True)
def fresh(hub: FakeHub) -> Iterator[None]:
    yield
    hub.requests.clear()
    hub.cut_after = hub.stall_after = None
    hub.cut_times = 0
    hub.corrupt.clear()
    hub.release()
    hub.stalled = threading.Event()
    hub._release = threading.Event()


def env(hub: FakeHub, tmp: Path, **extra: str) -> dict[str, str]:
    e = {
        **os.environ,
        "OASIS_DATA_DIR": str(tmp / "data"),
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp / "hf"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "COLUMNS": "200",
    }
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "OASIS_DATABASE_URL"):
        e.pop(name, None)
    e.update(extra)
    return e


def oasis(hub: FakeHub, tmp: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OASIS, *args],
        env=env(hub, tmp, **extra),
        capture_output=True,
        text=True,
        cwd=tmp,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


def one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, r.stderr
    return lines[0]


def listed_by_cli(hub: FakeHub, tmp: Path) -> list[dict[str, object]]:
    r = oasis(hub, tmp, "models", "list", "--json")
    assert r.returncode == 0, r.stderr
    data: list[dict[str, object]] = json.loads(r.stdout)
    return data


def listed(hub: FakeHub, tmp: Path) -> list[dict[str, object]]:
    """What `oasis models list --json` prints (read in-process: a CLI start is a second)."""
    return [{**asdict(m), "path": str(m.path)} for m in ModelStore(tmp / "data/models").list()]


def partial_files(tmp: Path) -> list[Path]:
    partial = tmp / "data" / "models" / ".partial"
    return sorted(p for p in partial.rglob("*") if p.is_file()) if partial.exists() else []


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- choosing the file -----------------------------------------------------------------------


def test_pull_takes_q4_k_m_and_lists_it(hub: FakeHub, tmp_path: Path) -> None:
    r = oasis(hub, tmp_path, "pull", TINY)
    assert r.returncode == 0, r.stderr
    assert "pulled tiny" in r.stderr and "oasis serve --model tiny" in r.stderr
    models = listed_by_cli(hub, tmp_path)
    assert models == listed(hub, tmp_path)
    assert [m["name"] for m in models] == ["tiny"]
    m = models[0]
    data = TINY_FILES["tiny-Q4_K_M.gguf"]
    assert m["quantization"] == "Q4_K_M" and m["architecture"] == "llama"
    assert m["context_length"] == 4096 and m["chat_template"] is True
    assert m["size"] == len(data) and m["sha256"] == sha(data)
    commit = hub.repos[TINY].commit
    assert m["source"] == f"hf:{TINY}/tiny-Q4_K_M.gguf@{commit}"
    path = Path(str(m["path"]))
    assert path == tmp_path / "data" / "models" / "tiny" / "tiny-Q4_K_M.gguf"
    assert path.read_bytes() == data
    # one file downloaded (not the projector, not a split part), from the listed commit
    assert [d.path for d in hub.downloads()] == [f"/cdn/{sha(data)}"]
    resolves = [s.path for s in hub.requests if "/resolve/" in s.path]
    assert resolves == [f"/{TINY}/resolve/{commit}/tiny-Q4_K_M.gguf"]
    assert partial_files(tmp_path) == []

    # the table a pipe gets: a header and tab-separated rows
    table = oasis(hub, tmp_path, "models", "list")
    lines = table.stdout.splitlines()
    assert lines[0].split("\t") == ["name", "size", "quant", "context", "architecture", "source"]
    assert lines[1].split("\t")[:5] == ["tiny", human_size(len(data)), "Q4_K_M", "4096", "llama"]

    shown = oasis(hub, tmp_path, "models", "show", "tiny")
    assert shown.returncode == 0, shown.stderr
    assert "path:" in shown.stdout and str(path) in shown.stdout
    assert sha(data) in shown.stdout and "Q4_K_M" in shown.stdout
    as_json = json.loads(oasis(hub, tmp_path, "models", "show", "tiny", "--json").stdout)
    assert as_json == m


def test_quant_and_file_pick_others(hub: FakeHub, tmp_path: Path) -> None:
    r = oasis(hub, tmp_path, "pull", TINY, "--quant", "q8_0", "--name", "tiny-q8", "--json")
    assert r.returncode == 0, r.stderr
    pulled = json.loads(r.stdout)
    assert pulled["name"] == "tiny-q8" and pulled["quantization"] == "Q8_0"
    assert pulled["sha256"] == sha(TINY_FILES["tiny-Q8_0.gguf"])
    r = oasis(hub, tmp_path, "pull", TINY, "--file", "tiny-Q4_K_S.gguf", "--name", "tiny-s")
    assert r.returncode == 0, r.stderr
    names = {m["name"]: m["quantization"] for m in listed(hub, tmp_path)}
    assert names == {"tiny-q8": "Q8_0", "tiny-s": "Q4_K_S"}


def test_a_wrong_quant_is_one_line_naming_the_choices(hub: FakeHub, tmp_path: Path) -> None:
    line = one_error_line(oasis(hub, tmp_path, "pull", TINY, "--quant", "Q2_K"))
    assert "has no Q2_K file; its quantizations: Q4_K_M, Q4_K_S, Q8_0" in line
    line = one_error_line(oasis(hub, tmp_path, "pull", TINY, "--quant", "q4_k"))
    assert "matches several files" in line and "tiny-Q4_K_S.gguf" in line
    assert hub.downloads() == []


FILES = [HubFile(p, len(b), sha(b)) for p, b in TINY_FILES.items()]


def test_choose_file() -> None:
    assert choose_file(FILES, repo=TINY).path == "tiny-Q4_K_M.gguf"
    assert choose_file(FILES, repo=TINY, quant="Q4_K_S").path == "tiny-Q4_K_S.gguf"
    assert choose_file(FILES, repo=TINY, file="mmproj-tiny-f16.gguf").path.startswith("mmproj")
    # without Q4_K_M: the next in the preference order, else the smallest
    rest = [f for f in FILES if "Q4_K_M" not in f.path]
    assert choose_file(rest, repo=TINY).path == "tiny-Q4_K_S.gguf"
    odd = [HubFile("a-IQ2_XS.gguf", 300, None), HubFile("b-Q3_K_S.gguf", 200, None)]
    assert choose_file(odd, repo=TINY).path == "b-Q3_K_S.gguf"
    # one file: whatever its name
    assert choose_file([HubFile("model.gguf", 1, None)], repo=TINY).path == "model.gguf"
    # exact quant before substring: Q4_0 is not Q4_0_4_4
    q40 = [HubFile("m-Q4_0.gguf", 1, None), HubFile("m-Q4_0_4_4.gguf", 1, None)]
    assert choose_file(q40, repo=TINY, quant="q4_0").path == "m-Q4_0.gguf"

    with pytest.raises(InvalidRequestError, match=r"split.*not supported yet"):
        choose_file(FILES, repo=TINY, file="tiny-Q6_K-00001-of-00002.gguf")
    with pytest.raises(InvalidRequestError, match=r"split.*not supported yet"):
        choose_file([f for f in FILES if "Q6_K" in f.path], repo=TINY)
    with pytest.raises(ModelPullError, match="no GGUF files") as exc:
        choose_file([HubFile("model.safetensors", 1, None)], repo=TINY)
    assert exc.value.code == "no_gguf_files"
    with pytest.raises(InvalidRequestError, match=r"has no file 'nope\.gguf'"):
        choose_file(FILES, repo=TINY, file="nope.gguf")
    with pytest.raises(InvalidRequestError, match="not both"):
        choose_file(FILES, repo=TINY, file="x", quant="y")
    with pytest.raises(ModelPullError, match="only vision projector"):
        choose_file([FILES[3]], repo=TINY)


# -- resuming and verifying -------------------------------------------------------------------


def test_an_interrupted_pull_continues_where_it_stopped(hub: FakeHub, tmp_path: Path) -> None:
    hub.stall_after = CHUNK + MIB  # the client has one chunk on disk, then the hub stalls
    proc = subprocess.Popen(
        [OASIS, "pull", BIG],
        env=env(hub, tmp_path),
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    part = tmp_path / "data" / "models" / ".partial" / f"{sha(BIG_BYTES)}.part"
    try:
        assert hub.stalled.wait(60), "the download never started"
        deadline = time.monotonic() + 30
        while not (part.exists() and part.stat().st_size >= CHUNK):
            assert time.monotonic() < deadline, "no bytes on disk"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "run the same command again to continue" in stderr and "Traceback" not in stderr
    kept = part.stat().st_size
    assert kept >= CHUNK and part.read_bytes() == BIG_BYTES[:kept]
    assert listed(hub, tmp_path) == []

    hub.stall_after = None
    hub.release()
    sent_before = hub.bytes_sent
    r = oasis(hub, tmp_path, "pull", BIG)
    assert r.returncode == 0, r.stderr
    assert hub.downloads()[-1].range == f"bytes={kept}-"
    assert hub.bytes_sent - sent_before == len(BIG_BYTES) - kept < len(BIG_BYTES)
    [model] = listed(hub, tmp_path)
    assert model["sha256"] == sha(BIG_BYTES)
    assert Path(str(model["path"])).read_bytes() == BIG_BYTES
    assert partial_files(tmp_path) == []


def test_a_dropped_connection_is_resumed_in_the_same_run(
    hub: FakeHub, tmp_path: Path
) -> None:
    hub.cut_after, hub.cut_times = CHUNK + MIB, 1
    store = ModelStore(tmp_path / "models")
    model = pull(BIG, store=store, endpoint=hub.url, progress=False)
    ranges = [d.range for d in hub.downloads()]
    assert ranges == [None, f"bytes={CHUNK}-"]
    assert model.sha256 == sha(BIG_BYTES) and model.path.read_bytes() == BIG_BYTES


def test_a_corrupt_download_is_refused_and_deleted(hub: FakeHub, tmp_path: Path) -> None:
    hub.corrupt.add("tiny-Q4_K_M.gguf")
    line = one_error_line(oasis(hub, tmp_path, "pull", TINY))
    assert "is corrupt" in line and sha(TINY_FILES["tiny-Q4_K_M.gguf"]) in line
    assert listed(hub, tmp_path) == []
    assert partial_files(tmp_path) == []
    assert not (tmp_path / "data" / "models" / "tiny").exists()


def test_a_file_that_is_not_gguf_is_refused(hub: FakeHub, tmp_path: Path) -> None:
    line = one_error_line(oasis(hub, tmp_path, "pull", "acme/Fake-GGUF"))
    assert "model-Q4_K_M.gguf: not a GGUF file" in line
    assert listed(hub, tmp_path) == []
    assert partial_files(tmp_path) == []


def test_a_repo_without_gguf_files(hub: FakeHub, tmp_path: Path) -> None:
    line = one_error_line(oasis(hub, tmp_path, "pull", "acme/Safetensors"))
    assert "acme/Safetensors has no GGUF files" in line


# -- the Hub refusing --------------------------------------------------------------------------


def test_unknown_repo(hub: FakeHub, tmp_path: Path) -> None:
    line = one_error_line(oasis(hub, tmp_path, "pull", "acme/Nope-GGUF"))
    assert f"Repository acme/Nope-GGUF was not found on {hub.url}" in line
    assert "set HF_TOKEN" in line
    # with a token the Hub says 404
    line = one_error_line(oasis(hub, tmp_path, "pull", "acme/Nope-GGUF", HF_TOKEN="hf_x"))
    assert "not found" in line and "your token cannot read it" in line


def test_gated_repo(hub: FakeHub, tmp_path: Path) -> None:
    line = one_error_line(oasis(hub, tmp_path, "pull", "acme/Gated-GGUF"))
    assert "acme/Gated-GGUF is gated" in line and "set HF_TOKEN" in line
    assert f"{hub.url}/acme/Gated-GGUF" in line
    line = one_error_line(oasis(hub, tmp_path, "pull", "acme/Gated-GGUF", HF_TOKEN="hf_bad"))
    assert "your token has no access to it yet" in line

    hub.requests.clear()
    r = oasis(hub, tmp_path, "pull", "acme/Gated-GGUF", HF_TOKEN="hf_good")
    assert r.returncode == 0, r.stderr
    assert [m["name"] for m in listed(hub, tmp_path)] == ["gated"]
    # the token goes to the Hub, never to the CDN
    hub_calls = [s for s in hub.requests if not s.path.startswith("/cdn/")]
    assert hub_calls and all(s.authorization == "Bearer hf_good" for s in hub_calls)
    assert hub.downloads() and all(s.authorization is None for s in hub.downloads())


def test_hub_unreachable(hub: FakeHub, tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = oasis(hub, tmp_path, "pull", TINY, HF_ENDPOINT=f"http://127.0.0.1:{port}")
    line = one_error_line(r)
    assert f"Cannot reach the Hub at http://127.0.0.1:{port}" in line


# -- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../x", "a" * 65, "modèle", "A/B", ".hidden", "a..b", ""])
def test_hostile_names_are_refused_before_any_request(
    hub: FakeHub, tmp_path: Path, name: str
) -> None:
    store = ModelStore(tmp_path / "models")
    with pytest.raises(InvalidRequestError, match="Invalid model name"):
        pull(TINY, store=store, name=name, endpoint=hub.url, progress=False)
    assert hub.requests == []
    assert not (tmp_path / "models").exists() or list((tmp_path / "models").iterdir()) == []


def test_hostile_names_on_the_command_line(hub: FakeHub, tmp_path: Path) -> None:
    line = one_error_line(oasis(hub, tmp_path, "pull", TINY, "--name", "../../etc"))
    assert "Invalid model name '../../etc'" in line
    line = one_error_line(oasis(hub, tmp_path, "pull", "../../etc/passwd"))
    assert "Invalid repository" in line
    line = one_error_line(oasis(hub, tmp_path, "models", "rm", "../data", "--yes"))
    assert "Invalid model name" in line
    assert hub.requests == []


# -- removing ----------------------------------------------------------------------------------


def test_rm_asks_on_a_terminal_and_wants_yes_in_a_pipe(hub: FakeHub, tmp_path: Path) -> None:
    assert oasis(hub, tmp_path, "pull", TINY).returncode == 0
    line = one_error_line(oasis(hub, tmp_path, "models", "rm", "tiny"))
    assert "not removing tiny" in line and "--yes" in line
    assert [m["name"] for m in listed(hub, tmp_path)] == ["tiny"]

    # a person at a terminal: asked, says no, then yes
    child = pexpect.spawn(
        OASIS, ["models", "rm", "tiny"], env=env(hub, tmp_path), cwd=str(tmp_path),
        encoding="utf-8", timeout=30,
    )
    size = re.escape(human_size(len(TINY_FILES["tiny-Q4_K_M.gguf"])))
    child.expect(rf"Remove tiny \({size}, .*tiny-Q4_K_M\.gguf\)\?")
    child.sendline("n")
    child.expect("nothing removed")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1
    assert [m["name"] for m in listed(hub, tmp_path)] == ["tiny"]

    child = pexpect.spawn(
        OASIS, ["models", "rm", "tiny"], env=env(hub, tmp_path), cwd=str(tmp_path),
        encoding="utf-8", timeout=30,
    )
    child.expect(r"\?")
    child.sendline("y")
    child.expect("removed tiny")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert listed(hub, tmp_path) == []
    assert not (tmp_path / "data" / "models" / "tiny").exists()

    line = one_error_line(oasis(hub, tmp_path, "models", "rm", "tiny", "--yes"))
    assert "The model `tiny` does not exist" in line
