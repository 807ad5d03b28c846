"""A stock Segment client library (segment-analytics-python), unchanged, pointed at Nudge."""

from __future__ import annotations

from typing import Any

import pytest
from nudge_testing import ADMIN_TOKEN, WRITE_KEY, Nudge
from segment.analytics import Client


@pytest.mark.parametrize(
    "options",
    [{"sync_mode": True}, {"sync_mode": True, "gzip": True}, {"upload_interval": 0.05}],
    ids=["sync", "sync-gzip", "background-thread"],
)
def test_stock_segment_library_builds_a_merged_profile(
    running_engine: Nudge, options: dict[str, Any]
) -> None:
    errors: list[Exception] = []
    client = Client(
        write_key=WRITE_KEY,
        host=running_engine.base_url,
        max_retries=0,
        on_error=lambda error, _batch: errors.append(error),
        **options,
    )
    try:
        client.page(anonymous_id="anon-seg", name="Home", properties={"path": "/"})
        client.track(
            anonymous_id="anon-seg",
            event="Product Added",
            properties={"product_id": "sku-9", "price": 12.5, "quantity": 2},
        )
        client.identify(
            user_id="seg-user",
            anonymous_id="anon-seg",
            traits={"email": "seg@example.com", "first_name": "Sam"},
        )
        client.track(
            user_id="seg-user",
            event="Order Completed",
            properties={"order_id": "seg-o-1", "revenue": 25.0},
        )
        client.flush()
    finally:
        if not options.get("sync_mode"):
            client.join()
    assert errors == []
    assert running_engine.count("events") == 4
    assert {r["source"] for r in running_engine.events()} == {"web"}

    assert running_engine.process() == 4

    response = running_engine.http.get(
        "/api/customers/seg-user", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert response.status_code == 200, response.text
    doc = response.json()
    assert {(i["kind"], i["value"]) for i in doc["identities"]} == {
        ("user", "seg-user"),
        ("anonymous", "anon-seg"),
    }
    assert doc["event_counts"] == {
        "page": 1,
        "Product Added": 1,
        "identify": 1,
        "Order Completed": 1,
    }
    assert doc["traits"]["email"] == "seg@example.com"
    assert doc["stats"]["revenue"] == 25.0
    # The anonymous history is found under the user, not as a second customer.
    by_anon = running_engine.http.get(
        "/api/customers/anon-seg", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert by_anon.json()["id"] == doc["id"]
    assert running_engine.count("customers", "merged_into IS NULL") == 1


def test_stock_segment_library_sees_a_rejected_write_key_as_an_api_error(
    running_engine: Nudge,
) -> None:
    from segment.analytics.request import APIError

    client = Client(write_key="wk_wrong", host=running_engine.base_url, sync_mode=True)

    with pytest.raises(APIError) as raised:
        client.track(user_id="u1", event="Product Viewed")

    assert raised.value.status == 401
    assert running_engine.count("events") == 0
