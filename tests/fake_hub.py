"""A fake Hugging Face Hub on 127.0.0.1: the parts of the protocol huggingface_hub speaks when
``oasis pull`` lists a repository and downloads a file.

- ``GET /api/models/{owner}/{name}[/revision/{rev}]`` (``?blobs=True``): the model info, with
  ``sha`` (the commit) and ``siblings`` (``rfilename``, ``size``, ``blobId``, ``lfs``).
- ``HEAD /{owner}/{name}/resolve/{rev}/{path}``: as the Hub answers for an LFS file, a 302 to
  the "CDN" (``http://127.0.0.2:<port>/cdn/{sha256}``: another host, as the Hub's CDN is, so
  huggingface_hub does not follow it and must not send the token there) with
  ``X-Repo-Commit``, ``X-Linked-Etag`` (the sha256) and ``X-Linked-Size``.
- ``GET`` of the same: the same 302 (the file is then fetched from the CDN URL).
- ``GET /cdn/{sha256}``: the bytes, ``Accept-Ranges: bytes``, ``Range: bytes=N-`` -> 206.
- Errors as the Hub sends them: an unknown repository is a 401 without a token (404 with one)
  with ``X-Error-Code: RepoNotFound``; a gated one lists fine but its files are a 401
  ``GatedRepo`` without a token (403 with one that has no access); an unknown file is a 404
  ``EntryNotFound``; an unknown revision a 404 ``RevisionNotFound``.

Knobs for tests: ``cut_after`` (close the connection after that many bytes of the next
``cut_times`` downloads), ``stall_after`` (send that many bytes, then hang until ``release()``:
a download to interrupt from outside), ``corrupt`` (file paths served with one byte flipped,
same size), and what it saw: ``requests`` (method, path, Range header) and ``bytes_sent``.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit


@dataclass
class FakeRepo:
    files: dict[str, bytes]
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    gated: bool = False
    # tokens that may read a gated repository
    allowed_tokens: set[str] = field(default_factory=set)


@dataclass
class Seen:
    method: str
    path: str
    range: str | None
    authorization: str | None


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[Seen] = []
        self.bytes_sent = 0
        self.cut_after: int | None = None
        self.cut_times = 0
        self.stall_after: int | None = None
        self.corrupt: set[str] = set()
        self.stalled = threading.Event()  # set once a stalled download has sent its bytes
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._servers: list[ThreadingHTTPServer] = []

    # -- knobs -------------------------------------------------------------------------------
    def add(self, repo: str, files: dict[str, bytes], **options: Any) -> FakeRepo:
        self.repos[repo] = FakeRepo(files, **options)
        return self.repos[repo]

    def release(self) -> None:
        self._release.set()

    def downloads(self) -> list[Seen]:
        return [r for r in self.requests if r.method == "GET" and r.path.startswith("/cdn/")]

    @property
    def url(self) -> str:
        """The Hub's address (HF_ENDPOINT)."""
        host, port = self._servers[0].server_address[:2]
        return f"http://{host}:{port}"

    @property
    def cdn_url(self) -> str:
        host, port = self._servers[-1].server_address[:2]
        return f"http://{host}:{port}"

    # -- the server --------------------------------------------------------------------------
    @contextmanager
    def running(self) -> Iterator[FakeHub]:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._servers = [ThreadingHTTPServer(("127.0.0.1", 0), Handler)]
        # the CDN on another loopback address (Linux routes all of 127/8 to lo)
        with suppress(OSError):
            self._servers.append(ThreadingHTTPServer(("127.0.0.2", 0), Handler))
        threads = []
        for server in self._servers:
            server.daemon_threads = True
            threads.append(threading.Thread(target=server.serve_forever, daemon=True))
            threads[-1].start()
        try:
            yield self
        finally:
            self._release.set()
            for server, thread in zip(self._servers, threads, strict=True):
                server.shutdown()
                server.server_close()
                thread.join(5)

    def blob(self, sha: str) -> tuple[FakeRepo, str, bytes] | None:
        for repo in self.repos.values():
            for path, data in repo.files.items():
                if hashlib.sha256(data).hexdigest() == sha:
                    return repo, path, data
        return None


_API = re.compile(r"^/api/models/([^/]+/[^/]+?)(?:/revision/([^/]+))?/?$")
_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- helpers -----------------------------------------------------------------------------
    def _token(self) -> str | None:
        auth = self.headers.get("Authorization") or ""
        return auth.removeprefix("Bearer ").strip() or None

    def _send(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        self._send(
            status,
            {
                "Content-Type": "application/json",
                "X-Error-Code": code,
                "X-Error-Message": message,
            },
            body,
        )

    def _repo(self, repo_id: str) -> FakeRepo | None:
        repo = self.fake.repos.get(repo_id)
        if repo is None:
            # the Hub: 401 to an anonymous caller (a private repo and a missing one look alike)
            self._error(
                404 if self._token() else 401,
                "RepoNotFound",
                "Repository not found",
            )
        return repo

    # -- routes ------------------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self._route()

    def do_GET(self) -> None:
        self._route()

    def _route(self) -> None:
        url = urlsplit(self.path)
        path = url.path
        with self.fake._lock:
            self.fake.requests.append(
                Seen(
                    self.command,
                    path,
                    self.headers.get("Range"),
                    self.headers.get("Authorization"),
                )
            )
        if m := _API.match(path):
            self._model_info(unquote(m.group(1)), unquote(m.group(2) or "main"))
        elif m := _RESOLVE.match(path):
            self._resolve(unquote(m.group(1)), unquote(m.group(2)), unquote(m.group(3)))
        elif path.startswith("/cdn/"):
            self._cdn(path.removeprefix("/cdn/"))
        else:
            self._error(404, "NotFound", f"no route {path}")

    def _model_info(self, repo_id: str, revision: str) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        if revision not in ("main", repo.commit):
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return
        siblings = []
        for name, data in repo.files.items():
            sha = hashlib.sha256(data).hexdigest()
            siblings.append(
                {
                    "rfilename": name,
                    "size": len(data),
                    "blobId": hashlib.sha1(data).hexdigest(),
                    "lfs": {"sha256": sha, "size": len(data), "pointerSize": 134},
                }
            )
        body = {
            "_id": "fake",
            "id": repo_id,
            "modelId": repo_id,
            "sha": repo.commit,
            "private": False,
            "gated": "manual" if repo.gated else False,
            "disabled": False,
            "tags": ["gguf"],
            "siblings": siblings,
        }
        self._send(200, {"Content-Type": "application/json"}, json.dumps(body).encode())

    def _resolve(self, repo_id: str, revision: str, filename: str) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        if revision not in ("main", repo.commit):
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return
        if repo.gated and self._token() not in repo.allowed_tokens:
            self._error(
                403 if self._token() else 401,
                "GatedRepo",
                f"Access to model {repo_id} is restricted. You must have access to it and be "
                "authenticated to access it. Please log in.",
            )
            return
        data = repo.files.get(filename)
        if data is None:
            self._error(404, "EntryNotFound", f"{filename} does not exist on {revision}")
            return
        sha = hashlib.sha256(data).hexdigest()
        self._send(
            302,
            {
                "Location": f"{self.fake.cdn_url}/cdn/{sha}",
                "X-Repo-Commit": repo.commit,
                "X-Linked-Etag": f'"{sha}"',
                "X-Linked-Size": str(len(data)),
                "ETag": f'"{hashlib.sha1(data).hexdigest()}"',
                "Accept-Ranges": "bytes",
            },
        )

    def _cdn(self, sha: str) -> None:
        found = self.fake.blob(sha)
        if found is None:
            self._send(404, {}, b"no such blob")
            return
        _, path, data = found
        if path in self.fake.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:] if len(data) > 1 else b"\0"
        start = 0
        status = 200
        headers = {
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "ETag": f'"{sha}"',
        }
        if m := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or ""):
            start = int(m.group(1))
            if start >= len(data):
                self._send(416, {"Content-Range": f"bytes */{len(data)}"})
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "HEAD":
            return
        fake = self.fake
        with fake._lock:
            cut = fake.cut_after if fake.cut_times > 0 else None
            if cut is not None:
                fake.cut_times -= 1
            stall = fake.stall_after
        limit = min(x for x in (cut, stall, len(body)) if x is not None)
        self._write(body[:limit])
        if cut is not None and cut < len(body):
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        if stall is not None and stall < len(body):
            self.wfile.flush()
            fake.stalled.set()
            fake._release.wait(30)
            self.close_connection = True
            return
        self.wfile.flush()

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        for i in range(0, len(view), 65536):
            chunk = view[i : i + 65536]
            self.wfile.write(chunk)
            with self.fake._lock:
                self.fake.bytes_sent += len(chunk)


def make_gguf(
    *,
    arch: str = "llama",
    file_type: int | None = 15,
    context_length: int | None = 4096,
    chat_template: str | None = "{% for m in messages %}{{ m.content }}{% endfor %}",
    tensor_bytes: int = 4096,
    seed: int = 0,
) -> bytes:
    """A small, valid GGUF file: the metadata the store reads and one F32 tensor of about
    ``tensor_bytes`` bytes (``seed`` makes files of one shape differ)."""
    import tempfile
    from pathlib import Path

    import gguf
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.gguf"
        writer = gguf.GGUFWriter(str(path), arch)
        writer.add_name(f"fake {arch}")
        if file_type is not None:
            writer.add_file_type(file_type)
        if context_length is not None:
            writer.add_context_length(context_length)
        if chat_template is not None:
            writer.add_chat_template(chat_template)
        rng = np.random.default_rng(seed)
        writer.add_tensor("token_embd.weight", rng.random(max(1, tensor_bytes // 4), np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path.read_bytes()
