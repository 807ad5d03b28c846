"""What a customer likes: categories, brands, price band, discounts (pure).

Every product a customer ordered, viewed or searched for counts towards its category and
brand, weighted by what the interaction says (an order 3, a view 1, a search 0.5) and by how
recent it is (the weight halves every ``half_life`` days). The favourites are the heaviest
(``top_categories``, ``top_brands``: up to three each; ``top_category``/``top_brand`` the
first). The **price band** places the customer's typical price (the weighted median of the
prices they ordered or viewed) among the shop's prices: ``budget`` below the shop's lower
third, ``premium`` above its upper third, ``mid`` between. **Buys on discount**: with at least
two orders, true when at least half of them carried a discount or a coupon.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np

__all__ = ["KIND_WEIGHTS", "Interaction", "preferences", "price_cuts"]

KIND_WEIGHTS = {"order": 3.0, "view": 1.0, "search": 0.5}


@dataclass(frozen=True, kw_only=True)
class Interaction:
    """One product the customer ordered, viewed or searched for."""

    at: datetime
    kind: str  # order | view | search
    category: str | None = None
    brand: str | None = None
    price: float | None = None


def price_cuts(prices: Iterable[float]) -> tuple[float, float] | None:
    """The shop's lower and upper thirds of product prices (None: too few prices)."""
    values = np.array([p for p in prices if p and p > 0], dtype=np.float64)
    if values.size < 3:
        return None
    low, high = np.quantile(values, [1 / 3, 2 / 3])
    return float(low), float(high)


def _top(weights: dict[str, float]) -> list[str]:
    return [name for name, _ in sorted(weights.items(), key=lambda kv: (-kv[1], kv[0]))[:3]]


def preferences(
    interactions: Sequence[Interaction],
    now: datetime,
    *,
    cuts: tuple[float, float] | None,
    orders_with_discount: tuple[int, int] = (0, 0),
    half_life: timedelta = timedelta(days=30),
) -> dict[str, Any]:
    """The customer's preferences; ``orders_with_discount`` is (discounted orders, orders)."""
    categories: dict[str, float] = {}
    brands: dict[str, float] = {}
    prices: list[tuple[float, float]] = []
    days = half_life.total_seconds() / 86400
    for item in interactions:
        age = max(0.0, (now - item.at).total_seconds() / 86400)
        weight = KIND_WEIGHTS.get(item.kind, 0.0) * 0.5 ** (age / days)
        if weight <= 0:
            continue
        if item.category:
            key = item.category.strip()
            categories[key] = categories.get(key, 0.0) + weight
        if item.brand:
            key = item.brand.strip()
            brands[key] = brands.get(key, 0.0) + weight
        if item.price and item.price > 0 and item.kind != "search":
            prices.append((item.price, weight))
    band = None
    if prices and cuts is not None:
        ordered = sorted(prices)
        total = sum(w for _, w in ordered)
        running, typical = 0.0, ordered[-1][0]
        for price, weight in ordered:  # weighted median
            running += weight
            if running >= total / 2:
                typical = price
                break
        band = "budget" if typical < cuts[0] else "premium" if typical > cuts[1] else "mid"
    discounted, orders = orders_with_discount
    top_categories, top_brands = _top(categories), _top(brands)
    return {
        "top_category": top_categories[0] if top_categories else None,
        "top_categories": top_categories,
        "top_brand": top_brands[0] if top_brands else None,
        "top_brands": top_brands,
        "price_band": band,
        "buys_on_discount": discounted * 2 >= orders if orders >= 2 else None,
    }
