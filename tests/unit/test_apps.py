"""Pieces of the applications that need no server: batch files, label matching."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from openai import AsyncOpenAI

from oasis.apps.batch import BatchInputError, arun_batch, done_ids, read_input
from oasis.apps.classify import SENTIMENT_EN, SENTIMENT_ZH, _match, default_labels


def line(cid: str, **over: object) -> str:
    item = {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "m", "messages": []}, **over}
    return json.dumps(item)


def test_batch_input_is_checked(tmp_path: Path) -> None:
    f = tmp_path / "in.jsonl"
    f.write_text(line("a") + "\n\n" + line("b") + "\n")
    assert [r["custom_id"] for r in read_input(f)] == ["a", "b"]
    for bad, why in [
        (line("a") + "\n" + line("a"), "duplicate custom_id"),
        ("{nope", "not JSON"),
        (line("a", url="/v1/images"), "'url' must be one of"),
        (line("a", method="GET"), "only POST"),
        (json.dumps({"url": "/v1/completions", "body": {}}), "missing 'custom_id'"),
        (line("a", body={"stream": True}), "streaming"),
    ]:
        f.write_text(bad + "\n")
        with pytest.raises(BatchInputError, match=why):
            read_input(f)


def test_a_torn_last_line_is_cut_off(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text('{"custom_id": "a"}\n{"custom_id": "b"}\n{"custom_id": "c", "resp')
    assert done_ids(out) == {"a", "b"}
    assert out.read_text().endswith("}\n")  # appends continue on a whole line
    assert done_ids(tmp_path / "missing.jsonl") == set()


def test_label_matching_and_language() -> None:
    labels = ("positive", "negative", "neutral")
    assert _match(" Positive.", labels) == "positive"
    assert _match("I think it is negative overall", labels) == "negative"
    assert _match("positive or negative", labels) is None  # ambiguous: ask again
    assert _match("happy", labels) is None
    assert default_labels(["今天很好"]) == SENTIMENT_ZH
    assert default_labels(["good day"]) == SENTIMENT_EN
    assert default_labels(["good day"], "zh") == SENTIMENT_ZH


def test_sync_functions_work_inside_a_running_loop() -> None:
    """A notebook runs an event loop; the sync API must still work there."""
    import asyncio

    from oasis.apps.client import run

    async def answer() -> int:
        return 42

    async def notebook_cell() -> int:
        return run(answer())  # called synchronously while a loop runs

    assert asyncio.run(notebook_cell()) == 42
    assert run(answer()) == 42


# -- batch runs against a mock server (httpx.MockTransport behind the official SDK) -------------

class MockServer:
    """Answers chat completions after ``delay`` seconds; ``answers`` overrides some custom ids
    with (status, body). Counts requests in flight, to see that a run leaves none behind."""

    def __init__(self, delay: float = 0.0, answers: dict[str, tuple[int, bytes]] | None = None,
                 ) -> None:
        self.delay = delay
        self.answers = answers or {}
        self.in_flight = 0
        self.seen: list[str] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        cid = json.loads(request.content)["messages"][0]["content"]
        self.seen.append(cid)
        self.in_flight += 1
        try:
            await asyncio.sleep(self.delay)
            status, body = self.answers.get(cid, (200, json.dumps({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "ok"}}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
            }).encode()))
            return httpx.Response(status, content=body,
                                  headers={"content-type": "application/json"})
        finally:
            self.in_flight -= 1

    def client(self) -> AsyncOpenAI:
        http = httpx.AsyncClient(transport=httpx.MockTransport(self))
        return AsyncOpenAI(base_url="http://mock/v1", api_key="sk-x", http_client=http,
                           max_retries=0)


def batch_input(path: Path, n: int) -> None:
    path.write_text("".join(
        line(f"r{i}", body={"model": "m", "messages": [{"role": "user", "content": f"r{i}"}]})
        + "\n" for i in range(n)))


def output_ids(path: Path) -> list[str]:
    """The custom_ids of the output, each line parsed whole (a torn line fails here)."""
    raw = path.read_bytes()
    assert not raw or raw.endswith(b"\n")
    return [json.loads(x)["custom_id"] for x in raw.splitlines()]


def test_batch_writes_results_refusals_and_resumes_failures(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    batch_input(src, 8)
    server = MockServer(answers={
        "r2": (400, b'{"error": {"message": "bad", "type": "invalid_request_error"}}'),
        "r5": (503, b'{"error": {"message": "busy", "type": "server_error"}}')})
    summary = asyncio.run(arun_batch(src, dst, concurrency=3, retries=0,
                                     client=server.client()))
    assert (summary.succeeded, summary.refused, summary.failed) == (6, 1, 1)
    assert summary.prompt_tokens == 18 and summary.completion_tokens == 12
    assert sorted(output_ids(dst)) == sorted(f"r{i}" for i in range(8) if i != 5)
    by_id = {x["custom_id"]: x for x in map(json.loads, dst.read_text().splitlines())}
    assert by_id["r2"]["response"]["status_code"] == 400
    assert by_id["r0"]["response"]["body"]["object"] == "chat.completion"
    # the next run does only what failed
    again = MockServer()
    summary = asyncio.run(arun_batch(src, dst, retries=0, client=again.client()))
    assert again.seen == ["r5"] and summary.skipped == 7 and summary.succeeded == 1
    assert sorted(output_ids(dst)) == sorted(f"r{i}" for i in range(8))


def test_a_failing_worker_stops_the_others_before_the_output_is_closed(
        tmp_path: Path) -> None:
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    batch_input(src, 12)
    server = MockServer(delay=0.05, answers={"r5": (200, b"<html>not json</html>")})

    async def main() -> None:
        with pytest.raises(json.JSONDecodeError):  # the worker's own error, not a group
            await arun_batch(src, dst, concurrency=4, retries=0, client=server.client())
        # every other worker was stopped and awaited: nothing is left to write to a closed fd
        assert server.in_flight == 0
        assert asyncio.all_tasks() == {asyncio.current_task()}
        written = output_ids(dst)
        await asyncio.sleep(0.2)
        assert output_ids(dst) == written

    asyncio.run(main())
    assert "r5" not in output_ids(dst)


def test_a_cancelled_batch_leaves_whole_lines_and_resumes(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    batch_input(src, 40)
    server = MockServer(delay=0.01)

    async def main() -> None:
        run = asyncio.create_task(arun_batch(src, dst, concurrency=4, client=server.client()))
        while not dst.exists() or len(dst.read_bytes().splitlines()) < 6:
            await asyncio.sleep(0.005)
        run.cancel()  # what Ctrl-C does to asyncio.run's main task
        with pytest.raises(asyncio.CancelledError):
            await run
        assert server.in_flight == 0

    asyncio.run(main())
    first = output_ids(dst)
    assert 6 <= len(first) < 40 and len(set(first)) == len(first)
    summary = asyncio.run(arun_batch(src, dst, concurrency=4, client=MockServer().client()))
    assert summary.skipped == len(first)
    assert sorted(output_ids(dst)) == sorted(f"r{i}" for i in range(40))
