"""The simulated shop of ``nudge demo``: what it generates, and how it sends it."""

from __future__ import annotations

import base64
import random
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import orjson
import pytest

from engine.clock import SimulatedClock
from engine.demo import CATALOGUE, DemoData, generate, live_calls, send_calls
from engine.events import normalize_segment

NOW = datetime(2025, 3, 14, 12, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def shop() -> DemoData:
    return generate(events=2000, days=90, seed=1, now=NOW)


def _when(call: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(call["timestamp"])


def _orders_by_user(data: DemoData) -> dict[str, list[dict[str, Any]]]:
    orders: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for call in data.calls:
        if call.get("event") == "Order Completed":
            orders[call["userId"]].append(call)
    return orders


@pytest.mark.parametrize("events", [1, 7, 150, 2000, 3333])
def test_generates_exactly_the_requested_number_of_events(events: int) -> None:
    data = generate(events=events, days=90, seed=3, now=NOW)
    assert len(data.calls) == events
    assert sum(c.events for c in data.customers) == events


def test_the_same_seed_gives_the_same_calls_and_another_seed_other_calls() -> None:
    first = generate(events=500, days=30, seed=7, now=NOW)
    again = generate(events=500, days=30, seed=7, now=NOW)
    other = generate(events=500, days=30, seed=8, now=NOW)
    assert orjson.dumps(first.calls) == orjson.dumps(again.calls)
    assert first.customers == again.customers
    assert {c["messageId"] for c in first.calls}.isdisjoint(c["messageId"] for c in other.calls)


def test_message_ids_are_unique(shop: DemoData) -> None:
    assert len({c["messageId"] for c in shop.calls}) == len(shop.calls)


def test_every_call_passes_segment_batch_validation(shop: DemoData) -> None:
    for index, call in enumerate(shop.calls):
        event = normalize_segment(
            orjson.loads(orjson.dumps(call)),
            call_type=None,
            source="demo",
            received_at=NOW,
            max_event_bytes=32 * 1024,
            where=f"batch[{index}]",
            batch_sent_at=NOW,
        )
        assert event.message_id == call["messageId"]
        assert event.timestamp == _when(call)
        assert call["timestamp"].endswith("Z")
        assert call["context"]["library"]["name"] in ("analytics.js", "analytics-ios")
        ZoneInfo(call["context"]["timezone"])


def test_timestamps_lie_in_the_period_and_each_customer_is_in_time_order(
    shop: DemoData,
) -> None:
    times = [_when(c) for c in shop.calls]
    assert times == sorted(times)
    assert NOW - timedelta(days=90) <= times[0] and times[-1] <= NOW
    by_device: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for call in shop.calls:
        by_device[call["anonymousId"]].append(call)
    for calls in by_device.values():
        # Once identified, always identified; before that, anonymous only.
        known = [bool(c.get("userId")) for c in calls]
        assert known == sorted(known)


def test_tuesday_shoppers_order_mostly_on_tuesdays_in_their_own_zone(shop: DemoData) -> None:
    orders = _orders_by_user(shop)
    tuesday = [c for c in shop.customers if c.persona == "tuesday" and c.user_id]
    assert len(tuesday) >= 3
    days: Counter[int] = Counter()
    for customer in tuesday:
        zone = ZoneInfo(customer.timezone)
        mine = Counter(_when(o).astimezone(zone).weekday() for o in orders[customer.user_id or ""])
        if sum(mine.values()) >= 4:  # a habit, not a rule: now and then another day
            assert mine.most_common(1)[0][0] == 1 and mine[1] >= sum(mine.values()) / 2, mine
        days += mine
    assert days[1] / sum(days.values()) >= 0.7
    assert {c.timezone for c in shop.customers} >= {"Europe/Stockholm", "America/New_York"}


def test_friday_shoppers_order_mostly_on_friday_evenings(shop: DemoData) -> None:
    orders = _orders_by_user(shop)
    local = [
        _when(o).astimezone(ZoneInfo(c.timezone))
        for c in shop.customers
        if c.persona == "friday" and c.user_id
        for o in orders[c.user_id]
    ]
    assert sum(t.weekday() == 4 for t in local) / len(local) >= 0.7
    assert sum(16 <= t.hour <= 22 for t in local) / len(local) >= 0.9


def test_lapsing_regulars_ordered_several_times_then_stopped_weeks_ago(shop: DemoData) -> None:
    orders = _orders_by_user(shop)
    # The last customer's timeline is cut at the event count; the others are whole.
    lapsing = [c for c in shop.customers[:-1] if c.persona == "lapsing" and c.user_id]
    assert lapsing
    for customer in lapsing:
        mine = orders[customer.user_id or ""]
        assert len(mine) >= 2
        assert NOW - _when(mine[-1]) >= timedelta(days=21)


def test_some_checkouts_are_abandoned_and_orders_name_their_cart(shop: DemoData) -> None:
    started = {
        c["properties"]["cart_id"]: c for c in shop.calls if c.get("event") == "Checkout Started"
    }
    completed = [c for c in shop.calls if c.get("event") == "Order Completed"]
    for order in completed:
        props = order["properties"]
        assert props["cart_id"] == props["checkout_id"] in started
        assert props["products"] and props["revenue"] <= props["total"]
        assert _when(started[props["cart_id"]]) < _when(order)
    abandoned = set(started) - {o["properties"]["cart_id"] for o in completed}
    assert abandoned
    assert len(completed) > len(abandoned)
    assert any("coupon" in o["properties"] for o in completed)
    names = Counter(c.get("event") for c in shop.calls)
    for name in ("Products Searched", "Product Removed", "Cart Viewed", "Order Refunded"):
        assert names[name] > 0, name
    assert names["Order Cancelled"] + names["Order Refunded"] < names["Order Completed"] / 5


def test_anonymous_browsing_is_followed_by_identify_with_the_same_anonymous_id(
    shop: DemoData,
) -> None:
    merged = 0
    for customer in shop.customers:
        calls = [c for c in shop.calls if c["anonymousId"] == customer.anonymous_id]
        if customer.user_id is None:
            assert all("userId" not in c for c in calls)
            continue
        first_identify = next(i for i, c in enumerate(calls) if c["type"] == "identify")
        assert calls[first_identify]["userId"] == customer.user_id
        assert all("userId" not in c for c in calls[:first_identify])
        traits = calls[first_identify]["traits"]
        assert {"email", "first_name", "timezone", "accepts_marketing"} <= set(traits)
        merged += first_identify > 0
    assert merged >= 10
    assert any(c.persona == "window" and c.user_id is None for c in shop.customers)
    assert any("push_tokens" in c.get("traits", {}) for c in shop.calls)


def test_examples_name_customers_of_the_right_kind(shop: DemoData) -> None:
    examples = shop.examples()
    persona = {c.user_id: c.persona for c in shop.customers}
    assert persona[examples["Tuesday family shopper"]] == "tuesday"
    assert persona[examples["Friday friends shopper"]] == "friday"
    assert persona[examples["lapsing regular"]] == "lapsing"
    abandoned = examples["abandoned checkout"]
    carts = {
        c["properties"]["cart_id"]
        for c in shop.calls
        if c.get("event") == "Checkout Started" and c["userId"] == abandoned
    }
    done = {
        c["properties"]["cart_id"]
        for c in shop.calls
        if c.get("event") == "Order Completed" and c["userId"] == abandoned
    }
    assert carts - done


def test_the_catalogue_has_about_forty_distinct_products() -> None:
    assert 35 <= len(CATALOGUE) <= 45
    assert len({p[0] for p in CATALOGUE}) == len({p[1] for p in CATALOGUE}) == len(CATALOGUE)
    assert len({p[3] for p in CATALOGUE}) >= 5 and all(p[5] > 0 for p in CATALOGUE)


def test_a_live_visit_lies_in_the_last_three_hours_and_is_valid() -> None:
    rng = random.Random(5)
    for index in range(20):
        calls = live_calls(rng, seed=1, index=10_000 + index, now=NOW)
        assert calls
        for call in calls:
            assert NOW - timedelta(hours=3) <= _when(call) <= NOW
            normalize_segment(
                call, call_type=None, source="demo", received_at=NOW, max_event_bytes=32 * 1024
            )


# -- sending ---------------------------------------------------------------------------------


class _Engine:
    """A fake /v1/batch that records requests and answers from a script."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if self.answers else 200
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, tuple):
            return httpx.Response(answer[0], json=answer[1])
        return httpx.Response(answer, json={"success": True})


def _send(fake: _Engine, calls: list[dict[str, Any]], **options: Any) -> Any:
    sleeps: list[float] = []
    with httpx.Client(transport=httpx.MockTransport(fake)) as client:
        result = send_calls(
            calls,
            url="http://engine.test/",
            write_key="wk_demo",
            client=client,
            clock=SimulatedClock(NOW),
            sleep=sleeps.append,
            **options,
        )
    return result, sleeps


def test_sends_batches_of_at_most_100_events_and_500_kb_with_basic_auth(shop: DemoData) -> None:
    fake = _Engine()
    big = [{**c, "properties": {"note": "x" * 20_000}} for c in shop.calls[:60]]
    result, _ = _send(fake, [*shop.calls[:450], *big])
    assert (result.sent, result.rejected, result.failed) == (510, 0, 0)
    sizes = []
    for request in fake.requests:
        assert request.url == "http://engine.test/v1/batch"
        assert request.headers["authorization"] == "Basic " + base64.b64encode(b"wk_demo:").decode()
        body = orjson.loads(request.content)
        assert body["sentAt"] == "2025-03-14T12:30:00.000Z"
        assert 1 <= len(body["batch"]) <= 100 and len(request.content) < 500 * 1000
        sizes.append(len(body["batch"]))
    assert sum(sizes) == 510
    assert [c["messageId"] for r in fake.requests for c in orjson.loads(r.content)["batch"]] == [
        c["messageId"] for c in [*shop.calls[:450], *big]
    ]


def test_rejected_events_in_a_batch_answer_are_counted_and_reported(shop: DemoData) -> None:
    rejected = [{"index": 3, "code": "invalid", "message": "batch[3].userId: too long"}]
    fake = _Engine((200, {"success": True, "accepted": 99, "rejected": rejected}))
    result, _ = _send(fake, shop.calls[:150])
    assert (result.sent, result.rejected, result.failed) == (149, 1, 0)
    assert result.errors == ["event 3: batch[3].userId: too long"]


def test_a_batch_refused_whole_counts_every_event_as_rejected(shop: DemoData) -> None:
    details = [{"index": i, "message": "bad"} for i in range(100)]
    error = {"error": {"code": "batch_rejected", "message": "all rejected", "details": details}}
    result, _ = _send(_Engine(200, (400, error)), shop.calls[:250])
    assert (result.sent, result.rejected, result.failed) == (150, 100, 0)
    assert result.errors[0] == "event 100: bad"


def test_server_errors_and_lost_connections_are_retried_with_bounded_backoff(
    shop: DemoData,
) -> None:
    fake = _Engine(503, httpx.ConnectError("refused"), 200)
    result, sleeps = _send(fake, shop.calls[:10])
    assert (result.sent, result.failed) == (10, 0)
    assert len(fake.requests) == 3 and sleeps == [0.5, 1.0]
    down = _Engine(*[500] * 10)
    result, sleeps = _send(down, shop.calls[:120], attempts=4)
    assert (result.sent, result.rejected, result.failed) == (0, 0, 120)
    assert len(down.requests) == 4 and len(sleeps) == 3
    assert "answered 500" in result.errors[0]


def test_a_refused_write_key_stops_sending(shop: DemoData) -> None:
    error = {"error": {"code": "unauthorized", "message": "unknown write key", "details": []}}
    fake = _Engine((401, error))
    result, _ = _send(fake, shop.calls[:300])
    assert (result.sent, result.failed) == (0, 300) and len(fake.requests) == 1
    assert len(result.errors) == 1 and "refused the write key" in result.errors[0]
    assert "unknown write key" in result.errors[0]
