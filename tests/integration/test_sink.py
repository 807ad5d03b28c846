"""The demo webhook sink under real uvicorn, driven by a real httpx client: what it accepts,
what it refuses (with the API's one error shape), duplicates, and what it prints."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from nudge_testing import Nudge
from rich.console import Console
from webhook_receiver import serve

from engine.dispatch import new_message_id, sign_headers
from engine.web.sink import create_sink_app

SECRET = "whsec_" + base64.b64encode(b"sink-test-secret-0123456789abcd").decode()
ROTATED = "whsec_" + base64.b64encode(b"the-next-secret-after-rotation!").decode()
OTHER = "whsec_" + base64.b64encode(b"a-secret-the-sink-does-not-know").decode()


def email_message(msg_id: str, **overrides: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "type": "message.send",
        "id": msg_id,
        "channel": "email",
        "to": {"customer_id": "u1", "email": "ada@example.com", "push_tokens": []},
        "content": {
            "subject": "You left something [bold]behind[/bold]",
            "html": '<p>Hi</p><a href="http://shop.test/c/1">cart</a>'
            '<a href="http://shop.test/c/2">shoes</a><a href="http://shop.test/u/tok">unsub</a>',
            "text": "\n".join(f"line {n}" for n in range(1, 21)),
        },
        "rule": "abandoned-checkout",
        "step": 1,
        "variant": None,
        "unsubscribe_url": "http://shop.test/u/tok",
        "headers": {
            "List-Unsubscribe": "<http://shop.test/u/tok>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
        "created_at": "2026-05-05T12:00:00+00:00",
    }
    message.update(overrides)
    return message


def push_message(msg_id: str) -> dict[str, Any]:
    return email_message(
        msg_id,
        channel="push",
        to={"customer_id": "u2", "email": None, "push_tokens": ["tok-a", "tok-b"]},
        content={"title": "Back in stock", "body": "Your shoes are back", "url": "http://s/p"},
        variant="B",
    )


def signed(
    message: Any, *, secret: str = SECRET, at: datetime | None = None, msg_id: str | None = None
) -> tuple[bytes, dict[str, str]]:
    body = orjson.dumps(message)
    ident = msg_id or (message["id"] if isinstance(message, dict) else new_message_id())
    return body, sign_headers(secret, ident, at or datetime.now(UTC), body)


@dataclass
class Sink:
    app: FastAPI
    http: httpx.Client
    output: io.StringIO

    @property
    def received(self) -> list[dict[str, Any]]:
        return self.app.state.received  # type: ignore[no-any-return]

    def post(self, body: bytes, headers: dict[str, str], path: str = "/") -> httpx.Response:
        return self.http.post(path, content=body, headers=headers)


@pytest.fixture
def start_sink() -> Iterator[Callable[..., Sink]]:
    with ExitStack() as stack:

        def start(secrets: tuple[str, ...] = (SECRET, ROTATED), **kwargs: Any) -> Sink:
            output = io.StringIO()
            console = Console(file=output, width=120, color_system=None)
            app = create_sink_app(list(secrets), console=console, **kwargs)
            base_url = stack.enter_context(serve(app))
            http = stack.enter_context(httpx.Client(base_url=base_url, timeout=10))
            return Sink(app=app, http=http, output=output)

        yield start


@pytest.fixture
def sink(start_sink: Callable[..., Sink]) -> Sink:
    return start_sink()


def test_a_signed_email_is_accepted_recorded_and_printed(sink: Sink) -> None:
    msg_id = new_message_id()
    message = email_message(msg_id)
    response = sink.post(*signed(message), path="/email")
    assert response.status_code == 200, response.text
    assert response.json() == {"received": True}
    [record] = sink.received
    assert record["webhook_id"] == msg_id
    assert record["channel"] == "email"
    assert record["message"] == message
    out = sink.output.getvalue()
    assert "ada@example.com" in out
    assert "You left something [bold]behind[/bold]" in out  # printed as text, not markup
    assert "abandoned-checkout · step 1" in out
    assert msg_id in out
    assert "line 12" in out and "line 13" not in out and "8 more lines" in out
    assert re.search(r"links\s+3\b", out)
    assert "http://shop.test/u/tok" in out


def test_a_push_message_prints_title_body_and_token_count(sink: Sink) -> None:
    msg_id = new_message_id()
    response = sink.post(*signed(push_message(msg_id)))
    assert response.status_code == 200, response.text
    assert sink.received[0]["channel"] == "push"  # from the body when the path names none
    out = sink.output.getvalue()
    assert "2 push tokens" in out and "Back in stock" in out and "Your shoes are back" in out
    assert "variant B" in out


def test_any_configured_secret_verifies(sink: Sink) -> None:
    response = sink.post(*signed(email_message(new_message_id()), secret=ROTATED))
    assert response.status_code == 200, response.text


def test_one_matching_signature_among_several_is_enough(sink: Sink) -> None:
    body, headers = signed(email_message(new_message_id()))
    _, other = signed(orjson.loads(body), secret=OTHER)
    headers["webhook-signature"] = (
        f"v2,abc {other['webhook-signature']} {headers['webhook-signature']}"
    )
    assert sink.post(body, headers).status_code == 200


def test_a_tampered_body_is_refused(sink: Sink) -> None:
    body, headers = signed(email_message(new_message_id()))
    tampered = body.replace(b"ada@example.com", b"eve@example.com")
    error = Nudge.expect_error(sink.post(tampered, headers), 401, field="webhook-signature")
    assert "signature" in error["message"]
    assert sink.received == []


def test_a_wrong_secret_is_refused(sink: Sink) -> None:
    Nudge.expect_error(
        sink.post(*signed(email_message(new_message_id()), secret=OTHER)),
        401,
        field="webhook-signature",
    )


def test_a_changed_webhook_id_is_refused(sink: Sink) -> None:
    body, headers = signed(email_message(new_message_id()))
    headers["webhook-id"] = new_message_id()
    Nudge.expect_error(sink.post(body, headers), 401)


@pytest.mark.parametrize("skew", [timedelta(minutes=-10), timedelta(minutes=10)])
def test_a_timestamp_outside_the_tolerance_is_refused(sink: Sink, skew: timedelta) -> None:
    message = email_message(new_message_id())
    response = sink.post(*signed(message, at=datetime.now(UTC) + skew))
    error = Nudge.expect_error(response, 401, field="webhook-timestamp")
    assert "too" in error["message"]


def test_the_tolerance_is_configurable(start_sink: Callable[..., Sink]) -> None:
    # wider than the library's fixed five minutes, so this checks the sink applies its own
    wide = start_sink(tolerance=timedelta(minutes=15))
    ten_minutes_ago = datetime.now(UTC) - timedelta(minutes=10)
    response = wide.post(*signed(email_message(new_message_id()), at=ten_minutes_ago))
    assert response.status_code == 200, response.text
    narrow = start_sink(tolerance=timedelta(seconds=30))
    minute_ago = datetime.now(UTC) - timedelta(minutes=1)
    Nudge.expect_error(narrow.post(*signed(email_message(new_message_id()), at=minute_ago)), 401)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_missing_header_is_refused(sink: Sink, missing: str) -> None:
    body, headers = signed(email_message(new_message_id()))
    del headers[missing]
    error = Nudge.expect_error(sink.post(body, headers), 401, field=missing)
    assert missing in error["message"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("webhook-signature", "garbage"),
        ("webhook-signature", "v1"),
        ("webhook-signature", "v1,"),
        ("webhook-signature", "v1,!!!not-base64"),
        ("webhook-timestamp", "1e9"),
        ("webhook-timestamp", "nan"),
        ("webhook-timestamp", "99999999999999999999"),
        ("webhook-timestamp", "999999999999"),  # past year 9999
    ],
)
def test_malformed_headers_are_refused_not_crashed_on(sink: Sink, name: str, value: str) -> None:
    body, headers = signed(email_message(new_message_id()))
    headers[name] = value
    Nudge.expect_error(sink.post(body, headers), 401, field=name)


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b'"text"', b"\xff\xfe"])
def test_a_signed_body_that_is_not_a_json_object_is_400(sink: Sink, raw: bytes) -> None:
    # a body that is not UTF-8 cannot be signed as text: it is refused before the signature
    signable = raw if raw.isascii() else b"x"
    headers = sign_headers(SECRET, new_message_id(), datetime.now(UTC), signable)
    Nudge.expect_error(sink.post(raw, headers), 400, code="invalid_json", field="body")
    assert sink.received == []


def test_a_repeated_webhook_id_is_accepted_once_and_reported_as_duplicate(sink: Sink) -> None:
    msg_id = new_message_id()
    body, headers = signed(email_message(msg_id))
    first = sink.post(body, headers)
    # a retry: same id and body, signed again later
    again = sink.post(*signed(email_message(msg_id)))
    assert first.json() == {"received": True}
    assert again.status_code == 200
    assert again.json() == {"received": True, "duplicate": True}
    assert [r["webhook_id"] for r in sink.received] == [msg_id]
    out = sink.output.getvalue()
    assert f"duplicate {msg_id} (already received)" in out
    assert out.count(msg_id) == 2  # once in the panel, once in the duplicate line


def test_unknown_paths_and_methods_use_the_error_shape(sink: Sink) -> None:
    Nudge.expect_error(sink.http.get("/"), 405)
    Nudge.expect_error(sink.http.post("/a/b"), 404)


def test_secrets_are_checked_when_the_app_is_built() -> None:
    with pytest.raises(ValueError, match="at least one"):
        create_sink_app([])
    with pytest.raises(ValueError, match="whsec_"):
        create_sink_app(["not-a-secret"])
