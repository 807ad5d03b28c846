"""Schedule-triggered rules on a simulated clock over a real SQLite file: ``0 9 * * TUE``
fires at 09:00 in each customer's own zone (or the rule's fixed zone), once per occurrence,
across DST changes, restarts and downtime within / beyond ``processing.schedule_grace``.

Every customer has an email address, so the audience alone decides who is sent to; no channel
has endpoints in these settings, so a send is decided ``would_send`` (a dry run)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from journey_fixtures import (
    Sim,
    make_sim_fixture,  # noqa: F401
    reachable,
    write_template,
)

QUARTER = timedelta(minutes=15)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
RULE = "family-tuesday"

FAMILY = {
    "fam-sto": "Europe/Stockholm",
    "fam-nyc": "America/New_York",
    "fam-tyo": "Asia/Tokyo",
}
OTHERS = {
    "friend-sto": ("Europe/Stockholm", "friends"),
    "friend-nyc": ("America/New_York", "friends"),
    "friend-tyo": ("Asia/Tokyo", None),
    "nozone": (None, "friends"),
}

CUSTOMER_RULE = """\
id: family-tuesday
description: Tuesday morning family picks, at 09:00 where each customer lives.
trigger:
  schedule: "0 9 * * TUE"
  timezone: customer
  audience: customer.traits.segment == 'family'
channel: email
template: family_picks
"""

PARIS_RULE = """\
id: paris-tuesday
trigger:
  schedule: "0 9 * * TUE"
  timezone: Europe/Paris
  audience: customer.traits.segment == 'family'
channel: email
template: family_picks
"""

# Windows around the 2026 DST changes: the US springs forward on Sunday 8 March, Europe on
# Sunday 29 March; Europe falls back on Sunday 25 October, the US on Sunday 1 November.
WINDOWS = {
    "spring-2026": (date(2026, 3, 7), date(2026, 4, 1)),  # Tuesdays 10, 17, 24, 31 March
    "autumn-2026": (date(2026, 10, 24), date(2026, 11, 4)),  # Tuesdays 27 October, 3 November
}


def utc(day: date, hour: int = 0) -> datetime:
    return datetime.combine(day, time(hour), tzinfo=UTC)


def nine_am(day: date, zone: str) -> datetime:
    """09:00 on ``day`` in ``zone``, as UTC (computed independently of the engine)."""
    return datetime.combine(day, time(9), tzinfo=ZoneInfo(zone)).astimezone(UTC)


def tuesdays(start: datetime, end: datetime, zone: str) -> list[datetime]:
    """Every Tuesday 09:00 in ``zone`` within [start, end), as UTC."""
    out = []
    day = (start - 2 * DAY).date()
    while day <= (end + 2 * DAY).date():
        if day.weekday() == 1 and start <= nine_am(day, zone) < end:
            out.append(nine_am(day, zone))
        day += DAY
    return out


@pytest.fixture
def schedule_sim(make_sim: Callable[..., Sim], tmp_path: Path) -> Callable[..., Sim]:
    """``schedule_sim(start, rule_text, **settings)`` → a Sim with the rule and the customers
    (identified, with their zones, segments and addresses) already processed."""

    def make(start: datetime, rule: str = CUSTOMER_RULE, **overrides: Any) -> Sim:
        (tmp_path / "rules").mkdir(exist_ok=True)
        (tmp_path / "rules" / "tuesday.yaml").write_text(rule)
        write_template(tmp_path / "templates", "family_picks", "email")
        sim = make_sim(start, **overrides)
        for user, zone in FAMILY.items():
            sim.identify({**reachable(user), "timezone": zone, "segment": "family"}, user=user)
        for user, (zone, segment) in OTHERS.items():
            traits = reachable(user)
            if segment:
                traits["segment"] = segment
            if zone:
                traits["timezone"] = zone
            sim.identify(traits, user=user)
        sim.tick()
        return sim

    return make


def sent_at(sim: Sim, user: str) -> list[tuple[datetime, datetime]]:
    """(due_at, decided at) of the customer's ``would_send`` decisions, in order."""
    rows = sim.decision_rows(
        "customer_id = ? AND outcome = 'would_send'", (sim.profile(user)["id"],)
    )
    return [(r["due_at"], r["at"]) for r in rows]


def assert_each_tuesday_once(sim: Sim, start: datetime, end: datetime, *, rule: str = RULE) -> None:
    for user, zone in FAMILY.items():
        expected = tuesdays(start, end, zone)
        assert expected, "the window holds a Tuesday"
        assert sent_at(sim, user) == [(t, t) for t in expected], (user, zone)
        profile = sim.profile(user)
        trigger_times = sorted(
            datetime.fromisoformat(j["trigger_at"])
            for j in profile["journeys"]
            if j["rule"] == rule
        )
        assert trigger_times == expected, (user, zone)
        for t in trigger_times:
            local = t.astimezone(ZoneInfo(zone))
            assert (local.weekday(), local.hour, local.minute) == (1, 9, 0), (user, local)
    for user in OTHERS:
        assert sent_at(sim, user) == [], user
    assert sim.count("decisions", "outcome != 'would_send'") == 0


def test_the_customer_timezone_rule_loads_without_declaring_traits(
    schedule_sim: Callable[..., Sim],
) -> None:
    sim = schedule_sim(utc(date(2026, 3, 7)))
    [rule] = sim.engine.rules.current.rules
    assert (rule.id, rule.trigger.schedule, rule.trigger.timezone) == (
        RULE,
        "0 9 * * TUE",
        "customer",
    )
    assert sim.engine.rules.current.problems == ()
    zones = {
        r["user_id"]: r["timezone"] for r in sim.query("SELECT user_id, timezone FROM customers")
    }
    assert zones == {**FAMILY, **{u: z or "UTC" for u, (z, _) in OTHERS.items()}}


@pytest.mark.parametrize(("first", "last"), WINDOWS.values(), ids=WINDOWS.keys())
def test_each_family_customer_gets_one_send_per_tuesday_at_nine_in_their_zone(
    schedule_sim: Callable[..., Sim], first: date, last: date
) -> None:
    start, end = utc(first), utc(last)
    sim = schedule_sim(start)
    sim.run_until(end, QUARTER)
    assert_each_tuesday_once(sim, start, end)
    assert len(sent_at(sim, "fam-nyc")) == len(tuesdays(start, end, "UTC"))


def test_restarts_between_ticks_neither_duplicate_nor_skip(
    schedule_sim: Callable[..., Sim],
) -> None:
    week = date(2026, 3, 28)  # Europe springs forward on the Sunday
    start, end = utc(week), utc(week + 7 * DAY)
    sim = schedule_sim(start)
    occurrences = [t for zone in FAMILY.values() for t in tuesdays(start, end, zone)]
    restarts = 0
    while sim.now < end:
        sim.clock.advance(QUARTER)
        near = any(-QUARTER <= sim.now - t <= 2 * QUARTER for t in occurrences)
        if near and sim.now in occurrences:
            # Journeys started but their step not yet decided when the process stops.
            sim.scheduler.run_schedules()
            sim.restart()
            restarts += 1
        sim.tick()
        if near:
            sim.restart()
            restarts += 1
    assert restarts >= 12
    assert_each_tuesday_once(sim, start, end)


@pytest.mark.parametrize(
    ("zone", "back_after", "fires"),
    [
        ("Europe/Stockholm", timedelta(hours=2), True),
        ("Europe/Stockholm", timedelta(hours=6), True),
        ("Europe/Stockholm", timedelta(hours=6, minutes=15), False),
        ("Asia/Tokyo", timedelta(hours=5, minutes=45), True),
        ("Asia/Tokyo", timedelta(hours=6, minutes=15), False),
    ],
)
def test_downtime_over_nine_fires_once_within_the_grace_and_not_after(
    schedule_sim: Callable[..., Sim], zone: str, back_after: timedelta, fires: bool
) -> None:
    user = next(u for u, z in FAMILY.items() if z == zone)
    tuesday = date(2026, 3, 10)
    nine = nine_am(tuesday, zone)
    sim = schedule_sim(nine - DAY, processing={"schedule_grace": "6h"})
    sim.run_until(nine - QUARTER, QUARTER)

    sim.restart(at=nine + back_after)  # down from 08:45 until 09:00 + back_after
    sim.tick()
    sim.run_until(nine + DAY, QUARTER)

    expected = [(nine, nine + back_after)] if fires else []
    assert sent_at(sim, user) == expected
    assert sim.count("journeys", "customer_id = ?", (sim.profile(user)["id"],)) == len(expected)


def test_missed_tuesday_does_not_stop_the_next_one(schedule_sim: Callable[..., Sim]) -> None:
    tuesday = date(2026, 3, 10)
    nine = nine_am(tuesday, "Europe/Stockholm")
    sim = schedule_sim(nine - HOUR)
    sim.restart(at=nine + 7 * HOUR)  # beyond the default grace (6h)
    sim.run_until(nine + 8 * DAY, HOUR)
    assert sent_at(sim, "fam-sto") == [(nine + 7 * DAY, nine + 7 * DAY)]


def test_fixed_zone_rule_fires_at_nine_paris_for_everyone_in_the_audience(
    schedule_sim: Callable[..., Sim],
) -> None:
    week = date(2026, 3, 28)
    start, end = utc(week - 7 * DAY), utc(week + 7 * DAY)  # Tuesdays 24 and 31 March
    sim = schedule_sim(start, rule=PARIS_RULE)
    sim.run_until(end, HOUR)

    expected = tuesdays(start, end, "Europe/Paris")
    assert [t.hour for t in expected] == [8, 7], "09:00 CET, then 09:00 CEST"
    for user in FAMILY:
        assert sent_at(sim, user) == [(t, t) for t in expected], user
    for user in OTHERS:
        assert sent_at(sim, user) == [], user


def nightly(cron: str) -> str:
    """The family rule, fired daily at ``cron``'s time instead of Tuesdays at 09:00."""
    return CUSTOMER_RULE.replace("0 9 * * TUE", cron).replace(RULE, "family-nightly")


def local_day(day: date, hour: int, zone: str) -> datetime:
    return datetime.combine(day, time(hour), tzinfo=ZoneInfo(zone)).astimezone(UTC)


@pytest.mark.parametrize(
    ("zone", "cron", "night"),
    [
        ("America/New_York", "30 2 * * *", date(2026, 3, 8)),
        ("Europe/Stockholm", "30 2 * * *", date(2026, 3, 29)),
    ],
    ids=["new-york", "stockholm"],
)
def test_daily_schedule_inside_the_skipped_hour_fires_once_that_night(
    schedule_sim: Callable[..., Sim], zone: str, cron: str, night: date
) -> None:
    user = next(u for u, z in FAMILY.items() if z == zone)
    sim = schedule_sim(local_day(night - DAY, 20, zone), rule=nightly(cron))
    sim.run_until(local_day(night, 12, zone), QUARTER)

    [(due, _decided)] = sent_at(sim, user)
    local = due.astimezone(ZoneInfo(zone))
    assert local.date() == night
    assert time(2) <= local.time() <= time(3, 30), local  # 02:30 does not exist that night


@pytest.mark.parametrize(
    ("zone", "cron", "night"),
    [
        ("America/New_York", "30 1 * * *", date(2026, 11, 1)),
        ("Europe/Stockholm", "30 2 * * *", date(2026, 10, 25)),
    ],
    ids=["new-york", "stockholm"],
)
def test_daily_schedule_inside_the_repeated_hour_fires_once_that_night(
    schedule_sim: Callable[..., Sim], zone: str, cron: str, night: date
) -> None:
    user = next(u for u, z in FAMILY.items() if z == zone)
    sim = schedule_sim(local_day(night - DAY, 20, zone), rule=nightly(cron))
    sim.run_until(local_day(night, 12, zone), QUARTER)

    sends = sent_at(sim, user)
    assert len(sends) == 1, [d.astimezone(ZoneInfo(zone)).isoformat() for d, _ in sends]
    local = sends[0][0].astimezone(ZoneInfo(zone))
    assert (local.date(), local.hour, local.minute) == (night, int(cron.split()[1]), 30)
