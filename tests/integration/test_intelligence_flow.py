"""The intelligence job over a real SQLite shop: RFM, habits and predictions land on the
customers, in their profile, and in what rules can test."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from engine.clock import SimulatedClock
from engine.config import load_settings
from engine.context import values_for
from engine.demo import generate
from engine.events import normalize_segment
from engine.expressions import Scope, compile_expression
from engine.intelligence.rfm import SEGMENTS
from engine.service import (
    Engine,
    customer_facts_for,
    customer_profile,
    fire_due_until_idle,
    process_until_idle,
    recompute_intelligence,
    run_schedules,
)
from engine.store import create_store

NOW = datetime(2026, 6, 2, 12, tzinfo=UTC)
PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> tuple[Engine, dict[str, str]]:
    root: Path = tmp_path_factory.mktemp("intel")
    (root / "rules").mkdir()
    (root / "templates").mkdir()
    config = root / "config.yaml"  # not the repository's (its secrets are not in a clone)
    config.write_text("{}\n")
    settings = load_settings(
        config,
        database_url=f"sqlite:///{root / 'shop.db'}",
        rules_dir=str(root / "rules"),
        templates_dir=str(root / "templates"),
    )
    clock = SimulatedClock(NOW)
    store = create_store(settings, clock)
    store.upgrade()
    engine = Engine(settings=settings, store=store, clock=clock)
    data = generate(events=6000, days=120, seed=3, now=NOW)
    rows = [
        normalize_segment(
            call, call_type=None, source="test", received_at=NOW, max_event_bytes=32768
        ).row()
        for call in data.calls
    ]
    store.insert_events(rows)
    process_until_idle(engine)
    return engine, data.examples()


def test_the_job_fits_the_models_and_reports_them(shop: tuple[Engine, dict[str, str]]) -> None:
    engine, _ = shop
    models = recompute_intelligence(engine)
    assert models["buyers"] > 50
    assert set(models["bgnbd"]) >= {"r", "alpha", "a", "b", "log_likelihood", "customers"}
    assert models["computed_at"] == NOW.isoformat()
    with engine.store.unit() as unit:
        assert unit.get_state("intelligence:models") == models


def test_every_buyer_gets_a_segment_and_predictions(shop: tuple[Engine, dict[str, str]]) -> None:
    engine, examples = shop
    recompute_intelligence(engine)
    profile = customer_profile(engine, examples["Tuesday family shopper"])
    assert profile is not None
    intel = profile["intelligence"]
    assert intel["rfm"]["segment"] in SEGMENTS
    assert 0 <= intel["predicted"]["p_alive"] <= 1
    assert intel["predicted"]["clv_365d"] >= 0
    assert intel["habits"]["top_weekday"] == "tuesday"
    # The demo's Tuesday family shoppers buy and browse basics (engine/demo.py).
    assert intel["preferences"]["top_category"] in {"Pantry", "Snacks", "Coffee", "Tea", "Home"}
    assert intel["preferences"]["price_band"] in {"budget", "mid", "premium"}


def test_rules_can_test_segments_habits_and_predictions(
    shop: tuple[Engine, dict[str, str]],
) -> None:
    engine, examples = shop
    recompute_intelligence(engine)
    ref = examples["Tuesday family shopper"]
    customer_id = engine.store.find_customer(ref)
    assert customer_id is not None
    facts = customer_facts_for(engine, customer_id)
    assert facts is not None
    values = values_for(facts, None, NOW)
    family = compile_expression(
        "customer.habits.top_weekday == 'tuesday' and (customer.predicted.p_alive ?? 0) > 0",
        scope=Scope.CUSTOMER,
    )
    assert family.evaluate(values) is True
    segment = compile_expression("customer.rfm.segment != null", scope=Scope.CUSTOMER)
    assert segment.evaluate(values) is True
    lapsing = compile_expression("'lapsing' in customer.segments", scope=Scope.CUSTOMER)
    assert lapsing.evaluate(values) in (True, False)


def _next_local(weekday: int, hour: int, zone: str, after: datetime) -> datetime:
    """The next ``weekday`` (Monday 0) at ``hour``:01 local in ``zone`` after ``after``, UTC."""
    tz = ZoneInfo(zone)
    local = after.astimezone(tz)
    day = local.date() + timedelta(days=(weekday - local.weekday()) % 7)
    when = datetime(day.year, day.month, day.day, hour, 1, tzinfo=tz)
    if when <= local:
        when += timedelta(days=7)
    return when.astimezone(UTC)


def test_the_tuesday_and_friday_rules_reach_each_habit_on_its_own_morning(
    shop: tuple[Engine, dict[str, str]],
) -> None:
    engine, examples = shop
    rules_dir, templates_dir = engine.settings.rules_dir, engine.settings.templates_dir
    for rule in ("tuesday_family", "friday_friends"):
        shutil.copy(PROJECT / "rules" / f"{rule}.yaml", rules_dir)
        shutil.copy(PROJECT / "templates" / f"{rule}.email.j2", templates_dir)
    assert engine.rules.reload().problems == ()
    recompute_intelligence(engine)
    database = engine.settings.database_url.removeprefix("sqlite:///")

    def messaged(rule: str) -> set[int]:
        with contextlib.closing(sqlite3.connect(database)) as conn:
            return {
                r[0]
                for r in conn.execute(
                    "SELECT customer_id FROM decisions WHERE rule_id = ? AND step = 0"
                    " AND outcome IN ('sent', 'would_send')",
                    (rule,),
                )
            }

    ids = {}
    for label in ("Tuesday family shopper", "Friday friends shopper"):
        found = engine.store.find_customer(examples[label])
        assert found is not None
        facts = customer_facts_for(engine, found)
        assert facts is not None
        ids[label] = (found, facts.timezone)
    tuesday, tuesday_zone = ids["Tuesday family shopper"]
    friday, friday_zone = ids["Friday friends shopper"]
    try:
        clock = engine.clock
        assert isinstance(clock, SimulatedClock)
        clock.set(_next_local(1, 9, tuesday_zone, NOW))
        run_schedules(engine)
        fire_due_until_idle(engine)
        assert tuesday in messaged("tuesday-family")
        assert friday not in messaged("tuesday-family")
        clock.set(_next_local(4, 9, friday_zone, clock.now()))
        run_schedules(engine)
        fire_due_until_idle(engine)
        assert friday in messaged("friday-friends")
        assert tuesday not in messaged("friday-friends")
    finally:
        engine.clock.set(NOW)  # type: ignore[attr-defined]
