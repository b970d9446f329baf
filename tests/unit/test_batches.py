"""The Batch API through the official SDK on the fake engine: files in, batches run in the
background, output and error files out; a bad input file, cancel mid-way, expiry, another key,
billing at the batch discount, a restart mid-batch and two servers on one database. The real
engine (and kill -9) is in tests/integration/test_batches_real.py."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI
from openai.types import Batch

from oasis.config import Settings
from oasis.engine.fake import FakeEmbedder, FakeEngine
from oasis.models.registry import ModelRegistry, ModelSpec
from oasis.server import create_app
from tests.conftest import API_KEY, without_nulls
from tests.unit.test_gateway import new_key, records

FINAL = ("completed", "failed", "expired", "cancelled")


def batch_app(tmp: Path, engine: FakeEngine | None = None, **options: Any) -> Any:
    specs = [
        ModelSpec("fake-model", Path(__file__), aliases=("gpt-3.5-turbo",)),
        ModelSpec("fake-embed", Path(__file__), aliases=("text-embedding-3-small",),
                  kind="embedding"),
    ]
    options.setdefault("prices", {"gpt-3.5-turbo": {"input": 1000.0, "output": 2000.0}})
    settings = Settings(api_key=API_KEY, data_dir=tmp, **options)
    return create_app(settings, registry=ModelRegistry(specs),
                      engines={"fake-model": engine or FakeEngine(n_ctx=4096)},
                      embedders={"fake-embed": FakeEmbedder(name="fake-embed")})


def sdk(http: TestClient, key: str = API_KEY) -> OpenAI:
    return OpenAI(base_url="http://testserver/v1", api_key=key, http_client=http, max_retries=0)


@pytest.fixture
def http(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(batch_app(tmp_path), headers={"Authorization": f"Bearer {API_KEY}"}) as c:
        yield c


def chat_line(i: int, **body: Any) -> dict[str, Any]:
    return {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gpt-3.5-turbo", "max_tokens": 5,
                     "messages": [{"role": "user", "content": f"question {i}"}], **body}}


def jsonl(lines: list[Any]) -> bytes:
    return "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines).encode()


def wait(client: OpenAI, batch_id: str, until: tuple[str, ...] = FINAL,
         timeout: float = 60.0) -> Batch:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in until:
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status}"
        time.sleep(0.05)


def submit(client: OpenAI, lines: list[Any], endpoint: str = "/v1/chat/completions",
           **extra: Any) -> Batch:
    f = client.files.create(file=("input.jsonl", jsonl(lines)), purpose="batch")
    return client.batches.create(input_file_id=f.id, endpoint=endpoint,  # type: ignore[arg-type]
                                 completion_window="24h", **extra)


def lines_of(client: OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(x) for x in client.files.content(file_id).text.splitlines()]


def test_a_batch_end_to_end(http: TestClient, schemas: Any) -> None:
    client = sdk(http)
    lines = [chat_line(i) for i in range(12)]
    lines[5] = chat_line(5, temperature=7)  # a body the endpoint refuses: that line's 400
    batch = submit(client, lines, metadata={"job": "nightly"})
    assert batch.status == "validating" and batch.metadata == {"job": "nightly"}
    schemas.validate("Batch", without_nulls(http.get(f"/v1/batches/{batch.id}").json()))
    done = wait(client, batch.id)
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed,
            done.request_counts.failed) == (12, 11, 1)
    for stamp in ("in_progress_at", "finalizing_at", "completed_at"):
        assert getattr(done, stamp) is not None, stamp
    assert done.created_at <= done.in_progress_at <= done.completed_at  # type: ignore[operator]
    assert done.expires_at == done.created_at + 24 * 3600
    out = lines_of(client, done.output_file_id)
    errs = lines_of(client, done.error_file_id)
    assert [x["custom_id"] for x in out] == [f"req-{i}" for i in range(12) if i != 5]
    assert [x["custom_id"] for x in errs] == ["req-5"]
    first = out[0]
    assert first["id"].startswith("batch_req_") and first["error"] is None
    assert first["response"]["status_code"] == 200
    body = first["response"]["body"]
    schemas.validate("CreateChatCompletionResponse", body)
    assert body["object"] == "chat.completion" and body["usage"]["completion_tokens"] > 0
    bad = errs[0]["response"]
    assert bad["status_code"] == 400 and bad["body"]["error"]["param"] == "temperature"
    usage = done.usage
    assert usage is not None and usage.output_tokens == sum(
        x["response"]["body"]["usage"]["completion_tokens"] for x in out)
    # output files are the server's, purpose batch_output, listed with the key's files
    meta = client.files.retrieve(done.output_file_id)  # type: ignore[arg-type]
    assert meta.purpose == "batch_output" and meta.filename == f"{batch.id}_output.jsonl"
    listed = http.get("/v1/batches").json()
    schemas.validate("ListBatchesResponse", without_nulls(listed))
    assert [b["id"] for b in listed["data"]] == [batch.id]


def test_embeddings_and_completions_batches(http: TestClient) -> None:
    client = sdk(http)
    emb = [{"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
            "body": {"model": "text-embedding-3-small", "input": [f"text {i}", "more"]}}
           for i in range(5)]
    done = wait(client, submit(client, emb, "/v1/embeddings").id)
    assert done.status == "completed" and done.request_counts.completed == 5  # type: ignore[union-attr]
    out = lines_of(client, done.output_file_id)
    assert len(out[0]["response"]["body"]["data"]) == 2
    comp = [{"custom_id": f"c{i}", "method": "POST", "url": "/v1/completions",
             "body": {"model": "gpt-3.5-turbo", "prompt": "Say", "max_tokens": 3}}
            for i in range(3)]
    done = wait(client, submit(client, comp, "/v1/completions").id)
    assert done.status == "completed" and done.request_counts.completed == 3  # type: ignore[union-attr]
    resp = [{"custom_id": "r0", "method": "POST", "url": "/v1/responses",
             "body": {"model": "gpt-3.5-turbo", "input": "hi", "max_output_tokens": 200}}]
    done = wait(client, submit(client, resp, "/v1/responses").id)
    assert done.status == "completed", done
    body = lines_of(client, done.output_file_id)[0]["response"]["body"]
    assert body["object"] == "response" and body["status"] == "completed"


@pytest.mark.parametrize(("lines", "code", "line"), [
    (["{not json"], "invalid_json_line", 1),
    ([{"method": "POST", "url": "/v1/chat/completions", "body": {}}],
     "missing_required_parameter", 1),
    ([chat_line(1), chat_line(1)], "duplicate_custom_id", 2),
    ([chat_line(1), {**chat_line(2), "url": "/v1/completions"}], "invalid_url", 2),
    ([{**chat_line(1), "method": "GET"}], "invalid_value", 1),
    ([{**chat_line(1), "body": "text"}], "invalid_value", 1),
    ([chat_line(0, stream=True)], "invalid_value", 1),
    ([{**chat_line(1), "extra": 1}], "invalid_request", 1),
    (["[1, 2]"], "invalid_json_line", 1),
    (['{"custom_id": "\\ud800", "method": "POST"}'], "invalid_json_line", 1),
    (["", "   "], "empty_file", None),
])
def test_a_bad_input_file_fails_naming_the_line(http: TestClient, lines: list[Any], code: str,
                                                line: int | None) -> None:
    client = sdk(http)
    done = wait(client, submit(client, lines).id)
    assert done.status == "failed" and done.failed_at is not None
    assert done.errors is not None and done.errors.data
    first = done.errors.data[0]
    assert (first.code, first.line) == (code, line), done.errors
    assert done.output_file_id is None and done.error_file_id is None
    assert not records(http)  # nothing ran


def test_create_is_validated(http: TestClient) -> None:
    client = sdk(http)
    good = client.files.create(file=("a.jsonl", jsonl([chat_line(0)])), purpose="batch")
    notes = client.files.create(file=("n.txt", b"notes"), purpose="user_data")
    cases = [
        ({"input_file_id": "file-nope"}, "input_file_id"),
        ({"input_file_id": notes.id}, "input_file_id"),
        ({"completion_window": "48h"}, "completion_window"),
        ({"endpoint": "/v1/moderations"}, "endpoint"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"metadata": {"k": "v" * 513}}, "metadata"),
        ({"bogus": 1}, "bogus"),
    ]
    for change, param in cases:
        body = {"input_file_id": good.id, "endpoint": "/v1/chat/completions",
                "completion_window": "24h", **change}
        r = http.post("/v1/batches", json=body)
        assert r.status_code == 400, (change, r.text)
        assert (r.json()["error"]["param"] or "").startswith(param), (change, r.json())
    for path in ("/v1/batches/batch_nope", "/v1/batches/" + "x" * 5000,
                 "/v1/batches/a%00b"):
        assert http.get(path).status_code == 404
        assert http.post(path + "/cancel").status_code == 404
    assert http.get("/v1/batches?limit=0").status_code == 400
    assert http.get("/v1/batches?limit=101").status_code == 400
    assert http.get("/v1/batches?after=batch_nope").json()["data"] == []


def test_no_embedding_model_no_embeddings_batches(tmp_path: Path) -> None:
    app = create_app(Settings(api_key=API_KEY, data_dir=tmp_path),
                     registry=ModelRegistry([ModelSpec("fake-model", Path(__file__))]),
                     engines={"fake-model": FakeEngine()}, embedders={})
    with TestClient(app, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        client = sdk(http)
        f = client.files.create(file=("a.jsonl", b"{}\n"), purpose="batch")
        with pytest.raises(openai.BadRequestError) as err:
            client.batches.create(input_file_id=f.id, endpoint="/v1/embeddings",
                                  completion_window="24h")
        assert err.value.body["param"] == "endpoint"  # type: ignore[index]


def test_cancel_mid_way_answers_every_line_once(tmp_path: Path) -> None:
    with TestClient(batch_app(tmp_path, FakeEngine(n_ctx=4096, delay=0.02)),
                    headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        client = sdk(http)
        batch = submit(client, [chat_line(i, max_tokens=10) for i in range(40)])
        deadline = time.monotonic() + 30
        while client.batches.retrieve(batch.id).request_counts.completed < 3:  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        cancelling = client.batches.cancel(batch.id)
        assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
        done = wait(client, batch.id)
        assert done.status == "cancelled" and done.cancelled_at is not None
        out = lines_of(client, done.output_file_id)
        errs = lines_of(client, done.error_file_id)
        ids = [x["custom_id"] for x in out + errs]
        assert sorted(ids) == sorted(f"req-{i}" for i in range(40))  # each exactly once
        assert 3 <= len(out) < 40
        assert {x["error"]["code"] for x in errs} == {"batch_cancelled"}
        counts = done.request_counts
        assert counts is not None and counts.completed == len(out)
        assert counts.failed == len(errs) and counts.total == 40
        # cancelling again, or a finished batch, changes nothing
        assert client.batches.cancel(batch.id).status == "cancelled"


def test_expiry_answers_the_rest_batch_expired(tmp_path: Path) -> None:
    with TestClient(batch_app(tmp_path, FakeEngine(n_ctx=4096, delay=0.02)),
                    headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        client = sdk(http)
        batch = submit(client, [chat_line(i, max_tokens=10) for i in range(30)])
        wait(client, batch.id, ("in_progress",))
        store = http.app.state.oasis.batches  # type: ignore[attr-defined]
        store.update(batch.id, expires_at=int(time.time()))  # the window runs out now
        done = wait(client, batch.id)
        assert done.status == "expired" and done.expired_at is not None
        errs = lines_of(client, done.error_file_id)
        out = lines_of(client, done.output_file_id)
        assert len(out) + len(errs) == 30
        assert errs and {x["error"]["code"] for x in errs} == {"batch_expired"}


def test_another_key_sees_nothing(http: TestClient) -> None:
    secret_a, _ = new_key(http, name="a")
    secret_b, _ = new_key(http, name="b")
    a, b = sdk(http, secret_a), sdk(http, secret_b)
    batch = submit(a, [chat_line(0)])
    done = wait(a, batch.id)
    for call in (lambda: b.batches.retrieve(batch.id), lambda: b.batches.cancel(batch.id),
                 lambda: b.files.retrieve(done.output_file_id),  # type: ignore[arg-type]
                 lambda: b.files.content(done.output_file_id)):  # type: ignore[arg-type]
        with pytest.raises(openai.NotFoundError):
            call()
    assert b.batches.list().data == []
    # nor can another key run a batch on the first key's input file
    with pytest.raises(openai.BadRequestError):
        b.batches.create(input_file_id=done.input_file_id, endpoint="/v1/chat/completions",
                         completion_window="24h")
    # the static key is a key like any other
    assert sdk(http).batches.list().data == []


def test_billed_to_the_key_at_the_discount_with_the_batch_id(http: TestClient) -> None:
    secret, key = new_key(http, rpm=1)  # lines are not held to the key's rate limits
    client = sdk(http, secret)
    done = wait(client, submit(client, [chat_line(i) for i in range(5)]).id)
    assert done.status == "completed" and done.request_counts.completed == 5  # type: ignore[union-attr]
    rows = [u for u in records(http) if u.batch_id == done.id]
    assert len(rows) == 5
    for u in rows:
        assert u.key_id == int(key["id"][4:]) and u.endpoint == "/v1/chat/completions"
        full = (u.prompt_tokens * 1000 + u.completion_tokens * 2000) / 1e6
        assert u.cost_usd == pytest.approx(full * 0.5)


def test_a_budget_stops_lines_not_the_batch(http: TestClient) -> None:
    secret, _ = new_key(http, budget_usd=0.05)
    client = sdk(http, secret)
    done = wait(client, submit(client, [chat_line(i) for i in range(20)]).id)
    assert done.status == "completed"
    errs = lines_of(client, done.error_file_id)
    assert errs, "the budget ran out part way"
    assert {x["response"]["status_code"] for x in errs} == {429}
    assert errs[0]["response"]["body"]["error"]["code"] == "insufficient_quota"
    assert len(errs) + len(lines_of(client, done.output_file_id)) == 20


def test_a_restart_resumes_the_batch(tmp_path: Path) -> None:
    """The server stops mid-batch (its lease released) and a new one on the same data
    directory finishes it; every line answered exactly once, billed once."""
    options = {"batch_lease_seconds": 2.0}
    with TestClient(batch_app(tmp_path, FakeEngine(n_ctx=4096, delay=0.02), **options),
                    headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        client = sdk(http)
        batch = submit(client, [chat_line(i, max_tokens=10) for i in range(30)])
        deadline = time.monotonic() + 30
        while client.batches.retrieve(batch.id).request_counts.completed < 5:  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.02)
    with TestClient(batch_app(tmp_path, **options),
                    headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        client = sdk(http)
        done = wait(client, batch.id)
        assert done.status == "completed"
        out = lines_of(client, done.output_file_id)
        assert [x["custom_id"] for x in out] == [f"req-{i}" for i in range(30)]
        rows = [u for u in records(http) if u.batch_id == batch.id and u.status == 200]
        assert len(rows) == 30


def test_two_servers_on_one_database_run_a_batch_once(tmp_path: Path) -> None:
    options = {"batch_lease_seconds": 2.0}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with TestClient(batch_app(tmp_path, FakeEngine(n_ctx=4096, delay=0.005), **options),
                    headers=headers) as one, \
            TestClient(batch_app(tmp_path, FakeEngine(n_ctx=4096, delay=0.005), **options),
                       headers=headers) as two:
        a, b = sdk(one), sdk(two)
        batches = [submit(a, [chat_line(i) for i in range(10)]) for _ in range(3)]
        batches += [submit(b, [chat_line(i) for i in range(10)]) for _ in range(3)]
        done = [wait(a, x.id) for x in batches]
        assert all(d.status == "completed" for d in done)
        for d in done:
            out = lines_of(a, d.output_file_id)
            assert sorted(x["custom_id"] for x in out) == sorted(f"req-{i}" for i in range(10))
        records(two)  # its ledger flushed too: both write to the one database
        rows = [u for u in records(one) if u.batch_id]
        assert len({u.request_id for u in rows}) == len(rows)
        # each line ran on one server only: 60 requests in all
        assert len(rows) == 60


def test_concurrent_batches_and_reads(http: TestClient) -> None:
    client = sdk(http)
    ids: list[str] = []
    errors: list[BaseException] = []

    def make(n: int) -> None:
        try:
            ids.append(submit(client, [chat_line(i) for i in range(n)]).id)
            for _ in range(20):
                client.batches.list(limit=5)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=make, args=(3 + i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    done = [wait(client, i) for i in ids]
    assert sorted(d.request_counts.total for d in done) == list(range(3, 11))  # type: ignore[union-attr]
    assert all(d.status == "completed" for d in done)
    page = client.batches.list(limit=3)
    assert len(page.data) == 3 and page.has_more
    seen = [b.id for b in client.batches.list(limit=3)]  # the SDK follows the pages
    assert sorted(seen) == sorted(ids)


def test_cancel_stops_running_lines_and_waiting_ones(tmp_path: Path) -> None:
    """Lines that would run for minutes are cancelled, not waited for: every line ends in
    the error file as batch_cancelled (none could have finished)."""
    with TestClient(batch_app(tmp_path, FakeEngine(n_ctx=100_000, delay=0.05),
                              batch_concurrency=2),
                    headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        client = sdk(http)
        engine = http.app.state.oasis.serving.engines["fake-model"]  # type: ignore[attr-defined]
        engine.reply = "word " * 5000
        batch = submit(client, [chat_line(i, max_tokens=5000) for i in range(6)])
        wait(client, batch.id, ("in_progress",))
        time.sleep(0.3)  # two lines are running
        client.batches.cancel(batch.id)
        done = wait(client, batch.id, timeout=30)
        assert done.status == "cancelled"
        errs = lines_of(client, done.error_file_id)
        assert sorted(x["custom_id"] for x in errs) == sorted(f"req-{i}" for i in range(6))
        assert done.output_file_id is None
        counts = done.request_counts
        assert counts is not None and (counts.total, counts.failed) == (6, 6)


def test_cancel_while_validating_keeps_the_counts_consistent(http: TestClient) -> None:
    client = sdk(http)
    batch = submit(client, [chat_line(i) for i in range(5_000)])
    client.batches.cancel(batch.id)
    done = wait(client, batch.id, timeout=120)
    counts = done.request_counts
    assert counts is not None
    assert counts.total == counts.completed + counts.failed
    if done.status == "cancelled":
        assert counts.total == 5_000


class FlakyEngine(FakeEngine):
    """Refuses its first ``failures`` submissions as a full queue (a passing failure)."""

    def __init__(self, failures: int, **kw: Any) -> None:
        super().__init__(**kw)
        self.failures = failures

    def submit(self, request: Any) -> Any:
        if self.failures > 0:
            self.failures -= 1
            from oasis.errors import OverloadedError

            raise OverloadedError("The server is at capacity.", retry_after=1)
        return super().submit(request)


def test_a_passing_failure_is_tried_again(tmp_path: Path) -> None:
    with TestClient(batch_app(tmp_path, FlakyEngine(2, n_ctx=4096), batch_concurrency=1),
                    headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        client = sdk(http)
        done = wait(client, submit(client, [chat_line(0)]).id)
        assert done.status == "completed"
        assert done.request_counts.completed == 1 and done.request_counts.failed == 0  # type: ignore[union-attr]
        # each try was a request of its own in the ledger: two 503s, then the answer
        rows = [u for u in records(http) if u.batch_id == done.id]
        assert sorted(u.status for u in rows) == [200, 503, 503]


def test_a_revoked_key_cancels_its_batch(tmp_path: Path) -> None:
    with TestClient(batch_app(tmp_path, FakeEngine(n_ctx=4096, delay=0.02)),
                    headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        secret, key = new_key(http)
        client = sdk(http, secret)
        batch = submit(client, [chat_line(i, max_tokens=10) for i in range(40)])
        wait(client, batch.id, ("in_progress",))
        assert http.delete(f"/admin/keys/{key['id']}").json()["status"] == "revoked"
        store = http.app.state.oasis.batches  # type: ignore[attr-defined]
        deadline = time.monotonic() + 30
        while (found := store.load(batch.id)).status not in FINAL:
            assert time.monotonic() < deadline, found.status
            time.sleep(0.05)
        assert found.status == "cancelled"
        assert found.completed < 40 and found.completed + found.failed == 40
