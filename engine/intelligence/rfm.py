"""RFM scores, named segments and lapsing (pure, vectorised with numpy).

Each buyer gets three 1-5 scores relative to the shop's current buyers: **R**ecency (days
since the last order: fewer is better), **F**requency (orders in the window) and
**M**onetary (revenue in the window). Scores are quintiles of each customer's percentile rank,
with ties sharing a score (a shop where most customers ordered once gives them all the same
F). A shop with fewer than ``min_buyers`` buyers has no meaningful quintiles, so fixed,
documented cut-offs are used instead (:data:`FIXED_CUTS`).

The segment comes from R and FM = round((F + M) / 2), first matching row wins:

=================== ============ ===========
segment             R            FM
=================== ============ ===========
champions           4-5          4-5
loyal               3-5          3
loyal               3            4-5
potential_loyalist  4-5          2
new                 5            1
promising           4            1
needs_attention     3            1-2
cant_lose           1-2          5
at_risk             1-2          3-4
hibernating         2            1-2
lost                1            1-2
=================== ============ ===========

**Lapsing**: ``lapse_ratio`` = days since the last order / the customer's expected interval
between orders (their own median when they have at least 3 orders, else the shop's median
interval); a customer with at least 2 orders is ``lapsing`` from ``threshold`` (2.0) on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import rankdata

__all__ = [
    "FIXED_CUTS",
    "SEGMENTS",
    "Rfm",
    "lapse_ratio",
    "rfm_scores",
    "segment_for",
]

Array = NDArray[np.float64]

SEGMENTS = (
    "champions",
    "loyal",
    "potential_loyalist",
    "new",
    "promising",
    "needs_attention",
    "cant_lose",
    "at_risk",
    "hibernating",
    "lost",
)

#: Small shops: upper bounds of scores 1..4 (a value above the last bound scores 5), for
#: recency in days (reversed: recent is 5), orders, and revenue in multiples of the shop's
#: median order value.
FIXED_CUTS = {
    "recency_days": (365.0, 180.0, 90.0, 30.0),  # > 365 d: 1; ≤ 30 d: 5
    "orders": (1.0, 2.0, 3.0, 5.0),  # 1 order: 1; 6 or more: 5
    "revenue_in_median_orders": (1.0, 2.0, 3.0, 5.0),
}


@dataclass(frozen=True, kw_only=True)
class Rfm:
    """Scores per buyer (arrays aligned with the input) and how they were made."""

    r: NDArray[np.int64]
    f: NDArray[np.int64]
    m: NDArray[np.int64]
    segments: tuple[str, ...]
    method: str  # "quintiles" or "fixed cut-offs"


def _quintiles(values: Array, higher_is_better: bool) -> NDArray[np.int64]:
    """1-5 by percentile rank; equal values share a score."""
    ranks = rankdata(values if higher_is_better else -values, method="average")
    scores = np.floor(5 * (ranks - 0.5) / values.size).astype(np.int64) + 1
    return np.asarray(np.clip(scores, 1, 5), dtype=np.int64)


def _fixed(values: Array, bounds: tuple[float, ...], reverse: bool = False) -> NDArray[np.int64]:
    if reverse:  # recency: the bounds are given from the oldest down
        scores = 5 - np.searchsorted(np.array(bounds[::-1]), values, side="left")
        return np.clip(scores, 1, 5).astype(np.int64)
    return (np.searchsorted(np.array(bounds), values, side="left") + 1).astype(np.int64)


def segment_for(r: int, f: int, m: int) -> str:
    """The named segment of one customer's scores (see the module's table)."""
    fm = int(np.floor((f + m) / 2 + 0.5))
    if r >= 4 and fm >= 4:
        return "champions"
    if r >= 3 and fm >= 3:
        return "loyal"
    if r >= 4 and fm == 2:
        return "potential_loyalist"
    if r == 5:
        return "new"
    if r == 4:
        return "promising"
    if r == 3:
        return "needs_attention"
    if fm == 5:
        return "cant_lose"
    if fm >= 3:
        return "at_risk"
    return "hibernating" if r == 2 else "lost"


def rfm_scores(
    recency_days: ArrayLike,
    orders: ArrayLike,
    revenue: ArrayLike,
    *,
    min_buyers: int = 100,
    median_order_value: float | None = None,
) -> Rfm:
    """Scores and segments of the shop's buyers (customers with at least one order in the
    window): ``recency_days`` since the last order, ``orders`` and ``revenue`` in the
    window. Fewer than ``min_buyers`` buyers: fixed cut-offs (``median_order_value`` for M;
    by default the median of revenue / orders)."""
    rec = np.asarray(recency_days, dtype=np.float64)
    freq = np.asarray(orders, dtype=np.float64)
    money = np.asarray(revenue, dtype=np.float64)
    if not rec.shape == freq.shape == money.shape:
        raise ValueError("recency_days, orders and revenue must have the same length")
    if rec.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Rfm(r=empty, f=empty, m=empty, segments=(), method="quintiles")
    if rec.size >= min_buyers:
        r = _quintiles(rec, higher_is_better=False)
        f = _quintiles(freq, higher_is_better=True)
        m = _quintiles(money, higher_is_better=True)
        method = "quintiles"
    else:
        per_order = money / np.maximum(freq, 1)
        unit = median_order_value or float(np.median(per_order)) or 1.0
        r = _fixed(rec, FIXED_CUTS["recency_days"], reverse=True)
        f = _fixed(freq, FIXED_CUTS["orders"])
        m = _fixed(money / unit, FIXED_CUTS["revenue_in_median_orders"])
        method = "fixed cut-offs"
    segments = tuple(segment_for(int(a), int(b), int(c)) for a, b, c in zip(r, f, m, strict=True))
    return Rfm(r=r, f=f, m=m, segments=segments, method=method)


def lapse_ratio(
    days_since_last_order: ArrayLike,
    orders: ArrayLike,
    own_median_interval: ArrayLike,
    shop_median_interval: float | None,
) -> Array:
    """Days since the last order ÷ the expected interval (own median with >= 3 orders, else
    the shop's); NaN where there is no expectation (no orders, or no interval known)."""
    days = np.asarray(days_since_last_order, dtype=np.float64)
    count = np.asarray(orders, dtype=np.float64)
    own = np.asarray(own_median_interval, dtype=np.float64)
    shop = np.nan if not shop_median_interval else float(shop_median_interval)
    expected = np.where((count >= 3) & np.isfinite(own) & (own > 0), own, shop)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = days / expected
    return np.where((count >= 1) & np.isfinite(expected) & (expected > 0), ratio, np.nan)
