"""Webhook endpoints for the delivery tests.

:func:`serve` runs any ASGI app under a real uvicorn server on a free loopback port, in a
thread; :class:`ScriptedReceiver` is an app whose answer is chosen by the path (a status, a
stall, a gate that holds requests until the test releases them, counting how many are in
flight); :func:`raw_server` is a bare TCP server on the caller's event loop for the faults no
HTTP framework will produce (a response cut off mid-headers or mid-body, garbage).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import RedirectResponse
from nudge_testing import free_port

DEADLINE = 10.0  # seconds for a server to start or stop, or a test's wait to come true


def wait_for(condition: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    """Poll ``condition`` (from a thread that is not the server's) until true."""
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError(f"gave up waiting for {what}")
        time.sleep(0.002)


async def wait_until(condition: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    """Poll ``condition`` from a coroutine (other tasks run meanwhile) until true."""
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError(f"gave up waiting for {what}")
        await asyncio.sleep(0.002)


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """``app`` under uvicorn on a free 127.0.0.1 port; yields the base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=2,
        )
    )
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive(), "uvicorn to start")
    if not server.started:
        raise RuntimeError("uvicorn did not start (see the log above)")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(DEADLINE)
        assert not thread.is_alive(), "uvicorn did not stop"


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes


class ScriptedReceiver:
    """An endpoint answering by path:

    - ``POST /status/{code}[?retry_after=...]`` answers ``code`` (with ``Retry-After``) and a
      short body; ``/status/{code}?size=N`` answers a body of N bytes;
    - ``POST /redirect`` answers 302 to ``/status/200``;
    - ``POST /stall`` never answers: it waits until the client hangs up;
    - ``POST /gate`` holds each request until the test calls :meth:`release`, and counts
      ``arrived``, ``in_flight`` and ``peak`` (the most ever in flight).

    Every request is recorded in ``seen``.
    """

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.arrived = 0
        self.in_flight = 0
        self.peak = 0
        self.stalls_ended = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gate: asyncio.Semaphore | None = None

    def release(self, count: int = 1) -> None:
        """Let ``count`` held ``/gate`` requests answer (callable from any thread)."""
        assert self._loop is not None and self._gate is not None, "receiver not started"
        for _ in range(count):
            self._loop.call_soon_threadsafe(self._gate.release)

    def app(self) -> FastAPI:
        @asynccontextmanager
        async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
            self._loop = asyncio.get_running_loop()
            self._gate = asyncio.Semaphore(0)
            yield

        app = FastAPI(lifespan=lifespan)

        async def record(request: Request) -> None:
            body = await request.body()
            self.seen.append(Seen(request.url.path, dict(request.headers), body))

        @app.post("/status/{code}")
        async def status(
            request: Request, code: int, retry_after: str | None = None, size: int | None = None
        ) -> Response:
            await record(request)
            headers = {"Retry-After": retry_after} if retry_after is not None else None
            content = b"e" * size if size is not None else f"answered {code}".encode()
            if code in (204, 304):
                content = b""
            return Response(content, status_code=code, headers=headers)

        @app.post("/redirect")
        async def redirect(request: Request) -> Response:
            await record(request)
            return RedirectResponse("/status/200", status_code=302)

        @app.post("/stall")
        async def stall(request: Request) -> Response:
            await record(request)
            while (await request.receive())["type"] != "http.disconnect":
                pass
            self.stalls_ended += 1
            return Response(status_code=204)

        @app.post("/gate")
        async def gate(request: Request) -> Response:
            await record(request)
            assert self._gate is not None
            self.arrived += 1
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            try:
                await self._gate.acquire()
            finally:
                self.in_flight -= 1
            return Response(b"ok")

        return app


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


@dataclass
class RawServer:
    url: str
    connections: int = 0
    requests: int = 0


@asynccontextmanager
async def raw_server(script: Script) -> AsyncIterator[RawServer]:
    """A TCP server on the running loop: for each request (read up to the end of its headers
    and its Content-Length body) ``script`` writes whatever it likes; it returns True to keep
    the connection for the next request, False to close it."""
    state = RawServer(url="")
    handlers: set[asyncio.Task[Any]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                state.requests += 1
                if not await script(reader, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:  # stopped by the finally below: end quietly
            return
        finally:
            handlers.discard(task)
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    state.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
    try:
        yield state
    finally:
        server.close()
        for task in list(handlers):
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()
