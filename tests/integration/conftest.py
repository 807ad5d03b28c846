"""Real parts for integration tests: a SQLite file in tmp_path, the real app under a real
uvicorn server on a free loopback port, and real httpx clients.

Event processing is never left to a scheduler thread: a test calls :meth:`Nudge.process`
(``process_until_idle``) when it wants the processor to run, so the outcome is deterministic.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from nudge_testing import (
    ADMIN_TOKEN,
    SHOPIFY_SECRET,
    START,
    WRITE_KEY,
    Harness,
    Nudge,
    free_port,
)

from engine.clock import SimulatedClock
from engine.config import Settings, load_settings
from engine.service import Engine
from engine.store import create_store
from engine.web import create_app

_STARTUP_DEADLINE = 10.0  # seconds for uvicorn to start or stop


def _settings(tmp_path: Path, port: int, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path}/nudge.db",
        "write_keys": [{"source": "web", "key": WRITE_KEY}],
        "admin_token": ADMIN_TOKEN,
        "shopify": {"secret": SHOPIFY_SECRET},
        "server": {"host": "127.0.0.1", "port": port},
    }
    values.update(overrides)
    return load_settings(None, **values)


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + _STARTUP_DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what}")
        time.sleep(0.005)


def _clean_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The engine must see only what the test configures: no NUDGE_* variables, no
    # ./config.yaml from wherever pytest was started.
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("NUDGE_")]:
        monkeypatch.delenv(name)


def _harness_parts(settings: Settings) -> tuple[Engine, SimulatedClock]:
    clock = SimulatedClock(START)
    store = create_store(settings, clock)
    store.upgrade()
    return Engine(settings=settings, store=store, clock=clock), clock


@pytest.fixture
def offline_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    """The store (migrated SQLite file ``tmp_path/nudge.db``) and engine, without a server."""
    _clean_environment(tmp_path, monkeypatch)
    engine, clock = _harness_parts(_settings(tmp_path, free_port()))
    harness = Harness(path=tmp_path / "nudge.db", engine=engine, clock=clock)
    yield harness
    harness.store.close()


@pytest.fixture
def start_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Nudge]]:
    """A factory: ``start_engine(**settings_overrides)`` → a running :class:`Nudge`."""
    _clean_environment(tmp_path, monkeypatch)
    started: list[tuple[uvicorn.Server, threading.Thread, Nudge]] = []

    def start(**overrides: Any) -> Nudge:
        port = free_port()
        engine, clock = _harness_parts(_settings(tmp_path, port, **overrides))
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(engine),
                host="127.0.0.1",
                port=port,
                log_level="warning",
                access_log=False,
                lifespan="on",
            )
        )
        thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
        thread.start()
        _wait_for(lambda: server.started or not thread.is_alive(), "uvicorn to start")
        if not server.started:
            engine.store.close()
            raise RuntimeError("uvicorn did not start (see the log above)")
        base_url = f"http://127.0.0.1:{port}"
        nudge = Nudge(
            path=tmp_path / "nudge.db",
            engine=engine,
            clock=clock,
            base_url=base_url,
            http=httpx.Client(base_url=base_url, timeout=10),
        )
        started.append((server, thread, nudge))
        return nudge

    yield start

    for server, thread, nudge in reversed(started):
        nudge.http.close()
        server.should_exit = True
        thread.join(_STARTUP_DEADLINE)
        nudge.store.close()
        assert not thread.is_alive(), "uvicorn did not stop"


@pytest.fixture
def running_engine(start_engine: Callable[..., Nudge]) -> Nudge:
    """The running engine with the default test settings (write key ``wk_test``, source
    ``web``; admin token ``adm_test``; Shopify secret ``shpss_test``)."""
    return start_engine()
