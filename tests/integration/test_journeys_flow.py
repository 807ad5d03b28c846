"""The sample abandoned-checkout rule end to end: events into a real SQLite file, the real
scheduler's jobs run on a simulated clock, outcomes read from the customer profile and the
``decisions`` table (push at +1h, email at +24h, exits, restarts, lateness, merges).

Customers are reachable on both channels (an email and a push token, sent as the checkout's
``context.traits``), and no channel has endpoints in these settings, so a step that passes the
policy is decided ``would_send`` (a dry run: rendered and recorded, not posted)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from journey_fixtures import (
    Sim,
    copy_sample,
    make_sim_fixture,  # noqa: F401
    reachable,
)
from nudge_testing import Nudge

from engine.scheduler import EngineScheduler
from engine.service import customer_profile

T0 = datetime(2026, 3, 3, 10, 0, tzinfo=UTC)  # a Tuesday, mid-morning
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
RULE = "abandoned-checkout"
IF_FALSE = "if `event.properties.value >= 20` is false"


@pytest.fixture
def checkout(make_sim: Callable[..., Sim], tmp_path: Path) -> Callable[..., Sim]:
    """``checkout(**settings)`` → a Sim with the sample abandoned-checkout rule loaded."""
    copy_sample(
        tmp_path / "rules",
        tmp_path / "templates",
        "abandoned_checkout",
        "cart_push.push.j2",
        "cart_email.email.j2",
    )

    def make(start: datetime = T0, **overrides: Any) -> Sim:
        sim = make_sim(start, **overrides)
        assert [r.id for r in sim.engine.rules.current.rules] == [RULE]
        return sim

    return make


def started(sim: Sim, user: str, cart: str | None = "cart-1", value: float = 50, **kw: Any) -> None:
    """A checkout by ``user``, whose email and push token come with it (``context.traits``);
    an anonymous checkout (``user=""``) carries none."""
    props: dict[str, Any] = {"value": value, "products": [{"product_id": "sku-1"}]}
    if cart is not None:
        props["cart_id"] = cart
    sim.track("Checkout Started", props, user=user, traits=reachable(user) if user else None, **kw)


def ordered(sim: Sim, user: str, cart: str, **kw: Any) -> None:
    props = {"order_id": f"order-{cart}", "cart_id": cart, "revenue": 50.0}
    sim.track("Order Completed", props, user=user, **kw)


def sends(sim: Sim, ref: str) -> list[dict[str, Any]]:
    return [d for d in sim.decisions(ref) if d["outcome"] == "would_send"]


def at(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def test_unbought_checkout_gets_the_push_at_one_hour_and_the_email_at_24_hours(
    checkout: Callable[..., Sim],
) -> None:
    sim = checkout()
    started(sim, "ada")
    sim.tick()
    [journey] = sim.journeys("ada")
    assert (journey["status"], journey["key"], at(journey["due_at"])) == (
        "active",
        "cart-1",
        T0 + HOUR,
    )

    sim.run_until(T0 + 59 * MINUTE, MINUTE)
    assert sim.decisions("ada") == [], "nothing is decided before the hour is up"

    sim.advance(MINUTE)
    [push] = sim.decisions("ada")
    assert push["outcome"] == "would_send"
    assert (push["step"], push["channel"], push["template"]) == (0, "push", "cart_push")
    assert at(push["due_at"]) == at(push["at"]) == T0 + HOUR

    sim.run_until(T0 + 24 * HOUR - MINUTE, 10 * MINUTE)
    assert len(sim.decisions("ada")) == 1, "the email waits for the 24th hour"
    sim.advance(MINUTE)
    push, email = sim.decisions("ada")
    assert email["outcome"] == "would_send"
    assert (email["step"], email["channel"], email["template"]) == (1, "email", "cart_email")
    assert at(email["due_at"]) == at(email["at"]) == T0 + 24 * HOUR

    sim.run_until(T0 + 3 * 24 * HOUR, HOUR)
    assert len(sim.decisions("ada")) == 2
    [journey] = sim.journeys("ada")
    assert (journey["status"], journey["due_at"]) == ("completed", None)


def test_order_for_the_same_cart_exits_the_journey_and_nothing_is_sent(
    checkout: Callable[..., Sim],
) -> None:
    sim = checkout()
    started(sim, "bo")
    sim.tick()
    sim.run_until(T0 + 30 * MINUTE, 5 * MINUTE)
    ordered(sim, "bo", "cart-1")
    sim.tick()

    sim.run_until(T0 + 3 * 24 * HOUR, 15 * MINUTE)
    assert sim.decisions("bo") == []
    [journey] = sim.journeys("bo")
    assert journey["status"] == "exited"
    assert journey["end_reason"] == "exit: Order Completed"
    assert journey["due_at"] is None


def test_checkout_and_its_order_processed_in_one_batch_send_nothing(
    checkout: Callable[..., Sim],
) -> None:
    sim = checkout()
    started(sim, "bea")
    ordered(sim, "bea", "cart-1", at=T0 + 10 * MINUTE)
    sim.restart(at=T0 + 20 * MINUTE)  # the processor was behind: both events in one batch
    sim.tick()
    sim.run_until(T0 + 25 * HOUR, 15 * MINUTE)

    assert sim.decisions("bea") == []
    assert [j["status"] for j in sim.journeys("bea")] == ["exited"]


def test_order_for_a_different_cart_does_not_stop_the_reminder(
    checkout: Callable[..., Sim],
) -> None:
    sim = checkout()
    started(sim, "cy", cart="cart-1")
    sim.tick()
    sim.run_until(T0 + 30 * MINUTE, 5 * MINUTE)
    ordered(sim, "cy", "cart-2")
    sim.run_until(T0 + 25 * HOUR, 15 * MINUTE)

    push, email = sends(sim, "cy")
    assert (push["template"], at(push["due_at"])) == ("cart_push", T0 + HOUR)
    assert (email["template"], at(email["due_at"])) == ("cart_email", T0 + 24 * HOUR)


def test_low_value_checkout_is_not_started_with_the_if_as_reason(
    checkout: Callable[..., Sim],
) -> None:
    sim = checkout()
    started(sim, "di", value=5)
    sim.run_until(T0 + 25 * HOUR, HOUR)

    [decision] = sim.decisions("di")
    assert (decision["outcome"], decision["step"]) == ("not_started", -1)
    assert decision["reason"] == IF_FALSE
    assert sim.journeys("di") == []


def test_checkout_without_cart_id_is_not_started_naming_the_key(
    checkout: Callable[..., Sim],
) -> None:
    sim = checkout()
    started(sim, "ed", cart=None)
    sim.run_until(T0 + 25 * HOUR, HOUR)

    [decision] = sim.decisions("ed")
    assert decision["outcome"] == "not_started"
    assert "event.properties.cart_id" in decision["reason"]
    assert "missing" in decision["reason"]
    assert sim.journeys("ed") == []


def test_second_checkout_of_the_same_cart_restarts_the_wait(
    checkout: Callable[..., Sim],
) -> None:
    sim = checkout()
    started(sim, "fay")
    sim.tick()
    sim.run_until(T0 + 50 * MINUTE, 5 * MINUTE)
    started(sim, "fay", value=60)  # the same cart, updated
    sim.tick()
    [journey] = sim.journeys("fay")
    assert (journey["generation"], at(journey["due_at"])) == (2, T0 + 110 * MINUTE)

    sim.run_until(T0 + 109 * MINUTE, MINUTE)
    assert sim.decisions("fay") == [], "the first wait no longer counts"
    sim.advance(MINUTE)
    [push] = sim.decisions("fay")
    assert push["outcome"] == "would_send"
    assert at(push["due_at"]) == at(push["at"]) == T0 + 110 * MINUTE

    sim.run_until(T0 + 26 * HOUR, 15 * MINUTE)
    push, email = sends(sim, "fay")
    assert at(email["due_at"]) == T0 + 24 * HOUR + 50 * MINUTE
    assert sim.count("decisions") == 2


def test_older_checkout_arriving_late_does_not_pull_the_wait_back(
    checkout: Callable[..., Sim],
) -> None:
    sim = checkout(start=T0 + 50 * MINUTE)
    started(sim, "gil", value=60, at=T0 + 50 * MINUTE)  # the newer checkout arrives first
    sim.tick()
    sim.advance(5 * MINUTE, tick=False)
    started(sim, "gil", at=T0)  # the older one (a mobile client's late batch) after it
    sim.tick()

    [journey] = sim.journeys("gil")
    assert at(journey["due_at"]) == T0 + 110 * MINUTE
    sim.run_until(T0 + 2 * HOUR, 5 * MINUTE)
    [push] = sim.decisions("gil")
    assert at(push["due_at"]) == T0 + 110 * MINUTE


def test_order_that_arrived_before_its_delayed_checkout_still_prevents_the_reminder(
    checkout: Callable[..., Sim],
) -> None:
    sim = checkout(start=T0 + 20 * MINUTE)
    ordered(sim, "hana", "cart-1", at=T0 + 10 * MINUTE)
    sim.tick()
    sim.advance(5 * MINUTE, tick=False)
    started(sim, "hana", at=T0)  # delivered after the order
    sim.tick()
    sim.run_until(T0 + 25 * HOUR, 15 * MINUTE)

    [cart] = sim.profile("hana")["checkouts"]
    assert at(cart["completed_at"]) == T0 + 10 * MINUTE, "the profile knows it was bought"
    assert sends(sim, "hana") == []
    assert all(j["status"] != "active" for j in sim.journeys("hana"))


def test_restart_in_the_middle_of_a_wait_fires_the_step_once_on_time(
    checkout: Callable[..., Sim],
) -> None:
    sim = checkout()
    started(sim, "gus")
    sim.tick()
    sim.run_until(T0 + 30 * MINUTE, 5 * MINUTE)

    sim.restart()  # new Engine, store and clock over the same file, at the same time
    assert sim.now == T0 + 30 * MINUTE
    sim.run_until(T0 + 59 * MINUTE, MINUTE)
    assert sim.count("decisions") == 0
    sim.advance(MINUTE)

    [row] = sim.decision_rows()
    assert (row["outcome"], row["step"], row["template"]) == ("would_send", 0, "cart_push")
    assert row["due_at"] == row["at"] == T0 + HOUR
    sim.tick()
    assert sim.count("decisions") == 1
    sim.restart()
    sim.tick()
    assert sim.count("decisions") == 1


def test_restart_after_the_due_time_fires_the_step_once(checkout: Callable[..., Sim]) -> None:
    sim = checkout()
    started(sim, "hal")
    sim.tick()
    sim.run_until(T0 + 30 * MINUTE, 5 * MINUTE)

    sim.restart(at=T0 + 70 * MINUTE)  # down from +30 min to +70 min
    sim.tick()
    [row] = sim.decision_rows()
    assert row["outcome"] == "would_send"
    assert row["due_at"] == T0 + HOUR, "the step keeps the time it was due"
    assert row["at"] == T0 + 70 * MINUTE
    sim.tick()
    sim.restart()
    sim.tick()
    assert sim.count("decisions") == 1


def test_step_found_due_more_than_max_lateness_late_is_skipped_as_late(
    checkout: Callable[..., Sim],
) -> None:
    sim = checkout(processing={"step_max_lateness": "2h"})
    started(sim, "ida")
    sim.tick()
    # The engine goes down; the shop keeps sending (ingest is up): another checkout.
    sim.clock.set(T0 + 65 * MINUTE)
    started(sim, "jo")
    sim.restart(at=T0 + 3 * HOUR + MINUTE)
    sim.tick()

    # ida's push was due at +1h, found 2h01 later: skipped with a reason, never sent.
    [late] = sim.decisions("ida")
    assert (late["outcome"], late["step"], at(late["due_at"])) == ("skipped", 0, T0 + HOUR)
    assert late["reason"].startswith("late")
    # jo's push was due at +2h05, found 56 minutes later: within the limit, decided.
    [push] = sim.decisions("jo")
    assert (push["outcome"], at(push["due_at"])) == ("would_send", T0 + 125 * MINUTE)

    # The late step does not end the journey: the email is decided on time.
    sim.run_until(T0 + 24 * HOUR, 15 * MINUTE)
    late, email = sim.decisions("ida")
    assert (email["outcome"], email["template"]) == ("would_send", "cart_email")
    assert at(email["at"]) == T0 + 24 * HOUR


def test_event_older_than_trigger_max_lag_starts_no_journey(
    checkout: Callable[..., Sim],
) -> None:
    sim = checkout(processing={"trigger_max_lag": "6h"})
    started(sim, "kim", at=T0 - 6 * HOUR - MINUTE)  # a backfill: received now, stamped 6h01 ago
    started(sim, "lou", at=T0 - 5 * HOUR)
    sim.run_until(T0 + 2 * HOUR, 15 * MINUTE)

    kim = sim.profile("kim")
    assert kim["event_counts"] == {"Checkout Started": 1}, "the event itself was applied"
    assert kim["journeys"] == [] and kim["decisions"] == []
    [journey] = sim.journeys("lou")
    assert journey["trigger_at"] == (T0 - 5 * HOUR).isoformat()


def test_ticks_repeated_at_the_same_time_add_no_decisions(
    checkout: Callable[..., Sim], make_sim: Callable[..., Sim]
) -> None:
    sim = checkout()
    for i in range(5):
        started(sim, f"user-{i}", cart=f"cart-{i}")
    started(sim, "low", value=1)
    sim.tick()
    sim.run_until(T0 + HOUR, 15 * MINUTE)
    before = sim.decision_rows()
    assert sorted(r["outcome"] for r in before) == ["not_started"] + ["would_send"] * 5

    sim.tick()
    sim.tick()
    other = make_sim(sim.now)  # a second worker over the same file, ticking at the same time
    other.tick()
    assert sim.decision_rows() == before


def test_identity_merge_moves_the_journey_to_the_user_and_it_fires_once(
    checkout: Callable[..., Sim],
) -> None:
    sim = checkout()
    # Known from another device, with an email and a push token; the anonymous checkout
    # carries neither, so the sends below can only use the merged user's addresses.
    sim.identify(reachable("max"), user="max")
    sim.tick()
    started(sim, "", anon="anon-9", cart="cart-9")
    sim.tick()
    [journey] = sim.journeys("anon-9")
    anonymous_id = sim.profile("anon-9")["id"]
    assert anonymous_id != sim.profile("max")["id"]

    sim.advance(20 * MINUTE, tick=False)
    sim.identify({"first_name": "Max"}, user="max", anon="anon-9")
    sim.tick()
    user = sim.profile("max")
    assert sim.profile("anon-9")["id"] == user["id"]
    [moved] = user["journeys"]
    assert (moved["id"], moved["key"], moved["status"]) == (journey["id"], "cart-9", "active")

    sim.run_until(T0 + 25 * HOUR, 15 * MINUTE)
    rows = sim.decision_rows()
    assert [(r["customer_id"], r["step"], r["outcome"]) for r in rows] == [
        (user["id"], 0, "would_send"),
        (user["id"], 1, "would_send"),
    ]
    assert rows[0]["due_at"] == T0 + HOUR, "the wait started with the anonymous checkout"
    assert [d["template"] for d in sends(sim, "max")] == ["cart_push", "cart_email"]


def test_checkout_sent_over_http_is_reminded_and_an_order_over_http_ends_it(
    start_engine: Callable[..., Nudge], tmp_path: Path
) -> None:
    copy_sample(
        tmp_path / "rules",
        tmp_path / "templates",
        "abandoned_checkout",
        "cart_push.push.j2",
        "cart_email.email.j2",
    )
    nudge = start_engine(rules_dir=tmp_path / "rules", templates_dir=tmp_path / "templates")
    nudge.engine.rules.reload()
    scheduler = EngineScheduler(nudge.engine)
    t0 = nudge.clock.now()

    def track(message_id: str, user: str, event: str, props: dict[str, Any]) -> None:
        body = {
            "messageId": message_id,
            "userId": user,
            "event": event,
            "properties": props,
            "context": {"traits": reachable(user)},
        }
        response = nudge.post("/v1/track", body)
        assert response.status_code == 200, response.text

    track("h1", "nia", "Checkout Started", {"cart_id": "web-1", "value": 80})
    track("h2", "oz", "Checkout Started", {"cart_id": "web-2", "value": 80})
    scheduler.run_pending()
    nudge.clock.advance(30 * MINUTE)
    track("h3", "oz", "Order Completed", {"order_id": "o-2", "cart_id": "web-2", "total": 80})
    scheduler.run_pending()
    nudge.clock.advance(30 * MINUTE)
    scheduler.run_pending()

    nia = customer_profile(nudge.engine, "nia")
    oz = customer_profile(nudge.engine, "oz")
    assert nia is not None and oz is not None
    assert [(d["outcome"], d["template"], d["due_at"]) for d in nia["decisions"]] == [
        ("would_send", "cart_push", (t0 + HOUR).isoformat())
    ]
    assert oz["decisions"] == []
    assert [j["status"] for j in oz["journeys"]] == ["exited"]
