"""Weekday habits: does a customer really shop on one day of the week? (pure)

A customer's orders are counted per weekday in their own time zone. ``top_weekday`` is the
day with the most orders, reported only when the pattern is real: at least ``min_orders``
orders, and a one-sided binomial test says that many orders on one day would be unlikely if
the customer picked days at random (each day 1/7): p < ``alpha`` after a Bonferroni
correction for the seven days one could have picked (p x 7 < alpha). With alpha = 0.05, 3 of
3 orders on a Tuesday is a habit (p x 7 = 0.020), 3 of 4 is not yet (0.073), 4 of 6 is
(0.034).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from scipy.stats import binomtest

__all__ = ["WEEKDAYS", "Habit", "weekday_habit"]

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


@dataclass(frozen=True, kw_only=True)
class Habit:
    """Orders per weekday (Monday first), and the habit if there is one."""

    counts: tuple[int, ...]
    shares: tuple[float, ...]
    top_weekday: str | None
    top_weekday_share: float | None
    p_value: float | None  # Bonferroni-corrected, for the busiest day


def weekday_habit(
    order_times: Iterable[datetime],
    zone: str,
    *,
    min_orders: int = 3,
    alpha: float = 0.05,
) -> Habit:
    """The weekday pattern of ``order_times`` (aware) in ``zone``."""
    tz = ZoneInfo(zone)
    counts = [0] * 7
    for when in order_times:
        counts[when.astimezone(tz).weekday()] += 1
    total = sum(counts)
    shares = tuple(c / total if total else 0.0 for c in counts)
    if total < min_orders:
        return Habit(
            counts=tuple(counts),
            shares=shares,
            top_weekday=None,
            top_weekday_share=None,
            p_value=None,
        )
    top = max(range(7), key=lambda d: (counts[d], -d))
    p = min(1.0, binomtest(counts[top], total, 1 / 7, alternative="greater").pvalue * 7)
    real = p < alpha and _unique_top(counts, top)
    return Habit(
        counts=tuple(counts),
        shares=shares,
        top_weekday=WEEKDAYS[top] if real else None,
        top_weekday_share=round(shares[top], 4) if real else None,
        p_value=p,
    )


def _unique_top(counts: Sequence[int], top: int) -> bool:
    """A tie for the busiest day is no single habit."""
    return sum(1 for c in counts if c == counts[top]) == 1
