"""The Files API through the official SDK on the in-process app (upload, list and its pages,
retrieve, content, delete, per-key ownership, the size limits, hostile input, concurrency,
expiry, a restart), and the FileStore itself on SQLite and PostgreSQL.

OpenAI's OpenAPI extract in tests/data has no File schemas yet (OpenAIFile, ListFilesResponse,
DeleteFileResponse are not among its roots), so bodies are checked with the SDK's own types
and an exact set of keys."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI
from openai.types import FileDeleted, FileObject
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from oasis.errors import FileTooLargeError
from oasis.store.db import make_engine
from oasis.store.files import PARTIAL, FileStore, StoredFile
from tests.conftest import API_KEY, make_app

FILE_KEYS = {"id", "object", "bytes", "created_at", "filename", "purpose", "status"}
DAY = 86400


def _client(http: TestClient, key: str = API_KEY) -> OpenAI:
    return OpenAI(base_url="http://testserver/v1", api_key=key, http_client=http, max_retries=0)


@pytest.fixture
def http(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(make_app(tmp=tmp_path),
                    headers={"Authorization": f"Bearer {API_KEY}"}) as c:
        yield c


@pytest.fixture
def client(http: TestClient) -> OpenAI:
    return _client(http)


def _error(r: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert r.status_code == status, r.text[:500]
    err: dict[str, Any] = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error"
    return err


def _file_body(body: dict[str, Any]) -> FileObject:
    """A File object as OpenAI sends it: the SDK's type, exactly OpenAI's keys."""
    assert FILE_KEYS <= set(body) <= FILE_KEYS | {"expires_at"}, body
    assert body["object"] == "file" and body["status"] == "processed"
    assert body["id"].startswith("file-") and isinstance(body["bytes"], int)
    return FileObject.model_validate(body)


def _upload(http: TestClient, data: bytes, *, name: str = "in.jsonl", purpose: str = "batch",
            **fields: str) -> httpx.Response:
    return http.post("/v1/files", files={"file": (name, data)}, data={"purpose": purpose, **fields})


def _raw(http: TestClient, body: bytes, content_type: str = "multipart/form-data; boundary=XyZ",
         ) -> httpx.Response:
    return http.post("/v1/files", content=body, headers={"content-type": content_type})


def _part(name: str, value: bytes, filename: bytes | None = None) -> bytes:
    disposition = b'form-data; name="' + name.encode() + b'"'
    if filename is not None:
        disposition += b'; filename="' + filename + b'"'
    return b"--XyZ\r\nContent-Disposition: " + disposition + b"\r\n\r\n" + value + b"\r\n"


def _multipart(*parts: bytes) -> bytes:
    return b"".join(parts) + b"--XyZ--\r\n"


def _content_files(tmp_path: Path) -> set[str]:
    root = tmp_path / "files"
    return {p.name for p in root.iterdir() if p.name != PARTIAL} if root.exists() else set()


# -- upload, retrieve, content, list, delete


def test_upload_bytes_and_a_file_object(client: OpenAI, http: TestClient, tmp_path: Path) -> None:
    before = int(time.time())
    lines = b'{"custom_id": "1"}\n{"custom_id": "2"}\n'
    f = client.files.create(file=("requests.jsonl", lines), purpose="batch")
    assert f.object == "file" and f.purpose == "batch" and f.status == "processed"
    assert f.filename == "requests.jsonl" and f.bytes == len(lines)
    assert f.id.startswith("file-") and before <= f.created_at <= int(time.time())
    assert f.expires_at is None

    local = tmp_path / "notes.txt"
    local.write_bytes(b"some user data")
    with local.open("rb") as handle:
        g = client.files.create(file=handle, purpose="user_data")
    assert g.purpose == "user_data" and g.filename == "notes.txt" and g.bytes == 14
    assert g.id != f.id

    for file in (f, g):
        body = http.get(f"/v1/files/{file.id}").json()
        assert _file_body(body) == file
        assert client.files.retrieve(file.id) == file
    assert _content_files(tmp_path) == {f.id, g.id}


def test_content_round_trip_is_byte_exact(client: OpenAI, http: TestClient) -> None:
    data = "héllo wörld ✓ 日本語 🙂\n".encode() + bytes(range(256)) + b"\x00\r\n\xff\xfe"
    f = client.files.create(file=("ünïcode 名前.bin", data), purpose="user_data")
    assert f.filename == "ünïcode 名前.bin" and f.bytes == len(data)
    assert client.files.content(f.id).content == data
    r = http.get(f"/v1/files/{f.id}/content")
    assert r.status_code == 200 and r.content == data
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["content-length"] == str(len(data))


def test_a_file_over_the_body_limit_but_within_the_file_limit(
    client: OpenAI, http: TestClient
) -> None:
    settings = http.app.state.oasis.settings  # type: ignore[attr-defined]
    data = os.urandom(20 * 1024 * 1024)
    assert settings.max_body_bytes < len(data) < settings.max_file_bytes
    f = client.files.create(file=("big.bin", data), purpose="user_data")
    assert f.bytes == len(data)
    with http.stream("GET", f"/v1/files/{f.id}/content") as r:
        assert r.status_code == 200
        digest, size, pieces = hashlib.sha256(), 0, 0
        for chunk in r.iter_raw():
            digest.update(chunk)
            size += len(chunk)
            pieces += 1
    assert size == len(data) and digest.digest() == hashlib.sha256(data).digest()
    assert pieces > 1  # streamed, not one body
    # other routes keep the body limit
    big = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "z" * len(data)}]}
    assert _error(http.post("/v1/chat/completions", json=big))["code"] == "request_too_large"


def test_list_filters_pages_and_orders(client: OpenAI, http: TestClient) -> None:
    batch = [client.files.create(file=(f"b{i}.jsonl", b"x"), purpose="batch") for i in range(5)]
    user = [client.files.create(file=(f"u{i}.txt", b"y"), purpose="user_data") for i in range(2)]

    listed = http.get("/v1/files").json()
    assert set(listed) == {"object", "data", "first_id", "last_id", "has_more"}
    assert listed["object"] == "list" and listed["has_more"] is False
    assert len(listed["data"]) == 7
    for body in listed["data"]:
        _file_body(body)
    newest_first = [d["id"] for d in listed["data"]]
    assert listed["first_id"] == newest_first[0] and listed["last_id"] == newest_first[-1]
    asc = [d["id"] for d in http.get("/v1/files", params={"order": "asc"}).json()["data"]]
    assert asc == newest_first[::-1]
    assert {f.id for f in batch + user} == set(asc)
    created = [d["created_at"] for d in listed["data"]]
    assert created == sorted(created, reverse=True)

    assert {f.id for f in client.files.list(purpose="batch")} == {f.id for f in batch}
    assert {f.id for f in client.files.list(purpose="user_data")} == {f.id for f in user}
    assert list(client.files.list(purpose="batch_output")) == []

    page = http.get("/v1/files", params={"limit": 3, "order": "asc"}).json()
    assert [d["id"] for d in page["data"]] == asc[:3] and page["has_more"] is True
    page = http.get("/v1/files", params={"limit": 3, "order": "asc",
                                         "after": page["last_id"]}).json()
    assert [d["id"] for d in page["data"]] == asc[3:6] and page["has_more"] is True
    page = http.get("/v1/files", params={"limit": 3, "order": "asc",
                                         "after": page["last_id"]}).json()
    assert [d["id"] for d in page["data"]] == asc[6:] and page["has_more"] is False
    last = http.get("/v1/files", params={"after": newest_first[-1]}).json()
    assert last == {"object": "list", "data": [], "first_id": None, "last_id": None,
                    "has_more": False}
    # the SDK's auto-pagination walks the same pages
    assert [f.id for f in client.files.list(limit=2)] == newest_first
    assert [f.id for f in client.files.list(limit=2, order="asc", purpose="batch")] == [
        i for i in asc if i in {f.id for f in batch}]


def test_delete_removes_row_and_content(client: OpenAI, http: TestClient, tmp_path: Path) -> None:
    f = client.files.create(file=("gone.jsonl", b"bye"), purpose="batch")
    keep = client.files.create(file=("kept.jsonl", b"hi"), purpose="batch")
    r = http.delete(f"/v1/files/{f.id}")
    assert r.json() == {"id": f.id, "object": "file", "deleted": True}
    assert FileDeleted.model_validate(r.json()).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(f.id)
    with pytest.raises(openai.NotFoundError):
        client.files.content(f.id)
    with pytest.raises(openai.NotFoundError):
        client.files.delete(f.id)
    err = _error(http.get(f"/v1/files/{f.id}"), 404)
    assert f.id in err["message"] and err["param"] == "id"
    assert [x.id for x in client.files.list()] == [keep.id]
    assert _content_files(tmp_path) == {keep.id}
    assert client.files.delete(keep.id).deleted is True
    assert _content_files(tmp_path) == set()


def test_a_key_sees_only_its_own_files(client: OpenAI, http: TestClient) -> None:
    mine = client.files.create(file=("mine.jsonl", b"secret"), purpose="batch")
    other = http.post("/admin/keys", json={"name": "other"}).json()["value"]
    theirs = _client(http, other)
    own = theirs.files.create(file=("theirs.jsonl", b"theirs"), purpose="batch")
    with pytest.raises(openai.NotFoundError):
        theirs.files.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        theirs.files.content(mine.id)
    with pytest.raises(openai.NotFoundError):
        theirs.files.delete(mine.id)
    assert [f.id for f in theirs.files.list()] == [own.id]
    page = http.get("/v1/files", params={"after": mine.id},
                    headers={"Authorization": f"Bearer {other}"}).json()
    assert page["data"] == []  # another key's id is no cursor either
    assert [f.id for f in client.files.list()] == [mine.id]  # the static key: its own only
    assert client.files.content(mine.id).content == b"secret"  # still there for its owner
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(own.id)


# -- limits and refusals


def test_a_file_over_the_file_limit_is_a_413(tmp_path: Path) -> None:
    app = make_app(tmp=tmp_path, max_file_bytes=4096)
    with TestClient(app, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        client = _client(http)
        assert client.files.create(file=("ok.bin", b"a" * 4096), purpose="batch").bytes == 4096
        # within the multipart allowance: refused by the route
        with pytest.raises(openai.APIStatusError) as caught:
            client.files.create(file=("big.bin", b"a" * 4097), purpose="batch")
        assert caught.value.status_code == 413
        err = _error(_upload(http, b"a" * 5000), 413)
        assert err["code"] == "file_too_large" and err["param"] == "file"
        assert "4096" in err["message"] and "OASIS_MAX_FILE_BYTES" in err["message"]
        # far over: refused by the guard from Content-Length, before a byte is read
        err = _error(_upload(http, b"a" * 2_000_000), 413)
        assert err["code"] == "file_too_large" and "4096" in err["message"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            yield _part("purpose", b"batch")
            yield b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n'
            for _ in range(40):
                yield b"b" * 8192

        r = http.post("/v1/files", content=chunks(),
                      headers={"content-type": "multipart/form-data; boundary=XyZ"})
        assert _error(r, 413)["code"] == "file_too_large"
        assert len(list(client.files.list())) == 1
        assert len(_content_files(tmp_path)) == 1
        assert not any((tmp_path / "files" / PARTIAL).iterdir())  # no scratch left behind
        assert http.get("/health").status_code == 200


def test_an_empty_file_is_a_400(http: TestClient) -> None:
    err = _error(_upload(http, b""))
    assert err["param"] == "file" and "empty" in err["message"]


@pytest.mark.parametrize("purpose", ["assistants", "vision", "fine-tune", "evals"])
def test_openai_purposes_this_server_does_not_support(client: OpenAI, http: TestClient,
                                                      purpose: str) -> None:
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("a.jsonl", b"x"), purpose=purpose)  # type: ignore[arg-type]
    err = _error(_upload(http, b"x", purpose=purpose))
    assert err["param"] == "purpose" and "not supported" in err["message"]
    assert "'batch'" in err["message"] and "'user_data'" in err["message"]


@pytest.mark.parametrize("purpose", ["batch_output", "fine-tune-results", "assistants_output"])
def test_server_written_purposes_cannot_be_uploaded(http: TestClient, purpose: str) -> None:
    err = _error(_upload(http, b"x", purpose=purpose))
    assert err["param"] == "purpose" and "written by the server" in err["message"]


@pytest.mark.parametrize("purpose", ["", "BATCH", "bogus", "b\x00atch", "x" * 10000])
def test_unknown_purposes(http: TestClient, purpose: str) -> None:
    err = _error(_raw(http, _multipart(_part("purpose", purpose.encode()),
                                       _part("file", b"x", b"a.jsonl"))))
    assert err["param"] == "purpose"
    assert len(err["message"]) < 1500


def test_expires_after_sets_expires_at(client: OpenAI, http: TestClient) -> None:
    f = client.files.create(file=("e.jsonl", b"x"), purpose="batch",
                            expires_after={"anchor": "created_at", "seconds": 3600})
    assert f.expires_at == f.created_at + 3600
    body = http.get(f"/v1/files/{f.id}").json()
    assert body["expires_at"] == f.expires_at and _file_body(body) == f
    g = client.files.create(file=("e.jsonl", b"x"), purpose="user_data",
                            expires_after={"anchor": "created_at", "seconds": 2592000})
    assert g.expires_at == g.created_at + 2592000


@pytest.mark.parametrize(("fields", "param"), [
    ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "3599"},
     "expires_after.seconds"),
    ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "2592001"},
     "expires_after.seconds"),
    ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "99999999999999999999"},
     "expires_after.seconds"),
    ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "-3600"},
     "expires_after.seconds"),
    ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "1e4"},
     "expires_after.seconds"),
    ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "３６００"},
     "expires_after.seconds"),
    ({"expires_after[anchor]": "created_at"}, "expires_after.seconds"),
    ({"expires_after[seconds]": "3600"}, "expires_after.anchor"),
    ({"expires_after[anchor]": "last_active_at", "expires_after[seconds]": "3600"},
     "expires_after.anchor"),
])
def test_bad_expires_after(http: TestClient, fields: dict[str, str], param: str) -> None:
    assert _error(_upload(http, b"x", **fields))["param"] == param


def test_missing_parts_and_bodies_that_are_not_multipart(http: TestClient) -> None:
    assert _error(http.post("/v1/files", data={"purpose": "batch"}))["param"] == "file"
    assert _error(_raw(http, _multipart(_part("file", b"x", b"a.jsonl"))))["param"] == "purpose"
    assert _error(_raw(http, _multipart()))["param"] == "purpose"
    err = _error(http.post("/v1/files", json={"file": "x", "purpose": "batch"}))
    assert err["param"] == "file" and "multipart/form-data" in err["message"]
    assert _error(http.post("/v1/files", content=b"x"))["param"] == "file"
    # the file as a text field, twice, or a field we do not know
    err = _error(_raw(http, _multipart(_part("purpose", b"batch"), _part("file", b"x"))))
    assert err["param"] == "file"
    twice = _multipart(_part("purpose", b"batch"), _part("file", b"x", b"a"),
                       _part("file", b"y", b"b"))
    assert _error(_raw(http, twice))["param"] == "file"
    twice = _multipart(_part("purpose", b"batch"), _part("purpose", b"batch"),
                       _part("file", b"y", b"b"))
    assert _error(_raw(http, twice))["param"] == "purpose"
    extra = _multipart(_part("purpose", b"batch"), _part("file", b"x", b"a"),
                       _part("model", b"gpt"))
    assert _error(_raw(http, extra))["param"] == "model"
    # broken framing: no boundary, garbage, a part without a name
    assert _error(_raw(http, b"garbage", "multipart/form-data"))["param"] == "file"
    assert _error(_raw(http, b"\x00\xff" * 100))["param"] == "file"
    nameless = b'--XyZ\r\nContent-Disposition: form-data\r\n\r\nx\r\n--XyZ--\r\n'
    assert _error(_raw(http, nameless))["param"] == "file"
    many = _multipart(*(_part(f"f{i}", b"v") for i in range(2000)))
    assert _error(_raw(http, many))["param"] == "file"
    assert http.get("/health").status_code == 200


def test_hostile_filenames(http: TestClient) -> None:
    def stored_name(filename: bytes, content_type: str = "multipart/form-data; boundary=XyZ",
                    ) -> str:
        r = _raw(http, _multipart(_part("purpose", b"batch"), _part("file", b"x", filename)),
                 content_type)
        assert r.status_code == 200, r.text
        name: str = _file_body(r.json()).filename
        retrieved = http.get(f"/v1/files/{r.json()['id']}").json()["filename"]
        assert retrieved == name
        return name

    nul = stored_name(b"a\x00b.jsonl")
    assert "\x00" not in nul and nul.startswith("a") and nul.endswith("b.jsonl")
    # UTF-7 decodes "+2AA-" to a lone surrogate (U+D800); Starlette decodes with the charset
    lone = stored_name(b"a+2AA-b", "multipart/form-data; charset=utf-7; boundary=XyZ")
    assert lone == "a\N{REPLACEMENT CHARACTER}b"
    lone.encode("utf-8")  # storable
    stored_name(b"a\xed\xa0\x80b")  # UTF-8 of a surrogate: not UTF-8, read as Latin-1
    assert stored_name(b"tab\tescape\x1b[31m\x7f").isprintable()
    assert stored_name(b"../../etc/passwd") == "../../etc/passwd"  # a name, never a path
    long = stored_name(b"n" * 3000)
    assert long == "n" * 255
    assert stored_name(("é" * 1000).encode()) == "é" * 255
    # a part header over the parser's limit (a 10 KB file name): refused, nothing stored
    err = _error(_raw(http, _multipart(_part("purpose", b"batch"),
                                       _part("file", b"x", b"n" * 10_000))))
    assert err["param"] == "file" and "header" in err["message"]
    r = http.post("/v1/files", files={"file": ("q" * 10_000, b"x")}, data={"purpose": "batch"})
    assert _error(r)["param"] == "file"
    assert len(http.get("/v1/files").json()["data"]) == 7


@pytest.mark.parametrize("query", [
    {"limit": "0"}, {"limit": "10001"}, {"limit": "10" * 50}, {"limit": "-1"},
    {"limit": "abc"}, {"limit": "1.5"}, {"limit": ""}, {"limit": "١٠"},
    {"order": "up"}, {"order": "DESC"}, {"purpose": "bogus"}, {"purpose": "\x00"},
    {"purpose": "x" * 10_000},
])
def test_bad_list_queries(http: TestClient, query: dict[str, str]) -> None:
    assert _error(http.get("/v1/files", params=query))["param"] == next(iter(query))


@pytest.mark.parametrize("after", ["file-nope", "\x00", "file-\x00", "x" * 10_000, "\ud800",
                                   "' OR 1=1 --", ""])
def test_bogus_cursors_give_an_empty_page(client: OpenAI, http: TestClient, after: str) -> None:
    client.files.create(file=("a.jsonl", b"x"), purpose="batch")
    raw = quote(after, safe="", errors="surrogatepass")
    r = http.get(f"/v1/files?after={raw}&limit=10000")
    assert r.status_code == 200, r.text
    assert r.json()["data"] == [] and r.json()["has_more"] is False


@pytest.mark.parametrize("file_id", ["file-nope", "%00", "file-%00", "x" * 10_000, "%ED%A0%80",
                                     "file-" + "%C3%A9" * 30, "....", "%2E%2E", "oasis.db",
                                     "' OR 1=1 --", "file-AAAAAAAAAAAAAAAAAAAAAAAA"])
def test_hostile_ids_are_not_found(client: OpenAI, http: TestClient, file_id: str) -> None:
    client.files.create(file=("a.jsonl", b"x"), purpose="batch")
    for method, path in (("GET", f"/v1/files/{file_id}"), ("GET", f"/v1/files/{file_id}/content"),
                         ("DELETE", f"/v1/files/{file_id}")):
        r = http.request(method, path)
        err = _error(r, 404)
        assert len(err["message"]) < 400
    assert len(list(client.files.list())) == 1


# -- concurrency, expiry, restart


def test_concurrent_uploads_and_deletes(client: OpenAI, http: TestClient, tmp_path: Path) -> None:
    workers = 16
    start = threading.Barrier(workers)
    kept: dict[int, str] = {}
    failures: list[BaseException] = []

    def work(i: int) -> None:
        try:
            data = f"worker {i}\n".encode() * (i + 1) * 1000
            start.wait()
            f = client.files.create(file=(f"w{i}.jsonl", data), purpose="batch")
            assert client.files.retrieve(f.id).filename == f"w{i}.jsonl"
            assert client.files.content(f.id).content == data
            assert f.id in {x.id for x in client.files.list(purpose="batch")}
            if i % 2:
                assert client.files.delete(f.id).deleted
                with pytest.raises(openai.NotFoundError):
                    client.files.retrieve(f.id)
            else:
                kept[i] = f.id
        except BaseException as exc:  # reported below, in the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not failures, failures
    listed = list(client.files.list())
    assert {f.id for f in listed} == set(kept.values()) and len(listed) == workers // 2
    assert _content_files(tmp_path) == set(kept.values())
    for i, file_id in kept.items():
        assert client.files.content(file_id).content == f"worker {i}\n".encode() * (i + 1) * 1000


def test_concurrent_deletes_of_one_file(client: OpenAI, http: TestClient) -> None:
    f = client.files.create(file=("one.jsonl", b"x"), purpose="batch")
    start = threading.Barrier(8)
    statuses: list[int] = []

    def delete() -> None:
        start.wait()
        statuses.append(http.delete(f"/v1/files/{f.id}").status_code)

    threads = [threading.Thread(target=delete) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(statuses) == [200] + [404] * 7


def test_purge_removes_expired_files(client: OpenAI, http: TestClient, tmp_path: Path) -> None:
    f = client.files.create(file=("e.jsonl", b"x"), purpose="batch",
                            expires_after={"anchor": "created_at", "seconds": 3600})
    keep = client.files.create(file=("k.jsonl", b"y"), purpose="batch")
    store: FileStore = http.app.state.oasis.files  # type: ignore[attr-defined]
    assert store.purge(int(time.time())) == 0
    assert f.expires_at is not None
    assert store.purge(f.expires_at) == 1
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(f.id)
    with pytest.raises(openai.NotFoundError):
        client.files.content(f.id)
    assert _content_files(tmp_path) == {keep.id}
    assert [x.id for x in client.files.list()] == [keep.id]


def test_files_survive_a_restart(tmp_path: Path) -> None:
    with TestClient(make_app(tmp=tmp_path),
                    headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        f = _client(http).files.create(file=("kept.jsonl", b"still here"), purpose="batch")
    with TestClient(make_app(tmp=tmp_path),
                    headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        client = _client(http)
        assert client.files.retrieve(f.id) == f
        assert client.files.content(f.id).content == b"still here"
        assert [x.id for x in client.files.list()] == [f.id]


# -- the store, on SQLite and PostgreSQL


class Clock:
    def __init__(self, now: int = 1_700_000_000) -> None:
        self.now = now

    def __call__(self) -> float:
        return float(self.now)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(db: Engine, tmp_path: Path, clock: Clock) -> FileStore:
    return FileStore(db, tmp_path / "files", clock=clock)


def test_store_lists_by_created_at_then_id(store: FileStore, clock: Clock) -> None:
    made: list[StoredFile] = []
    for i in range(9):
        clock.now += i % 2  # several files share a second
        made.append(store.add_bytes(1, "batch" if i % 3 else "user_data", f"f{i}", b"x"))
    store.add_bytes(2, "batch", "other key", b"x")
    store.add_bytes(None, "batch", "static key", b"x")
    expected = sorted(made, key=lambda f: (f.created_at, f.id))
    items, more = store.list(1, order="asc")
    assert items == expected and not more
    items, more = store.list(1)
    assert items == expected[::-1] and not more
    pages: list[StoredFile] = []
    after = None
    while True:
        page, more = store.list(1, limit=2, after=after, order="asc")
        pages += page
        if not more:
            break
        after = page[-1].id
    assert pages == expected
    assert [f.id for f in store.list(1, purpose="user_data")[0]] == [
        f.id for f in expected[::-1] if f.purpose == "user_data"]
    assert [f.filename for f in store.list(None)[0]] == ["static key"]
    assert store.list(3) == ([], False)
    with pytest.raises(ValueError):
        store.list(1, limit=0)


@pytest.mark.parametrize("bad", ["\x00", "file-\x00", "\ud800", "x" * 10_000, ""])
def test_store_hostile_ids(store: FileStore, bad: str) -> None:
    f = store.add_bytes(1, "batch", "a", b"x")
    assert store.get(1, bad) is None
    assert store.delete(1, bad) is False
    assert store.list(1, after=bad) == ([], False)
    assert store.get(1, f.id) == f


def test_store_filenames_are_made_safe(store: FileStore) -> None:
    f = store.add_bytes(1, "batch", "a\x00b\ud800c" + "d" * 1000, b"x")
    assert f.filename.startswith("a\N{REPLACEMENT CHARACTER}b\N{REPLACEMENT CHARACTER}c")
    assert len(f.filename) == 255
    assert store.get(1, f.id) == f


def test_store_expiry(store: FileStore, clock: Clock, tmp_path: Path) -> None:
    a = store.add_bytes(1, "batch", "a", b"a", expires_after=60)
    b = store.add_bytes(1, "batch", "b", b"b", expires_at=clock.now + 120)
    c = store.add_bytes(1, "batch", "c", b"c")
    assert a.expires_at == a.created_at + 60 and b.expires_at == clock.now + 120
    assert c.expires_at is None
    clock.now += 60  # a is invisible at once, before any purge
    assert store.get(1, a.id) is None and store.get(1, b.id) == b
    assert {f.id for f in store.list(1)[0]} == {b.id, c.id}
    assert store.delete(1, a.id) is False  # removed, but reported absent as get sees it
    assert not store.path(a).exists()
    assert store.purge(clock.now + 120, batch=1) == 1
    assert store.get(1, b.id) is None and not store.path(b).exists()
    assert store.get(1, c.id) == c and store.path(c).read_bytes() == b"c"
    with pytest.raises(ValueError):
        store.add_bytes(1, "batch", "x", b"x", expires_at=1, expires_after=1)


def test_store_purge_is_bounded(store: FileStore, clock: Clock) -> None:
    for i in range(7):
        store.add_bytes(1, "batch", f"{i}", b"x", expires_after=1)
    assert store.purge(clock.now + 1, batch=2, max_batches=2) == 4
    assert store.purge(clock.now + 1, batch=2, max_batches=2) == 3
    assert store.purge(clock.now + 1) == 0
    assert {p.name for p in store.root.iterdir()} == {PARTIAL}


def test_store_add_leaves_nothing_behind_on_failure(store: FileStore, tmp_path: Path) -> None:
    class Broken:
        def __init__(self) -> None:
            self.reads = 0

        def read(self, n: int) -> bytes:
            self.reads += 1
            if self.reads > 3:
                raise OSError("the client went away")
            return b"z" * 1000

    with pytest.raises(OSError):
        store.add(1, "batch", "a", Broken())  # type: ignore[arg-type]
    with pytest.raises(FileTooLargeError):
        store.add(1, "batch", "a", Broken(), max_bytes=2500)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        store.add_bytes(1, "not ascii é", "a", b"x")
    # the content is in place but the row cannot be inserted: the content goes too
    broken = FileStore(make_engine(f"sqlite:///{tmp_path / 'missing' / 'x.db'}"), store.root)
    with pytest.raises(OperationalError):
        broken.add_bytes(1, "batch", "a", b"x")
    assert store.list(1) == ([], False)
    assert {p.name for p in store.root.iterdir()} == {PARTIAL}
    assert not any((store.root / PARTIAL).iterdir())


def test_store_add_path_moves_without_copying(store: FileStore, tmp_path: Path) -> None:
    scratch = store.scratch_path()
    scratch.write_bytes(b'{"id": "batch_req_1"}\n')
    inode = scratch.stat().st_ino
    f = store.add_path(7, "batch_output", "batch_1_output.jsonl", scratch, expires_after=3600)
    assert not scratch.exists()
    assert store.path(f).stat().st_ino == inode  # renamed, not copied
    assert f.bytes == 22 and f.purpose == "batch_output" and f.to_openai()["expires_at"]
    with store.open(f) as handle:
        assert handle.read() == b'{"id": "batch_req_1"}\n'
    elsewhere = tmp_path / "elsewhere.jsonl"
    elsewhere.write_bytes(b"moved")
    g = store.add_path(7, "batch_output", "e.jsonl", elsewhere)
    assert not elsewhere.exists() and store.path(g).read_bytes() == b"moved"
    source = tmp_path / "kept.jsonl"
    source.write_bytes(b"copied")
    h = store.add(7, "batch", "kept.jsonl", source)
    assert source.read_bytes() == b"copied" and store.path(h).read_bytes() == b"copied"
    assert {x.id for x in store.list(7)[0]} == {f.id, g.id, h.id}
    with pytest.raises(ValueError):
        store.path(StoredFile("../../oasis.db", 7, "batch", "x", 1, 0))


def test_store_sweeps_abandoned_scratch_files(store: FileStore, clock: Clock) -> None:
    old, new = store.scratch_path(), store.scratch_path()
    old.write_bytes(b"abandoned")
    new.write_bytes(b"in progress")
    os.utime(old, (clock.now - 2 * DAY, clock.now - 2 * DAY))
    os.utime(new, (clock.now, clock.now))
    store.purge(clock.now)
    assert not old.exists() and new.exists()


def test_store_an_open_file_outlives_its_delete(store: FileStore) -> None:
    f = store.add_bytes(1, "batch", "a", b"still readable")
    with store.open(f) as handle:
        assert store.delete(1, f.id) is True
        assert handle.read() == b"still readable"
    with pytest.raises(FileNotFoundError):
        store.open(f)
