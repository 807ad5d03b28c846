"""Consent and tracking on the delivery path: marketing consent, hard bounces and complaints
suppress an address, the one-click unsubscribe (RFC 8058) and its page, and tracked links,
through the real HTTP app under uvicorn on the engine's own base URL, with messages delivered
by the real dispatcher to a real receiver, on a simulated clock."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from delivery_fixtures import (
    EMAIL_TEMPLATE,
    Receiver,
    Shop,
    channels,
    make_shop_fixture,  # noqa: F401
    one_step_rule,
    receiver_fixture,  # noqa: F401
    time_limit_fixture,  # noqa: F401
)

from engine.models import EVENT_PENDING
from engine.service import fire_due_until_idle

T0 = datetime(2030, 3, 5, 10, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
CART = "https://shop.example.com/cart?utm_source=nudge&item=1"


@pytest.fixture
def shop(make_shop: Callable[..., Shop], receiver: Receiver) -> Shop:
    """The one-step email rule ``ping`` and the two-step ``series`` (email now, email an hour
    later, on ``Series``), delivering to ``receiver``, with the HTTP app running."""
    series = (
        "id: series\n"
        "trigger: {event: Series, key: event.properties.n}\n"
        "steps:\n"
        "  - {channel: email, template: ping}\n"
        "  - {wait: 1h, channel: email, template: ping}\n"
    )
    return make_shop(
        T0,
        rules={"ping.yaml": one_step_rule("ping"), "series.yaml": series},
        templates={"ping.email.j2": EMAIL_TEMPLATE},
        channels=channels(email=f"{receiver.url}/email"),
        serve_app=True,
    )


def ping(shop: Shop, user: str, n: int, **traits: Any) -> None:
    if traits:
        shop.identify(traits, user=user)
    shop.track("Ping", {"n": n}, user=user)
    shop.step(MINUTE)


def last_outcome(shop: Shop, user: str) -> tuple[str, str | None]:
    decision = shop.decisions_of(user)[-1]
    return decision["outcome"], decision["reason"]


def suppressions(shop: Shop) -> list[tuple[str, str, str]]:
    rows = shop.query("SELECT channel, address, reason FROM suppressions ORDER BY id")
    return [(r["channel"], r["address"], r["reason"]) for r in rows]


def sent_to(receiver: Receiver) -> list[str]:
    return [h.json["to"]["email"] for h in receiver.hits]


# -- 5. consent -------------------------------------------------------------------------------


def test_a_customer_who_does_not_accept_marketing_gets_no_email(
    shop: Shop, receiver: Receiver
) -> None:
    ping(shop, "ada", 1, email="ada@example.com", accepts_marketing=False)
    outcome, reason = last_outcome(shop, "ada")
    assert outcome == "skipped"
    assert reason is not None and "email" in reason
    ping(shop, "bo", 1, email="bo@example.com", accepts_marketing=True)
    assert last_outcome(shop, "bo") == ("sent", None)
    assert sent_to(receiver) == ["bo@example.com"]


def test_a_skip_for_accepts_marketing_false_says_opted_out_not_unsubscribed(
    shop: Shop, receiver: Receiver
) -> None:
    ping(shop, "ada", 1, email="ada@example.com", accepts_marketing=False)
    assert last_outcome(shop, "ada") == ("skipped", "opted out of email")


def test_a_hard_bounce_suppresses_the_address_until_it_changes(
    shop: Shop, receiver: Receiver
) -> None:
    ping(shop, "ada", 1, email="ada@example.com")
    assert sent_to(receiver) == ["ada@example.com"]
    shop.track("Email Bounced", {"bounce_type": "soft"}, user="ada")
    shop.step(MINUTE)
    assert suppressions(shop) == [], "a soft bounce suppresses nothing"
    shop.track("Email Bounced", {"bounce_type": "hard", "email": "ADA@example.com"}, user="ada")
    shop.step(MINUTE)
    assert suppressions(shop) == [("email", "ada@example.com", "hard bounce")]

    ping(shop, "ada", 2)
    assert last_outcome(shop, "ada") == ("skipped", "suppressed for email")
    ping(shop, "cy", 1, email="Ada@Example.com")  # the address, whoever gives it
    assert last_outcome(shop, "cy") == ("skipped", "suppressed for email")

    ping(shop, "ada", 3, email="ada.new@example.com")
    assert last_outcome(shop, "ada") == ("sent", None)
    assert sent_to(receiver) == ["ada@example.com", "ada.new@example.com"]


def test_a_complaint_suppresses_the_address(shop: Shop, receiver: Receiver) -> None:
    ping(shop, "ada", 1, email="ada@example.com")
    shop.track("Email Complained", {}, user="ada")
    shop.step(MINUTE)
    assert suppressions(shop) == [("email", "ada@example.com", "complaint")]
    ping(shop, "ada", 2)
    assert last_outcome(shop, "ada") == ("skipped", "suppressed for email")
    assert len(receiver.hits) == 1


def test_the_unsubscribe_page_asks_but_a_get_does_not_unsubscribe(
    shop: Shop, receiver: Receiver
) -> None:
    assert shop.http is not None
    ping(shop, "ada", 1, email="ada@example.com")
    url = receiver.hits[0].json["unsubscribe_url"]
    page = shop.http.get(url)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert re.search(r"<form method='post' action='/u/[^']+'>", page.text), page.text

    shop.step(MINUTE)
    assert suppressions(shop) == []
    assert shop.events("name = 'Unsubscribed'") == []
    ping(shop, "ada", 2)
    assert last_outcome(shop, "ada") == ("sent", None)
    assert len(receiver.hits) == 2


def test_one_click_unsubscribe_takes_effect_before_the_event_is_processed(
    shop: Shop, receiver: Receiver
) -> None:
    assert shop.http is not None
    shop.identify({"email": "ada@example.com"}, user="ada")
    shop.track("Series", {"n": 1}, user="ada")
    shop.step()
    [first] = receiver.hits
    headers = first.json["headers"]
    url = headers["List-Unsubscribe"].strip("<>")
    assert url == first.json["unsubscribe_url"]

    done = shop.http.post(
        url,
        content=headers["List-Unsubscribe-Post"],
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert done.status_code == 200, done.text
    assert suppressions(shop) == [("email", "ada@example.com", "unsubscribed")]
    [event] = shop.events("name = 'Unsubscribed'")
    assert event["status"] == EVENT_PENDING, "recorded, not processed yet"

    shop.clock.advance(HOUR)
    assert fire_due_until_idle(shop.engine) == 1  # decisions only: the processor has not run
    series = shop.decisions_of("ada", "series")
    assert [(d["step"], d["outcome"], d["reason"]) for d in series] == [
        (0, "sent", None),
        (1, "skipped", "suppressed for email"),
    ]
    shop.deliver()
    assert len(receiver.hits) == 1

    shop.step(MINUTE)  # now the processor records the Unsubscribed event on the profile
    assert shop.profile("ada")["consent"].get("email") is False
    ping(shop, "ada", 2)
    assert last_outcome(shop, "ada")[0] == "skipped"
    assert len(receiver.hits) == 1


def test_a_tampered_unsubscribe_token_is_404_and_changes_nothing(
    shop: Shop, receiver: Receiver
) -> None:
    assert shop.http is not None
    ping(shop, "ada", 1, email="ada@example.com")
    url = receiver.hits[0].json["unsubscribe_url"]
    token = url.rsplit("/", 1)[1]
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    signer = shop.engine.link_signer()
    click = signer.click_url(receiver.hits[0].json["id"], "https://shop.example.com/")
    as_click = click.rsplit("/", 1)[1]  # signed by us, but for /c/ (another salt)
    for bad in (flipped, token[: len(token) // 2], "not-a-token", as_click):
        target = f"{shop.app_url}/u/{bad}"
        assert shop.http.get(target).status_code == 404
        posted = shop.http.post(target, content="List-Unsubscribe=One-Click")
        assert posted.status_code == 404
    assert suppressions(shop) == []
    shop.step(MINUTE)
    assert shop.events("name = 'Unsubscribed'") == []
    ping(shop, "ada", 2)
    assert last_outcome(shop, "ada") == ("sent", None)


# -- 6. tracked links -------------------------------------------------------------------------

LINK_TEMPLATE = (
    "{% block subject %}Your cart{% endblock %}\n"
    '{% block html %}<p><a href="{{ link("' + CART + '") }}">Back to your cart</a></p>'
    "{% endblock %}\n"
    '{% block text %}Back to your cart: {{ link("' + CART + '") }}{% endblock %}\n'
)


def test_a_tracked_link_redirects_to_its_url_and_records_the_click(
    make_shop: Callable[..., Shop], receiver: Receiver
) -> None:
    shop = make_shop(
        T0,
        rules={"cart.yaml": one_step_rule("cart")},
        templates={"cart.email.j2": LINK_TEMPLATE},
        channels=channels(email=f"{receiver.url}/email"),
        serve_app=True,
    )
    assert shop.http is not None
    ping(shop, "ada", 1, email="ada@example.com")
    [hit] = receiver.hits
    body = hit.json
    found = re.findall(r'href="([^"]+)"', body["content"]["html"])
    assert len(found) == 1, body["content"]["html"]
    click = found[0]
    assert click.startswith(f"{shop.app_url}/c/")
    assert CART not in body["content"]["html"] and "shop.example.com" not in click
    assert click in body["content"]["text"]

    redirect = shop.http.get(click, follow_redirects=False)
    assert redirect.status_code == 302
    assert redirect.headers["location"] == CART

    shop.step(MINUTE)
    [event] = shop.events("name = 'Email Link Clicked'")
    assert event["customer_id"] == shop.customer_id("ada")
    properties = event["payload"]["properties"]
    assert (properties["url"], properties["message_id"], properties["rule"]) == (
        CART,
        body["id"],
        "cart",
    )
    assert shop.profile("ada")["event_counts"]["Email Link Clicked"] == 1

    signer = shop.engine.link_signer()
    token = click.rsplit("/", 1)[1]
    forged = [
        signer.click_url(body["id"], "https://evil.example.com/"),  # not in the message
        signer.click_url(body["id"], CART + "&x=1"),
        signer.click_url("msg_" + "0" * 32, CART),  # no such message
        f"{shop.app_url}/c/{token[:-1]}{'A' if token[-1] != 'A' else 'B'}",  # tampered
        f"{shop.app_url}/c/not-a-token",
    ]
    for url in forged:
        answer = shop.http.get(url, follow_redirects=False)
        assert answer.status_code == 404, url
        assert "location" not in answer.headers, url
    shop.step(MINUTE)
    assert len(shop.events("name = 'Email Link Clicked'")) == 1
