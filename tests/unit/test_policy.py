"""Policy as a pure function: consent, address, caps, quiet hours, assignment, competition."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.policy import (
    Audience,
    Cap,
    Defer,
    Holdout,
    Outcome,
    Policy,
    QuietHours,
    Request,
    Send,
    SentMessage,
    Skip,
    assign,
    decide,
    decide_many,
)

NOW = datetime(2026, 5, 5, 12, 0, tzinfo=UTC)  # 14:00 in Stockholm
STOCKHOLM = ZoneInfo("Europe/Stockholm")

ALICE = Audience(
    customer_id=7,
    consent={"email": True, "push": None, "sms": True},
    accepts_marketing=True,
    suppressed=frozenset(),
    email="alice@example.com",
    push_tokens=("tok-1",),
    timezone="Europe/Stockholm",
)
EMAIL_1_16H = Cap(channel="email", max=1, per=timedelta(hours=16))
ANY_3_7D = Cap(channel="any", max=3, per=timedelta(days=7))
NIGHT = QuietHours(start=time(21, 0), end=time(8, 0), channels=frozenset({"push"}))


def request(rule_id: str = "cart", channel: str = "email", **changes: Any) -> Request:
    base = Request(rule_id=rule_id, priority=50, channel=channel, step=0, due_at=NOW)
    return replace(base, **changes)


def sent(rule_id: str, channel: str, ago: timedelta) -> SentMessage:
    return SentMessage(rule_id=rule_id, channel=channel, at=NOW - ago)


def decide_now(
    req: Request,
    audience: Audience = ALICE,
    history: tuple[SentMessage, ...] = (),
    policy: Policy = Policy(),
    now: datetime = NOW,
) -> Outcome:
    return decide(req, audience, history, policy, now)


# -- outcomes ---------------------------------------------------------------------------------


def test_outcome_labels_name_the_kind_and_the_reason_or_moment() -> None:
    assert Send(variant="a").label == "sent"
    assert Holdout().label == "holdout"
    assert Skip(reason="cap email 1/16h").label == "skipped:cap email 1/16h"
    assert Defer(until=NOW, reason="x").label == "deferred:2026-05-05T12:00:00+00:00"


def test_a_message_with_nothing_in_the_way_is_sent() -> None:
    assert decide_now(request()) == Send(variant=None)


# -- consent, suppression, address ------------------------------------------------------------


def test_a_suppressed_channel_is_skipped() -> None:
    audience = replace(ALICE, suppressed=frozenset({"email"}))
    assert decide_now(request(), audience) == Skip(reason="suppressed for email")
    assert decide_now(request(channel="push"), audience) == Send(variant=None)


def test_an_explicit_opt_out_of_a_channel_is_skipped() -> None:
    audience = replace(ALICE, consent={"email": False})
    assert decide_now(request(), audience) == Skip(reason="opted out of email")


def test_email_without_marketing_consent_is_skipped_but_push_is_not() -> None:
    audience = replace(ALICE, accepts_marketing=False)
    assert decide_now(request(), audience) == Skip(reason="no consent for email")
    assert decide_now(request(channel="push"), audience) == Send(variant=None)


def test_email_with_no_explicit_choice_is_allowed() -> None:
    audience = replace(ALICE, consent={}, accepts_marketing=None)
    assert decide_now(request(), audience) == Send(variant=None)


def test_sms_needs_an_explicit_opt_in_and_a_phone_number() -> None:
    texted = replace(ALICE, phone="+46701234567")
    audience = replace(texted, consent={"sms": None})
    assert decide_now(request(channel="sms"), audience) == Skip(reason="no consent for sms")
    assert decide_now(request(channel="sms"), texted) == Send(variant=None)
    assert decide_now(request(channel="sms")) == Skip(reason="no phone number")


def test_a_missing_address_is_skipped() -> None:
    no_email = replace(ALICE, email="  ")
    no_token = replace(ALICE, push_tokens=())
    assert decide_now(request(), no_email) == Skip(reason="no email address")
    assert decide_now(request(channel="push"), no_token) == Skip(reason="no push token")


def test_consent_is_checked_before_the_address() -> None:
    audience = replace(ALICE, email=None, suppressed=frozenset({"email"}))
    assert decide_now(request(), audience) == Skip(reason="suppressed for email")


# -- caps -------------------------------------------------------------------------------------


def test_a_rule_cap_counts_only_that_rules_sends() -> None:
    weekly = Cap(channel="any", max=1, per=timedelta(days=7))
    other = (sent("welcome", "email", timedelta(days=1)),)
    own = (sent("cart", "push", timedelta(days=1)),)
    assert decide_now(request(rule_caps=(weekly,)), history=other) == Send(variant=None)
    assert decide_now(request(rule_caps=(weekly,)), history=own) == Skip(reason="rule cap 1/7d")


def test_a_global_cap_counts_every_rules_sends() -> None:
    history = (sent("welcome", "email", timedelta(hours=1)),)
    outcome = decide_now(request(), history=history, policy=Policy(caps=(EMAIL_1_16H,)))
    assert outcome == Skip(reason="cap email 1/16h")


def test_a_rule_cap_decides_before_a_global_cap() -> None:
    weekly = Cap(channel="any", max=1, per=timedelta(days=7))
    history = (sent("cart", "email", timedelta(hours=1)),)
    outcome = decide_now(
        request(rule_caps=(weekly,)), history=history, policy=Policy(caps=(EMAIL_1_16H,))
    )
    assert outcome == Skip(reason="rule cap 1/7d")


def test_a_channel_cap_ignores_other_channels_and_an_any_cap_counts_them_all() -> None:
    history = tuple(sent("promo", "push", timedelta(hours=h)) for h in (1, 2, 3))
    email_only = Policy(caps=(EMAIL_1_16H,))
    both = Policy(caps=(EMAIL_1_16H, ANY_3_7D))
    assert decide_now(request(), history=history, policy=email_only) == Send(variant=None)
    assert decide_now(request(), history=history, policy=both) == Skip(reason="cap any 3/7d")


def test_a_send_exactly_per_ago_no_longer_counts() -> None:
    policy = Policy(caps=(EMAIL_1_16H,))
    at_edge = (sent("welcome", "email", timedelta(hours=16)),)
    inside = (sent("welcome", "email", timedelta(hours=16) - timedelta(microseconds=1)),)
    assert decide_now(request(), history=at_edge, policy=policy) == Send(variant=None)
    assert decide_now(request(), history=inside, policy=policy) == Skip(reason="cap email 1/16h")


def test_a_deferring_cap_defers_until_a_slot_frees() -> None:
    cap = Cap(channel="any", max=2, per=timedelta(days=1), on_limit="defer")
    history = tuple(sent("promo", "push", timedelta(hours=h)) for h in (20, 10, 2))
    outcome = decide_now(request(), history=history, policy=Policy(caps=(cap,)))
    # Three counted sends, two allowed: a slot frees when the second oldest leaves the window.
    assert outcome == Defer(until=NOW + timedelta(hours=14), reason="cap any 2/1d")
    assert isinstance(outcome, Defer)
    later = decide_now(request(), history=history, policy=Policy(caps=(cap,)), now=outcome.until)
    assert later == Send(variant=None)


def test_a_skipping_cap_wins_over_a_deferring_one() -> None:
    deferring = Cap(channel="email", max=1, per=timedelta(hours=16), on_limit="defer")
    skipping = Cap(channel="any", max=1, per=timedelta(days=1))
    history = (sent("promo", "email", timedelta(hours=1)),)
    outcome = decide_now(request(), history=history, policy=Policy(caps=(deferring, skipping)))
    assert outcome == Skip(reason="cap any 1/1d")


# -- quiet hours ------------------------------------------------------------------------------


def at_stockholm(year: int, month: int, day: int, hour: int, minute: int) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=STOCKHOLM).astimezone(UTC)


def test_quiet_hours_defer_a_covered_channel_inside_the_window() -> None:
    late = at_stockholm(2026, 5, 5, 22, 30)
    outcome = decide_now(request(channel="push"), policy=Policy(quiet_hours=NIGHT), now=late)
    assert outcome == Defer(
        until=at_stockholm(2026, 5, 6, 8, 0),
        reason="quiet hours 21:00-08:00 Europe/Stockholm",
    )


def test_quiet_hours_crossing_midnight_cover_the_early_morning_too() -> None:
    early = at_stockholm(2026, 5, 6, 7, 59)
    outcome = decide_now(request(channel="push"), policy=Policy(quiet_hours=NIGHT), now=early)
    assert outcome == Defer(
        until=at_stockholm(2026, 5, 6, 8, 0), reason="quiet hours 21:00-08:00 Europe/Stockholm"
    )


def test_outside_quiet_hours_a_message_is_sent() -> None:
    for moment in (at_stockholm(2026, 5, 6, 8, 0), at_stockholm(2026, 5, 5, 20, 59)):
        outcome = decide_now(request(channel="push"), policy=Policy(quiet_hours=NIGHT), now=moment)
        assert outcome == Send(variant=None)


def test_quiet_hours_use_the_customers_zone_not_utc() -> None:
    moment = datetime(2026, 5, 5, 20, 0, tzinfo=UTC)  # 22:00 in Stockholm, 13:00 in LA
    policy = Policy(quiet_hours=NIGHT)
    in_la = replace(ALICE, timezone="America/Los_Angeles")
    assert isinstance(decide_now(request(channel="push"), policy=policy, now=moment), Defer)
    assert decide_now(request(channel="push"), in_la, policy=policy, now=moment) == Send(
        variant=None
    )


def test_quiet_hours_leave_channels_they_do_not_cover_alone() -> None:
    late = at_stockholm(2026, 5, 5, 23, 0)
    assert decide_now(request(), policy=Policy(quiet_hours=NIGHT), now=late) == Send(variant=None)
    every_channel = replace(NIGHT, channels=frozenset())
    outcome = decide_now(request(), policy=Policy(quiet_hours=every_channel), now=late)
    assert isinstance(outcome, Defer)


def test_a_deferral_to_the_end_of_quiet_hours_honours_a_dst_change() -> None:
    # Stockholm moves from UTC+1 to UTC+2 at 02:00 on 2026-03-29: 08:00 that morning is 06:00 UTC.
    late = datetime(2026, 3, 28, 21, 0, tzinfo=UTC)  # 22:00 CET
    outcome = decide_now(request(channel="push"), policy=Policy(quiet_hours=NIGHT), now=late)
    assert isinstance(outcome, Defer)
    assert outcome.until == datetime(2026, 3, 29, 6, 0, tzinfo=UTC)
    assert outcome.until.astimezone(STOCKHOLM).time() == time(8, 0)


def test_quiet_hours_in_skip_mode_skip() -> None:
    skipping = replace(NIGHT, on_quiet="skip")
    late = at_stockholm(2026, 5, 5, 23, 0)
    outcome = decide_now(request(channel="push"), policy=Policy(quiet_hours=skipping), now=late)
    assert outcome == Skip(reason="quiet hours 21:00-08:00 Europe/Stockholm")


def test_caps_decide_before_quiet_hours() -> None:
    late = at_stockholm(2026, 5, 5, 23, 0)
    history = (SentMessage(rule_id="promo", channel="push", at=late - timedelta(hours=1)),)
    policy = Policy(caps=(Cap(channel="push", max=1, per=timedelta(days=1)),), quiet_hours=NIGHT)
    outcome = decide_now(request(channel="push"), history=history, policy=policy, now=late)
    assert outcome == Skip(reason="cap push 1/1d")


# -- assignment -------------------------------------------------------------------------------


def test_assignment_is_stable_across_processes_and_runs() -> None:
    # Pinned: a change here re-shuffles every running experiment (and hash() would differ).
    arms = (("a", 1.0), ("b", 1.0))
    got = [assign("cart", c, 0.1, arms) for c in range(1, 25)]
    assert got == [
        *("b", "b", "b", "a", "a", "b", "a", "a", "b", "a", "a", "b"),
        *("a", "a", "a", "a", "b", "holdout", "a", "a", "a", "a", "holdout", "holdout"),
    ]
    assert got == [assign("cart", c, 0.1, arms) for c in range(1, 25)]


def test_assignment_matches_the_holdout_share_and_the_weights() -> None:
    arms = (("a", 1.0), ("b", 3.0))
    counts = Counter(assign("winback", c, 0.2, arms) for c in range(20_000))
    assert abs(counts["holdout"] / 20_000 - 0.2) < 0.02
    treated = counts["a"] + counts["b"]
    assert abs(counts["a"] / treated - 0.25) < 0.02
    assert abs(counts["b"] / treated - 0.75) < 0.02


def test_assignment_without_variants_is_none_and_without_holdout_never_holdout() -> None:
    results = {assign("cart", c, 0.0, ()) for c in range(2_000)}
    assert results == {None}


def test_a_held_out_customer_gets_a_holdout_and_the_others_a_variant() -> None:
    arms = (("a", 1.0), ("b", 1.0))
    held = next(c for c in range(100) if assign("cart", c, 0.5, arms) == "holdout")
    treated = next(c for c in range(100) if assign("cart", c, 0.5, arms) == "b")
    req = request(holdout=0.5, variants=arms)
    assert decide_now(req, replace(ALICE, customer_id=held)) == Holdout()
    assert decide_now(req, replace(ALICE, customer_id=treated)) == Send(variant="b")


def test_an_arm_given_at_an_earlier_step_is_kept_whatever_the_hash_says() -> None:
    arms = (("a", 1.0), ("b", 1.0))
    treated = next(c for c in range(100) if assign("cart", c, 0.5, arms) == "b")
    req = request(holdout=0.5, variants=arms)
    audience = replace(ALICE, customer_id=treated)
    assert decide_now(replace(req, arm="holdout"), audience) == Holdout()
    assert decide_now(replace(req, arm="a"), audience) == Send(variant="a")
    assert decide_now(req, audience) == Send(variant="b")


# -- competition in one tick ------------------------------------------------------------------


def test_the_higher_priority_rule_wins_a_contested_slot() -> None:
    policy = Policy(caps=(EMAIL_1_16H,))
    low = request("newsletter", priority=10)
    high = request("cart", priority=90)
    results = decide_many([low, high], ALICE, (), policy, NOW)
    assert results == [(high, Send(variant=None)), (low, Skip(reason="cap email 1/16h"))]


def test_a_send_that_does_not_go_out_leaves_its_slot_to_the_next_request() -> None:
    policy = Policy(caps=(EMAIL_1_16H,))
    low = request("newsletter", priority=10)
    high = request("cart", priority=90)
    asked: list[str] = []

    def broken_cart(r: Request, _: Send) -> bool:
        asked.append(r.rule_id)
        return r.rule_id != "cart"  # the cart message failed to render

    results = decide_many([low, high], ALICE, (), policy, NOW, sent=broken_cart)
    assert results == [(high, Send(variant=None)), (low, Send(variant=None))]
    assert asked == ["cart", "newsletter"]


def test_a_priority_tie_breaks_by_rule_id_then_step_whatever_the_input_order() -> None:
    policy = Policy(caps=(EMAIL_1_16H,))
    a1, a0, b0 = request("alpha", step=1), request("alpha", step=0), request("beta")
    for order in ([b0, a1, a0], [a0, b0, a1], [a1, a0, b0]):
        results = decide_many(order, ALICE, (), policy, NOW)
        assert [r for r, _ in results] == [a0, a1, b0]
        assert [o.label for _, o in results] == ["sent", *["skipped:cap email 1/16h"] * 2]


def test_a_holdout_does_not_use_a_slot() -> None:
    policy = Policy(caps=(EMAIL_1_16H,))
    held = next(c for c in range(100) if assign("cart", c, 0.5, ()) == "holdout")
    audience = replace(ALICE, customer_id=held)
    first = request("cart", priority=90, holdout=0.5)
    second = request("promo", priority=10)
    results = decide_many([first, second], audience, (), policy, NOW)
    assert [o for _, o in results] == [Holdout(), Send(variant=None)]


# -- the invariant ----------------------------------------------------------------------------

CAPS = (
    Cap(channel="email", max=1, per=timedelta(hours=16), on_limit="defer"),
    Cap(channel="push", max=2, per=timedelta(days=1)),
    Cap(channel="any", max=3, per=timedelta(days=7), on_limit="defer"),
)
RULE_CAP = Cap(channel="any", max=1, per=timedelta(days=2))

requests_st = st.builds(
    lambda rule, channel, priority, step: Request(
        rule_id=rule,
        priority=priority,
        channel=channel,
        step=step,
        due_at=NOW,
        rule_caps=(RULE_CAP,) if rule == "capped" else (),
    ),
    st.sampled_from(["cart", "promo", "capped"]),
    st.sampled_from(["email", "push", "sms"]),
    st.integers(0, 3),
    st.integers(0, 2),
)
ticks_st = st.lists(
    st.tuples(
        st.integers(0, 30 * 3600).map(lambda s: timedelta(seconds=s)),
        st.lists(requests_st, max_size=5),
    ),
    max_size=40,
)


def assert_no_window_exceeds(times: list[datetime], cap: Cap) -> None:
    times = sorted(times)
    for end in times:  # the fullest windows end at a send
        inside = [t for t in times if end - cap.per < t <= end]
        assert len(inside) <= cap.max, (cap.label, end, inside)


@settings(max_examples=200, deadline=None)
@given(ticks=ticks_st, quiet=st.booleans())
def test_no_sequence_of_requests_ever_exceeds_a_cap(
    ticks: list[tuple[timedelta, list[Request]]], quiet: bool
) -> None:
    policy = Policy(caps=CAPS, quiet_hours=NIGHT if quiet else None)
    history: list[SentMessage] = []
    now = NOW
    for step, requests in ticks:
        now += step
        for req, outcome in decide_many(requests, ALICE, history, policy, now):
            if isinstance(outcome, Send):
                history.append(SentMessage(rule_id=req.rule_id, channel=req.channel, at=now))
    for cap in CAPS:
        assert_no_window_exceeds([s.at for s in history if cap.covers(s.channel)], cap)
    assert_no_window_exceeds([s.at for s in history if s.rule_id == "capped"], RULE_CAP)
