"""Shopify webhooks (``POST /webhooks/shopify``) against a real server and SQLite file."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import httpx
import orjson
import pytest
from nudge_testing import SHOPIFY_SECRET, Nudge

CUSTOMER_ID = 7205471011123
ORDER_ID = 5829315133747
CHECKOUT_TOKEN = "0a9f7c5e3b2d4c8f9e1a6b7d3c5e8f21"
EMAIL = "Jane.Doe@Example.com"


def sign(body: bytes, secret: str = SHOPIFY_SECRET) -> str:
    """``X-Shopify-Hmac-Sha256``: base64 of the HMAC-SHA256 of the raw body."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def deliver(
    nudge: Nudge,
    topic: str | None,
    payload: Any,
    *,
    webhook_id: str | None = None,
    signature: str | None = None,
) -> httpx.Response:
    """POST a webhook as Shopify does: raw JSON body, HMAC, topic, shop and webhook id."""
    body = orjson.dumps(payload)
    headers = {
        "Content-Type": "application/json",
        "X-Shopify-Hmac-Sha256": sign(body) if signature is None else signature,
        "X-Shopify-Shop-Domain": "nudge-test.myshopify.com",
        "X-Shopify-API-Version": "2025-01",
        "X-Shopify-Webhook-Id": webhook_id or f"wh-{topic}-{hashlib.sha1(body).hexdigest()}",
    }
    if topic is not None:
        headers["X-Shopify-Topic"] = topic
    return nudge.http.post("/webhooks/shopify", content=body, headers=headers)


def line_items() -> list[dict[str, Any]]:
    return [
        {
            "id": 14236070199347,
            "product_id": 8123456789012,
            "variant_id": 44123456789012,
            "sku": "TEE-BLK-M",
            "title": "Organic Cotton Tee",
            "variant_title": "Black / M",
            "price": "24.50",
            "quantity": 2,
            "vendor": "Northwind",
        },
        {
            "id": 14236070232115,
            "product_id": 8123456789099,
            "variant_id": 44123456789099,
            "sku": "SOCK-3P",
            "title": "Wool Socks (3 pack)",
            "price": "15.00",
            "quantity": 1,
            "vendor": "Northwind",
        },
    ]


def customer() -> dict[str, Any]:
    return {
        "id": CUSTOMER_ID,
        "email": EMAIL,
        "first_name": "Jane",
        "last_name": "Doe",
        "accepts_marketing": True,
    }


def checkout() -> dict[str, Any]:
    return {
        "id": 35012345678901,
        "token": CHECKOUT_TOKEN,
        "cart_token": "c1-3b5f2e9a8d7c",
        "email": EMAIL,
        "created_at": "2025-03-04T09:15:42-05:00",
        "updated_at": "2025-03-04T09:15:42-05:00",
        "currency": "USD",
        "presentment_currency": "USD",
        "subtotal_price": "64.00",
        "total_tax": "5.12",
        "total_price": "74.11",
        "abandoned_checkout_url": "https://nudge-test.myshopify.com/checkouts/recover",
        "customer": customer(),
        "line_items": line_items(),
    }


def order() -> dict[str, Any]:
    return {
        "id": ORDER_ID,
        "name": "#1042",
        "order_number": 1042,
        "checkout_token": CHECKOUT_TOKEN,
        "token": "b1946ac92492d2347c6235b4d2611184",
        "email": EMAIL,
        "created_at": "2025-03-04T09:21:07-05:00",
        "currency": "USD",
        "subtotal_price": "64.00",
        "total_tax": "5.12",
        "total_discounts": "0.00",
        "total_price": "74.11",
        "financial_status": "paid",
        "discount_codes": [],
        "customer": customer(),
        "line_items": line_items(),
    }


def refund(amount: str = "24.50") -> dict[str, Any]:
    return {
        "id": 929361462,
        "order_id": ORDER_ID,
        "created_at": "2025-03-06T14:02:11-05:00",
        "note": "wrong size",
        "restock": True,
        "refund_line_items": [
            {"line_item_id": 14236070199347, "quantity": 1, "subtotal": 24.5, "total_tax": 1.96}
        ],
        "transactions": [
            {
                "id": 389404469,
                "order_id": ORDER_ID,
                "kind": "refund",
                "status": "success",
                "amount": amount,
                "currency": "USD",
                "gateway": "shopify_payments",
            }
        ],
    }


def customer_update() -> dict[str, Any]:
    return {
        **customer(),
        "phone": "+16135550142",
        "updated_at": "2025-03-05T10:00:00-05:00",
        "email_marketing_consent": {"state": "subscribed", "opt_in_level": "single_opt_in"},
        "tags": "vip",
    }


def assert_ok(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    assert response.json() == {"success": True}


# -- topics ----------------------------------------------------------------------------------


def test_signed_checkout_create_is_stored_as_checkout_started(running_engine: Nudge) -> None:
    assert_ok(deliver(running_engine, "checkouts/create", checkout()))

    [row] = running_engine.events()
    assert (row["source"], row["type"], row["name"]) == ("shopify", "track", "Checkout Started")
    assert row["user_id"] == str(CUSTOMER_ID)
    props = row["payload"]["properties"]
    assert props["cart_id"] == CHECKOUT_TOKEN
    assert props["value"] == 74.11
    assert props["currency"] == "USD"
    assert props["products"][0] == {
        "product_id": "8123456789012",
        "variant": "44123456789012",
        "sku": "TEE-BLK-M",
        "name": "Organic Cotton Tee",
        "brand": "Northwind",
        "price": 24.5,
        "quantity": 2,
    }
    assert row["timestamp"].startswith("2025-03-04 14:15:42")  # created_at, in UTC


def test_order_create_is_stored_as_order_completed_for_the_checkout(
    running_engine: Nudge,
) -> None:
    assert_ok(deliver(running_engine, "orders/create", order()))

    [row] = running_engine.events()
    assert (row["type"], row["name"], row["user_id"]) == (
        "track",
        "Order Completed",
        str(CUSTOMER_ID),
    )
    props = row["payload"]["properties"]
    assert props["cart_id"] == CHECKOUT_TOKEN
    assert props["order_id"] == str(ORDER_ID)
    assert (props["revenue"], props["total"], props["tax"]) == (64.0, 74.11, 5.12)
    assert [p["sku"] for p in props["products"]] == ["TEE-BLK-M", "SOCK-3P"]
    assert row["payload"]["context"]["traits"]["email"] == EMAIL


def test_checkout_then_order_completes_the_customers_checkout(running_engine: Nudge) -> None:
    assert_ok(deliver(running_engine, "checkouts/create", checkout()))
    assert_ok(deliver(running_engine, "orders/create", order()))

    assert running_engine.process() == 2

    profile = running_engine.admin_get(f"/api/customers/{CUSTOMER_ID}").json()
    assert profile["stats"]["orders"] == 1
    assert profile["stats"]["revenue"] == 64.0
    assert profile["stats"]["checkouts_started"] == 1
    assert profile["stats"]["checkouts_completed"] == 1
    assert profile["stats"]["carts_abandoned"] == 0
    assert profile["traits"]["email"] == EMAIL


def test_refund_lands_on_the_ordering_customer_and_reduces_revenue(
    running_engine: Nudge,
) -> None:
    assert_ok(deliver(running_engine, "orders/create", order()))
    running_engine.process()
    assert_ok(deliver(running_engine, "refunds/create", refund("24.50")))

    [row] = running_engine.events("name = 'Order Refunded'")
    assert row["payload"]["properties"] == {"order_id": str(ORDER_ID), "total": 24.5}
    assert running_engine.process() == 1

    profile = running_engine.admin_get(f"/api/customers/{CUSTOMER_ID}").json()
    assert profile["event_counts"] == {"Order Completed": 1, "Order Refunded": 1}
    assert profile["stats"]["revenue"] == 64.0 - 24.5
    assert profile["stats"]["refunded"] == 24.5
    assert profile["orders"][0]["refunded"] == 24.5
    [refund_row] = running_engine.events("name = 'Order Refunded'")
    assert refund_row["customer_id"] == profile["id"]


def test_refund_processed_with_its_order_in_one_batch_lands_on_the_customer(
    running_engine: Nudge,
) -> None:
    assert_ok(deliver(running_engine, "orders/create", order()))
    assert_ok(deliver(running_engine, "refunds/create", refund("64.00")))

    assert running_engine.process() == 2

    profile = running_engine.admin_get(f"/api/customers/{CUSTOMER_ID}").json()
    assert profile["event_counts"] == {"Order Completed": 1, "Order Refunded": 1}
    assert profile["stats"]["orders"] == 0  # refunded in full: no longer counts
    assert profile["stats"]["revenue"] == 0.0


def test_refund_delivered_before_its_order_still_lands_on_the_customer(
    running_engine: Nudge,
) -> None:
    # Shopify does not promise delivery order: an orders/create retried later can arrive
    # after the refunds/create for it.
    assert_ok(deliver(running_engine, "refunds/create", refund("24.50")))
    running_engine.process()
    assert_ok(deliver(running_engine, "orders/create", order()))
    running_engine.process()

    profile = running_engine.admin_get(f"/api/customers/{CUSTOMER_ID}").json()
    assert [o["order_id"] for o in profile["orders"]] == [str(ORDER_ID)]
    assert profile["stats"]["revenue"] == 64.0 - 24.5


def test_customer_update_is_stored_as_identify_with_traits(running_engine: Nudge) -> None:
    assert_ok(deliver(running_engine, "customers/update", customer_update()))

    [row] = running_engine.events()
    assert (row["type"], row["name"], row["user_id"]) == ("identify", None, str(CUSTOMER_ID))
    traits = row["payload"]["traits"]
    assert traits["email"] == EMAIL
    assert traits["first_name"] == "Jane"
    assert traits["accepts_marketing"] is True

    running_engine.process()
    found = running_engine.admin_get("/api/customers/jane.doe@example.com")
    assert found.status_code == 200, found.text
    assert found.json()["user_id"] == str(CUSTOMER_ID)


def test_guest_checkout_and_order_meet_on_one_profile(running_engine: Nudge) -> None:
    guest_checkout = {k: v for k, v in checkout().items() if k != "customer"}
    guest_order = {k: v for k, v in order().items() if k != "customer"}
    assert_ok(deliver(running_engine, "checkouts/create", guest_checkout))
    assert_ok(deliver(running_engine, "orders/create", guest_order))

    running_engine.process()

    ids = {r["customer_id"] for r in running_engine.events()}
    assert len(ids) == 1
    assert {r["anonymous_id"] for r in running_engine.events()} == {
        "shopify-guest:jane.doe@example.com"
    }


# -- authentication, dedupe and routing ------------------------------------------------------


@pytest.mark.parametrize(
    "signature",
    ["", sign(b"some other body"), sign(orjson.dumps(checkout()), "wrong-secret"), "not base64"],
    ids=["missing", "other-body", "other-secret", "garbage"],
)
def test_bad_hmac_is_401_and_stores_nothing(running_engine: Nudge, signature: str) -> None:
    response = deliver(running_engine, "checkouts/create", checkout(), signature=signature)

    running_engine.expect_error(response, 401, field="X-Shopify-Hmac-Sha256")
    assert running_engine.count("events") == 0


def test_a_body_changed_after_signing_is_401(running_engine: Nudge) -> None:
    signed = orjson.dumps(checkout())
    tampered = signed.replace(b'"74.11"', b'"0.01"')
    response = running_engine.http.post(
        "/webhooks/shopify",
        content=tampered,
        headers={"X-Shopify-Hmac-Sha256": sign(signed), "X-Shopify-Topic": "checkouts/create"},
    )

    running_engine.expect_error(response, 401)
    assert running_engine.count("events") == 0


def test_same_webhook_id_twice_stores_one_row(running_engine: Nudge) -> None:
    assert_ok(deliver(running_engine, "orders/create", order(), webhook_id="b54557e4-b3a5"))
    # A redelivery of the same webhook (Shopify retries with the same id).
    assert_ok(deliver(running_engine, "orders/create", order(), webhook_id="b54557e4-b3a5"))

    [row] = running_engine.events()
    assert row["message_id"] == "shopify:b54557e4-b3a5"


def test_different_webhook_ids_are_different_events(running_engine: Nudge) -> None:
    assert_ok(deliver(running_engine, "checkouts/update", checkout(), webhook_id="wh-1"))
    assert_ok(deliver(running_engine, "checkouts/update", checkout(), webhook_id="wh-2"))

    assert running_engine.count("events") == 2


def test_unknown_topic_is_acknowledged_and_ignored(running_engine: Nudge) -> None:
    response = deliver(running_engine, "products/update", {"id": 1, "title": "Tee"})

    assert response.status_code == 200, response.text
    assert response.json()["success"] is True
    assert "products/update" in response.json()["ignored"]
    assert running_engine.count("events") == 0


def test_missing_topic_is_400(running_engine: Nudge) -> None:
    response = deliver(running_engine, None, order())

    running_engine.expect_error(response, 400, field="X-Shopify-Topic")
    assert running_engine.count("events") == 0


@pytest.mark.parametrize(
    ("topic", "payload", "field"),
    [
        ("orders/create", {**order(), "id": None}, "id"),
        ("checkouts/create", {**checkout(), "token": None}, "token"),
        ("refunds/create", {**refund(), "order_id": None}, "order_id"),
        ("orders/create", {**order(), "created_at": "last tuesday"}, "created_at"),
    ],
    ids=["order-without-id", "checkout-without-token", "refund-without-order", "bad-time"],
)
def test_incomplete_webhook_is_400_naming_the_field(
    running_engine: Nudge, topic: str, payload: dict[str, Any], field: str
) -> None:
    running_engine.expect_error(deliver(running_engine, topic, payload), 400, field=field)
    assert running_engine.count("events") == 0


def test_malformed_json_with_a_valid_signature_is_400(running_engine: Nudge) -> None:
    body = b'{"id": 1,'
    response = running_engine.http.post(
        "/webhooks/shopify",
        content=body,
        headers={"X-Shopify-Hmac-Sha256": sign(body), "X-Shopify-Topic": "orders/create"},
    )

    running_engine.expect_error(response, 400, code="invalid_json")
    assert running_engine.count("events") == 0
