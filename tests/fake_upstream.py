"""A scriptable fake OpenAI upstream: the replica a gateway forwards to, with faults on demand.

It answers `/v1/chat/completions` and `/v1/completions` (plain and SSE streams, `n`,
`stream_options.include_usage`, `response_format` json_schema), `/v1/models` and `/health` with
deterministic OpenAI-shaped bodies and no model behind them, so the happy path costs almost
nothing (it is also the upstream of the gateway-overhead benchmark). The text of a replica named
NAME is `"[NAME] w1 w2 ..."`: `tokens` pieces (fewer if the request's `max_tokens` /
`max_completion_tokens` is smaller), the first being `"[NAME] "`, so tests can tell replicas
apart. The response's `model` is the request's `model`, verbatim; json_schema chats get
`{"answer": "w0"}`. Responses carry an `x-upstream-name: NAME` header.

Faults are scripted with `POST /control` (or `FakeUpstream.script(**body)`) and apply to all the
following generation requests, or with `"times": N` to the next N of them; `{"mode": "ok"}`
resets:

    {"mode": "error", "status": 429, "message": "slow down", "retry_after": 2}
    {"mode": "slow", "delay": 1.5}          wait before the response headers
    {"mode": "cut", "after": 3}             3 token chunks, then the connection drops
    {"mode": "error_event", "after": 3}     3 token chunks, an SSE error event, [DONE]
    {"mode": "garbage"}                     200 with a body that is not JSON
    {"mode": "no_usage"}                    no usage anywhere, even when asked
    {"mode": "bad_json_output"}             json_schema chats get {"answer": 42}
    {"mode": "down"}                        503 everywhere, /health and /v1/models too
    {"mode": "hang"}                        no answer until reset (then ok) or stop (dropped)

`GET /control` gives the counters (requests, by_path, in_flight, max_in_flight, the last 50
bodies, the last Authorization header, disconnects: generation requests whose client left before
the end); `POST /control/reset-stats` zeroes them.

In tests, `with running("a", tokens=4) as up:` serves in a thread on a free 127.0.0.1 port;
`up.url` is the `/v1` base URL; `up.stop()` / `up.start()` kill and restart it on the same port.
As a process: `python -m tests.fake_upstream --port 9001 --name a`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any, cast

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

MODES = frozenset({"ok", "error", "slow", "cut", "error_event", "garbage", "no_usage",
                   "bad_json_output", "down", "hang"})
ERROR_EVENT = {"error": {"message": "upstream exploded", "type": "server_error", "param": None,
                         "code": None}}
DONE = b"data: [DONE]\n\n"
JSON = (b"content-type", b"application/json")
SSE = (b"content-type", b"text/event-stream")


class _Cut(Exception):
    """Raised once a response has started: uvicorn then drops the connection mid-body."""


def _not_a_cut(record: logging.LogRecord) -> bool:
    return not (record.exc_info and isinstance(record.exc_info[1], _Cut))


def _quiet_cuts() -> None:
    """Deliberate cuts need no traceback from uvicorn."""
    log = logging.getLogger("uvicorn.error")
    if _not_a_cut not in log.filters:
        log.addFilter(_not_a_cut)


def error_body(status: int, message: str, type_: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """OpenAI's error envelope."""
    kind = type_ or ("server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _count(x: Any) -> int:
    """Prompt 'tokens': the words (and token ids) of a prompt, messages or content parts."""
    if isinstance(x, str):
        return len(x.split())
    if isinstance(x, list):
        return sum(_count(i) for i in x)
    if isinstance(x, dict):
        return _count(x.get("content", x.get("text")))
    return 1 if isinstance(x, int) else 0


def _event(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _watch(receive: Receive) -> asyncio.Task[None]:
    """A task that ends when the client disconnects."""
    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
    return asyncio.ensure_future(watch())


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]],
                cut: bool = False) -> None:
    """A whole response; with `cut`, half of it and then a dropped connection."""
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    if cut:
        await send({"type": "http.response.body", "body": body[: len(body) // 2],
                    "more_body": True})
        raise _Cut("cut by script")
    await send({"type": "http.response.body", "body": body})


class UpstreamState:
    """Settings, scripted fault and counters of one fake upstream; the ASGI app of generation."""

    def __init__(self, name: str, tokens: int, chunk_delay: float) -> None:
        self.name, self.tokens, self.chunk_delay = name, tokens, chunk_delay
        self.words = [f"[{name}] "] + [f"w{i} " for i in range(1, tokens)]
        self.fault: dict[str, Any] = {"mode": "ok"}
        self.times: int | None = None
        self.closing = False  # set by FakeUpstream.stop: streams and hangs are dropped
        self.in_flight = self.seq = 0
        self._release: asyncio.Event | None = None
        self.reset_stats()

    def reset_stats(self) -> None:
        self.requests, self.max_in_flight, self.disconnects = 0, self.in_flight, 0
        self.by_path: dict[str, int] = {}
        self.bodies: deque[Any] = deque(maxlen=50)
        self.auth: str | None = None

    def stats(self) -> dict[str, Any]:
        return {"requests": self.requests, "by_path": dict(self.by_path),
                "in_flight": self.in_flight, "max_in_flight": self.max_in_flight,
                "bodies": list(self.bodies), "auth": self.auth, "disconnects": self.disconnects,
                "mode": self.fault["mode"], "times": self.times}

    def script(self, spec: dict[str, Any]) -> dict[str, Any]:
        mode, times = spec.get("mode", "ok"), spec.get("times")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {sorted(MODES)}")
        if times is not None and (not isinstance(times, int) or times < 1):
            raise ValueError("times must be a positive integer")
        if mode == "ok":
            self.release()
        self.fault, self.times = {**spec, "mode": mode}, times
        return {"mode": mode, "times": times}

    def _take(self) -> dict[str, Any]:
        """The fault for this generation request (counting down `times`)."""
        fault = self.fault
        if self.times is not None:
            self.times -= 1
            if self.times <= 0:
                self.fault, self.times = {"mode": "ok"}, None
        return fault

    def release(self) -> None:
        """Wake hanging requests (on reset and stop)."""
        if self._release is not None:
            self._release.set()
            self._release = None

    def shut(self) -> None:
        self.closing = True
        self.release()

    def reopen(self) -> None:
        self.closing, self._release = False, None  # a new server, a new event loop

    async def _sleep(self, seconds: float | None, watcher: asyncio.Task[None]) -> None:
        """Sleep (None: until released), waking early if the client leaves or on release."""
        if self._release is None:
            self._release = asyncio.Event()
        released = asyncio.ensure_future(self._release.wait())
        try:
            await asyncio.wait([released, watcher], timeout=seconds,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            released.cancel()

    def _down(self, request: Request) -> Response | None:
        path = request.url.path
        self.by_path[path] = self.by_path.get(path, 0) + 1
        if self.fault["mode"] == "down":
            return JSONResponse(error_body(503, "upstream is down"), status_code=503)
        return None

    async def health(self, request: Request) -> Response:
        return self._down(request) or JSONResponse({"status": "ok"})

    async def models(self, request: Request) -> Response:
        model = {"id": self.name, "object": "model", "created": 0, "owned_by": "fake"}
        return self._down(request) or JSONResponse({"object": "list", "data": [model]})

    async def control(self, request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse(self.stats())
        if request.url.path.endswith("/reset-stats"):
            self.reset_stats()
            return JSONResponse(self.stats())
        try:
            spec = await request.json()
            if not isinstance(spec, dict):
                raise ValueError("the body must be a JSON object")
            return JSONResponse(self.script(spec))
        except ValueError as e:
            return JSONResponse(error_body(400, str(e)), status_code=400)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A generation request: chat or text completions."""
        raw, more = b"", True
        while more:
            message = await receive()
            raw, more = raw + message.get("body", b""), message.get("more_body", False)
        path: str = scope["path"]
        self.requests += 1
        self.by_path[path] = self.by_path.get(path, 0) + 1
        for key, value in scope["headers"]:
            if key == b"authorization":
                self.auth = value.decode("latin-1")
        try:
            req = json.loads(raw)
        except ValueError:
            req = raw.decode("utf-8", "replace")
        self.bodies.append(req)
        fault = self._take()
        mode = fault["mode"]
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        watcher = _watch(receive) if mode in ("hang", "slow") else None
        headers = [JSON, (b"x-upstream-name", self.name.encode())]
        try:
            if watcher is not None:
                await self._sleep(float(fault.get("delay", 1)) if mode == "slow" else None,
                                  watcher)
                if watcher.done():
                    self.disconnects += 1
                    return
                if self.closing:
                    await _send(send, 200, b"{}" * 32, headers, cut=True)
            if mode in ("down", "error"):
                status = 503 if mode == "down" else int(fault.get("status", 500))
                message = fault.get("message", "upstream is down" if mode == "down" else "boom")
                body = error_body(status, message, fault.get("type"), fault.get("code"))
                if fault.get("retry_after") is not None:
                    headers.append((b"retry-after", str(fault["retry_after"]).encode()))
                await _send(send, status, json.dumps(body).encode(), headers)
            elif not isinstance(req, dict):
                body = error_body(400, "the body is not a JSON object")
                await _send(send, 400, json.dumps(body).encode(), headers)
            elif mode == "garbage":
                if req.get("stream"):
                    await _send(send, 200, b"data: {not json\n\n", [SSE])
                else:
                    await _send(send, 200, b"this is not json", headers)
            elif req.get("stream"):
                watcher = watcher or _watch(receive)
                await self._stream(send, watcher, req, path, fault)
            else:
                data = json.dumps(self._complete(req, path, mode)).encode()
                await _send(send, 200, data, headers, cut=mode == "cut")
        finally:
            self.in_flight -= 1
            if watcher is not None:
                watcher.cancel()

    def _plan(self, req: dict[str, Any], path: str, mode: str) -> tuple[bool, list[str], str]:
        """(chat?, the text pieces, finish_reason) for a request."""
        chat = path.endswith("/chat/completions")
        rf = req.get("response_format")
        if chat and isinstance(rf, dict) and rf.get("type") == "json_schema":
            return chat, ['{"answer": 42}' if mode == "bad_json_output"
                          else '{"answer": "w0"}'], "stop"
        limit = req.get("max_completion_tokens")
        limit = req.get("max_tokens") if limit is None else limit
        if isinstance(limit, int) and limit < self.tokens:
            return chat, self.words[: max(limit, 0)], "length"
        return chat, self.words, "stop"

    def _usage(self, req: dict[str, Any], chat: bool, completion: int) -> dict[str, int]:
        prompt = max(_count(req.get("messages" if chat else "prompt")), 1)
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion}

    def _head(self, req: dict[str, Any], chat: bool, object_: str) -> dict[str, Any]:
        self.seq += 1
        return {"id": f"{'chatcmpl' if chat else 'cmpl'}-{self.name}-{self.seq}",
                "object": object_, "created": int(time.time()), "model": req.get("model")}

    def _complete(self, req: dict[str, Any], path: str, mode: str) -> dict[str, Any]:
        chat, pieces, finish = self._plan(req, path, mode)
        n = req["n"] if isinstance(req.get("n"), int) and req["n"] > 0 else 1
        text = "".join(pieces)
        out = self._head(req, chat, "chat.completion" if chat else "text_completion")
        choice: dict[str, Any] = {"logprobs": None, "finish_reason": finish}
        if chat:
            choice["message"] = {"role": "assistant", "content": text, "refusal": None}
        else:
            choice["text"] = text
        out["choices"] = [{"index": i, **choice} for i in range(n)]
        if mode != "no_usage":
            out["usage"] = self._usage(req, chat, len(pieces) * n)
        return out

    async def _stream(self, send: Send, watcher: asyncio.Task[None], req: dict[str, Any],
                      path: str, fault: dict[str, Any]) -> None:
        mode = fault["mode"]
        chat, pieces, finish = self._plan(req, path, mode)
        n = req["n"] if isinstance(req.get("n"), int) and req["n"] > 0 else 1
        options = req.get("stream_options")
        usage = isinstance(options, dict) and bool(options.get("include_usage")) \
            and mode != "no_usage"
        head = self._head(req, chat, "chat.completion.chunk" if chat else "text_completion")
        if usage:
            head["usage"] = None

        def chunk(i: int, delta: dict[str, str], finish_reason: str | None = None) -> bytes:
            choice: dict[str, Any] = {"index": i, "logprobs": None, "finish_reason": finish_reason}
            if chat:
                choice["delta"] = delta
            else:
                choice["text"] = delta.get("content", "")
            return _event({**head, "choices": [choice]})

        events = [chunk(i, {"role": "assistant", "content": ""}) for i in range(n)] if chat \
            else []
        tokens = [chunk(i, {"content": p}) for p in pieces for i in range(n)]
        if mode in ("cut", "error_event"):
            after = int(fault.get("after", 1))
            events = events + tokens[:after] if after else []  # after=0: the error comes first
            error = {"error": {**ERROR_EVENT["error"], **{
                k: fault[f] for k, f in (("message", "message"), ("type", "error_type"))
                if f in fault}}}
            events.append(b"" if mode == "cut" else _event(error) + DONE)
        else:
            events += tokens + [chunk(i, {}, finish) for i in range(n)]
            if usage:
                completion = self._usage(req, chat, len(pieces) * n)
                events.append(_event({**head, "choices": [], "usage": completion}))
            events.append(DONE)
        headers = [SSE, (b"cache-control", b"no-cache"), (b"x-upstream-name", self.name.encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for k, data in enumerate(events):
            if k and self.chunk_delay:
                await self._sleep(self.chunk_delay, watcher)
            if watcher.done():
                self.disconnects += 1
                return
            if not data or self.closing:
                raise _Cut("stream cut by script")
            await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


def make_app(name: str = "fake", tokens: int = 8, chunk_delay: float = 0.0) -> Starlette:
    """A fake upstream app; its `UpstreamState` is `app.state.upstream`."""
    state = UpstreamState(name, tokens, chunk_delay)
    app = Starlette(routes=[
        Route("/health", state.health),
        Route("/v1/models", state.models),
        Route("/v1/chat/completions", state, methods=["POST"]),
        Route("/v1/completions", state, methods=["POST"]),
        Route("/control", state.control, methods=["GET", "POST"]),
        Route("/control/reset-stats", state.control, methods=["POST"]),
    ])
    app.state.upstream = state
    _quiet_cuts()
    return app


def _config(app: Starlette, **kw: Any) -> uvicorn.Config:
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=1, **kw)
    _quiet_cuts()  # after Config, which sets up uvicorn's loggers
    return config


class FakeUpstream:
    """A fake upstream served by uvicorn in a background thread, on one port for its life."""

    def __init__(self, name: str = "fake", *, tokens: int = 8, chunk_delay: float = 0.0,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = make_app(name, tokens, chunk_delay)
        self.state: UpstreamState = self.app.state.upstream
        self.host, self.port = host, port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/v1"

    def start(self) -> FakeUpstream:
        """Serve (again: on the same port after a stop)."""
        if self._thread is not None:
            return self
        # IPPROTO_TCP, or asyncio leaves Nagle on: +40 ms a response (delayed ACKs)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self.state.reopen()
        server = self._server = uvicorn.Server(_config(self.app))

        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            with sock:
                await server.serve(sockets=[sock])

        self._thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True,
                                        name=f"fake-upstream-{self.state.name}")
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the fake upstream did not start on port {self.port}")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        """Stop serving, like a killed replica: hanging and streaming requests are dropped."""
        server, thread, loop = self._server, self._thread, self._loop
        if server is None or thread is None:
            return
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already ended
                loop.call_soon_threadsafe(self.state.shut)
        server.should_exit = True
        thread.join(5)
        if thread.is_alive():
            server.force_exit = True
            thread.join(5)
        self._server = self._thread = self._loop = None

    def _control(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        r = httpx.request("GET" if body is None else "POST", f"{self.base}{path}", json=body,
                          trust_env=False)
        r.raise_for_status()
        return cast(dict[str, Any], r.json())

    def script(self, **fault: Any) -> dict[str, Any]:
        """Script a fault (see the module docstring); `script()` resets to ok."""
        if self._thread is None:  # stopped: no server thread to race with
            return self.state.script(fault)
        return self._control("/control", fault)

    def stats(self) -> dict[str, Any]:
        return self._control("/control") if self._thread else self.state.stats()

    def reset_stats(self) -> dict[str, Any]:
        return self._control("/control/reset-stats", {})

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running(name: str = "fake", **kw: Any) -> Iterator[FakeUpstream]:
    """A started `FakeUpstream` (keywords: tokens, chunk_delay, host, port), stopped at exit."""
    with FakeUpstream(name, **kw) as upstream:
        yield upstream


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fake_upstream",
                                     description="A scriptable fake OpenAI upstream.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="fake")
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--chunk-delay", type=float, default=0.0)
    args = parser.parse_args(argv)
    app = make_app(args.name, args.tokens, args.chunk_delay)
    uvicorn.Server(_config(app, host=args.host, port=args.port)).run()


if __name__ == "__main__":
    main()
