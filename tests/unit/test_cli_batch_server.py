"""`oasis batch --server` (OpenAI's Batch API, run by the server) as a person types it in a
terminal and as a script pipes it, and its Python API, against a real HTTP server on the fake
engine (uvicorn in a thread; the CLI in a subprocess or a pseudo-terminal)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pexpect
import pytest
import uvicorn
from openai import AsyncOpenAI, OpenAI
from typer.testing import CliRunner

from oasis.apps.batch import (
    BatchInputError,
    Downloaded,
    adownload_results,
    asubmit_batch,
    await_batch,
    cancel_batch,
    download_results,
    submit_batch,
    wait_batch,
)
from oasis.cli.main import app as cli_app
from oasis.engine.fake import FakeEngine
from tests.conftest import API_KEY, make_app
from tests.unit.test_disconnect import free_port

OASIS = str(Path(sys.executable).with_name("oasis"))
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
FAST, SLOW = 3, 200  # max_tokens of a line: 10 ms a token, two lines at once


@dataclass
class Server:
    v1: str
    client: OpenAI

    def env(self) -> dict[str, str]:
        return {**os.environ, "OPENAI_BASE_URL": self.v1, "OPENAI_API_KEY": API_KEY,
                "COLUMNS": "160"}

    def oasis(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The command as a script runs it: stdout and stderr are pipes."""
        return subprocess.run([OASIS, "batch", *args], env=self.env(), capture_output=True,
                              text=True, timeout=120)

    def terminal(self, *args: str) -> pexpect.spawn:
        """The command as a person runs it: in a terminal."""
        return pexpect.spawn(OASIS, ["batch", *args], env=self.env(), encoding="utf-8",
                             timeout=60, dimensions=(40, 160))

    def ended(self, batch_id: str, within: float = 30.0) -> Any:
        deadline = time.monotonic() + within
        while True:
            batch = self.client.batches.retrieve(batch_id)
            if batch.status in ("completed", "failed", "expired", "cancelled"):
                return batch
            assert time.monotonic() < deadline, batch
            time.sleep(0.1)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    engine = FakeEngine(reply="word " * 300, delay=0.01, n_ctx=4096)
    app = make_app(engine, tmp=tmp_path_factory.mktemp("server"), batch_concurrency=2)
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    v1 = f"http://127.0.0.1:{port}/v1"
    with OpenAI(base_url=v1, api_key=API_KEY, max_retries=0) as client:
        yield Server(v1, client)
    uv.should_exit = True
    thread.join(timeout=10)


def line(i: int, tokens: int = FAST, **body: Any) -> dict[str, Any]:
    return {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gpt-3.5-turbo", "max_tokens": tokens,
                     "messages": [{"role": "user", "content": f"Say {i}."}], **body}}


def write(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def ids(*files: Path) -> list[str]:
    return [x["custom_id"] for f in files if f.exists() for x in read(f)]


def batch_id_in(text: str) -> str:
    found = re.search(r"batch_[0-9a-f]+", text)
    assert found, text
    return found.group(0)


# -- in a terminal -----------------------------------------------------------------------------

def test_a_person_runs_a_batch_to_completion(server: Server, tmp_path: Path) -> None:
    src = write(tmp_path / "in.jsonl", [line(i) for i in range(20)])
    out = tmp_path / "out.jsonl"
    child = server.terminal("--server", str(src), "-o", str(out), "--poll", "0.1")
    child.expect("submitted batch_")
    child.expect(r"20/20")  # the progress bar, driven by request_counts
    child.expect(pexpect.EOF)
    child.close()
    shown = ANSI.sub("", child.before or "")
    assert child.exitstatus == 0, shown
    summary = [x for x in shown.splitlines() if x.startswith("completed:")]
    assert len(summary) == 1, shown
    assert "20 of 20 requests succeeded, 0 failed" in summary[0]
    assert re.search(r"\d+ input \+ \d+ output tokens", summary[0])
    assert f"-> {out}" in summary[0] and "failed lines" not in summary[0]
    results = read(out)
    assert [x["custom_id"] for x in results] == [f"req-{i}" for i in range(20)]  # input order
    assert all(x["response"]["status_code"] == 200 for x in results)
    assert all(x["response"]["body"]["object"] == "chat.completion" for x in results)
    assert not (tmp_path / "out.errors.jsonl").exists()


def test_ctrl_c_cancels_the_batch_on_the_server(server: Server, tmp_path: Path) -> None:
    src = write(tmp_path / "in.jsonl", [line(i, SLOW) for i in range(10)])
    out = tmp_path / "out.jsonl"
    child = server.terminal("--server", str(src), "-o", str(out), "--poll", "0.1")
    child.expect(r"submitted (batch_[0-9a-f]+)")
    batch_id = child.match.group(1)
    child.expect("in_progress")
    child.sendintr()
    child.expect("asked the server to cancel")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130, child.before
    assert server.ended(batch_id).status == "cancelled"
    assert not out.exists()  # nothing downloaded: --attach collects what finished
    r = server.oasis("--attach", batch_id, "-o", str(out))
    assert r.returncode == 1 and r.stdout == "", r
    assert r.stderr.startswith("cancelled: ") and len(r.stderr.splitlines()) == 1, r.stderr
    errors = read(tmp_path / "out.errors.jsonl")
    assert errors and all(x["error"]["code"] == "batch_cancelled" for x in errors)
    assert sorted(ids(out, tmp_path / "out.errors.jsonl")) == sorted(f"req-{i}" for i in range(10))


# -- from a script -----------------------------------------------------------------------------

def test_a_script_pipes_a_batch_with_a_refused_line(server: Server, tmp_path: Path) -> None:
    lines = [line(i) for i in range(20)]
    lines[7]["body"]["temperature"] = 9  # the server answers this line with a 400
    src = write(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"
    r = server.oasis("--server", str(src), "-o", str(out), "--poll", "0.1")
    assert r.returncode == 1, r
    assert r.stdout == ""
    assert len(r.stderr.splitlines()) == 1, r.stderr  # the summary, nothing else
    summary = r.stderr.strip()
    assert summary.startswith("completed: 19 of 20 requests succeeded, 1 failed; "), summary
    assert f"failed lines -> {tmp_path / 'out.errors.jsonl'}" in summary
    assert "\x1b" not in r.stderr
    errors = read(tmp_path / "out.errors.jsonl")
    assert [x["custom_id"] for x in errors] == ["req-7"]
    assert errors[0]["response"]["status_code"] == 400
    assert errors[0]["response"]["body"]["error"]["param"] == "temperature"
    assert len(read(out)) == 19
    assert sorted(ids(out, tmp_path / "out.errors.jsonl")) == sorted(f"req-{i}" for i in range(20))


def test_a_malformed_line_is_refused_before_upload(server: Server, tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(line(0)) + "\n" + json.dumps(line(1))[:-9] + "\n")
    before = len(server.client.files.list().data)
    r = server.oasis("--server", str(src), "-o", str(tmp_path / "out.jsonl"))
    assert r.returncode == 1 and r.stdout == "", r
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith(f"error: {src}:2: not JSON"), r.stderr
    assert len(server.client.files.list().data) == before  # nothing was uploaded
    assert not (tmp_path / "out.jsonl").exists()


def test_a_file_the_server_refuses_shows_its_errors_by_line(
    server: Server, tmp_path: Path
) -> None:
    lines = [line(i) for i in range(4)]
    lines[1]["url"] = "/v1/completions"  # fine for the client, not the batch's endpoint
    lines[3]["custom_id"] = "x" * 600  # longer than the server allows
    src = write(tmp_path / "in.jsonl", lines)
    r = server.oasis("--server", str(src), "-o", str(tmp_path / "out.jsonl"))
    assert r.returncode == 1 and r.stdout == "", r
    shown = r.stderr.splitlines()
    assert shown[0].startswith("failed (2 errors from the server); batch batch_"), shown
    assert shown[1].startswith("  line 2: url must be the batch's endpoint"), shown
    assert shown[1].endswith("(invalid_url)")
    assert shown[2].startswith("  line 4: ") and len(shown) == 3, shown
    assert server.client.batches.retrieve(batch_id_in(shown[0])).status == "failed"
    assert not (tmp_path / "out.jsonl").exists()


def test_detach_then_attach(server: Server, tmp_path: Path) -> None:
    src = write(tmp_path / "in.jsonl", [line(i, SLOW) for i in range(4)])
    r = server.oasis("--detach", str(src), "--metadata", "job=nightly")
    assert r.returncode == 0, r
    batch_id = r.stdout.strip()
    assert r.stdout == batch_id + "\n" and re.fullmatch(r"batch_[0-9a-f]+", batch_id)
    assert len(r.stderr.splitlines()) == 1 and f"--attach {batch_id}" in r.stderr
    submitted = server.client.batches.retrieve(batch_id)
    assert submitted.status in ("validating", "in_progress")  # it runs on without the client
    assert submitted.metadata == {"job": "nightly"}
    out, errors = tmp_path / "results.jsonl", tmp_path / "failed.jsonl"
    r = server.oasis("--attach", batch_id, "-o", str(out), "--errors", str(errors),
                     "--poll", "0.1")
    assert r.returncode == 0, r
    assert r.stdout == "" and r.stderr.startswith("completed: 4 of 4 requests succeeded"), r
    assert batch_id in r.stderr
    assert ids(out) == [f"req-{i}" for i in range(4)] and not errors.exists()


def test_arguments_are_checked_first() -> None:
    runner = CliRunner()
    for args, said in [
        (["batch", "--server", "in.jsonl"], "missing -o OUTPUT"),
        (["batch", "--attach", "batch_1", "in.jsonl", "-o", "x"], "takes no INPUT"),
        (["batch", "--server", "-o", "x"], "missing INPUT"),
        (["batch", "--server", "in.jsonl", "-o", "x", "--metadata", "nokey"], "KEY=VALUE"),
        (["batch", "--server", "in.jsonl", "-o", "a.jsonl", "--errors", "a.jsonl"],
         "another file"),
    ]:
        result = runner.invoke(cli_app, args, env={"OPENAI_API_KEY": "sk-x"})
        assert result.exit_code == 2, (args, result.output)
        assert said in result.output, (args, result.output)


# -- the Python API ----------------------------------------------------------------------------

def test_python_api_end_to_end(server: Server, tmp_path: Path) -> None:
    lines = [line(i) for i in range(6)]
    lines[2]["body"]["messages"] = []  # a 400
    src = write(tmp_path / "in.jsonl", lines)
    batch_id = submit_batch(src, metadata={"by": "api"}, client=server.client)
    seen: list[str] = []
    done = wait_batch(batch_id, client=server.client, poll=0.05,
                      on_progress=lambda b: seen.append(b.status))
    assert done.status == "completed" and seen[-1] == "completed"
    assert done.endpoint == "/v1/chat/completions"  # the first line's url
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.failed) == (6, 1)
    out, errors = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    assert download_results(done, out, errors, client=server.client) == Downloaded(5, 1)
    assert ids(out) == ["req-0", "req-1", "req-3", "req-4", "req-5"]
    assert ids(errors) == ["req-2"]
    # a batch with no error file removes one left over from another batch
    clean = write(tmp_path / "clean.jsonl", [line(i) for i in range(2)])
    finished = wait_batch(submit_batch(clean, client=server.client), client=server.client,
                          poll=0.05)
    assert download_results(finished.id, out, errors, client=server.client) == Downloaded(2, 0)
    assert not errors.exists() and ids(out) == ["req-0", "req-1"]
    # a malformed file never reaches the server
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"custom_id": "a", "url": "/v1/chat/completions"}\n')
    with pytest.raises(BatchInputError, match="'body' must be an object"):
        submit_batch(bad, client=server.client)


def test_async_api_times_out_cancels_and_downloads(server: Server, tmp_path: Path) -> None:
    src = write(tmp_path / "in.jsonl", [line(i, SLOW) for i in range(6)])

    async def main() -> None:
        async with AsyncOpenAI(base_url=server.v1, api_key=API_KEY, max_retries=0) as api:
            batch_id = await asubmit_batch(src, endpoint="/v1/chat/completions", client=api)
            with pytest.raises(TimeoutError):
                await await_batch(batch_id, client=api, poll=0.05, timeout=0.3)
            with pytest.raises(ValueError, match="has not ended"):
                await adownload_results(batch_id, tmp_path / "early.jsonl", client=api)
            assert cancel_batch(batch_id, client=server.client).status == "cancelling"
            ended = await await_batch(batch_id, client=api, poll=0.05)
            assert ended.status == "cancelled"
            got = await adownload_results(ended, tmp_path / "o.jsonl", tmp_path / "e.jsonl",
                                          client=api)
            assert got.output_lines + got.error_lines == 6 and got.error_lines >= 4

    asyncio.run(main())
    assert sorted(ids(tmp_path / "o.jsonl", tmp_path / "e.jsonl")) == [
        f"req-{i}" for i in range(6)]
    assert not (tmp_path / "early.jsonl").exists()
