"""Preferences: favourite categories and brands, price band, discount buying (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from engine.intelligence.preferences import Interaction, preferences, price_cuts

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def seen(
    kind: str, days_ago: float, category: str, brand: str = "B", price: float = 10
) -> Interaction:
    return Interaction(
        at=NOW - timedelta(days=days_ago), kind=kind, category=category, brand=brand, price=price
    )


def test_an_order_outweighs_a_view_and_recent_outweighs_old() -> None:
    prefs = preferences(
        [seen("view", 1, "Tea"), seen("order", 1, "Coffee"), seen("view", 1, "Tea")],
        NOW,
        cuts=None,
    )
    assert prefs["top_categories"] == ["Coffee", "Tea"]  # 3 against 1 + 1
    faded = preferences([seen("order", 300, "Coffee"), seen("view", 1, "Tea")], NOW, cuts=None)
    assert faded["top_category"] == "Tea"  # ten half-lives later, an old order weighs ~0


def test_the_price_band_places_the_typical_price_among_the_shops_thirds() -> None:
    cuts = price_cuts([5, 10, 15, 20, 40, 60, 80, 100, 120])
    assert cuts is not None
    cheap = preferences(
        [seen("order", 1, "A", price=6), seen("view", 2, "A", price=8)], NOW, cuts=cuts
    )
    dear = preferences([seen("order", 1, "A", price=110)], NOW, cuts=cuts)
    middle = preferences([seen("view", 1, "A", price=40)], NOW, cuts=cuts)
    assert (cheap["price_band"], middle["price_band"], dear["price_band"]) == (
        "budget",
        "mid",
        "premium",
    )
    assert price_cuts([10, 20]) is None  # too few prices to say


def test_buying_on_discount_needs_two_orders_and_half_of_them_discounted() -> None:
    def verdict(discounted: int, orders: int) -> bool | None:
        return preferences([], NOW, cuts=None, orders_with_discount=(discounted, orders))[
            "buys_on_discount"
        ]

    assert (verdict(1, 1), verdict(1, 2), verdict(1, 3), verdict(3, 4)) == (None, True, False, True)


def test_nothing_known_is_nulls_and_empty_lists() -> None:
    assert preferences([], NOW, cuts=(1, 2)) == {
        "top_category": None,
        "top_categories": [],
        "top_brand": None,
        "top_brands": [],
        "price_band": None,
        "buys_on_discount": None,
    }
