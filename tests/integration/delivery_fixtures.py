"""Real parts for the delivery tests: webhook receivers and a simulated shop that delivers.

:class:`Receiver` is an ASGI endpoint under real uvicorn on a free loopback port: it records
every request (and checks its Standard Webhooks signature with :func:`verify_signature`, an
implementation independent of the engine's), and answers each path from a script of
:class:`Answer` values (a status and headers, after an optional delay; or a stall until the
client hangs up). :class:`CutServer` is a bare TCP endpoint whose first answers are cut off
mid-body, for the one fault no HTTP framework will produce on purpose.

:class:`Shop` is a :class:`~journey_fixtures.Sim` (real SQLite file, the scheduler's jobs run
synchronously on a :class:`~engine.clock.SimulatedClock`) plus a real
:class:`~engine.delivery.Dispatcher` that is run to idle on demand, and optionally the real
HTTP app (ingest and tracking) under uvicorn, for the tests that click and unsubscribe.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from journey_fixtures import Sim
from nudge_testing import WRITE_KEY, basic_auth, free_port, stored_time

from engine.clock import SimulatedClock
from engine.config import load_settings
from engine.delivery import Dispatcher
from engine.web import create_app

#: The channels' signing secret (Standard Webhooks: ``whsec_`` + base64 of the key).
SECRET = "whsec_" + base64.b64encode(b"nudge-delivery-tests-32-byte-key").decode()
LINK_SECRET = "link-secret-for-the-delivery-tests"
DEADLINE = 10.0  # seconds any single wait may take
TEST_LIMIT = 60  # seconds any one test may take (see the ``time_limit`` fixture)


# -- Standard Webhooks, independently ---------------------------------------------------------


def verify_signature(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The Standard Webhooks check, written from the spec (not the engine's code, nor the
    ``standardwebhooks`` library): HMAC-SHA256 keyed with the base64-decoded part of
    ``whsec_<base64>`` over ``"{webhook-id}.{webhook-timestamp}.{body}"``, base64, compared
    in constant time with each ``v1,<sig>`` of the space-separated ``webhook-signature``."""
    try:
        msg_id = headers["webhook-id"]
        stamp = headers["webhook-timestamp"]
        given = headers["webhook-signature"]
    except KeyError:
        return False
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = msg_id.encode() + b"." + stamp.encode() + b"." + body
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest(expected, part) for part in given.split(" "))


# -- bounded tests ----------------------------------------------------------------------------


@pytest.fixture(name="time_limit", autouse=False)
def time_limit_fixture() -> Iterator[None]:
    """Fail the test (TimeoutError in the main thread) if it runs past ``TEST_LIMIT``."""

    def expired(_signum: int, _frame: FrameType | None) -> None:
        raise TimeoutError(f"the test ran past its {TEST_LIMIT} s limit")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, TEST_LIMIT)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def wait_for(condition: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    """Poll ``condition`` until it holds; TimeoutError naming ``what`` after ``deadline`` s."""
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError(f"gave up waiting for {what}")
        time.sleep(0.005)


# -- uvicorn ----------------------------------------------------------------------------------


@dataclass
class Served:
    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive(), "uvicorn did not stop"


def serve(app: Any, port: int | None = None) -> Served:
    """``app`` under uvicorn on 127.0.0.1 (``port``, or a free one), in a daemon thread."""
    port = port or free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="error",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=1,
        )
    )
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive(), "uvicorn to start")
    if not server.started:
        raise RuntimeError("uvicorn did not start (see the log above)")
    return Served(f"http://127.0.0.1:{port}", server, thread)


# -- the scripted receiver --------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Answer:
    """How the receiver answers one request: ``status`` with ``headers`` after ``delay``
    seconds; ``stall``: never answer, wait until the client hangs up."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    stall: bool = False


@dataclass(frozen=True)
class Hit:
    """One request as the receiver saw it."""

    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool
    arrived: float  # time.monotonic()

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")


class Receiver:
    """A webhook endpoint answering each path from its script (default: 200)."""

    def __init__(self, secret: str = SECRET) -> None:
        self.secret = secret
        self.hits: list[Hit] = []
        self.in_flight = 0
        self.answered: list[Hit] = []  # hits whose answer was sent with a 2xx
        self.disconnects = 0
        self.default = Answer()
        self._scripts: dict[str, deque[Answer]] = {}
        self._lock = threading.Lock()
        self.url = ""

    def script(self, path: str, *answers: Answer) -> None:
        """Answer the next requests to ``path`` with ``answers`` in turn, then the default."""
        with self._lock:
            self._scripts[path] = deque(answers)

    def on(self, path: str) -> list[Hit]:
        """The requests to ``path`` so far."""
        with self._lock:
            return [h for h in self.hits if h.path == path]

    def _next(self, path: str) -> Answer:
        with self._lock:
            queue = self._scripts.get(path)
            return queue.popleft() if queue else self.default

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        hit = Hit(
            path=scope["path"],
            headers=headers,
            body=body,
            verified=verify_signature(self.secret, headers, body),
            arrived=time.monotonic(),
        )
        with self._lock:
            self.hits.append(hit)
            self.in_flight += 1
        try:
            answer = self._next(hit.path)
            if answer.stall:
                while (await receive())["type"] != "http.disconnect":
                    pass
                self.disconnects += 1
                return
            if answer.delay:
                await asyncio.sleep(answer.delay)
            content = f"answered {answer.status}".encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": answer.status,
                    "headers": [
                        (b"content-type", b"text/plain"),
                        (b"content-length", str(len(content)).encode()),
                        *((k.encode(), v.encode()) for k, v in answer.headers.items()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": content})
            if 200 <= answer.status < 300:
                with self._lock:
                    self.answered.append(hit)
        finally:
            with self._lock:
                self.in_flight -= 1


@pytest.fixture(name="receiver")
def receiver_fixture() -> Iterator[Receiver]:
    """A :class:`Receiver` served on a free loopback port (``receiver.url``)."""
    receiver = Receiver()
    served = serve(receiver)
    receiver.url = served.url
    try:
        yield receiver
    finally:
        served.stop()


# -- a TCP endpoint that cuts its answers off -------------------------------------------------


class CutServer:
    """A bare HTTP/1.1 endpoint on a free loopback port: the first ``cut`` requests get a
    response cut off mid-body (``Content-Length: 100``, 7 bytes, then the connection is
    closed); later ones a complete ``200 OK``. Every request's headers are recorded."""

    def __init__(self, cut: int) -> None:
        self.cut = cut
        self.requests: list[dict[str, str]] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/cut"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="cut-server", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(DEADLINE)
        reader = conn.makefile("rb")
        try:
            while True:
                line = reader.readline()
                if not line:
                    return
                headers: dict[str, str] = {}
                while (line := reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                reader.read(int(headers.get("content-length", "0")))
                self.requests.append(headers)
                if len(self.requests) <= self.cut:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
                    return  # closes the connection mid-body
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except OSError:
            return
        finally:
            reader.close()
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(DEADLINE)


# -- rules and templates ---------------------------------------------------------------------

EMAIL_TEMPLATE = (
    "{% block subject %}Hello {{ customer.id }}{% endblock %}\n"
    "{% block html %}<p>Hello {{ customer.id }}</p>{% endblock %}\n"
    "{% block text %}Hello {{ customer.id }}{% endblock %}\n"
)
PUSH_TEMPLATE = (
    "{% block title %}Hello{% endblock %}\n"
    "{% block body %}Hello {{ customer.id }}{% endblock %}\n"
    "{% block url %}https://shop.example.com/{% endblock %}\n"
)


def one_step_rule(
    rule_id: str,
    *,
    event: str = "Ping",
    channel: str = "email",
    template: str | None = None,
    priority: int = 50,
    extra: str = "",
) -> str:
    """A rule sending one message at once on each ``event`` (one journey per
    ``properties.n``)."""
    return (
        f"id: {rule_id}\n"
        f"trigger:\n  event: {event}\n  key: event.properties.n\n"
        f"channel: {channel}\n"
        f"template: {template or rule_id}\n"
        f"priority: {priority}\n"
        f"{extra}"
    )


# -- the shop ---------------------------------------------------------------------------------


def endpoint(url: str, *, timeout: str = "2s", secret: str = SECRET) -> dict[str, Any]:
    return {"url": url, "secret": secret, "timeout": timeout}


def channels(**urls: str | dict[str, Any]) -> dict[str, Any]:
    """``channels(email=url, push=url)`` → the ``channels`` setting (one endpoint each)."""
    return {
        name: {"endpoints": [endpoint(u) if isinstance(u, str) else u]} for name, u in urls.items()
    }


@dataclass(eq=False)
class Shop(Sim):
    """A :class:`Sim` whose outbox is delivered by a real :class:`Dispatcher` on demand."""

    dispatcher: Dispatcher = field(init=False, repr=False)
    app_url: str | None = None
    http: httpx.Client | None = field(default=None, repr=False)

    def _build(self) -> None:
        super()._build()
        self.dispatcher = Dispatcher(self.engine)

    def deliver(self, rounds: int = 100) -> int:
        """Run the dispatcher's ``dispatch_once`` until it finds nothing due (the attempts
        are real POSTs); returns how many outbox rows it handled."""

        async def run() -> int:
            total = 0
            try:
                async with asyncio.timeout(3 * DEADLINE):
                    for _ in range(rounds):
                        handled = await self.dispatcher.dispatch_once()
                        if not handled:
                            break
                        total += handled
            finally:
                await self.dispatcher.poster.aclose()
            return total

        return asyncio.run(run())

    def step(self, delta: Any = None) -> None:
        """Advance the clock (if ``delta``), run the scheduler's jobs, then deliver."""
        if delta is not None:
            self.clock.advance(delta)
        self.tick()
        self.deliver()

    def set_clock(self, when: datetime) -> None:
        self.clock.set(when)

    # -- reading ------------------------------------------------------------------------------

    def outbox(self, where: str = "1=1", params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        rows = self.query(f"SELECT * FROM outbox WHERE {where} ORDER BY id", params)
        out = []
        for row in rows:
            item = dict(row)
            for name in ("next_attempt_at", "lease_until", "delivered_at", "created_at"):
                if item.get(name) is not None:
                    item[name] = stored_time(item[name])
            out.append(item)
        return out

    def attempts(self, outbox_id: int) -> list[dict[str, Any]]:
        rows = self.query(
            "SELECT * FROM delivery_attempts WHERE outbox_id = ? ORDER BY id", (outbox_id,)
        )
        return [dict(r) for r in rows]

    def messages(self, where: str = "1=1", params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        rows = self.query(f"SELECT * FROM messages WHERE {where} ORDER BY created_at, id", params)
        out = []
        for row in rows:
            item = dict(row)
            item["body"] = orjson.loads(item["body"])
            out.append(item)
        return out

    def customer_id(self, ref: str) -> int:
        found = self.engine.store.find_customer(ref)
        assert found is not None, f"no customer {ref!r}"
        return found

    def decisions_of(self, ref: str, rule: str | None = None) -> list[dict[str, Any]]:
        """The customer's rows of the ``decisions`` table, oldest first."""
        where, params = "customer_id = ?", (self.customer_id(ref),)
        if rule is not None:
            where, params = where + " AND rule_id = ?", (*params, rule)
        return self.decision_rows(where, params)

    # -- HTTP ---------------------------------------------------------------------------------

    def segment(self, path: str, body: dict[str, Any]) -> None:
        """POST a Segment call to the running app's ingest API (HTTP Basic write key)."""
        assert self.http is not None, "the shop was made without serve_app=True"
        response = self.http.post(
            path,
            content=orjson.dumps(body),
            headers={"Content-Type": "application/json", "Authorization": basic_auth(WRITE_KEY)},
        )
        assert response.status_code == 200, response.text
        assert response.json() == {"success": True}


@pytest.fixture(name="make_shop")
def make_shop_fixture(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, time_limit: None
) -> Iterator[Callable[..., Shop]]:
    """A factory: ``make_shop(start, rules={file: yaml}, templates={file: text},
    serve_app=False, **settings)`` → a :class:`Shop` over ``tmp_path/n.db``. With
    ``serve_app`` the engine's HTTP app runs under uvicorn on the port its links point at."""
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("NUDGE_")]:
        monkeypatch.delenv(name)
    made: list[Shop] = []
    served: list[Served] = []

    def make(
        start: datetime,
        *,
        rules: dict[str, str] | None = None,
        templates: dict[str, str] | None = None,
        serve_app: bool = False,
        **overrides: Any,
    ) -> Shop:
        (tmp_path / "rules").mkdir(exist_ok=True)
        (tmp_path / "templates").mkdir(exist_ok=True)
        for name, text in (rules or {}).items():
            (tmp_path / "rules" / name).write_text(text)
        for name, text in (templates or {}).items():
            (tmp_path / "templates" / name).write_text(text)
        port = free_port()
        values: dict[str, Any] = {
            "database_url": f"sqlite:///{tmp_path}/n.db",
            "rules_dir": tmp_path / "rules",
            "templates_dir": tmp_path / "templates",
            "sqlite_synchronous": "normal",
            "log_level": "WARNING",
            "server": {"host": "127.0.0.1", "port": port},
            "write_keys": [{"source": "web", "key": WRITE_KEY}],
            "link_secret": LINK_SECRET,
        }
        values.update(overrides)
        shop = Shop(
            path=tmp_path / "n.db",
            settings=load_settings(None, **values),
            clock=SimulatedClock(start),
        )
        made.append(shop)
        assert not shop.engine.rules.current.errors, shop.engine.rules.current.errors
        if serve_app:
            app = serve(create_app(shop.engine), port)
            served.append(app)
            shop.app_url = app.url
            shop.http = httpx.Client(base_url=app.url, timeout=DEADLINE)
        return shop

    yield make
    for shop in made:
        if shop.http is not None:
            shop.http.close()
    for app in served:
        app.stop()
    for shop in made:
        shop.close()
