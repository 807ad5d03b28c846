"""A dispatcher killed mid-batch loses no message and never re-sends one under a new id.

``nudge worker`` runs in a subprocess (the real command, the system clock, a short lease)
against a real SQLite file, delivering to a slow receiver under uvicorn in this process so
that many requests are in flight; it is killed with SIGKILL mid-batch, started again, and the
receiver's log is checked: every message arrived, each message id under exactly one
``webhook-id`` (its own), and the outbox ends all delivered.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from delivery_fixtures import (
    EMAIL_TEMPLATE,
    LINK_SECRET,
    SECRET,
    Answer,
    Receiver,
    Shop,
    channels,
    endpoint,
    make_shop_fixture,  # noqa: F401
    one_step_rule,
    receiver_fixture,  # noqa: F401
    time_limit_fixture,  # noqa: F401
    wait_for,
)
from journey_fixtures import clean_env, nudge_command

CUSTOMERS = 150
CONCURRENCY = 16


@contextmanager
def worker(config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``nudge worker -c config`` in a subprocess; stopped (SIGTERM, then SIGKILL) on exit
    unless the test already killed it. Only this PID is ever signalled."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            nudge_command("worker", "-c", str(config)),
            env=clean_env(),
            cwd=config.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else ""


def _pinged_shop(
    make_shop: Callable[..., Shop],
    receiver: Receiver,
    tmp_path: Path,
    prefix: str,
    delivery: dict[str, Any],
) -> tuple[Shop, list[str], Path]:
    """A shop with CUSTOMERS customers who each sent a Ping (unprocessed, as ingest leaves
    them), and a worker config delivering the ping rule's email to ``receiver``'s /slow."""
    shop = make_shop(
        datetime.now(UTC) - timedelta(seconds=5),
        rules={"ping.yaml": one_step_rule("ping")},
        templates={"ping.email.j2": EMAIL_TEMPLATE},
    )
    users = [f"{prefix}{n:03d}" for n in range(CUSTOMERS)]
    for user in users:
        shop.identify({"email": f"{user}@example.com"}, user=user)
        shop.track("Ping", {"n": 1}, user=user)
    config = tmp_path / "worker.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "database_url": shop.settings.database_url,
                "sqlite_synchronous": "normal",
                "rules_dir": str(tmp_path / "rules"),
                "templates_dir": str(tmp_path / "templates"),
                "link_secret": LINK_SECRET,
                "log_level": "WARNING",
                # The lease must outlast twice the timeout (settings refuse less).
                "channels": channels(email=endpoint(f"{receiver.url}/slow", timeout="900ms")),
                "delivery": {
                    "concurrency": CONCURRENCY,
                    "batch_size": CONCURRENCY,
                    "interval": "50ms",
                    **delivery,
                },
            }
        )
    )
    return shop, users, config


@pytest.mark.slow
def test_a_dispatcher_killed_mid_batch_loses_nothing_and_resends_under_the_same_id(
    make_shop: Callable[..., Shop], receiver: Receiver, tmp_path: Path
) -> None:
    # The events go into the database as ingest would put them, unprocessed: the worker
    # processes them, decides, renders and delivers, on the system clock.
    shop, users, config = _pinged_shop(make_shop, receiver, tmp_path, "c", {"lease": "2s"})
    assert SECRET in config.read_text()

    def delivered() -> int:
        return shop.count("outbox", "status = 'delivered'")

    receiver.default = Answer(delay=0.4)  # slow: many requests in flight at once
    log = tmp_path / "worker.log"
    with worker(config, log) as first:
        wait_for(
            lambda: delivered() >= 2 * CONCURRENCY and receiver.in_flight >= CONCURRENCY // 2,
            f"the first worker to be mid-batch (log: {tail(log)})",
            deadline=30,
        )
        in_flight = receiver.in_flight
        first.kill()  # SIGKILL: no cleanup, no recording of what is in flight
        assert first.wait(10) == -signal.SIGKILL
    done_at_kill, hits_at_kill = delivered(), len(receiver.hits)
    assert in_flight >= 1
    assert 0 < done_at_kill < CUSTOMERS, "killed mid-batch"
    assert shop.count("messages") == CUSTOMERS, "every decision was made before the kill"

    receiver.default = Answer()
    with worker(config, log) as second:
        wait_for(
            lambda: delivered() == CUSTOMERS,
            f"the restarted worker to deliver everything (log: {tail(log)})",
            deadline=30,
        )
        second.send_signal(signal.SIGTERM)
        assert second.wait(15) == 0, tail(log)

    outbox = shop.outbox()
    assert len(outbox) == CUSTOMERS
    assert {r["status"] for r in outbox} == {"delivered"}
    assert shop.count("messages") == CUSTOMERS

    ids_by_message: dict[str, set[str]] = defaultdict(set)
    messages_by_customer: dict[str, set[str]] = defaultdict(set)
    for hit in receiver.hits:
        assert hit.verified, hit.headers
        body = hit.json
        ids_by_message[body["id"]].add(hit.webhook_id)
        messages_by_customer[body["to"]["customer_id"]].add(body["id"])
    assert sorted(messages_by_customer) == users, "every customer's message arrived"
    answered = {h.json["id"] for h in receiver.answered}
    assert answered == set(ids_by_message), "every message was answered with a 2xx"
    assert all(len(m) == 1 for m in messages_by_customer.values()), "one message per customer"
    assert {r["message_id"] for r in outbox} == set(ids_by_message)
    assert {m: ids for m, ids in ids_by_message.items() if ids != {m}} == {}, (
        "a message re-sent under another webhook-id"
    )
    duplicates = len(receiver.hits) - CUSTOMERS
    assert duplicates >= 1, "what was in flight at the kill is sent again (same id)"
    assert hits_at_kill <= len(receiver.hits)


def _children(pid: int) -> set[int]:
    """The PIDs of ``pid``'s child processes (Linux /proc)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found |= {int(c) for c in (task / "children").read_text().split()}
    return found


@pytest.mark.slow
def test_two_dispatcher_processes_share_the_outbox_and_stop_with_the_worker(
    make_shop: Callable[..., Shop], receiver: Receiver, tmp_path: Path
) -> None:
    shop, _, config = _pinged_shop(
        make_shop,
        receiver,
        tmp_path,
        "p",
        # Roomy lease: a claimed row waits in its dispatcher's queue under the lease too,
        # and a slow CI machine must not see a lease run out (a legitimate resend).
        {"processes": 2, "lease": "10s"},
    )
    receiver.default = Answer(delay=0.05)
    log = tmp_path / "worker.log"
    with worker(config, log) as proc:
        wait_for(lambda: len(_children(proc.pid)) >= 1, f"the child dispatcher ({tail(log)})", 30)
        children = _children(proc.pid)
        wait_for(
            lambda: shop.count("outbox", "status = 'delivered'") == CUSTOMERS,
            f"every message delivered (log: {tail(log)})",
            deadline=30,
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, tail(log)
    for child in children:  # stopped with the worker, not orphaned
        assert (
            not Path(f"/proc/{child}").exists()
            or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]
        )
    ids = [h.webhook_id for h in receiver.hits]
    assert len(ids) == len(set(ids)) == CUSTOMERS, "each message posted once, by one dispatcher"
    assert all(h.json["id"] == h.webhook_id for h in receiver.hits)
