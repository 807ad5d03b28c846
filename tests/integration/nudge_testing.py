"""Helpers shared by the integration tests (the fixtures that build them are in conftest.py).

:class:`Database` reads the SQLite file through its own stdlib connections; :class:`Harness`
adds the engine and its simulated clock; :class:`Nudge` adds the uvicorn server's URL and an
httpx client, and the one assertion on the API's error shape.
"""

from __future__ import annotations

import base64
import gzip
import socket
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

from engine.clock import SimulatedClock
from engine.service import Engine, process_until_idle
from engine.store import SqlStore

WRITE_KEY = "wk_test"
ADMIN_TOKEN = "adm_test"
SHOPIFY_SECRET = "shpss_test"
#: The simulated "now" every engine starts at (so receivedAt is known exactly).
START = datetime(2025, 3, 4, 12, 0, 0, tzinfo=UTC)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def basic_auth(key: str) -> str:
    """The ``Authorization`` header value Segment libraries send for ``key``."""
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


@dataclass
class Database:
    """A SQLite file, read through its own stdlib ``sqlite3`` connections (never the app's)."""

    path: Path

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        conn = sqlite3.connect(self.path, timeout=30)
        try:
            conn.row_factory = sqlite3.Row
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def scalar(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        rows = self.query(sql, params)
        return rows[0][0] if rows else None

    def count(self, table: str, where: str = "1=1", params: tuple[Any, ...] = ()) -> int:
        return int(self.scalar(f"SELECT count(*) FROM {table} WHERE {where}", params))

    def events(self, where: str = "1=1", params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """Rows of the ``events`` table in arrival order, with ``payload`` decoded."""
        rows = self.query(f"SELECT * FROM events WHERE {where} ORDER BY seq", params)
        out = []
        for row in rows:
            item = dict(row)
            item["payload"] = orjson.loads(item["payload"]) if item["payload"] else {}
            out.append(item)
        return out


def stored_time(value: str) -> datetime:
    """A datetime column as SQLAlchemy writes it to SQLite (naive UTC text) → aware UTC."""
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


@dataclass(kw_only=True)
class Harness(Database):
    """An engine on that file, with a simulated clock, that nobody serves over HTTP."""

    engine: Engine = field(repr=False)
    clock: SimulatedClock = field(repr=False)

    @property
    def store(self) -> SqlStore:
        return self.engine.store  # type: ignore[return-value]

    def process(self) -> int:
        """Run the event processor until nothing is pending; how many events it claimed."""
        return process_until_idle(self.engine)


@dataclass(kw_only=True)
class Nudge(Harness):
    """A running engine: the app served by uvicorn on ``base_url``, and an HTTP client."""

    base_url: str
    http: httpx.Client = field(repr=False)

    def post(
        self,
        path: str,
        body: Any = None,
        *,
        key: str | None = WRITE_KEY,
        raw: bytes | None = None,
        gzipped: bool = False,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """POST ``body`` as JSON (or ``raw`` bytes) with ``key`` as HTTP Basic user name."""
        content = raw if raw is not None else orjson.dumps(body)
        sent = {"Content-Type": "application/json"}
        if gzipped:
            content = gzip.compress(content)
            sent["Content-Encoding"] = "gzip"
        if key is not None:
            sent["Authorization"] = basic_auth(key)
        sent.update(headers or {})
        return self.http.post(path, content=content, headers=sent)

    def admin_get(self, path: str, token: str | None = ADMIN_TOKEN) -> httpx.Response:
        """GET with ``Authorization: Bearer <token>`` (no header if ``token`` is None)."""
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return self.http.get(path, headers=headers)

    @staticmethod
    def expect_error(
        response: httpx.Response,
        status: int,
        *,
        code: str | None = None,
        field: str | None = None,
    ) -> dict[str, Any]:
        """Assert ``response`` is the API's one error shape, exactly
        ``{"error": {"code", "message", "details"}}``, with this status (and code, and a
        detail naming ``field``); returns the ``error`` object."""
        assert response.status_code == status, response.text
        assert response.headers["content-type"].startswith("application/json")
        body = response.json()
        assert isinstance(body, dict) and set(body) == {"error"}, body
        error = body["error"]
        assert isinstance(error, dict) and set(error) == {"code", "message", "details"}, error
        assert isinstance(error["code"], str) and error["code"], error
        assert isinstance(error["message"], str) and error["message"], error
        assert error["details"] is None or isinstance(error["details"], list), error
        if code is not None:
            assert error["code"] == code, error
        if field is not None:
            fields = [d.get("field") for d in error["details"] or [] if isinstance(d, dict)]
            assert field in fields, error
        return error
