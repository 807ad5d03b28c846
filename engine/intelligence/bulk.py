"""The whole shop's intelligence in one pass (pure): RFM, lapsing, habits, predictions.

:func:`compute` takes every buyer's orders and returns, per customer, the document stored in
``customers.intel`` (what rules see as ``customer.rfm``, ``customer.habits``,
``customer.predicted``, ``customer.segments`` and ``customer.stats.lapse_ratio``), and the
fitted models (shown by ``nudge intelligence fit``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from engine.intelligence.habits import weekday_habit
from engine.intelligence.predictions import (
    FitError,
    expected_purchases,
    expected_value,
    fit_bgnbd,
    fit_gamma_gamma,
    p_alive,
)
from engine.intelligence.rfm import lapse_ratio, rfm_scores

__all__ = ["Buyer", "ShopIntelligence", "compute"]

_DAY = 86400.0


@dataclass(frozen=True, kw_only=True)
class Buyer:
    """One customer's orders (placed time, value after refunds), oldest first, and zone."""

    customer_id: int
    zone: str
    orders: Sequence[tuple[datetime, float]]


@dataclass(frozen=True, kw_only=True)
class ShopIntelligence:
    per_customer: dict[int, dict[str, Any]] = field(default_factory=dict)
    models: dict[str, Any] = field(default_factory=dict)


def _median_interval(times: Sequence[datetime]) -> float:
    if len(times) < 2:
        return float("nan")
    gaps = np.diff(np.array([t.timestamp() for t in times])) / _DAY
    return float(np.median(gaps))


def compute(
    buyers: Sequence[Buyer],
    now: datetime,
    *,
    window: timedelta = timedelta(days=365),
    lapse_threshold: float = 2.0,
    min_buyers: int = 100,
) -> ShopIntelligence:
    """RFM over ``window``, lapsing, weekday habits and BG/NBD + Gamma-Gamma predictions
    (time unit: days) for every buyer; models that cannot be fitted are reported, not
    raised."""
    if not buyers:
        return ShopIntelligence(models={"buyers": 0, "computed_at": now.isoformat()})
    since = now - window
    first = np.array([b.orders[0][0].timestamp() for b in buyers]) / _DAY
    last = np.array([b.orders[-1][0].timestamp() for b in buyers]) / _DAY
    today = now.timestamp() / _DAY
    count = np.array([len(b.orders) for b in buyers], dtype=np.float64)
    in_window = [[(t, v) for t, v in b.orders if t >= since] for b in buyers]
    recency = today - last
    orders_w = np.array([len(o) for o in in_window], dtype=np.float64)
    revenue_w = np.array([sum(v for _, v in o) for o in in_window], dtype=np.float64)
    active = orders_w > 0
    idx = np.flatnonzero(active)
    rfm = rfm_scores(recency[idx], orders_w[idx], revenue_w[idx], min_buyers=min_buyers)
    own = np.array([_median_interval([t for t, _ in b.orders]) for b in buyers])
    repeaters = own[np.isfinite(own)]
    shop_interval = float(np.median(repeaters)) if repeaters.size else None
    ratio = lapse_ratio(recency, count, own, shop_interval)

    models: dict[str, Any] = {
        "buyers": len(buyers),
        "computed_at": now.isoformat(),
        "rfm": {"method": rfm.method, "window_days": window.days, "buyers": int(idx.size)},
        "shop_median_days_between_orders": shop_interval,
    }
    if len(buyers) < min_buyers:
        models["note"] = (
            f"only {len(buyers)} buyers (< {min_buyers}): RFM uses fixed cut-offs and the "
            "predictions rest on little data"
        )
    x, t_x, big_t = count - 1, last - first, today - first
    alive: Any = None
    expected: Any = None
    try:
        bgnbd = fit_bgnbd(x, t_x, big_t)
        models["bgnbd"] = {k: getattr(bgnbd, k) for k in ("r", "alpha", "a", "b")} | {
            "log_likelihood": bgnbd.log_likelihood,
            "customers": bgnbd.customers,
        }
        alive = p_alive(bgnbd, x, t_x, big_t)
        expected = {d: expected_purchases(bgnbd, d, x, t_x, big_t) for d in (30, 90, 365)}
    except FitError as exc:
        models["bgnbd"] = {"error": str(exc)}
    value: Any = None
    repeat_values = np.array(
        [np.mean([v for _, v in b.orders[1:]]) if len(b.orders) > 1 else 0.0 for b in buyers]
    )
    try:
        spend = fit_gamma_gamma(x, repeat_values)
        models["gamma_gamma"] = {"p": spend.p, "q": spend.q, "v": spend.v} | {
            "log_likelihood": spend.log_likelihood,
            "customers": spend.customers,
        }
        value = expected_value(spend, x, repeat_values)
    except FitError as exc:
        models["gamma_gamma"] = {"error": str(exc)}

    rfm_of = {int(i): n for n, i in enumerate(idx)}
    out: dict[int, dict[str, Any]] = {}
    for n, buyer in enumerate(buyers):
        doc: dict[str, Any] = {"computed_at": now.isoformat()}
        segments: list[str] = []
        if n in rfm_of:
            k = rfm_of[n]
            r, f, m = int(rfm.r[k]), int(rfm.f[k]), int(rfm.m[k])
            doc["rfm"] = {"r": r, "f": f, "m": m, "score": f"{r}{f}{m}"}
            doc["rfm"]["segment"] = rfm.segments[k]
            segments.append(rfm.segments[k])
        lapse = float(ratio[n]) if np.isfinite(ratio[n]) else None
        doc["lapse_ratio"] = round(lapse, 3) if lapse is not None else None
        if lapse is not None and count[n] >= 2 and lapse >= lapse_threshold:
            segments.append("lapsing")
        habit = weekday_habit([t for t, _ in buyer.orders], buyer.zone)
        doc["habits"] = {
            "top_weekday": habit.top_weekday,
            "top_weekday_share": habit.top_weekday_share,
            "weekday_orders": list(habit.counts),
        }
        predicted: dict[str, Any] = {}
        if alive is not None and expected is not None:
            predicted["p_alive"] = round(float(alive[n]), 4)
            for days, values in expected.items():
                predicted[f"expected_orders_{days}d"] = round(float(values[n]), 4)
        if value is not None:
            predicted["expected_order_value"] = round(float(value[n]), 2)
            if expected is not None:
                predicted["clv_365d"] = round(float(expected[365][n] * value[n]), 2)
        doc["predicted"] = predicted
        doc["segments"] = segments
        out[buyer.customer_id] = doc
    return ShopIntelligence(per_customer=out, models=models)
