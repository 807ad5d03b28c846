"""RFM scores and segments, lapsing, weekday habits (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.intelligence.habits import weekday_habit
from engine.intelligence.rfm import SEGMENTS, lapse_ratio, rfm_scores, segment_for

TUESDAY = datetime(2026, 3, 3, 10, tzinfo=UTC)


def test_every_score_combination_has_exactly_one_named_segment() -> None:
    seen = {segment_for(r, f, m) for r in range(1, 6) for f in range(1, 6) for m in range(1, 6)}
    assert seen == set(SEGMENTS)


@pytest.mark.parametrize(
    ("scores", "segment"),
    [
        ((5, 5, 5), "champions"),
        ((5, 1, 1), "new"),
        ((4, 1, 1), "promising"),
        ((3, 3, 3), "loyal"),
        ((4, 2, 2), "potential_loyalist"),
        ((3, 1, 2), "needs_attention"),
        ((1, 5, 5), "cant_lose"),
        ((2, 4, 3), "at_risk"),
        ((2, 1, 1), "hibernating"),
        ((1, 1, 2), "lost"),
    ],
)
def test_the_documented_table(scores: tuple[int, int, int], segment: str) -> None:
    assert segment_for(*scores) == segment


def test_quintiles_rank_buyers_against_each_other_and_ties_share_a_score() -> None:
    n = 500
    rng = np.random.default_rng(7)
    recency = rng.uniform(0, 400, n)
    orders = np.where(np.arange(n) < 300, 1, rng.integers(2, 12, n))  # most bought once
    revenue = orders * rng.uniform(10, 80, n)
    rfm = rfm_scores(recency, orders, revenue)
    assert rfm.method == "quintiles"
    assert {int(v) for v in rfm.r} == {1, 2, 3, 4, 5}
    assert np.bincount(rfm.r)[1:].min() >= n // 5 - 2  # quintiles of distinct values
    assert len({int(f) for f, o in zip(rfm.f, orders, strict=True) if o == 1}) == 1
    most_recent, oldest = int(np.argmin(recency)), int(np.argmax(recency))
    assert (rfm.r[most_recent], rfm.r[oldest]) == (5, 1)


def test_a_small_shop_uses_the_fixed_cut_offs() -> None:
    rfm = rfm_scores([10, 200, 400], [6, 2, 1], [300, 60, 20], median_order_value=25)
    assert rfm.method == "fixed cut-offs"
    assert (list(rfm.r), list(rfm.f), list(rfm.m)) == ([5, 2, 1], [5, 2, 1], [5, 3, 1])
    # 2 orders worth 2.4 median orders, 200 days ago: F 2, M 3 → FM 3 with R 2: at risk.
    assert rfm.segments == ("champions", "at_risk", "lost")


@given(st.lists(st.tuples(st.floats(0, 1000), st.integers(1, 50), st.floats(1, 1e5)), max_size=300))
def test_scores_are_always_1_to_5_and_segments_named(rows: list[tuple[float, int, float]]) -> None:
    rfm = rfm_scores(*zip(*rows, strict=True)) if rows else rfm_scores([], [], [])
    for scores in (rfm.r, rfm.f, rfm.m):
        assert all(1 <= int(s) <= 5 for s in scores)
    assert set(rfm.segments) <= set(SEGMENTS) and len(rfm.segments) == len(rows)


def test_lapse_ratio_uses_the_own_rhythm_from_three_orders_else_the_shops() -> None:
    ratio = lapse_ratio([60, 60, 60, 60], [5, 2, 0, 3], [30, 10, np.nan, np.nan], 20)
    assert ratio[0] == pytest.approx(2.0)  # own median: 30 days
    assert ratio[1] == pytest.approx(3.0)  # two orders: the shop's 20 days
    assert np.isnan(ratio[2])  # never ordered
    assert ratio[3] == pytest.approx(3.0)  # three orders but no own interval known


def test_three_tuesdays_are_a_habit_but_three_of_four_are_not_yet() -> None:
    tuesdays = [TUESDAY + timedelta(weeks=w) for w in range(3)]
    habit = weekday_habit(tuesdays, "UTC")
    assert (habit.top_weekday, habit.top_weekday_share) == ("tuesday", 1.0)
    habit = weekday_habit([*tuesdays, TUESDAY + timedelta(days=3)], "UTC")
    assert habit.top_weekday is None and habit.counts[1] == 3


def test_the_weekday_is_the_customers_local_one() -> None:
    # 02:00 UTC on Wednesday is still Tuesday evening in New York.
    late = [TUESDAY + timedelta(weeks=w, hours=16) for w in range(4)]
    assert weekday_habit(late, "America/New_York").top_weekday == "tuesday"
    assert weekday_habit(late, "Europe/Stockholm").top_weekday == "wednesday"


def test_too_few_orders_or_a_tie_is_no_habit() -> None:
    assert weekday_habit([TUESDAY, TUESDAY + timedelta(weeks=1)], "UTC").top_weekday is None
    friday = TUESDAY + timedelta(days=3)
    tie = [TUESDAY + timedelta(weeks=w) for w in range(4)] + [
        friday + timedelta(weeks=w) for w in range(4)
    ]
    assert weekday_habit(tie, "UTC").top_weekday is None
