"""Profiles and identity resolution: pure tests with plain values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.customers import (
    ANONYMOUS,
    USER,
    EventIn,
    Profile,
    World,
    apply_events,
    compute_stats,
)

T0 = datetime(2026, 3, 3, 9, 0, tzinfo=UTC)  # a Tuesday
_seq = iter(range(1, 10**9))


def ev(
    type_: str = "track",
    name: str | None = None,
    *,
    user: str | None = None,
    anon: str | None = None,
    previous: str | None = None,
    at: datetime = T0,
    props: dict[str, Any] | None = None,
    traits: dict[str, Any] | None = None,
    context: dict[str, Any] | None = None,
    seq: int | None = None,
) -> EventIn:
    payload: dict[str, Any] = {}
    if props is not None:
        payload["properties"] = props
    if traits is not None:
        payload["traits"] = traits
    if context is not None:
        payload["context"] = context
    return EventIn(
        seq=seq if seq is not None else next(_seq),
        type=type_,
        name=name,
        user_id=user,
        anonymous_id=anon,
        previous_id=previous,
        timestamp=at,
        payload=payload,
    )


def run(events: list[EventIn], world: World | None = None) -> World:
    world = world or World()
    apply_events(world, events, T0)
    return world


def holder(world: World, kind: str, value: str) -> Profile:
    return world.profiles[world.identities[(kind, value)]]


def stats(profile: Profile, now: datetime = T0 + timedelta(days=30), zone: str = "UTC") -> Any:
    return compute_stats(
        profile, now=now, default_timezone=zone, abandoned_after=timedelta(hours=1)
    )


def test_anonymous_history_is_merged_into_the_user_on_identify() -> None:
    world = run(
        [
            ev(name="Product Viewed", anon="a1"),
            ev(name="Product Viewed", user="u1"),
            ev("identify", user="u1", anon="a1", traits={"email": "u1@example.com"}),
        ]
    )
    profile = holder(world, USER, "u1")
    assert holder(world, ANONYMOUS, "a1") is profile
    assert len(world.profiles) == 1
    assert profile.event_counts == {"Product Viewed": 2, "identify": 1}
    assert profile.traits["email"] == "u1@example.com"


def test_identify_promotes_an_anonymous_profile_when_the_user_is_new() -> None:
    world = run([ev(name="Cart Viewed", anon="a1"), ev("identify", user="u1", anon="a1")])
    profile = holder(world, USER, "u1")
    assert profile.user_id == "u1"
    assert profile.anonymous_id == "a1"
    assert profile.event_counts["Cart Viewed"] == 1


def test_a_device_shared_by_two_users_is_relinked_without_merging_them() -> None:
    world = run(
        [
            ev("identify", user="u1", anon="shared"),
            ev(name="Product Viewed", anon="shared"),
            ev("identify", user="u2", anon="shared"),
            ev(name="Product Added", anon="shared"),
        ]
    )
    first, second = holder(world, USER, "u1"), holder(world, USER, "u2")
    assert first is not second
    assert holder(world, ANONYMOUS, "shared") is second
    assert first.event_counts == {"identify": 1, "Product Viewed": 1}
    assert second.event_counts == {"identify": 1, "Product Added": 1}


def test_alias_merges_an_old_user_id_into_the_new_one() -> None:
    world = run(
        [
            ev(name="Order Completed", user="old", props={"order_id": "o1", "revenue": 10}),
            ev(name="Product Viewed", user="new"),
            ev("alias", user="new", previous="old"),
        ]
    )
    profile = holder(world, USER, "new")
    assert holder(world, USER, "old") is profile
    assert "o1" in profile.orders
    assert stats(profile)["orders"] == 1


def test_order_stats_revenue_aov_median_gap_and_local_weekday() -> None:
    events = [
        ev(
            name="Order Completed",
            user="u",
            at=T0 + timedelta(days=d),
            props={"order_id": f"o{d}", "revenue": r},
        )
        for d, r in ((0, 30.0), (7, 50.0), (21, 10.0))
    ]
    events.append(ev("identify", user="u", traits={"timezone": "Asia/Tokyo"}))
    profile = holder(run(events), USER, "u")
    s = stats(profile, now=T0 + timedelta(days=31))
    assert s["orders"] == 3
    assert s["revenue"] == 90.0
    assert s["aov"] == 30.0
    assert s["median_days_between_orders"] == 10.5  # gaps 7 and 14
    assert s["days_since_last_order"] == 10.0
    # 09:00 UTC on a Tuesday is 18:00 Tuesday in Tokyo.
    assert s["order_weekdays"] == [0, 3, 0, 0, 0, 0, 0]
    assert s["order_hours"][18] == 3
    assert s["timezone"] == "Asia/Tokyo"


def test_revenue_falls_back_to_total_then_to_products() -> None:
    profile = holder(
        run(
            [
                ev(name="Order Completed", user="u", props={"order_id": "a", "total": 12}),
                ev(
                    name="Order Completed",
                    user="u",
                    props={"order_id": "b", "products": [{"price": 5, "quantity": 3}]},
                ),
            ]
        ),
        USER,
        "u",
    )
    assert stats(profile)["revenue"] == 27.0


def test_refunds_subtract_and_a_full_refund_or_cancel_removes_the_order() -> None:
    world = run(
        [
            ev(name="Order Completed", user="u", props={"order_id": "a", "revenue": 100}),
            ev(name="Order Completed", user="u", props={"order_id": "b", "revenue": 40}),
            ev(name="Order Completed", user="u", props={"order_id": "c", "revenue": 25}),
            ev(name="Order Refunded", user="u", props={"order_id": "a", "total": 30}),
            ev(name="Order Refunded", user="u", props={"order_id": "b"}),  # full refund
            ev(name="Order Cancelled", user="u", props={"order_id": "c"}),
        ]
    )
    s = stats(holder(world, USER, "u"))
    assert s["orders"] == 1
    assert s["revenue"] == 70.0
    assert s["cancelled_orders"] == 1


def test_a_refund_that_arrives_before_its_order_still_counts() -> None:
    world = run(
        [
            ev(name="Order Refunded", user="u", props={"order_id": "a", "total": 10}),
            ev(name="Order Completed", user="u", props={"order_id": "a", "revenue": 50}),
        ]
    )
    assert stats(holder(world, USER, "u"))["revenue"] == 40.0


def test_an_anonymous_refund_is_filed_under_the_orders_customer() -> None:
    world = run([ev(name="Order Completed", user="u", props={"order_id": "a", "revenue": 50})])
    run(
        [ev(name="Order Refunded", anon="shopify-order:a", props={"order_id": "a", "total": 20})],
        world,
    )
    buyer = holder(world, USER, "u")
    assert holder(world, ANONYMOUS, "shopify-order:a") is buyer
    assert stats(buyer)["revenue"] == 30.0


def test_checkouts_started_completed_and_abandoned_after_the_window() -> None:
    world = run(
        [
            ev(name="Checkout Started", anon="a", props={"cart_id": "c1", "value": 20}),
            ev(name="Checkout Started", anon="a", props={"cart_id": "c2", "value": 30}),
            ev(
                name="Checkout Started",
                anon="a",
                at=T0 + timedelta(minutes=50),
                props={"cart_id": "c3"},
            ),
            ev(name="Order Completed", anon="a", props={"order_id": "o", "cart_id": "c1"}),
        ]
    )
    profile = holder(world, ANONYMOUS, "a")
    s = stats(profile, now=T0 + timedelta(minutes=70))
    assert (s["checkouts_started"], s["checkouts_completed"], s["carts_abandoned"]) == (3, 1, 1)
    assert stats(profile, now=T0 + timedelta(hours=3))["carts_abandoned"] == 2


def test_an_order_by_another_identity_completes_the_guests_checkout() -> None:
    world = run(
        [
            ev(name="Checkout Started", anon="guest", props={"cart_id": "c1", "value": 20}),
            ev(name="Order Completed", user="u", props={"order_id": "o", "cart_id": "c1"}),
        ]
    )
    guest = holder(world, ANONYMOUS, "guest")
    assert guest.checkouts["c1"].completed_at == T0
    assert stats(guest, now=T0 + timedelta(days=1))["carts_abandoned"] == 0


def test_traits_are_last_writer_wins_by_event_time_not_arrival() -> None:
    world = run(
        [
            ev("identify", user="u", at=T0 + timedelta(hours=1), traits={"first_name": "New"}),
            ev("identify", user="u", at=T0, traits={"first_name": "Old", "city": "Oslo"}),
        ]
    )
    profile = holder(world, USER, "u")
    assert profile.traits == {"first_name": "New", "city": "Oslo"}


def test_device_timezone_is_used_when_no_trait_says_otherwise() -> None:
    world = run([ev(name="Product Viewed", anon="a", context={"timezone": "America/New_York"})])
    assert stats(holder(world, ANONYMOUS, "a"))["timezone"] == "America/New_York"
    world = run([ev(name="Product Viewed", anon="b", context={"timezone": "Not/AZone"})])
    assert stats(holder(world, ANONYMOUS, "b"), zone="Europe/Oslo")["timezone"] == "Europe/Oslo"


def test_a_failing_event_is_reported_and_does_not_stop_the_batch() -> None:
    class Exploding(dict[str, Any]):
        def get(self, *_: Any, **__: Any) -> Any:
            raise RuntimeError("boom")

    bad = EventIn(
        seq=999_001,
        type="track",
        name="X",
        user_id="u",
        anonymous_id=None,
        previous_id=None,
        timestamp=T0,
        payload=Exploding(),
    )
    world = World()
    out = apply_events(world, [bad, ev(name="Y", user="v", seq=999_002)], T0)
    assert 999_001 in out.failed and "boom" in out.failed[999_001]
    assert 999_002 in out.assigned


# -- order independence ----------------------------------------------------------------------

_names = st.sampled_from(
    ["Product Viewed", "Checkout Started", "Order Completed", "Order Refunded"]
)


@st.composite
def histories(draw: st.DrawFn) -> list[EventIn]:
    """One person's events across two devices and one account, linked by identify calls."""
    count = draw(st.integers(min_value=1, max_value=14))
    events = []
    for i in range(count):
        who = draw(st.sampled_from(["a1", "a2", "u", "a1+u", "a2+u"]))
        user = "u" if "u" in who else None
        anon = who.split("+")[0] if who.startswith("a") else None
        at = T0 + timedelta(minutes=draw(st.integers(min_value=0, max_value=5000)))
        if draw(st.booleans()):
            traits = {draw(st.sampled_from(["email", "first_name"])): draw(st.sampled_from("xyz"))}
            events.append(
                EventIn(
                    seq=i + 1,
                    type="identify",
                    name=None,
                    user_id=user or "u",
                    anonymous_id=anon,
                    previous_id=None,
                    timestamp=at,
                    payload={"traits": traits},
                )
            )
            continue
        name = draw(_names)
        ref = draw(st.sampled_from(["1", "2"]))
        props: dict[str, Any] = {"cart_id": f"c{ref}", "order_id": f"o{ref}"}
        props["revenue" if name == "Order Completed" else "total"] = draw(
            st.integers(min_value=1, max_value=90)
        )
        zone = draw(st.sampled_from([None, "Europe/Oslo", "Asia/Tokyo"]))
        payload: dict[str, Any] = {"properties": props}
        if zone:
            payload["context"] = {"timezone": zone}
        events.append(
            EventIn(
                seq=i + 1,
                type="track",
                name=name,
                user_id=user,
                anonymous_id=anon,
                previous_id=None,
                timestamp=at,
                payload=payload,
            )
        )
    # Make sure the devices are linked to the account at least once each.
    for j, anon in enumerate(("a1", "a2")):
        events.append(
            EventIn(
                seq=count + j + 1,
                type="identify",
                name=None,
                user_id="u",
                anonymous_id=anon,
                previous_id=None,
                timestamp=T0 + timedelta(days=9, minutes=j),
                payload={},
            )
        )
    return events


def canonical(world: World) -> Any:
    profile = holder(world, USER, "u")
    assert len(world.profiles) == 1, "every identity must end in one profile"
    return {
        "identities": sorted(profile.identities),
        "traits": profile.traits,
        "counts": profile.event_counts,
        "seen": (profile.first_seen_at, profile.last_seen_at),
        "stats": stats(profile),
        "orders": {k: repr(v) for k, v in sorted(profile.orders.items())},
        "checkouts": {k: repr(v) for k, v in sorted(profile.checkouts.items())},
        "anonymous_id": profile.anonymous_id,
    }


@settings(max_examples=300, deadline=None)
@given(histories(), st.randoms(use_true_random=False))
def test_profile_does_not_depend_on_arrival_order(events: list[EventIn], rnd: Any) -> None:
    shuffled = list(events)
    rnd.shuffle(shuffled)
    assert canonical(run(list(events))) == canonical(run(shuffled))


@settings(max_examples=150, deadline=None)
@given(histories(), st.integers(min_value=1, max_value=15))
def test_profile_does_not_depend_on_batch_boundaries(events: list[EventIn], cut: int) -> None:
    """Applying a history in two batches (reloaded world) equals one batch."""
    world = run(events[:cut])
    run(events[cut:], world)
    assert canonical(world) == canonical(run(list(events)))


# -- consent and suppressions -----------------------------------------------------------------


def _consent_events(order: list[int]) -> list[EventIn]:
    base = [
        ev("identify", user="c1", at=T0, traits={"email": "c1@example.com"}),
        ev("identify", user="c1", at=T0 + timedelta(hours=1), traits={"accepts_marketing": True}),
        ev(name="Unsubscribed", user="c1", at=T0 + timedelta(hours=2), props={}),
        ev(name="Subscribed", user="c1", at=T0 + timedelta(hours=3), props={"channel": "push"}),
        ev(name="Unsubscribed", user="c1", at=T0 + timedelta(hours=4), props={"channel": "sms"}),
    ]
    return [base[i] for i in order]


@settings(max_examples=60, deadline=None)
@given(st.permutations(range(5)))
def test_the_latest_consent_per_channel_wins_whatever_the_arrival_order(order: list[int]) -> None:
    profile = holder(run(_consent_events(order)), USER, "c1")
    # accepts_marketing (1h) is overtaken by the Unsubscribed at 2h; push and sms are their own.
    assert profile.consent == {"email": False, "push": True, "sms": False}


def test_an_opt_in_and_an_opt_out_at_the_same_moment_leave_the_customer_opted_out() -> None:
    for names in (("Subscribed", "Unsubscribed"), ("Unsubscribed", "Subscribed")):
        profile = holder(run([ev(name=n, user="c2", props={}) for n in names]), USER, "c2")
        assert profile.consent == {"email": False}


def test_hard_bounces_and_complaints_suppress_the_address_and_soft_bounces_do_not() -> None:
    out = apply_events(
        world := World(),
        [
            ev("identify", user="c3", traits={"email": "C3@Example.com"}),
            ev(name="Email Bounced", user="c3", props={"bounce_type": "soft"}),
            ev(name="Email Bounced", user="c3", props={"type": "hard"}),
            ev(name="Email Complained", user="c3", props={"email": "other@example.com"}),
        ],
        T0,
    )
    key = holder(world, USER, "c3").key
    assert [(c, a, r, k) for c, a, r, k, _ in out.suppress] == [
        ("email", "c3@example.com", "hard bounce", key),
        ("email", "other@example.com", "complaint", key),
    ]


def test_a_subscribe_asks_to_lift_the_unsubscribe_suppression_of_its_channel() -> None:
    out = apply_events(
        world := World(),
        [
            ev("identify", user="c4", traits={"email": "c4@example.com"}),
            ev(name="Subscribed", user="c4", props={"channel": "push"}),
        ],
        T0,
    )
    assert out.unsuppress == [("push", "c4@example.com", holder(world, USER, "c4").key)]
