"""The intelligence job over a real SQLite shop: RFM, habits and predictions land on the
customers, in their profile, and in what rules can test."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

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
    process_until_idle,
    recompute_intelligence,
)
from engine.store import create_store

NOW = datetime(2026, 6, 2, 12, tzinfo=UTC)


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
