"""The delivery path end to end on a simulated clock: events in, decisions (consent, caps,
quiet hours, priority, holdout and variants, sandboxed rendering), the outbox, and signed
webhooks POSTed by the real dispatcher to real uvicorn receivers, with every fault a receiver
can produce (5xx, 429 with Retry-After, 410, 400, a stall, a cut-off response, an endpoint that
stays down, the circuit breaker) and the operator's re-drive through the ``nudge`` CLI."""

from __future__ import annotations

import asyncio
import math
import sqlite3
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import yaml
from delivery_fixtures import (
    DEADLINE,
    EMAIL_TEMPLATE,
    PUSH_TEMPLATE,
    SECRET,
    Answer,
    CutServer,
    Receiver,
    Shop,
    channels,
    endpoint,
    make_shop_fixture,  # noqa: F401
    one_step_rule,
    receiver_fixture,  # noqa: F401
    time_limit_fixture,  # noqa: F401
    verify_signature,
)
from journey_fixtures import SAMPLE_RULES, SAMPLE_TEMPLATES, clean_env, nudge_command

from engine.dispatch import RETRY_SCHEDULE
from engine.policy import HOLDOUT, assign

#: Far enough ahead of the wall clock that the CLI's re-drive ("due now", system time) is
#: already due on the simulated clock.
T0 = datetime(2030, 3, 5, 10, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
MESSAGE_KEYS = {
    "type",
    "id",
    "channel",
    "to",
    "content",
    "rule",
    "step",
    "variant",
    "unsubscribe_url",
    "created_at",
}


def ping_shop(
    make_shop: Callable[..., Shop],
    url: str | dict[str, Any],
    *,
    start: datetime = T0,
    **overrides: Any,
) -> Shop:
    """A shop with the one-step email rule ``ping`` delivering to ``url``."""
    return make_shop(
        start,
        rules={"ping.yaml": one_step_rule("ping")},
        templates={"ping.email.j2": EMAIL_TEMPLATE},
        channels=channels(email=url),
        **overrides,
    )


def ping(shop: Shop, user: str, n: int = 1, email: str | None = None) -> None:
    """Identify ``user`` (with an email) and send the ``Ping`` that triggers the rule."""
    shop.identify({"email": email or f"{user}@example.com"}, user=user)
    shop.track("Ping", {"n": n}, user=user)


def only(rows: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(rows) == 1, rows
    return rows[0]


def stamp(when: datetime) -> str:
    return str(math.floor(when.timestamp()))


# -- 1. abandoned cart, end to end ------------------------------------------------------------


def test_abandoned_cart_sends_a_signed_push_at_1h_and_email_at_24h_and_nothing_to_the_buyer(
    make_shop: Callable[..., Shop], receiver: Receiver, tmp_path: Path
) -> None:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "abandoned_checkout.yaml").write_text(
        (SAMPLE_RULES / "abandoned_checkout.yaml").read_text()
    )
    templates = {
        name: (SAMPLE_TEMPLATES / name).read_text()
        for name in ("cart_push.push.j2", "cart_email.email.j2")
    }
    shop = make_shop(
        T0,
        templates=templates,
        serve_app=True,
        channels=channels(email=f"{receiver.url}/email", push=f"{receiver.url}/push"),
    )
    assert [r.id for r in shop.engine.rules.current.rules] == ["abandoned-checkout"]
    for user in ("ada", "bo"):
        traits = {"email": f"{user}@example.com", "push_tokens": [f"tok-{user}"]}
        shop.segment("/v1/identify", {"userId": user, "traits": {**traits, "first_name": user}})
        shop.segment(
            "/v1/track",
            {
                "userId": user,
                "event": "Checkout Started",
                "properties": {
                    "cart_id": f"cart-{user}",
                    "value": 42.5,
                    "products": [{"product_id": "sku-1", "name": "Boots", "price": 42.5}],
                },
            },
        )
    shop.step()
    shop.step(10 * MINUTE)
    shop.segment(
        "/v1/track",
        {
            "userId": "bo",
            "event": "Order Completed",
            "properties": {"order_id": "order-bo", "cart_id": "cart-bo", "revenue": 42.5},
        },
    )
    shop.step()

    shop.set_clock(T0 + HOUR - SECOND)
    shop.step()
    assert receiver.hits == [], "nothing is sent before the hour is up"

    shop.set_clock(T0 + HOUR)
    shop.step()
    push = only(receiver.hits)
    assert push.path == "/push"
    assert push.verified, "the push is signed per Standard Webhooks with the endpoint's secret"
    assert push.headers["webhook-timestamp"] == stamp(T0 + HOUR)
    # (the receiver's check is not a rubber stamp: another body or key does not verify)
    assert not verify_signature(SECRET, push.headers, push.body + b" ")
    assert not verify_signature("whsec_" + "A" * 44, push.headers, push.body)
    body = push.json
    assert set(body) >= MESSAGE_KEYS, body
    assert body["id"] == push.webhook_id
    assert body["id"].startswith("msg_")
    assert (body["type"], body["channel"], body["rule"], body["step"], body["variant"]) == (
        "message.send",
        "push",
        "abandoned-checkout",
        1,
        None,
    )
    assert body["to"] == {
        "customer_id": "ada",
        "email": "ada@example.com",
        "push_tokens": ["tok-ada"],
        "phone": None,
    }
    assert set(body["content"]) == {"title", "body", "url"}
    assert body["content"]["url"].startswith(f"{shop.app_url}/c/")
    assert body["unsubscribe_url"].startswith(f"{shop.app_url}/u/")
    assert datetime.fromisoformat(body["created_at"]) == T0 + HOUR

    shop.set_clock(T0 + 24 * HOUR - SECOND)
    shop.step()
    assert len(receiver.hits) == 1, "the email waits for the 24th hour"

    shop.set_clock(T0 + 24 * HOUR)
    shop.step()
    assert len(receiver.hits) == 2
    email = receiver.hits[1]
    assert email.path == "/email"
    assert email.verified
    body = email.json
    assert set(body) >= MESSAGE_KEYS | {"headers"}, body
    assert body["id"] == email.webhook_id != push.webhook_id
    assert (body["type"], body["channel"], body["rule"], body["step"]) == (
        "message.send",
        "email",
        "abandoned-checkout",
        2,
    )
    assert body["to"]["customer_id"] == "ada"
    assert body["to"]["email"] == "ada@example.com"
    assert set(body["content"]) == {"subject", "html", "text"}
    assert "Boots" in body["content"]["html"]
    unsubscribe = body["unsubscribe_url"]
    assert unsubscribe.startswith(f"{shop.app_url}/u/")
    assert body["headers"] == {
        "List-Unsubscribe": f"<{unsubscribe}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    assert f"{shop.app_url}/c/" in body["content"]["html"]
    assert datetime.fromisoformat(body["created_at"]) == T0 + 24 * HOUR

    shop.run_until(T0 + 3 * DAY, 6 * HOUR)
    shop.deliver()
    assert len(receiver.hits) == 2, "two messages in all"
    assert all(h.json["to"]["customer_id"] == "ada" for h in receiver.hits)
    assert [d["outcome"] for d in shop.decisions_of("bo")] == [], "the buyer hears nothing"
    assert [(r["status"], r["attempts"]) for r in shop.outbox()] == [("delivered", 1)] * 2


# -- 2. faults --------------------------------------------------------------------------------


def test_a_5xx_is_retried_after_the_delay_with_the_same_webhook_id(
    make_shop: Callable[..., Shop], receiver: Receiver
) -> None:
    receiver.script("/flaky", Answer(status=500))
    shop = ping_shop(make_shop, f"{receiver.url}/flaky")
    ping(shop, "ada")
    shop.step()
    first = only(receiver.hits)
    row = only(shop.outbox())
    assert (row["status"], row["attempts"], row["last_status"]) == ("pending", 1, 500)
    wait = row["next_attempt_at"] - T0
    assert RETRY_SCHEDULE[0] * 0.9 <= wait <= RETRY_SCHEDULE[0] * 1.1, wait

    shop.set_clock(row["next_attempt_at"] - timedelta(milliseconds=1))
    shop.deliver()
    assert len(receiver.hits) == 1, "not retried before next_attempt_at"

    shop.set_clock(row["next_attempt_at"])
    shop.deliver()
    assert len(receiver.hits) == 2
    second = receiver.hits[1]
    assert second.webhook_id == first.webhook_id == first.json["id"]
    assert second.body == first.body
    assert second.verified and first.verified
    assert second.headers["webhook-timestamp"] == stamp(row["next_attempt_at"])
    row = only(shop.outbox())
    assert (row["status"], row["attempts"], row["last_status"]) == ("delivered", 2, 200)
    assert [a["status"] for a in shop.attempts(row["id"])] == [500, 200]


def test_a_429_is_not_retried_before_its_retry_after(
    make_shop: Callable[..., Shop], receiver: Receiver
) -> None:
    receiver.script("/busy", Answer(status=429, headers={"Retry-After": "120"}))
    shop = ping_shop(make_shop, f"{receiver.url}/busy")
    ping(shop, "ada")
    shop.step()
    assert len(receiver.hits) == 1
    row = only(shop.outbox())
    assert (row["status"], row["last_status"]) == ("pending", 429)
    assert row["next_attempt_at"] >= T0 + 120 * SECOND

    for moment in (T0 + 6 * SECOND, T0 + 60 * SECOND, T0 + 119 * SECOND):
        shop.set_clock(moment)
        shop.deliver()
        assert len(receiver.hits) == 1, f"retried {moment - T0} after a Retry-After of 120 s"

    shop.set_clock(row["next_attempt_at"])
    shop.deliver()
    assert len(receiver.hits) == 2
    assert receiver.hits[1].webhook_id == receiver.hits[0].webhook_id
    assert only(shop.outbox())["status"] == "delivered"


def test_a_410_kills_the_row_disables_the_endpoint_and_the_cli_redrives_it(
    make_shop: Callable[..., Shop], receiver: Receiver, tmp_path: Path
) -> None:
    url = f"{receiver.url}/gone"
    receiver.script("/gone", Answer(status=410))
    shop = ping_shop(make_shop, url)
    ping(shop, "ada")
    shop.step()
    assert len(receiver.hits) == 1
    row = only(shop.outbox())
    assert (row["status"], row["last_status"]) == ("dead", 410)

    shop.restart()  # a new process: the endpoint stays disabled (it is in the database)
    ping(shop, "bo")
    shop.step(MINUTE)
    assert len(receiver.hits) == 1, "a disabled endpoint gets no POST"
    rows = shop.outbox()
    assert [r["status"] for r in rows] == ["dead", "dead"]
    assert rows[1]["attempts"] == 0
    assert "disabled" in (rows[1]["last_error"] or "")

    config = tmp_path / "cli.yaml"
    config.write_text(yaml.safe_dump({"database_url": shop.settings.database_url}))
    listed = subprocess.run(
        nudge_command("deliveries", "list", "--status", "dead", "--json", "-c", str(config)),
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=30,
        check=True,
    )
    assert sorted(r["id"] for r in orjson.loads(listed.stdout)) == [r["id"] for r in rows]
    for args in (("enable", url), ("retry", "--dead")):
        done = subprocess.run(
            nudge_command("deliveries", *args, "-c", str(config)),
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=30,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    assert [(r["status"], r["attempts"]) for r in shop.outbox()] == [("pending", 0)] * 2

    shop.step(MINUTE)
    assert len(receiver.hits) == 3
    assert [r["status"] for r in shop.outbox()] == ["delivered", "delivered"]
    assert receiver.hits[1].webhook_id == receiver.hits[0].webhook_id, "re-driven, same id"
    assert all(h.verified for h in receiver.hits)


def test_a_400_fails_the_delivery_for_good(
    make_shop: Callable[..., Shop], receiver: Receiver
) -> None:
    receiver.script("/reject", Answer(status=400))
    shop = ping_shop(make_shop, f"{receiver.url}/reject")
    ping(shop, "ada")
    shop.step()
    row = only(shop.outbox())
    assert (row["status"], row["attempts"], row["last_status"]) == ("failed", 1, 400)
    shop.step(DAY)
    shop.step(2 * DAY)
    assert len(receiver.hits) == 1, "a 400 is not retried"
    assert only(shop.outbox())["status"] == "failed"


def test_a_stalled_endpoint_times_out_and_is_retried(
    make_shop: Callable[..., Shop], receiver: Receiver
) -> None:
    receiver.script("/slow", Answer(stall=True))
    shop = ping_shop(make_shop, endpoint(f"{receiver.url}/slow", timeout="300ms"))
    ping(shop, "ada")
    shop.step()
    assert len(receiver.hits) == 1
    row = only(shop.outbox())
    assert (row["status"], row["attempts"], row["last_status"]) == ("pending", 1, None)
    assert row["last_error"] == "timeout after 0.3s"

    shop.set_clock(row["next_attempt_at"])
    shop.deliver()
    assert len(receiver.hits) == 2
    assert receiver.hits[1].webhook_id == receiver.hits[0].webhook_id
    assert only(shop.outbox())["status"] == "delivered"


def test_a_response_cut_off_mid_body_is_retried(make_shop: Callable[..., Shop]) -> None:
    server = CutServer(cut=1)
    try:
        shop = ping_shop(make_shop, server.url)
        ping(shop, "ada")
        shop.step()
        assert len(server.requests) == 1
        row = only(shop.outbox())
        assert (row["status"], row["attempts"]) == ("pending", 1)
        assert row["last_error"] == "connection closed mid-response"

        shop.set_clock(row["next_attempt_at"])
        shop.deliver()
        assert len(server.requests) == 2
        ids = {r["webhook-id"] for r in server.requests}
        assert len(ids) == 1
        assert only(shop.outbox())["status"] == "delivered"
    finally:
        server.close()


def test_an_endpoint_that_stays_down_gets_every_scheduled_attempt_then_the_row_is_dead(
    make_shop: Callable[..., Shop], receiver: Receiver
) -> None:
    receiver.script("/down", *[Answer(status=503)] * 20)
    shop = ping_shop(make_shop, f"{receiver.url}/down")
    ping(shop, "ada")
    shop.step()
    attempts = len(RETRY_SCHEDULE) + 1
    for n in range(1, attempts):
        row = only(shop.outbox())
        assert (row["status"], row["attempts"]) == ("pending", n)
        gap = row["next_attempt_at"] - shop.now
        expected = RETRY_SCHEDULE[n - 1]
        assert expected * 0.9 <= gap <= expected * 1.1, (n, gap)
        shop.set_clock(row["next_attempt_at"])
        shop.deliver()
        assert len(receiver.hits) == n + 1
    row = only(shop.outbox())
    assert (row["status"], row["attempts"], row["last_status"]) == ("dead", attempts, 503)
    assert f"gave up after {attempts} attempts" in row["last_error"]
    shop.step(3 * DAY)
    assert len(receiver.hits) == attempts
    assert {h.webhook_id for h in receiver.hits} == {row["message_id"]}


def test_the_breaker_stops_posts_to_a_failing_endpoint_until_its_cooldown(
    make_shop: Callable[..., Shop], receiver: Receiver
) -> None:
    receiver.script("/down", *[Answer(status=503)] * 4)
    shop = ping_shop(
        make_shop,
        f"{receiver.url}/down",
        delivery={
            "breaker_threshold": 3,
            "breaker_cooldown": "60s",
            "batch_size": 1,
            "concurrency": 1,
        },
    )
    for n in range(6):
        ping(shop, f"c{n}")
    shop.step()
    assert len(receiver.hits) == 3, "the breaker opens after 3 consecutive failures"
    assert len(shop.outbox("status = 'pending'")) == 6

    shop.step(10 * SECOND)  # the first three are due for their retry: the breaker holds them
    shop.step(40 * SECOND)
    assert len(receiver.hits) == 3, "no POST while the breaker is open"

    shop.set_clock(T0 + 60 * SECOND)
    shop.deliver()
    assert len(receiver.hits) == 4, "after the cooldown one trial request goes out"
    shop.step(30 * SECOND)
    assert len(receiver.hits) == 4, "the failed trial opens the breaker again"

    shop.set_clock(T0 + 120 * SECOND)
    shop.deliver()
    # A successful trial closes it: the five held ones go out; the trial's own message
    # (its second attempt failed) waits for its next scheduled retry.
    assert len(receiver.hits) == 9
    trial = only(shop.outbox("status = 'pending'"))
    assert trial["attempts"] == 2
    shop.set_clock(trial["next_attempt_at"])
    shop.deliver()
    assert len(receiver.hits) == 10
    assert [r["status"] for r in shop.outbox()] == ["delivered"] * 6
    assert all(h.verified for h in receiver.hits)


def test_deliveries_held_during_a_breaker_trial_are_not_claimed_over_and_over(
    make_shop: Callable[..., Shop], receiver: Receiver
) -> None:
    receiver.script("/t", Answer(status=503), Answer(status=200, delay=1.0))
    shop = ping_shop(
        make_shop,
        f"{receiver.url}/t",
        delivery={"breaker_threshold": 1, "breaker_cooldown": "60s"},
    )
    ping(shop, "ada")
    shop.step()  # 503: the breaker opens
    for n in range(4):
        ping(shop, f"b{n}")
    shop.tick()
    shop.set_clock(T0 + 61 * SECOND)  # ada's retry is the trial; it takes 1 s to answer

    def data_version(conn: sqlite3.Connection) -> int:
        return int(conn.execute("PRAGMA data_version").fetchone()[0])

    async def commits_during_the_trial() -> int:
        stop = asyncio.Event()
        run = asyncio.create_task(shop.dispatcher.run(stop))
        conn = sqlite3.connect(shop.path)
        try:
            async with asyncio.timeout(DEADLINE):
                while not (len(receiver.hits) == 2 and receiver.in_flight == 1):
                    await asyncio.sleep(0.002)
                last, commits = data_version(conn), 0
                while receiver.in_flight:
                    await asyncio.sleep(0.005)
                    if (now := data_version(conn)) != last:
                        commits, last = commits + 1, now
        finally:
            conn.close()
            stop.set()
            await run
        return commits

    commits = asyncio.run(commits_during_the_trial())
    assert commits <= 4, f"{commits} commits while one trial request was out"
    shop.set_clock(T0 + 121 * SECOND)  # the trial closed the breaker: the rest go out
    shop.deliver()
    assert len(receiver.hits) == 6


# -- 4. caps, quiet hours, priority -----------------------------------------------------------


def news_shop(make_shop: Callable[..., Shop], receiver: Receiver, **overrides: Any) -> Shop:
    """Two email rules on the same ``Ping`` (so both are due in the same tick)."""
    return make_shop(
        T0,
        rules={
            "news_a.yaml": one_step_rule("news-a"),
            "news_b.yaml": one_step_rule("news-b"),
        },
        templates={"news-a.email.j2": EMAIL_TEMPLATE, "news-b.email.j2": EMAIL_TEMPLATE},
        channels=channels(email=f"{receiver.url}/email"),
        **overrides,
    )


DEFER_CAP = [{"channel": "email", "max": 1, "per": "16h", "on_limit": "defer"}]
SKIP_CAP = [{"channel": "email", "max": 1, "per": "16h", "on_limit": "skip"}]


def outcomes(shop: Shop, ref: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for d in shop.decisions_of(ref):
        out.setdefault(d["rule_id"], []).append(d["outcome"])
    return out


def test_a_defer_cap_sends_one_and_sends_the_other_when_the_window_ends(
    make_shop: Callable[..., Shop], receiver: Receiver
) -> None:
    shop = news_shop(make_shop, receiver, frequency_caps=DEFER_CAP)
    ping(shop, "ada")
    shop.step()
    assert outcomes(shop, "ada") == {"news-a": ["sent"], "news-b": ["deferred"]}
    deferred = only(shop.decisions_of("ada", "news-b"))
    until = T0 + 16 * HOUR
    assert deferred["reason"] == f"cap email 1/16h; until {until.isoformat()}"
    assert [h.json["rule"] for h in receiver.hits] == ["news-a"]

    shop.set_clock(until - SECOND)
    shop.step()
    assert len(receiver.hits) == 1, "still inside the 16 h window"
    shop.set_clock(until)
    shop.step()
    assert outcomes(shop, "ada") == {"news-a": ["sent"], "news-b": ["deferred", "sent"]}
    assert [h.json["rule"] for h in receiver.hits] == ["news-a", "news-b"]
    assert datetime.fromisoformat(receiver.hits[1].json["created_at"]) == until


def test_a_deferred_message_is_decided_again_when_it_comes_due(
    make_shop: Callable[..., Shop], receiver: Receiver
) -> None:
    shop = news_shop(make_shop, receiver, frequency_caps=DEFER_CAP)
    ping(shop, "ada")
    shop.step()
    assert outcomes(shop, "ada") == {"news-a": ["sent"], "news-b": ["deferred"]}
    shop.identify({"accepts_marketing": False}, user="ada")  # withdrawn during the wait
    shop.step(HOUR)
    shop.set_clock(T0 + 16 * HOUR)
    shop.step()
    news_b = shop.decisions_of("ada", "news-b")
    assert [d["outcome"] for d in news_b] == ["deferred", "skipped"]
    assert "email" in news_b[1]["reason"]
    assert len(receiver.hits) == 1


def test_a_skip_cap_records_a_skip_naming_the_cap(
    make_shop: Callable[..., Shop], receiver: Receiver
) -> None:
    shop = news_shop(make_shop, receiver, frequency_caps=SKIP_CAP)
    ping(shop, "ada")
    shop.step()
    assert outcomes(shop, "ada") == {"news-a": ["sent"], "news-b": ["skipped"]}
    assert only(shop.decisions_of("ada", "news-b"))["reason"] == "cap email 1/16h"
    shop.step(DAY)
    assert len(receiver.hits) == 1
    assert len(shop.messages()) == 1


def test_the_higher_priority_rule_wins_the_last_capped_slot(
    make_shop: Callable[..., Shop], receiver: Receiver
) -> None:
    # Ties go by rule id: "aaa-low" would win a tie, so only priority can make "zzz-high" win.
    shop = make_shop(
        T0,
        rules={
            "low.yaml": one_step_rule("aaa-low", priority=10),
            "high.yaml": one_step_rule("zzz-high", priority=90),
        },
        templates={"aaa-low.email.j2": EMAIL_TEMPLATE, "zzz-high.email.j2": EMAIL_TEMPLATE},
        channels=channels(email=f"{receiver.url}/email"),
        frequency_caps=SKIP_CAP,
    )
    ping(shop, "ada")
    shop.step()
    assert outcomes(shop, "ada") == {"aaa-low": ["skipped"], "zzz-high": ["sent"]}
    assert only(shop.decisions_of("ada", "aaa-low"))["reason"] == "cap email 1/16h"
    assert [h.json["rule"] for h in receiver.hits] == ["zzz-high"]


def test_the_higher_priority_rule_wins_even_when_the_due_steps_fill_more_than_one_batch(
    make_shop: Callable[..., Shop], receiver: Receiver
) -> None:
    # "a_low.yaml" loads first, so each customer's low-priority journey has the lower id.
    shop = make_shop(
        T0,
        rules={
            "a_low.yaml": one_step_rule("aaa-low", priority=10),
            "b_high.yaml": one_step_rule("zzz-high", priority=90),
        },
        templates={"aaa-low.email.j2": EMAIL_TEMPLATE, "zzz-high.email.j2": EMAIL_TEMPLATE},
        channels=channels(email=f"{receiver.url}/email"),
        frequency_caps=SKIP_CAP,
        processing={"due_batch_size": 3},  # 4 steps due at once: two batches
    )
    for user in ("ada", "bo"):
        ping(shop, user)
    shop.step()
    assert outcomes(shop, "ada") == {"aaa-low": ["skipped"], "zzz-high": ["sent"]}
    assert outcomes(shop, "bo") == {"aaa-low": ["skipped"], "zzz-high": ["sent"]}


def test_a_cap_counts_what_was_sent_before_an_identity_merge(
    make_shop: Callable[..., Shop], receiver: Receiver
) -> None:
    shop = ping_shop(make_shop, f"{receiver.url}/email", frequency_caps=SKIP_CAP)
    shop.identify({"email": "ada@example.com"}, user="ada")
    shop.identify({"email": "ada@example.com"}, anon="visitor-1")
    shop.track("Ping", {"n": 1}, anon="visitor-1")
    shop.step()
    assert len(receiver.hits) == 1
    shop.clock.advance(5 * MINUTE)
    shop.send({"type": "identify", "userId": "ada", "anonymousId": "visitor-1", "traits": {}})
    shop.step()
    shop.clock.advance(5 * MINUTE)
    shop.track("Ping", {"n": 2}, user="ada")
    shop.step()
    assert [d["outcome"] for d in shop.decisions_of("ada")] == ["sent", "skipped"]
    assert len(receiver.hits) == 1, "two emails to one person within the 16 h cap"


def test_quiet_hours_defer_a_push_to_0800_in_the_customers_own_zone(
    make_shop: Callable[..., Shop], receiver: Receiver
) -> None:
    # 2030-03-20 21:30 UTC: 22:30 in Stockholm (UTC+1, quiet), 17:30 in New York (UTC-4).
    start = datetime(2030, 3, 20, 21, 30, tzinfo=UTC)
    shop = make_shop(
        start,
        rules={"nudge.yaml": one_step_rule("nudge", channel="push")},
        templates={"nudge.push.j2": PUSH_TEMPLATE},
        channels=channels(push=f"{receiver.url}/push"),
        quiet_hours={"start": "21:00", "end": "08:00", "channels": ["push"]},
    )
    for user, zone in (("sto", "Europe/Stockholm"), ("nyc", "America/New_York")):
        shop.identify({"timezone": zone, "push_tokens": [f"tok-{user}"]}, user=user)
        shop.track("Ping", {"n": 1}, user=user)
    shop.step()
    assert [h.json["to"]["customer_id"] for h in receiver.hits] == ["nyc"]
    deferred = only(shop.decisions_of("sto"))
    morning = datetime(2030, 3, 21, 7, 0, tzinfo=UTC)  # 08:00 in Stockholm
    assert deferred["outcome"] == "deferred"
    assert deferred["reason"] == (
        f"quiet hours 21:00-08:00 Europe/Stockholm; until {morning.isoformat()}"
    )

    shop.set_clock(morning - SECOND)
    shop.step()
    assert len(receiver.hits) == 1
    shop.set_clock(morning)
    shop.step()
    assert [h.json["to"]["customer_id"] for h in receiver.hits] == ["nyc", "sto"]
    assert [d["outcome"] for d in shop.decisions_of("sto")] == ["deferred", "sent"]

    # 03:00 UTC the next night is 23:00 in New York: quiet there until 08:00 = 12:00 UTC.
    shop.set_clock(datetime(2030, 3, 22, 3, 0, tzinfo=UTC))
    shop.track("Ping", {"n": 2}, user="nyc")
    shop.step()
    assert len(receiver.hits) == 2
    noon = datetime(2030, 3, 22, 12, 0, tzinfo=UTC)
    assert shop.decisions_of("nyc")[-1]["reason"].endswith(f"until {noon.isoformat()}")
    shop.set_clock(noon)
    shop.step()
    assert [h.json["to"]["customer_id"] for h in receiver.hits] == ["nyc", "sto", "nyc"]


# -- 7. templates that misbehave --------------------------------------------------------------

MRO_TEMPLATE = (
    "{% block subject %}Hi{% endblock %}\n"
    "{% block html %}\n"
    "<p>{{ ''.__class__.__mro__ }}</p>\n"
    "{% endblock %}\n"
    "{% block text %}Hi{% endblock %}\n"
)
LOOP_TEMPLATE = (
    "{% block subject %}Hi{% endblock %}\n"
    "{% block html %}<p>Hi</p>{% endblock %}\n"
    "{% block text %}\n"
    "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}\n"
    "{% endblock %}\n"
)
BUSY_TEMPLATE = LOOP_TEMPLATE.replace("x{% endfor %}", "{% endfor %}")  # no output: only time


def test_a_template_that_escapes_the_sandbox_or_never_ends_fails_without_stopping_others(
    make_shop: Callable[..., Shop], receiver: Receiver
) -> None:
    shop = make_shop(
        T0,
        rules={
            "mro.yaml": one_step_rule("mro", event="Ping Mro"),
            "loop.yaml": one_step_rule("loop", event="Ping Loop"),
            "busy.yaml": one_step_rule("busy", event="Ping Busy"),
            "good.yaml": one_step_rule("good", event="Ping Good"),
        },
        templates={
            "mro.email.j2": MRO_TEMPLATE,
            "loop.email.j2": LOOP_TEMPLATE,
            "busy.email.j2": BUSY_TEMPLATE,
            "good.email.j2": EMAIL_TEMPLATE,
        },
        channels=channels(email=f"{receiver.url}/email"),
        rendering={"max_render_seconds": 0.2},
    )
    people = (("ann", "Ping Mro"), ("lou", "Ping Loop"), ("bea", "Ping Busy"), ("gus", "Ping Good"))
    for user, event in people:
        shop.identify({"email": f"{user}@example.com"}, user=user)
        shop.track(event, {"n": 1}, user=user)
    started = time.monotonic()
    shop.step()
    assert time.monotonic() - started < 5, "the render limits bound the tick"

    mro = only(shop.decisions_of("ann"))
    assert mro["outcome"] == "failed"
    assert "mro.email.j2:3" in mro["reason"], mro["reason"]
    loop = only(shop.decisions_of("lou"))
    assert loop["outcome"] == "failed"
    assert "loop.email.j2:4" in loop["reason"], loop["reason"]
    assert "limit" in loop["reason"], loop["reason"]  # whichever of time or size comes first
    busy = only(shop.decisions_of("bea"))
    assert busy["outcome"] == "failed"
    assert "busy.email.j2:4" in busy["reason"], busy["reason"]
    assert "longer than 0.2s" in busy["reason"], busy["reason"]
    assert [d["outcome"] for d in shop.decisions_of("gus")] == ["sent"]
    assert [h.json["to"]["customer_id"] for h in receiver.hits] == ["gus"]
    assert len(shop.messages()) == 1, "a failed render queues nothing"

    shop.track("Ping Good", {"n": 2}, user="ann")  # the engine is still running
    shop.step(MINUTE)
    assert [h.json["to"]["customer_id"] for h in receiver.hits] == ["gus", "ann"]


# -- 8. holdout and variants ------------------------------------------------------------------

EXPERIMENT = one_step_rule(
    "exp",
    extra=(
        "holdout: 50%\n"
        "variants:\n"
        "  - {id: plain, weight: 50}\n"
        "  - {id: discount, weight: 50, template: exp_discount}\n"
    ),
)
DISCOUNT_TEMPLATE = EMAIL_TEMPLATE.replace("Hello", "10% off")


def test_holdout_customers_get_no_message_and_variants_are_stable_and_recorded(
    make_shop: Callable[..., Shop], receiver: Receiver
) -> None:
    shop = make_shop(
        T0,
        rules={"exp.yaml": EXPERIMENT},
        templates={"exp.email.j2": EMAIL_TEMPLATE, "exp_discount.email.j2": DISCOUNT_TEMPLATE},
        channels=channels(email=f"{receiver.url}/email"),
    )
    users = [f"u{n:03d}" for n in range(200)]
    for user in users:
        ping(shop, user, n=1)
    shop.step()

    first = {u: only(shop.decisions_of(u)) for u in users}
    held = [u for u, d in first.items() if d["outcome"] == "holdout"]
    sent = [u for u, d in first.items() if d["outcome"] == "sent"]
    assert sorted(held + sent) == users
    assert 60 <= len(held) <= 140, len(held)
    assert all(first[u]["variant"] == HOLDOUT for u in held)
    variants = {u: first[u]["variant"] for u in sent}
    assert set(variants.values()) == {"plain", "discount"}
    assert min(list(variants.values()).count(v) for v in ("plain", "discount")) >= 15
    variant_weights = [("plain", 50.0), ("discount", 50.0)]
    for user, decision in first.items():
        expected = assign("exp", shop.customer_id(user), 0.5, variant_weights)
        assert decision["variant"] == expected, user

    bodies = {h.json["to"]["customer_id"]: h.json for h in receiver.hits}
    assert sorted(bodies) == sorted(sent), "holdout customers get no message"
    assert len(receiver.hits) == len(sent)
    for user in sent:
        assert bodies[user]["variant"] == variants[user]
        subject = bodies[user]["content"]["subject"]
        assert subject.startswith("10% off" if variants[user] == "discount" else "Hello")
    messages = {m["body"]["to"]["customer_id"]: m for m in shop.messages()}
    assert {u: m["variant"] for u, m in messages.items()} == variants
    assert all(
        m["template"] == ("exp_discount" if m["variant"] == "discount" else "exp")
        for m in messages.values()
    )

    # Decided again (a new journey per customer), in a restarted engine: the same arms.
    shop.restart()
    for user in users:
        shop.track("Ping", {"n": 2}, user=user)
    shop.step(HOUR)
    again = {u: shop.decisions_of(u)[-1] for u in users}
    assert {u: d["variant"] for u, d in again.items()} == {
        u: d["variant"] for u, d in first.items()
    }
    assert {u for u, d in again.items() if d["outcome"] == "holdout"} == set(held)
    assert len(receiver.hits) == 2 * len(sent)


def test_a_journeys_arm_survives_an_identity_merge(
    make_shop: Callable[..., Shop], receiver: Receiver
) -> None:
    two_steps = (
        "id: exp\n"
        "trigger: {event: Ping, key: event.properties.n}\n"
        "steps:\n"
        "  - {channel: push, template: exp}\n"
        "  - {wait: 1h, channel: push, template: exp}\n"
        "holdout: 50%\n"
        "variants: [{id: plain, weight: 50}, {id: discount, weight: 50}]\n"
    )
    shop = make_shop(
        T0,
        rules={"exp.yaml": two_steps},
        templates={"exp.push.j2": PUSH_TEMPLATE},
        channels=channels(push=f"{receiver.url}/push"),
    )
    pairs = [(f"u{n}", f"a{n}") for n in range(24)]
    for user, _ in pairs:  # known customers, from an earlier visit
        shop.identify({"push_tokens": [f"tok-{user}"]}, user=user)
    for _, anon in pairs:  # the same people, not logged in, start the journey
        shop.identify({"push_tokens": [f"tok-{anon}"]}, anon=anon)
        shop.track("Ping", {"n": 1}, anon=anon)
    shop.step()
    for user, anon in pairs:  # they log in: the anonymous profile merges into the known one
        shop.send({"type": "identify", "userId": user, "anonymousId": anon, "traits": {}})
    shop.step()
    shop.step(HOUR)

    held_then_sent = []
    switched = []
    for user, _ in pairs:
        steps = sorted(shop.decisions_of(user, "exp"), key=lambda d: d["step"])
        assert [d["step"] for d in steps] == [0, 1], steps
        if steps[0]["outcome"] == "holdout" and steps[1]["outcome"] != "holdout":
            held_then_sent.append(user)
        if steps[0]["variant"] != steps[1]["variant"]:
            switched.append(user)
    assert held_then_sent == [], "a holdout customer was messaged"
    assert switched == [], "the arm changed in the middle of a journey"
