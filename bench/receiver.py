"""A fast webhook receiver for the delivery benchmark, run as its own process.

A raw asyncio HTTP/1.1 keep-alive server (uvloop when installed): it answers ``200 ok`` to
every POST, after ``--delay-ms`` if given, and does nothing else on that path, so that the
code under test and not the receiver is what a benchmark measures. Two GET paths report
what it saw:

* ``GET /__stats``: ``{"posts", "bytes", "duplicates", "distinct_ids", "cpu_s", "pid"}``
  (``duplicates``: POSTs whose ``webhook-id`` had already arrived);
* ``GET /__records``: with ``--record``, ``[[customer_id, webhook_id, t], ...]`` per POST,
  ``t`` being ``time.monotonic()`` when the request was fully read (CLOCK_MONOTONIC is
  system-wide on Linux, so the parent can compare it with its own clock) and
  ``customer_id`` the ``to.customer_id`` of the JSON body.

It binds a free 127.0.0.1 port and prints ``port <n>`` on stdout once listening. It stops
by itself after ``--max-lifetime`` seconds, or when its parent process goes away.

    .venv/bin/python bench/receiver.py [--delay-ms 100] [--record] [--max-lifetime 600]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from typing import Any

try:
    import orjson

    _loads: Any = orjson.loads
except ImportError:  # pragma: no cover - the project venv has orjson
    _loads = json.loads

_OK = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"
_OK_CLOSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n"
    b"connection: close\r\n\r\nok"
)
_MAX_HEAD = 64 * 1024


class State:
    def __init__(self, *, delay: float, record: bool) -> None:
        self.delay = delay
        self.record = record
        self.posts = 0
        self.bytes = 0
        self.duplicates = 0
        self.ids: set[bytes] = set()
        self.records: list[tuple[str | None, str | None, float]] = []

    def stats(self) -> dict[str, Any]:
        times = os.times()
        return {
            "posts": self.posts,
            "bytes": self.bytes,
            "duplicates": self.duplicates,
            "distinct_ids": len(self.ids),
            "cpu_s": times.user + times.system,
            "pid": os.getpid(),
        }


def _header(head: bytes, name: bytes) -> bytes | None:
    """The value of header ``name`` (lower-case, with its leading CRLF) in a lower-cased
    head, or None."""
    at = head.find(name)
    if at < 0:
        return None
    start = at + len(name)
    end = head.find(b"\r\n", start)
    return head[start : end if end >= 0 else len(head)].strip()


class Http(asyncio.Protocol):
    def __init__(self, state: State) -> None:
        self.state = state
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.need = -1  # body bytes still expected for the current request; -1: reading a head
        self.head = b""
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.need < 0:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.buffer) > _MAX_HEAD and self.transport is not None:
                        self.transport.close()
                    return
                self.head = bytes(self.buffer[: end + 2]).lower()
                del self.buffer[: end + 4]
                length = _header(self.head, b"\r\ncontent-length:")
                self.need = int(length) if length else 0
                self.close_after = _header(self.head, b"\r\nconnection:") == b"close"
            if len(self.buffer) < self.need:
                return
            body = bytes(self.buffer[: self.need])
            del self.buffer[: self.need]
            self.need = -1
            self.handle(self.head, body)

    def handle(self, head: bytes, body: bytes) -> None:
        state = self.state
        if head.startswith(b"get /__stats"):
            self.reply(json.dumps(state.stats()).encode())
            return
        if head.startswith(b"get /__records"):
            self.reply(json.dumps(state.records).encode())
            return
        arrived = time.monotonic()
        state.posts += 1
        state.bytes += len(body)
        webhook_id = _header(head, b"\r\nwebhook-id:")
        if webhook_id is not None:
            if webhook_id in state.ids:
                state.duplicates += 1
            else:
                state.ids.add(webhook_id)
        if state.record:
            customer = None
            with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
                customer = _loads(body)["to"]["customer_id"]
            state.records.append((customer, webhook_id.decode() if webhook_id else None, arrived))
        answer = _OK_CLOSE if self.close_after else _OK
        if state.delay > 0:
            asyncio.get_running_loop().call_later(state.delay, self.send, answer)
        else:
            self.send(answer)

    def reply(self, payload: bytes) -> None:
        self.send(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(payload)}\r\n\r\n".encode()
            + payload
        )

    def send(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(data)
        if self.close_after:
            transport.close()


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    state = State(delay=args.delay_ms / 1000, record=args.record)
    server = await loop.create_server(
        lambda: Http(state), "127.0.0.1", args.port, backlog=4096, reuse_address=True
    )
    port = server.sockets[0].getsockname()[1]
    print(f"port {port}", flush=True)
    done = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    parent = os.getppid()
    deadline = time.monotonic() + args.max_lifetime
    async with server:
        while not done.is_set():
            if time.monotonic() > deadline or os.getppid() != parent:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), timeout=0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="listen port (0: a free one)")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="answer after this long (0)")
    parser.add_argument("--record", action="store_true", help="keep a record per POST")
    parser.add_argument(
        "--max-lifetime", type=float, default=600.0, help="exit after this many seconds (600)"
    )
    parser.add_argument("--no-uvloop", action="store_true", help="use asyncio's own loop")
    args = parser.parse_args(argv)
    runner: Any = asyncio.run
    if not args.no_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            runner = uvloop.run
    runner(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
