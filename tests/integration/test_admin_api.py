"""The operator API (``/api/customers/{ref}``, admin bearer token) and ``/healthz``."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from nudge_testing import ADMIN_TOKEN, Nudge


def seed_customer(nudge: Nudge) -> None:
    """An anonymous visitor who identifies, then orders; processed."""
    calls = [
        ("page", {"messageId": "s1", "anonymousId": "anon-42", "name": "Home"}),
        (
            "track",
            {
                "messageId": "s2",
                "anonymousId": "anon-42",
                "event": "Product Viewed",
                "properties": {"product_id": "sku-1", "price": 30},
            },
        ),
        (
            "identify",
            {
                "messageId": "s3",
                "userId": "cust-42",
                "anonymousId": "anon-42",
                "traits": {"email": "Ada@Example.com", "first_name": "Ada"},
            },
        ),
        (
            "track",
            {
                "messageId": "s4",
                "userId": "cust-42",
                "event": "Order Completed",
                "properties": {"order_id": "o-1", "revenue": 60.0, "currency": "EUR"},
            },
        ),
    ]
    for call, body in calls:
        response = nudge.post(f"/v1/{call}", body)
        assert response.status_code == 200, response.text
    assert nudge.process() == len(calls)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer adm_wrong"},
        {"Authorization": f"Basic {ADMIN_TOKEN}"},
        {"Authorization": "Bearer"},
        {"Authorization": ADMIN_TOKEN},
    ],
    ids=["none", "wrong-token", "basic-scheme", "empty-bearer", "no-scheme"],
)
def test_customer_api_requires_the_admin_bearer_token(
    running_engine: Nudge, headers: dict[str, str]
) -> None:
    seed_customer(running_engine)

    response = running_engine.http.get("/api/customers/cust-42", headers=headers)

    error = running_engine.expect_error(response, 401, code="unauthorized")
    assert "cust-42" not in response.text and "Ada" not in response.text
    assert error["details"][0]["field"] == "Authorization"


def test_the_ingest_write_key_is_not_an_admin_token(running_engine: Nudge) -> None:
    seed_customer(running_engine)

    running_engine.expect_error(running_engine.admin_get("/api/customers/cust-42", "wk_test"), 401)


def test_admin_api_401_challenges_for_a_bearer_token(running_engine: Nudge) -> None:
    response = running_engine.admin_get("/api/customers/cust-42", token=None)

    assert response.status_code == 401
    assert response.headers.get("www-authenticate", "").lower().startswith("bearer")


def test_customer_api_returns_the_unified_profile(running_engine: Nudge) -> None:
    seed_customer(running_engine)

    response = running_engine.admin_get("/api/customers/cust-42")

    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["user_id"] == "cust-42"
    assert {(i["kind"], i["value"]) for i in doc["identities"]} == {
        ("user", "cust-42"),
        ("anonymous", "anon-42"),
    }
    assert doc["traits"] == {"email": "Ada@Example.com", "first_name": "Ada"}
    assert doc["event_counts"] == {
        "page": 1,
        "Product Viewed": 1,
        "identify": 1,
        "Order Completed": 1,
    }
    assert doc["stats"]["events"] == 4
    assert doc["stats"]["orders"] == 1
    assert doc["stats"]["revenue"] == 60.0
    assert doc["stats"]["has_account"] is True
    assert [o["order_id"] for o in doc["orders"]] == ["o-1"]
    recent = doc["recent_events"]
    assert sorted(e["message_id"] for e in recent) == ["s1", "s2", "s3", "s4"]
    assert {"seq", "type", "name", "timestamp", "source", "properties"} <= set(recent[0])


@pytest.mark.parametrize(
    "ref",
    ["anon-42", "ada@example.com", "ADA@EXAMPLE.COM", "email:ada@example.com", "user:cust-42"],
)
def test_customer_can_be_looked_up_by_any_of_its_references(
    running_engine: Nudge, ref: str
) -> None:
    seed_customer(running_engine)
    by_user = running_engine.admin_get("/api/customers/cust-42").json()

    response = running_engine.admin_get(f"/api/customers/{ref}")

    assert response.status_code == 200, response.text
    assert response.json()["id"] == by_user["id"]


def test_customer_can_be_looked_up_by_its_numeric_id(running_engine: Nudge) -> None:
    seed_customer(running_engine)
    customer_id = running_engine.admin_get("/api/customers/cust-42").json()["id"]

    response = running_engine.admin_get(f"/api/customers/{customer_id}")

    assert response.status_code == 200, response.text
    assert response.json()["user_id"] == "cust-42"


def test_recent_events_can_be_limited(running_engine: Nudge) -> None:
    seed_customer(running_engine)

    doc = running_engine.admin_get("/api/customers/cust-42?events=2").json()

    assert len(doc["recent_events"]) == 2


@pytest.mark.parametrize("ref", ["nobody", "nobody@example.com", "999999"])
def test_unknown_customer_is_404_with_the_error_shape(running_engine: Nudge, ref: str) -> None:
    seed_customer(running_engine)

    response = running_engine.admin_get(f"/api/customers/{ref}")

    running_engine.expect_error(response, 404, code="not_found", field="ref")


def test_an_unprocessed_customer_is_not_found_yet(running_engine: Nudge) -> None:
    assert running_engine.post("/v1/track", {"userId": "later", "event": "X"}).status_code == 200

    running_engine.expect_error(running_engine.admin_get("/api/customers/later"), 404)
    running_engine.process()
    assert running_engine.admin_get("/api/customers/later").status_code == 200


def test_healthz_reports_pending_events(running_engine: Nudge) -> None:
    assert running_engine.http.get("/healthz").json() == {"status": "ok", "pending_events": 0}
    for i in range(3):
        body = {"userId": "u1", "event": "X", "messageId": f"h-{i}"}
        assert running_engine.post("/v1/track", body).status_code == 200

    assert running_engine.http.get("/healthz").json() == {"status": "ok", "pending_events": 3}
    running_engine.process()
    assert running_engine.http.get("/healthz").json() == {"status": "ok", "pending_events": 0}


def test_healthz_needs_no_token(running_engine: Nudge) -> None:
    assert running_engine.http.get("/healthz").status_code == 200


def test_customer_api_is_disabled_without_an_admin_token(
    start_engine: Callable[..., Nudge],
) -> None:
    nudge = start_engine(admin_token=None)

    response = nudge.admin_get("/api/customers/anyone")

    nudge.expect_error(response, 401, field="admin_token")
