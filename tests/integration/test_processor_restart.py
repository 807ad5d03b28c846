"""Crash safety of the event processor: ``kill -9`` a ``nudge worker`` part-way through a
backlog, finish with ``nudge worker --once``, and every event is applied exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from nudge_testing import START, Harness

from engine.events import normalize_segment

CUSTOMERS = 300
EVENTS_PER_CUSTOMER = 20
ORDERS_PER_CUSTOMER = 2
TOTAL = CUSTOMERS * EVENTS_PER_CUSTOMER
DEADLINE = 60.0  # seconds, for each wait on a subprocess


def customer_events(i: int) -> list[dict[str, Any]]:
    """Twenty Segment calls of customer ``i``: browsing, two checkouts, two orders, identify."""
    user = f"user-{i:03d}"
    calls: list[dict[str, Any]] = [
        {"type": "identify", "userId": user, "traits": {"email": f"{user}@example.com"}},
        {"type": "page", "userId": user, "name": "Home"},
    ]
    for k in range(12):
        calls.append(
            {
                "type": "track",
                "userId": user,
                "event": "Product Viewed",
                "properties": {"product_id": f"sku-{k}", "price": 10 + k},
            }
        )
    for k in range(ORDERS_PER_CUSTOMER):
        cart = f"cart-{i}-{k}"
        calls.append(
            {
                "type": "track",
                "userId": user,
                "event": "Checkout Started",
                "properties": {"cart_id": cart, "value": 40.0},
            }
        )
        calls.append(
            {
                "type": "track",
                "userId": user,
                "event": "Order Completed",
                "properties": {"order_id": f"order-{i}-{k}", "cart_id": cart, "revenue": 40.0},
            }
        )
    calls += [
        {"type": "track", "userId": user, "event": "Cart Viewed"},
        {"type": "page", "userId": user, "name": "Thanks"},
    ]
    assert len(calls) == EVENTS_PER_CUSTOMER
    return calls


def backlog() -> list[dict[str, Any]]:
    """All customers' events as ``events`` rows, interleaved (each customer's in order)."""
    per_customer = [customer_events(i) for i in range(CUSTOMERS)]
    rows = []
    for step in range(EVENTS_PER_CUSTOMER):
        for i, calls in enumerate(per_customer):
            call = {
                **calls[step],
                "messageId": f"crash-{i}-{step}",
                "timestamp": (START + timedelta(minutes=step)).isoformat(),
            }
            event = normalize_segment(
                call, call_type=None, source="web", received_at=START, max_event_bytes=32768
            )
            rows.append(event.row())
    return rows


def nudge_command(*args: str) -> list[str]:
    """The installed ``nudge`` script next to this interpreter, else ``python -m engine``."""
    script = Path(sys.executable).with_name("nudge")
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-m", "engine", *args]


def worker_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("NUDGE_")}


def processed(db: Harness) -> int:
    return db.count("events", "status != 0")


def snapshot(db: Harness) -> list[tuple[Any, ...]]:
    return [
        tuple(row)
        for row in db.query(
            "SELECT id, user_id, event_counts, orders_count, revenue, stats, merged_into"
            " FROM customers ORDER BY id"
        )
    ] + [tuple(row) for row in db.query("SELECT * FROM orders ORDER BY order_id")]


def kill_worker_after(db: Harness, config: Path, processed_at_least: int) -> int:
    """Start ``nudge worker``, ``kill -9`` it once it has processed ``processed_at_least``
    events; how many events are processed after the kill."""
    worker = subprocess.Popen(
        nudge_command("worker", "--config", str(config)),
        cwd=config.parent,
        env=worker_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + DEADLINE
        while processed(db) < processed_at_least:
            assert worker.poll() is None, worker.communicate()[0].decode()
            assert time.monotonic() < deadline, f"the worker got stuck at {processed(db)}"
            time.sleep(0.005)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(DEADLINE)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == -signal.SIGKILL
    return processed(db)


@pytest.mark.slow
def test_worker_killed_mid_backlog_resumes_and_applies_every_event_once(
    offline_engine: Harness, tmp_path: Path
) -> None:
    db = offline_engine
    assert db.store.insert_events(backlog()) == TOTAL
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "database_url": f"sqlite:///{db.path}",
                "processing": {"batch_size": 100, "interval": "20ms"},
                "log_level": "WARNING",
            }
        )
    )

    # Two workers in turn, each killed (SIGKILL: no cleanup at all) part-way through.
    done_at_kill = 0
    for target in (1, TOTAL // 2):
        done_at_kill = kill_worker_after(db, config, max(target, done_at_kill + 1))
        assert 0 < done_at_kill < TOTAL, f"the kill should land mid-backlog ({done_at_kill})"

    finish = subprocess.run(
        nudge_command("worker", "--once", "--config", str(config)),
        cwd=tmp_path,
        env=worker_env(),
        capture_output=True,
        text=True,
        timeout=DEADLINE * 2,
        check=False,
    )

    assert finish.returncode == 0, finish.stdout + finish.stderr
    # Only what the killed worker had not committed was processed again.
    assert f"processed {TOTAL - done_at_kill} events" in finish.stdout
    assert db.count("events", "status = 0") == 0
    assert db.count("events", "status = 2") == 0, db.query("SELECT error FROM events LIMIT 3")
    customers = db.query(
        "SELECT id, user_id, event_counts, orders_count, revenue FROM customers"
        " WHERE merged_into IS NULL"
    )
    assert len(customers) == CUSTOMERS
    for row in customers:
        counts = json.loads(row["event_counts"])
        assert sum(counts.values()) == EVENTS_PER_CUSTOMER, (row["user_id"], counts)
        assert counts["Order Completed"] == ORDERS_PER_CUSTOMER, (row["user_id"], counts)
        assert row["orders_count"] == ORDERS_PER_CUSTOMER, row["user_id"]
        assert row["revenue"] == 40.0 * ORDERS_PER_CUSTOMER, row["user_id"]
    assert db.count("orders") == CUSTOMERS * ORDERS_PER_CUSTOMER
    assert db.count("checkouts", "completed_at IS NOT NULL") == CUSTOMERS * ORDERS_PER_CUSTOMER
    # Every event is filed under the customer it names.
    owners = db.query(
        "SELECT e.user_id AS sent, c.user_id AS filed FROM events e"
        " JOIN customers c ON c.id = e.customer_id"
    )
    assert len(owners) == TOTAL
    assert all(r["sent"] == r["filed"] for r in owners)
    assert Counter(r["filed"] for r in owners) == dict.fromkeys(
        (f"user-{i:03d}" for i in range(CUSTOMERS)), EVENTS_PER_CUSTOMER
    )

    before = snapshot(db)
    assert db.process() == 0
    assert snapshot(db) == before
