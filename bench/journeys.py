"""Benchmark: rules and journeys.

1. Event processing throughput with 20 active rules (trigger matching, where/if/key
   expressions, exits, journey writes) against the same processor with no rules, on the
   same generated events, in the same run. Goal: rules cost < 30% of processor throughput.
   The goal is measured with a realistic shop's 20 rules (REALISTIC below); a stress mix
   where every event type starts four journeys is printed beside it.
2. Due-step throughput: 100,000 journeys falling due at once, decided by the real
   `fire_due_until_idle` on SQLite. Goal: < 20 s.

Prints its figures (and --json). Run: .venv/bin/python bench/journeys.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from engine.clock import SimulatedClock
from engine.config import load_settings
from engine.context import TriggerFacts
from engine.demo import generate
from engine.events import normalize_segment
from engine.journeys import Journey, JourneyOutcome
from engine.service import Engine, fire_due_until_idle, process_until_idle
from engine.store import create_store

NOW = datetime(2026, 6, 2, 12, tzinfo=UTC)

TEMPLATES = {
    "t_email.email.j2": "{% block subject %}Hi{% endblock %}{% block html %}x{% endblock %}"
    "{% block text %}x{% endblock %}",
    "t_push.push.j2": "{% block title %}Hi{% endblock %}{% block body %}x{% endblock %}"
    "{% block url %}/{% endblock %}",
}

# A shop's 20 rules, as a marketer would set them up: most events match one or two rules
# (cart, browse, checkout, post-purchase, welcome), several rules wait for events or
# schedules this traffic does not carry (win-back, reviews, back in stock, birthdays…).
REALISTIC = [
    (
        "Checkout Started",
        "event.properties.cart_id",
        "event.properties.value >= 20",
        "Order Completed",
    ),
    ("Product Added", "event.properties.cart_id", "customer.stats.orders >= 0", "Checkout Started"),
    ("Product Viewed", "event.properties.product_id", "customer.email != null", "Product Added"),
    ("Order Completed", "event.properties.order_id", "customer.stats.orders == 1", None),
    ("Order Completed", "event.properties.order_id", "customer.stats.orders >= 2", None),
    ("identify", None, "customer.stats.event_counts.identify == 1", "Order Completed"),
    ("Order Refunded", "event.properties.order_id", "customer.stats.orders >= 1", None),
    ("Products Searched", None, "customer.stats.orders == 0", "Product Viewed"),
    ("Cart Viewed", None, "customer.stats.checkouts_started == 0", "Checkout Started"),
    ("Signed Up", None, "customer.email != null", None),
    ("Product Reviewed", "event.properties.product_id", "customer.stats.orders >= 1", None),
    ("Back In Stock", "event.properties.product_id", "customer.email != null", None),
    ("Price Dropped", "event.properties.product_id", "customer.email != null", None),
    ("Wishlist Added", "event.properties.product_id", "customer.stats.orders >= 0", None),
    ("Subscription Renewed", None, "customer.stats.revenue > 100", None),
    ("Coupon Applied", "event.properties.cart_id", "customer.stats.orders >= 0", None),
    ("Order Cancelled", "event.properties.order_id", "customer.stats.orders >= 0", None),
    ("Payment Failed", "event.properties.order_id", "customer.email != null", None),
    ("Account Deleted", None, "customer.stats.events > 0", None),
    ("Referral Sent", None, "customer.stats.orders >= 1", None),
]
# A stress mix: every event type of the traffic is matched by four rules.
STRESS = [
    (
        "Checkout Started",
        "event.properties.cart_id",
        "event.properties.value >= {n}",
        "Order Completed",
    ),
    (
        "Product Viewed",
        "event.properties.product_id",
        "event.properties.price > {n}",
        "Product Added",
    ),
    (
        "Product Added",
        "event.properties.product_id",
        "customer.stats.orders >= 0",
        "Order Completed",
    ),
    ("Order Completed", "event.properties.order_id", "customer.stats.revenue > {n}", None),
    ("identify", None, "customer.email != null and customer.stats.orders < 100", None),
]


def write_rules(folder: Path, count: int, mix: str = "realistic") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        if mix == "realistic":
            event, key, cond, exit_event = REALISTIC[i % len(REALISTIC)]
        else:
            event, key, cond, exit_event = STRESS[i % len(STRESS)]
        lines = [
            f"id: bench-{i}",
            "trigger:",
            f"  event: {event}",
        ]
        if key:
            lines.append(f"  key: {key}")
        lines.append(f"if: {cond.format(n=i)}")
        if exit_event:
            lines += ["exit_on:", f"  - event: {exit_event}"]
        lines += [
            "steps:",
            f"  - wait: {1 + i % 3}h",
            "    channel: push",
            "    template: t_push",
            "  - wait: 1d",
            "    channel: email",
            "    template: t_email",
        ]
        (folder / f"bench_{i:02d}.yaml").write_text("\n".join(lines) + "\n")


def make_engine(root: Path, name: str, rules: int, mix: str = "realistic") -> Engine:
    rules_dir, templates_dir = root / f"{name}-rules", root / "templates"
    write_rules(rules_dir, rules, mix)
    templates_dir.mkdir(exist_ok=True)
    for file, text in TEMPLATES.items():
        (templates_dir / file).write_text(text)
    config = root / "bench-config.yaml"  # not ./config.yaml: its secrets need `make run`
    config.write_text("{}\n")
    settings = load_settings(
        config,
        database_url=f"sqlite:///{root}/{name}.db",
        rules_dir=str(rules_dir),
        templates_dir=str(templates_dir),
        processing={"trigger_max_lag": "10000d", "step_max_lateness": "10000d"},
    )
    clock = SimulatedClock(NOW)
    store = create_store(settings, clock)
    store.upgrade()
    engine = Engine(settings=settings, store=store, clock=clock)
    loaded = engine.rules.reload()
    assert not loaded.errors, loaded.errors
    assert len(loaded.rules) == rules
    return engine


def events(count: int) -> list[dict[str, Any]]:
    data = generate(events=count, days=30, seed=7, now=NOW)
    return [
        normalize_segment(
            call, call_type=None, source="bench", received_at=NOW, max_event_bytes=32768
        ).row()
        for call in data.calls
    ]


def measure_processing(
    root: Path, rows: list[dict[str, Any]], rules: int, mix: str = "realistic"
) -> dict[str, Any]:
    engine = make_engine(root, f"p{rules}-{mix}", rules, mix)
    engine.store.insert_events(rows)
    start = time.perf_counter()
    processed = process_until_idle(engine)
    seconds = time.perf_counter() - start
    with engine.store.unit() as unit:
        journeys = unit.conn.exec_driver_sql("SELECT count(*) FROM journeys").scalar()  # type: ignore[attr-defined]
        decisions = unit.conn.exec_driver_sql("SELECT count(*) FROM decisions").scalar()  # type: ignore[attr-defined]
    engine.store.close()
    assert processed == len(rows)
    return {
        "rules": rules,
        "mix": mix,
        "events": processed,
        "seconds": round(seconds, 3),
        "events_per_s": round(processed / seconds),
        "journeys": journeys,
        "not_started_decisions": decisions,
    }


def measure_due(root: Path, count: int) -> dict[str, Any]:
    engine = make_engine(root, "due", 20)
    # Customers first (real profiles through the processor), then journeys all due now.
    customers = min(count, 20_000)
    rows = [
        normalize_segment(
            {
                "type": "identify",
                "userId": f"u{i}",
                "traits": {"email": f"u{i}@example.com", "push_tokens": [f"tok-{i}"]},
            },
            call_type=None,
            source="bench",
            received_at=NOW,
            max_event_bytes=32768,
        ).row()
        for i in range(customers)
    ]
    engine.store.insert_events(rows)
    process_until_idle(engine)
    with engine.store.unit() as unit:
        ids = [r[0] for r in unit.conn.exec_driver_sql("SELECT id FROM customers").fetchall()]  # type: ignore[attr-defined]
        trigger_at = NOW - timedelta(hours=3)
        out = JourneyOutcome()
        for n in range(count):
            rule = f"bench-{n % 20}"
            cid = ids[n % len(ids)]
            trigger = TriggerFacts(
                name="Checkout Started",
                type="track",
                timestamp=trigger_at,
                properties={
                    "cart_id": f"c{n}",
                    "value": 100,
                    "price": 100,
                    "product_id": "p",
                    "order_id": f"o{n}",
                },
                seq=n + 1,
            )
            journey = Journey(
                id=None,
                rule_id=rule,
                customer_id=cid,
                key=f"k{n}",
                trigger=trigger,
                due_at=NOW - timedelta(minutes=1),
            )
            out.journeys[journey.ident] = journey
        unit.write_journeys(out)
    start = time.perf_counter()
    handled = fire_due_until_idle(engine)
    seconds = time.perf_counter() - start
    with engine.store.unit() as unit:
        decided = unit.conn.exec_driver_sql(
            "SELECT count(*) FROM decisions WHERE step >= 0"
        ).scalar()  # type: ignore[attr-defined]
    engine.store.close()
    return {
        "journeys_due": count,
        "handled": handled,
        "decisions": decided,
        "seconds": round(seconds, 2),
        "steps_per_s": round(handled / seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--due", type=int, default=100_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="nudge-bench-journeys-"))
    try:
        rows = events(args.events)
        bare = measure_processing(root, rows, 0)
        ruled = measure_processing(root, rows, 20)
        stress = measure_processing(root, rows, 20, "stress")
        due = measure_due(root, args.due)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    cost = 1 - ruled["events_per_s"] / bare["events_per_s"]
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "processor_no_rules": bare,
        "processor_20_rules": ruled,
        "processor_20_rules_stress": stress,
        "rules_cost": round(cost, 3),
        "rules_cost_goal": "< 0.30",
        "due_steps": due,
        "due_goal_seconds": 20,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"machine: {os.cpu_count()} cpus, Python {platform.python_version()}, SQLite")
    print(f"processor, no rules : {bare['events_per_s']:>8} events/s ({bare['events']} events)")
    print(
        f"processor, 20 rules : {ruled['events_per_s']:>8} events/s "
        f"({ruled['journeys']} journeys, {ruled['not_started_decisions']} not-started)"
    )
    print(
        f"  stress mix        : {stress['events_per_s']:>8} events/s "
        f"({stress['journeys']} journeys; every event type matched by 4 rules; "
        f"ratio {stress['events_per_s'] / bare['events_per_s']:.2f}x)"
    )
    print(
        f"rules cost          : {cost:.1%} of processor throughput "
        f"(ratio {ruled['events_per_s'] / bare['events_per_s']:.2f}x; goal < 30%)"
    )
    print(
        f"due steps           : {due['handled']} in {due['seconds']} s = {due['steps_per_s']}/s "
        f"(goal: 100,000 in < 20 s)"
    )


if __name__ == "__main__":
    main()
