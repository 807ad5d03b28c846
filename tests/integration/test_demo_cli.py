"""``nudge demo`` against a real engine (``nudge run`` on SQLite and a free loopback port)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

NUDGE = str(Path(sys.executable).with_name("nudge"))
WRITE_KEY = "wk_demo_test"
#: The subprocesses read only the temporary config file, never the caller's NUDGE_* settings.
_ENV = {k: v for k, v in os.environ.items() if not k.startswith("NUDGE_")}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _poll(check: Callable[[], bool], *, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.1)


def _health(url: str) -> dict[str, Any] | None:
    try:
        response = httpx.get(f"{url}/healthz", timeout=2.0)
    except httpx.TransportError:
        return None
    return response.json() if response.status_code == 200 else None


@pytest.fixture
def nudge_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``nudge run`` as a subprocess; yields its URL and its config file."""
    port = _free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        f"database_url: sqlite:///{tmp_path / 'nudge.db'}\n"
        f"server: {{host: 127.0.0.1, port: {port}}}\n"
        f"write_keys: [{{source: demo, key: {WRITE_KEY}}}]\n"
        "admin_token: adm_demo_test\n"
        "log_level: WARNING\n"
    )
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [NUDGE, "run", "--config", str(config)], cwd=tmp_path, env=_ENV, stdout=log, stderr=log
    )
    try:

        def up() -> bool:
            if server.poll() is not None:
                pytest.fail(f"nudge run exited: {(tmp_path / 'server.log').read_text()}")
            return _health(url) is not None

        _poll(up, seconds=30, what="nudge run to answer /healthz")
        yield url, config
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=5)
        log.close()


def _nudge(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [NUDGE, *args], cwd=cwd, env=_ENV, capture_output=True, text=True, timeout=120, check=False
    )


def _profile(ref: str, config: Path) -> dict[str, Any]:
    shown = _nudge("customers", "show", ref, "--json", "--config", str(config), cwd=config.parent)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    doc: dict[str, Any] = json.loads(shown.stdout)
    return doc


def test_demo_fills_a_running_engine_with_habitual_and_merged_customers(
    nudge_server: tuple[str, Path],
) -> None:
    url, config = nudge_server
    run = _nudge(
        "demo", "--events", "1500", "--url", url, "--write-key", WRITE_KEY, cwd=config.parent
    )
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert re.search(r"events sent to \S+: 1500 \(1500 accepted, 0 rejected\)", out), out
    examples = dict(re.findall(r"^\s+(.+?)\s+nudge customers show (\S+)$", out, re.M))
    assert set(examples) >= {
        "Tuesday family shopper",
        "Friday friends shopper",
        "lapsing regular",
        "abandoned checkout",
    }, out

    def drained() -> bool:
        health = _health(url)
        return health is not None and health["pending_events"] == 0

    _poll(drained, seconds=60, what="the engine to process every demo event")

    tuesday = _profile(examples["Tuesday family shopper"], config)
    weekdays = tuesday["stats"]["order_weekdays"]
    assert tuesday["stats"]["orders"] >= 4 and len(tuesday["orders"]) >= 4
    assert max(range(7), key=weekdays.__getitem__) == 1, weekdays  # Monday is 0
    assert weekdays[1] >= sum(weekdays) / 2, weekdays
    assert tuesday["traits"]["timezone"] == tuesday["stats"]["timezone"]

    # The anonymous browsing before identify was merged into the identified customer.
    kinds = {i["kind"]: i["value"] for i in tuesday["identities"]}
    assert kinds["user"] == examples["Tuesday family shopper"]
    assert _profile(kinds["anonymous"], config)["id"] == tuesday["id"]
    assert tuesday["stats"]["first_seen_at"] < tuesday["stats"]["first_order_at"]

    abandoner = _profile(examples["abandoned checkout"], config)
    assert abandoner["stats"]["carts_abandoned"] >= 1
    lapsing = _profile(examples["lapsing regular"], config)
    assert lapsing["stats"]["orders"] >= 2 and lapsing["stats"]["days_since_last_order"] > 21
