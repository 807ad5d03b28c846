"""Segment and Shopify payloads → canonical events (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from engine.errors import LimitError, ValidationError
from engine.events import normalize_segment, normalize_shopify

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def seg(raw: Any, call_type: str | None = "track", **kw: Any) -> Any:
    return normalize_segment(
        raw,
        call_type=call_type,
        source="web",
        received_at=NOW,
        max_event_bytes=kw.pop("limit", 32 * 1024),
        **kw,
    )


def test_clock_skew_is_corrected_from_sent_at_and_the_original_is_kept() -> None:
    # The device clock is 1 h fast: it says the event happened 10 s before it was sent.
    event = seg(
        {
            "userId": "u",
            "event": "X",
            "timestamp": "2026-05-01T13:00:00Z",
            "sentAt": "2026-05-01T13:00:10Z",
        }
    )
    assert event.timestamp == NOW - timedelta(seconds=10)
    assert event.original_timestamp == datetime(2026, 5, 1, 13, tzinfo=UTC)


def test_without_sent_at_the_timestamp_is_trusted_and_without_either_it_is_received_at() -> None:
    assert seg(
        {"userId": "u", "event": "X", "timestamp": "2026-04-01T00:00:00+02:00"}
    ).timestamp == (datetime(2026, 3, 31, 22, tzinfo=UTC))
    assert seg({"userId": "u", "event": "X"}).timestamp == NOW


def test_batch_sent_at_applies_to_items() -> None:
    event = seg(
        {"type": "track", "userId": "u", "event": "X", "timestamp": "2026-05-01T11:00:00Z"},
        call_type=None,
        batch_sent_at=datetime(2026, 5, 1, 11, 0, 5, tzinfo=UTC),
    )
    assert event.timestamp == NOW - timedelta(seconds=5)


def test_v1_ecommerce_names_map_to_v2() -> None:
    assert seg({"userId": "u", "event": "Completed Order"}).name == "Order Completed"
    assert seg({"userId": "u", "event": "My Custom Thing"}).name == "My Custom Thing"


def test_numeric_user_ids_become_text() -> None:
    assert seg({"userId": 42, "event": "X"}).user_id == "42"


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"event": "X"}, "batch[2].userId"),
        ({"userId": "u"}, "batch[2].event"),
        ({"userId": "u", "event": "X", "properties": "nope"}, "batch[2].properties"),
        ({"userId": {}, "event": "X"}, "batch[2].userId"),
        ({"userId": "u", "event": "X", "timestamp": "yesterday"}, "batch[2].timestamp"),
        ({"userId": "u", "event": "X", "type": "bogus"}, "batch[2].type"),
    ],
)
def test_bad_events_name_the_field(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        seg(
            {"type": "track", **raw} if "type" not in raw else raw, call_type=None, where="batch[2]"
        )
    assert info.value.details[0]["field"] == field


def test_a_batch_item_needs_a_type_and_a_path_type_must_agree() -> None:
    with pytest.raises(ValidationError, match="type is required"):
        seg({"userId": "u"}, call_type=None, where="batch[0]")
    with pytest.raises(ValidationError, match="sent to /v1/track"):
        seg({"userId": "u", "type": "identify"})


def test_alias_needs_previous_id_and_group_needs_group_id() -> None:
    with pytest.raises(ValidationError, match="previousId"):
        seg({"userId": "u"}, call_type="alias")
    with pytest.raises(ValidationError, match="groupId"):
        seg({"userId": "u"}, call_type="group")
    assert seg({"userId": "u", "previousId": "a"}, call_type="alias").previous_id == "a"


def test_oversize_event_names_the_limit() -> None:
    with pytest.raises(LimitError) as info:
        seg({"userId": "u", "event": "X", "properties": {"blob": "x" * 200}}, limit=100)
    assert info.value.details[0]["limit"] == "max_event_bytes"


def test_missing_message_id_dedupes_by_content_when_the_sender_set_a_timestamp() -> None:
    raw = {"userId": "u", "event": "X", "timestamp": "2026-05-01T10:00:00Z"}
    assert seg(dict(raw, sentAt="2026-05-01T10:00:01Z")).message_id == seg(raw).message_id
    untimed = {"userId": "u", "event": "X"}
    assert seg(untimed).message_id.startswith("nudge-")


def test_context_traits_and_batch_context_are_kept() -> None:
    event = seg(
        {"userId": "u", "event": "X", "context": {"traits": {"email": "a@b.c"}}},
        batch_context={"library": {"name": "lib"}},
    )
    assert event.payload["context"] == {"library": {"name": "lib"}, "traits": {"email": "a@b.c"}}


# -- Shopify ----------------------------------------------------------------------------------

CHECKOUT = {
    "id": 123,
    "token": "tok-1",
    "email": "Guest@Example.com",
    "created_at": "2026-05-01T10:00:00+02:00",
    "updated_at": "2026-05-01T10:05:00+02:00",
    "total_price": "59.90",
    "subtotal_price": "49.90",
    "currency": "EUR",
    "abandoned_checkout_url": "https://shop.example/checkouts/tok-1/recover",
    "line_items": [
        {
            "product_id": 9,
            "variant_id": 91,
            "sku": "S9",
            "title": "Mug",
            "price": "24.95",
            "quantity": 2,
            "vendor": "Acme",
        }
    ],
}


def test_shopify_guest_checkout_becomes_checkout_started_keyed_by_token() -> None:
    event = normalize_shopify("checkouts/create", CHECKOUT, webhook_id="w1", received_at=NOW)
    assert event is not None
    assert event.name == "Checkout Started"
    assert event.message_id == "shopify:w1"
    assert event.anonymous_id == "shopify-guest:guest@example.com"
    props = event.payload["properties"]
    assert props["cart_id"] == "tok-1"
    assert props["value"] == 59.9
    assert props["products"][0] == {
        "product_id": "9",
        "variant": "91",
        "sku": "S9",
        "name": "Mug",
        "brand": "Acme",
        "price": 24.95,
        "quantity": 2,
    }
    assert event.timestamp == datetime(2026, 5, 1, 8, tzinfo=UTC)


def test_shopify_order_of_a_known_customer_is_order_completed_with_the_checkout_token() -> None:
    order = {
        "id": 555,
        "checkout_token": "tok-1",
        "created_at": "2026-05-01T11:00:00Z",
        "total_price": "59.90",
        "subtotal_price": "49.90",
        "total_discounts": "5.00",
        "discount_codes": [{"code": "SPRING"}],
        "currency": "EUR",
        "customer": {
            "id": 77,
            "email": "c@example.com",
            "first_name": "Cy",
            "email_marketing_consent": {"state": "subscribed"},
        },
        "line_items": [],
    }
    event = normalize_shopify("orders/create", order, webhook_id="w2", received_at=NOW)
    assert event is not None
    assert (event.name, event.user_id) == ("Order Completed", "77")
    props = event.payload["properties"]
    assert (props["order_id"], props["cart_id"], props["coupon"]) == ("555", "tok-1", "SPRING")
    assert event.payload["context"]["traits"]["accepts_marketing"] is True


def test_shopify_refund_sums_refund_transactions() -> None:
    refund = {
        "id": 1,
        "order_id": 555,
        "created_at": "2026-05-02T11:00:00Z",
        "transactions": [
            {"kind": "refund", "status": "success", "amount": "10.00"},
            {"kind": "refund", "status": "failure", "amount": "99.00"},
        ],
    }
    event = normalize_shopify("refunds/create", refund, webhook_id=None, received_at=NOW)
    assert event is not None
    assert event.payload["properties"] == {"order_id": "555", "total": 10.0}
    assert event.anonymous_id == "shopify-order:555"


def test_shopify_customer_update_is_identify_and_unknown_topics_are_ignored() -> None:
    event = normalize_shopify(
        "customers/update",
        {"id": 77, "email": "c@example.com", "accepts_marketing": False},
        webhook_id="w3",
        received_at=NOW,
    )
    assert event is not None
    assert (event.type, event.user_id) == ("identify", "77")
    assert event.payload["traits"] == {"email": "c@example.com", "accepts_marketing": False}
    assert normalize_shopify("products/create", {}, webhook_id="w", received_at=NOW) is None


def test_shopify_payload_problems_name_the_field() -> None:
    with pytest.raises(ValidationError) as info:
        normalize_shopify("checkouts/create", {"id": 1}, webhook_id="w", received_at=NOW)
    assert info.value.details[0]["field"] == "token"
    with pytest.raises(ValidationError) as info:
        normalize_shopify(
            "orders/create", {"id": 1, "created_at": "soon"}, webhook_id="w", received_at=NOW
        )
    assert info.value.details[0]["field"] == "created_at"
