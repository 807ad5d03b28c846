"""The Segment-compatible ingest API against a real server and a real SQLite file."""

from __future__ import annotations

import base64
import concurrent.futures
import gzip
import sqlite3
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import orjson
import pytest
from nudge_testing import START, WRITE_KEY, Nudge, basic_auth, stored_time

MAX_EVENT = 32 * 1024
MAX_REQUEST = 500 * 1024


def track(message_id: str = "m-1", user_id: Any = "user-1", **extra: Any) -> dict[str, Any]:
    """A valid track call."""
    return {
        "messageId": message_id,
        "userId": user_id,
        "event": "Product Viewed",
        "properties": {"product_id": "sku-1", "price": 25.0},
        **extra,
    }


def batch_item(message_id: str, **extra: Any) -> dict[str, Any]:
    return {"type": "track", **track(message_id), **extra}


def padded(size: int, message_id: str = "big") -> dict[str, Any]:
    """A valid track call of about ``size`` bytes of JSON."""
    event = track(message_id)
    event["properties"]["blob"] = ""
    event["properties"]["blob"] = "x" * (size - len(orjson.dumps(event)))
    return event


def assert_ok(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    assert response.json() == {"success": True}


# -- the six calls ----------------------------------------------------------------------------

CALLS = [
    ("track", {"userId": "u1", "event": "Product Viewed"}, "Product Viewed"),
    ("identify", {"userId": "u1", "traits": {"email": "u1@example.com"}}, None),
    ("page", {"anonymousId": "a1", "name": "Home"}, "Home"),
    ("screen", {"userId": "u1", "name": "Cart"}, "Cart"),
    ("group", {"userId": "u1", "groupId": "acme"}, None),
    ("alias", {"userId": "u1", "previousId": "a1"}, None),
]


@pytest.mark.parametrize(("call", "body", "name"), CALLS, ids=[c[0] for c in CALLS])
def test_each_segment_call_is_accepted_and_stored_with_its_type(
    running_engine: Nudge, call: str, body: dict[str, Any], name: str | None
) -> None:
    response = running_engine.post(f"/v1/{call}", {"messageId": f"m-{call}", **body})

    assert_ok(response)
    [row] = running_engine.events()
    assert (row["type"], row["name"], row["message_id"], row["source"]) == (
        call,
        name,
        f"m-{call}",
        "web",
    )
    assert row["status"] == 0  # pending until the processor runs


def test_each_call_keeps_its_identities_and_payload(running_engine: Nudge) -> None:
    for call, body, _ in CALLS:
        assert_ok(running_engine.post(f"/v1/{call}", {"messageId": f"m-{call}", **body}))

    rows = {row["type"]: row for row in running_engine.events()}
    assert rows["identify"]["payload"]["traits"] == {"email": "u1@example.com"}
    assert rows["page"]["anonymous_id"] == "a1"
    assert rows["group"]["group_id"] == "acme"
    assert (rows["alias"]["user_id"], rows["alias"]["previous_id"]) == ("u1", "a1")


@pytest.mark.parametrize(
    ("path", "call"), [("/v1/t", "track"), ("/v1/i", "identify"), ("/v1/p", "page")]
)
def test_short_form_paths_store_their_call_type(
    running_engine: Nudge, path: str, call: str
) -> None:
    body = {"userId": "u1", "messageId": "short", "event": "Signed Up", "name": "Home"}

    assert_ok(running_engine.post(path, body))

    assert [r["type"] for r in running_engine.events()] == [call]


def test_numeric_ids_are_stored_as_text(running_engine: Nudge) -> None:
    assert_ok(running_engine.post("/v1/track", track(user_id=1234, anonymousId=99)))

    [row] = running_engine.events()
    assert (row["user_id"], row["anonymous_id"]) == ("1234", "99")


def test_ecommerce_v1_event_names_are_stored_as_v2_names(running_engine: Nudge) -> None:
    assert_ok(running_engine.post("/v1/track", track(event="Completed Order")))

    assert [r["name"] for r in running_engine.events()] == ["Order Completed"]


def test_a_body_type_that_contradicts_the_endpoint_is_rejected(running_engine: Nudge) -> None:
    response = running_engine.post("/v1/identify", {"type": "track", **track()})

    running_engine.expect_error(response, 400, field="type")
    assert running_engine.count("events") == 0


# -- messageId dedupe ------------------------------------------------------------------------


def test_a_retried_request_stores_one_row(running_engine: Nudge) -> None:
    assert_ok(running_engine.post("/v1/track", track("retried")))
    assert_ok(running_engine.post("/v1/track", track("retried")))

    assert running_engine.count("events", "message_id = ?", ("retried",)) == 1


def test_a_retried_batch_stores_nothing_twice(running_engine: Nudge) -> None:
    body = {"batch": [batch_item(f"b-{i}") for i in range(3)]}

    assert_ok(running_engine.post("/v1/batch", body))
    assert_ok(running_engine.post("/v1/batch", body))

    assert running_engine.count("events") == 3


def test_duplicate_message_ids_inside_one_batch_store_one_row(running_engine: Nudge) -> None:
    body = {"batch": [batch_item("same"), batch_item("same"), batch_item("other")]}

    assert_ok(running_engine.post("/v1/batch", body))

    assert running_engine.count("events") == 2


def test_a_retried_call_without_message_id_but_with_timestamp_is_deduped(
    running_engine: Nudge,
) -> None:
    body = {"userId": "u1", "event": "Cart Viewed", "timestamp": "2025-03-04T11:00:00Z"}

    assert_ok(running_engine.post("/v1/track", {**body, "sentAt": "2025-03-04T11:00:01Z"}))
    assert_ok(running_engine.post("/v1/track", {**body, "sentAt": "2025-03-04T11:00:09Z"}))

    assert running_engine.count("events") == 1


def test_same_message_id_from_another_source_is_another_event(
    start_engine: Callable[..., Nudge],
) -> None:
    nudge = start_engine(
        write_keys=[{"source": "web", "key": WRITE_KEY}, {"source": "ios", "key": "wk_ios"}]
    )

    assert_ok(nudge.post("/v1/track", track("shared-id"), key=WRITE_KEY))
    assert_ok(nudge.post("/v1/track", track("shared-id"), key="wk_ios"))
    assert_ok(nudge.post("/v1/track", track("shared-id"), key="wk_ios"))

    rows = nudge.events("message_id = ?", ("shared-id",))
    assert sorted(r["source"] for r in rows) == ["ios", "web"]


# -- batches ---------------------------------------------------------------------------------


def test_batch_stores_good_events_and_reports_bad_ones_by_index(running_engine: Nudge) -> None:
    bad_props = batch_item("bad-props", properties="x")
    no_ids = {"type": "track", "messageId": "no-ids", "event": "Product Viewed"}
    no_event = {"type": "track", "messageId": "no-event", "userId": "u1"}
    body = {"batch": [batch_item("good-0"), bad_props, batch_item("good-2"), no_ids, no_event]}

    response = running_engine.post("/v1/batch", body)

    assert response.status_code == 200, response.text
    result = response.json()
    assert result["success"] is True
    assert result["accepted"] == 2
    rejected = result["rejected"]
    assert [r["index"] for r in rejected] == [1, 3, 4]
    for item in rejected:
        assert set(item) == {"index", "code", "message", "details"}, item
        assert item["code"] == "invalid" and item["message"]
        assert all(d["field"].startswith(f"batch[{item['index']}]") for d in item["details"])
    assert rejected[0]["details"][0]["field"] == "batch[1].properties"
    assert "userId" in rejected[1]["message"]
    assert "event" in rejected[2]["message"]
    stored = [r["message_id"] for r in running_engine.events()]
    assert stored == ["good-0", "good-2"]


def test_all_bad_batch_is_400_with_each_rejection_in_details(running_engine: Nudge) -> None:
    body = {"batch": [{"type": "track", "event": "X"}, batch_item("b", userId={})]}

    error = running_engine.expect_error(
        running_engine.post("/v1/batch", body), 400, code="batch_rejected"
    )

    assert [d["index"] for d in error["details"]] == [0, 1]
    assert error["details"][1]["details"][0]["field"] == "batch[1].userId"
    assert running_engine.count("events") == 0


@pytest.mark.parametrize(
    "body", [{"batch": "x"}, {"events": []}, [track()]], ids=["not-a-list", "missing", "array"]
)
def test_batch_without_a_list_of_events_is_rejected(running_engine: Nudge, body: Any) -> None:
    running_engine.expect_error(running_engine.post("/v1/batch", body), 400, field="batch")
    assert running_engine.count("events") == 0


def test_batch_items_need_a_type(running_engine: Nudge) -> None:
    item = track("untyped")

    error = running_engine.expect_error(
        running_engine.post("/v1/batch", {"batch": [item]}), 400, code="batch_rejected"
    )

    assert error["details"][0]["details"][0]["field"] == "batch[0].type"


def test_batch_context_is_merged_into_each_event(running_engine: Nudge) -> None:
    body = {
        "batch": [batch_item("c1", context={"ip": "10.0.0.1"})],
        "context": {"library": {"name": "test"}, "ip": "10.0.0.9"},
    }

    assert_ok(running_engine.post("/v1/batch", body))

    [row] = running_engine.events()
    assert row["payload"]["context"] == {"library": {"name": "test"}, "ip": "10.0.0.1"}


# -- gzip ------------------------------------------------------------------------------------


def test_gzip_request_bodies_are_accepted(running_engine: Nudge) -> None:
    assert_ok(running_engine.post("/v1/track", track("gz-single"), gzipped=True))
    body = {"batch": [batch_item("gz-0"), batch_item("gz-1")]}
    assert_ok(running_engine.post("/v1/batch", body, gzipped=True))

    assert [r["message_id"] for r in running_engine.events()] == ["gz-single", "gz-0", "gz-1"]


def test_a_body_that_is_not_gzip_is_400_invalid_gzip(running_engine: Nudge) -> None:
    response = running_engine.post(
        "/v1/track", raw=b"this is not gzip", headers={"Content-Encoding": "gzip"}
    )

    running_engine.expect_error(response, 400, code="invalid_gzip", field="(body)")
    assert running_engine.count("events") == 0


def test_a_gzip_body_cut_short_is_400(running_engine: Nudge) -> None:
    whole = gzip.compress(orjson.dumps(track()))

    response = running_engine.post(
        "/v1/track", raw=whole[: len(whole) // 2], headers={"Content-Encoding": "gzip"}
    )

    running_engine.expect_error(response, 400, field="(body)")
    assert running_engine.count("events") == 0


def test_a_gzip_body_without_its_trailer_is_rejected_as_invalid_gzip(
    running_engine: Nudge,
) -> None:
    whole = gzip.compress(orjson.dumps(track()))

    response = running_engine.post(
        "/v1/track", raw=whole[:-8], headers={"Content-Encoding": "gzip"}
    )

    running_engine.expect_error(response, 400, code="invalid_gzip")
    assert running_engine.count("events") == 0


@pytest.mark.parametrize("path", ["/v1/track", "/v1/batch"])
def test_gzip_bomb_is_400_naming_the_request_limit(running_engine: Nudge, path: str) -> None:
    event = track("bomb")
    event["properties"]["blob"] = "0" * (MAX_REQUEST + 100_000)
    body = event if path == "/v1/track" else {"batch": [{"type": "track", **event}]}
    raw = gzip.compress(orjson.dumps(body), compresslevel=9)
    assert len(raw) < 5_000

    response = running_engine.post(path, raw=raw, headers={"Content-Encoding": "gzip"})

    error = running_engine.expect_error(response, 400, code="request_too_large")
    assert error["details"][0]["limit"] == "max_request_bytes"
    assert "limit" in error["message"]
    assert running_engine.count("events") == 0


def test_unsupported_content_encoding_is_400(running_engine: Nudge) -> None:
    response = running_engine.post("/v1/track", track(), headers={"Content-Encoding": "br"})

    running_engine.expect_error(response, 400, code="unsupported_encoding")
    assert running_engine.count("events") == 0


# -- size limits -----------------------------------------------------------------------------


def test_event_just_under_32kb_is_accepted(running_engine: Nudge) -> None:
    assert_ok(running_engine.post("/v1/track", padded(MAX_EVENT - 100)))
    assert running_engine.count("events") == 1


@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzip"])
def test_event_over_32kb_is_400_naming_max_event_bytes(
    running_engine: Nudge, gzipped: bool
) -> None:
    response = running_engine.post("/v1/track", padded(33 * 1024), gzipped=gzipped)

    error = running_engine.expect_error(response, 400, code="event_too_large")
    assert error["details"][0]["limit"] == "max_event_bytes"
    assert running_engine.count("events") == 0


@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzip"])
def test_batch_over_500kb_is_400_naming_max_request_bytes(
    running_engine: Nudge, gzipped: bool
) -> None:
    body = {"batch": [{"type": "track", **padded(20_000, f"p-{i}")} for i in range(30)]}
    assert len(orjson.dumps(body)) > 600 * 1024 - 20_000

    response = running_engine.post("/v1/batch", body, gzipped=gzipped)

    error = running_engine.expect_error(response, 400, code="request_too_large")
    assert error["details"][0]["limit"] == "max_request_bytes"
    assert running_engine.count("events") == 0


def test_oversize_event_in_a_batch_rejects_only_that_event(running_engine: Nudge) -> None:
    big = {"type": "track", **padded(40 * 1024, "too-big")}
    body = {"batch": [batch_item("small-0"), big, batch_item("small-2")]}

    response = running_engine.post("/v1/batch", body)

    assert response.status_code == 200, response.text
    [rejected] = response.json()["rejected"]
    assert rejected["index"] == 1
    assert rejected["code"] == "event_too_large"
    assert rejected["details"][0]["limit"] == "max_event_bytes"
    assert [r["message_id"] for r in running_engine.events()] == ["small-0", "small-2"]


# -- auth ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/track", "/v1/batch"])
def test_missing_write_key_is_401(running_engine: Nudge, path: str) -> None:
    body = track() if path == "/v1/track" else {"batch": [batch_item("m")]}

    response = running_engine.post(path, body, key=None)

    running_engine.expect_error(response, 401, code="unauthorized")
    assert response.headers["www-authenticate"].lower().startswith("basic")
    assert running_engine.count("events") == 0


def test_unknown_write_key_is_401(running_engine: Nudge) -> None:
    response = running_engine.post("/v1/track", track(), key="wk_someone_else")

    running_engine.expect_error(response, 401, code="unauthorized")
    assert running_engine.count("events") == 0


def test_unknown_write_key_in_the_body_is_401(running_engine: Nudge) -> None:
    response = running_engine.post("/v1/track", {**track(), "writeKey": "wk_nope"}, key=None)

    running_engine.expect_error(response, 401, code="unauthorized")
    assert running_engine.count("events") == 0


def test_write_key_in_the_body_is_accepted(running_engine: Nudge) -> None:
    assert_ok(running_engine.post("/v1/track", {**track("k1"), "writeKey": WRITE_KEY}, key=None))
    body = {"batch": [batch_item("k2")], "writeKey": WRITE_KEY}
    assert_ok(running_engine.post("/v1/batch", body, key=None))

    rows = running_engine.events()
    assert [(r["message_id"], r["source"]) for r in rows] == [("k1", "web"), ("k2", "web")]


def test_basic_auth_with_a_password_still_uses_the_user_name_as_key(
    running_engine: Nudge,
) -> None:
    header = "Basic " + base64.b64encode(f"{WRITE_KEY}:ignored".encode()).decode()

    response = running_engine.post(
        "/v1/track", track(), key=None, headers={"Authorization": header}
    )

    assert_ok(response)


@pytest.mark.parametrize(
    "header",
    ["Basic %%%not-base64%%%", "Basic " + base64.b64encode(b"\xff\xfe:").decode(), "Basic Og=="],
    ids=["not-base64", "not-utf8", "empty-user-name"],
)
def test_malformed_basic_credentials_are_401(running_engine: Nudge, header: str) -> None:
    response = running_engine.post(
        "/v1/track", track(), key=None, headers={"Authorization": header}
    )

    running_engine.expect_error(response, 401, code="unauthorized", field="Authorization")
    assert running_engine.count("events") == 0


# -- bad input -------------------------------------------------------------------------------

BAD_INPUT = [
    ("malformed-json", b'{"userId": "u1", "event": ', "invalid_json", "(body)"),
    ("json-array", orjson.dumps([track()]), "invalid", "(body)"),
    ("json-string", b'"track"', "invalid", "(body)"),
    ("properties-not-object", orjson.dumps(track(properties="x")), "invalid", "properties"),
    ("userId-object", orjson.dumps(track(userId={})), "invalid", "userId"),
    ("timestamp-unparsable", orjson.dumps(track(timestamp="yesterday")), "invalid", "timestamp"),
    ("sentAt-unparsable", orjson.dumps(track(sentAt="soon")), "invalid", "sentAt"),
    ("event-not-string", orjson.dumps(track(event=["a"])), "invalid", "event"),
]


@pytest.mark.parametrize(
    ("raw", "code", "field"), [b[1:] for b in BAD_INPUT], ids=[b[0] for b in BAD_INPUT]
)
def test_bad_input_is_400_naming_the_field(
    running_engine: Nudge, raw: bytes, code: str, field: str
) -> None:
    response = running_engine.post("/v1/track", raw=raw)

    running_engine.expect_error(response, 400, code=code, field=field)
    assert running_engine.count("events") == 0


MISSING = [
    ("no-userId-or-anonymousId", "/v1/track", {"event": "Product Viewed"}, "userId"),
    ("track-without-event", "/v1/track", {"userId": "u1"}, "event"),
    ("group-without-groupId", "/v1/group", {"userId": "u1"}, "groupId"),
    ("alias-without-previousId", "/v1/alias", {"userId": "u1"}, "previousId"),
]


@pytest.mark.parametrize(
    ("path", "body", "name"), [m[1:] for m in MISSING], ids=[m[0] for m in MISSING]
)
def test_missing_required_field_is_400_naming_it(
    running_engine: Nudge, path: str, body: dict[str, Any], name: str
) -> None:
    response = running_engine.post(path, body)

    error = running_engine.expect_error(response, 400, code="invalid")
    assert name in error["message"]
    assert any(name in d["message"] for d in error["details"]), error
    assert running_engine.count("events") == 0


# -- Segment's clock-skew correction ---------------------------------------------------------


def test_timestamp_is_corrected_for_the_senders_clock_skew(running_engine: Nudge) -> None:
    # The sender's clock is more than a year behind; it queued the event 30 s before sending.
    body = track(timestamp="2024-01-01T00:00:00Z", sentAt="2024-01-01T00:00:30.250Z")

    assert_ok(running_engine.post("/v1/track", body))

    [row] = running_engine.events()
    assert stored_time(row["received_at"]) == START
    assert stored_time(row["timestamp"]) == START - timedelta(seconds=30.25)
    assert stored_time(row["original_timestamp"]).isoformat() == "2024-01-01T00:00:00+00:00"
    assert stored_time(row["sent_at"]).isoformat() == "2024-01-01T00:00:30.250000+00:00"


def test_timestamp_offsets_are_converted_to_utc_before_correction(
    running_engine: Nudge,
) -> None:
    body = track(timestamp="2025-03-04T13:00:00+02:00", sentAt="2025-03-04T11:00:05Z")

    assert_ok(running_engine.post("/v1/track", body))

    [row] = running_engine.events()
    assert stored_time(row["timestamp"]) == START - timedelta(seconds=5)


def test_original_timestamp_is_corrected_like_timestamp(running_engine: Nudge) -> None:
    body = track(originalTimestamp="2025-03-04T11:59:00Z", sentAt="2025-03-04T11:59:20Z")

    assert_ok(running_engine.post("/v1/track", body))

    [row] = running_engine.events()
    assert stored_time(row["timestamp"]) == START - timedelta(seconds=20)


def test_timestamp_without_sent_at_is_kept_as_sent(running_engine: Nudge) -> None:
    assert_ok(running_engine.post("/v1/track", track(timestamp="2025-03-01T08:00:00Z")))

    [row] = running_engine.events()
    assert stored_time(row["timestamp"]).isoformat() == "2025-03-01T08:00:00+00:00"


def test_event_without_timestamp_is_stamped_when_received(running_engine: Nudge) -> None:
    assert_ok(running_engine.post("/v1/track", track()))

    [row] = running_engine.events()
    assert stored_time(row["timestamp"]) == START == stored_time(row["received_at"])


def test_batch_level_sent_at_applies_to_each_item(running_engine: Nudge) -> None:
    body = {
        "sentAt": "2020-06-01T10:00:10Z",
        "batch": [
            batch_item("skew-0", timestamp="2020-06-01T10:00:00Z"),
            batch_item("skew-1", timestamp="2020-06-01T09:59:00Z"),
            # An item's own sentAt wins over the batch's.
            batch_item("skew-2", timestamp="2020-06-01T10:00:00Z", sentAt="2020-06-01T10:00:02Z"),
        ],
    }

    assert_ok(running_engine.post("/v1/batch", body))

    stamps = {r["message_id"]: stored_time(r["timestamp"]) for r in running_engine.events()}
    assert stamps == {
        "skew-0": START - timedelta(seconds=10),
        "skew-1": START - timedelta(seconds=70),
        "skew-2": START - timedelta(seconds=2),
    }


def test_received_at_follows_the_engine_clock(running_engine: Nudge) -> None:
    running_engine.clock.advance(timedelta(hours=5))

    assert_ok(
        running_engine.post(
            "/v1/track", track(timestamp="2025-03-04T16:59:00Z", sentAt="2025-03-04T17:00:00Z")
        )
    )

    [row] = running_engine.events()
    assert stored_time(row["received_at"]) == START + timedelta(hours=5)
    assert stored_time(row["timestamp"]) == START + timedelta(hours=5, minutes=-1)


# -- acknowledged means durable --------------------------------------------------------------


def test_an_acknowledged_event_is_readable_by_another_connection_at_once(
    running_engine: Nudge,
) -> None:
    for i in range(10):
        assert_ok(running_engine.post("/v1/track", track(f"durable-{i}")))
        # A fresh stdlib connection, not the app's: the row is committed already.
        conn = sqlite3.connect(running_engine.path)
        try:
            found = conn.execute(
                "SELECT count(*) FROM events WHERE message_id = ?", (f"durable-{i}",)
            ).fetchone()[0]
        finally:
            conn.close()
        assert found == 1, f"durable-{i} was acknowledged but is not committed"


def test_concurrent_requests_are_all_durable_when_acknowledged(running_engine: Nudge) -> None:
    def send(i: int) -> tuple[int, int]:
        with httpx.Client(base_url=running_engine.base_url, timeout=10) as client:
            response = client.post(
                "/v1/track",
                content=orjson.dumps(track(f"conc-{i}", user_id=f"user-{i % 7}")),
                headers={"Authorization": basic_auth(WRITE_KEY)},
            )
        committed = running_engine.count("events", "message_id = ?", (f"conc-{i}",))
        return response.status_code, committed

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(send, range(64)))

    assert results == [(200, 1)] * 64
    assert running_engine.count("events") == 64


# -- the error shape everywhere --------------------------------------------------------------


def test_unknown_path_uses_the_error_shape(running_engine: Nudge) -> None:
    running_engine.expect_error(running_engine.post("/v1/nope", track()), 404, code="not_found")


def test_wrong_method_uses_the_error_shape(running_engine: Nudge) -> None:
    running_engine.expect_error(
        running_engine.http.get("/v1/track"), 405, code="method_not_allowed"
    )
