"""A small HTTP/1.1 keep-alive load generator on raw asyncio streams.

httpx costs a few milliseconds of client CPU per request, which on a 2-core machine is more than
the servers under test spend: the client, not the server, would set the numbers. This one sends
a prepared request and reads the response by Content-Length (or chunked framing): tens of
microseconds per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any


class Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
            self.reader = self.writer = None

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        """Send a prepared request; the status and body of the response."""
        if self.writer is None:
            await self._open()
        assert self.reader is not None and self.writer is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = None
        chunked = close = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and b"close" in value.lower():
                close = True
        if chunked:
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
                data = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                parts.append(data[:-2])
            body = b"".join(parts)
        else:
            body = await self.reader.readexactly(length or 0)
        if close:
            await self.close()
        return status, body


def prepare(host: str, port: int, path: str, body: dict[str, Any], key: str) -> bytes:
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


async def sequential(host: str, port: int, raw: bytes, n: int,
                     on_done: Any = None) -> list[float]:
    """Latencies (s) of ``n`` requests one after another on one connection (200s only)."""
    conn = Connection(host, port)
    out: list[float] = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            status, _ = await conn.request(raw)
            if status == 200:
                out.append(time.perf_counter() - t0)
            if on_done is not None:
                on_done()
    finally:
        await conn.close()
    return out


async def saturate(host: str, port: int, raw: bytes, clients: int,
                   seconds: float) -> tuple[int, int, float]:
    """``clients`` connections sending back to back for ``seconds``: (ok, failed, wall s)."""
    ok = failed = 0
    stop = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal ok, failed
        conn = Connection(host, port)
        try:
            while time.perf_counter() < stop:
                try:
                    status, _ = await conn.request(raw)
                except (OSError, asyncio.IncompleteReadError):
                    failed += 1
                    await conn.close()
                    continue
                if status == 200:
                    ok += 1
                else:
                    failed += 1
        finally:
            await conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*[client() for _ in range(clients)])
    return ok, failed, time.perf_counter() - t0
